//! A cluster of protocol nodes joined by an in-memory network, with real log bytes
//! and page files.

use super::*;

pub(crate) struct Cluster {
    _dir: tempfile::TempDir,
    pub(crate) nodes: Vec<Node>,
    pub(crate) logs: Vec<Vec<u8>>,
    pub(crate) pages: Vec<PageStore>,
    pub(crate) net: VecDeque<(NodeId, Message)>,
    pub(crate) sent: Vec<Message>,
    pub(crate) replies: Vec<(TxnId, Outcome)>,
}

impl Cluster {
    pub(crate) fn new(n: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pages = (0..n)
            .map(|i| PageStore::open(dir.path().join(format!("pages{i}")), 8).unwrap())
            .collect();
        Self {
            _dir: dir,
            nodes: (0..n)
                .map(|i| Node::new(NodeId(i), NodeConfig::default(), Default::default()))
                .collect(),
            logs: vec![Vec::new(); n as usize],
            pages,
            net: VecDeque::new(),
            sent: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// Carry out `actions` of node `n`; log records become durable at once.
    pub(crate) fn run(&mut self, n: usize, actions: Vec<Action>) {
        let mut todo: VecDeque<Action> = actions.into();
        while let Some(action) = todo.pop_front() {
            match action {
                Action::Send { to, msg } => {
                    self.sent.push(msg.clone());
                    self.net.push_back((to, msg));
                }
                Action::Persist { id, record } => {
                    encode(&record, &mut self.logs[n]).unwrap();
                    todo.extend(self.nodes[n].persisted(id));
                }
                Action::Apply { writes, .. } => {
                    for w in writes {
                        self.pages[n]
                            .apply(w.page, w.expected + 1, &w.data)
                            .unwrap();
                    }
                }
                Action::Reply { txn, outcome, .. } => self.replies.push((txn, outcome)),
            }
        }
    }

    pub(crate) fn deliver_all(&mut self) {
        while let Some((to, msg)) = self.net.pop_front() {
            let actions = self.nodes[to.0 as usize].handle(msg);
            self.run(to.0 as usize, actions);
        }
    }

    /// Kill node `n` and restart it from its log bytes and page file.
    pub(crate) fn crash_and_recover(&mut self, n: usize) {
        let replayed = replay(&self.logs[n]);
        assert!(replayed.corruption.is_none());
        let versions = self.pages[n].scan().unwrap().versions;
        let (node, actions) = Node::recover(
            NodeId(n as u32),
            NodeConfig::default(),
            versions,
            replayed.records,
        )
        .unwrap();
        self.nodes[n] = node;
        self.run(n, actions);
    }

    pub(crate) fn start(&mut self, p: Prepare) {
        self.net.push_back((p.chain[0], Message::Prepare(p)));
    }
}

pub(crate) fn w(page: u64, expected: u64) -> Vec<PageWrite> {
    vec![PageWrite {
        page: PageId(page),
        expected,
        data: vec![page as u8, expected as u8].into(),
    }]
}

pub(crate) fn txn(id: u64, chain: &[u32], page: u64) -> Prepare {
    let chain: Vec<NodeId> = chain.iter().copied().map(NodeId).collect();
    Prepare {
        txn: TxnId(id),
        client: ClientId(id),
        writes: chain.iter().map(|&n| (n, w(page, 0))).collect(),
        acceptors: 0,
        chain,
    }
}
