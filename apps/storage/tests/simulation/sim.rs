//! The simulated cluster: nodes, the network, the clients and their bank transfers.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};

use pipewright_storage::bank::Rng;
use pipewright_storage::log::{PageWrite, Record, Verdict};
use pipewright_storage::protocol::{Ballot, Message, Node, NodeConfig, Prepare, RecordId};
use pipewright_storage::{ClientId, NodeId, PageId, TxnId, Version};

pub(crate) const NODES: u32 = 3;
pub(crate) const ACCOUNTS: u64 = 6;
pub(crate) const INITIAL: i64 = 1000;
pub(crate) const CLIENTS: u64 = 6;
pub(crate) const TICK_EVERY: u64 = 10;
pub(crate) const RESOLVE_AFTER: u64 = 60;
pub(crate) const CLIENT_TIMEOUT: u64 = 400;
pub(crate) const CHECKPOINT_RECORDS: usize = 150;
/// Ticks a node in doubt waits for its decider before a recovery ballot (F ≥ 1).
pub(crate) const PATIENCE: u32 = 8;

pub(crate) fn config() -> NodeConfig {
    NodeConfig {
        patience: PATIENCE,
        ..NodeConfig::default()
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Faults {
    pub(crate) drop: f64,
    pub(crate) dup: f64,
    pub(crate) late_dup: f64,
    pub(crate) max_delay: u64,
    pub(crate) crash: f64,
}

pub(crate) type Page = (Version, Vec<u8>);

pub(crate) struct SimNode {
    pub(crate) node: Option<Node>,
    pub(crate) durable: Vec<Record>,
    pub(crate) pending: VecDeque<(RecordId, Record)>,
    /// The page file as synced, and the writes since (each may or may not survive a
    /// crash).
    pub(crate) synced: BTreeMap<PageId, Page>,
    pub(crate) unsynced: BTreeMap<PageId, Vec<Page>>,
    /// The page file as the running node sees it.
    pub(crate) cache: BTreeMap<PageId, Page>,
    pub(crate) prepared_since: HashMap<TxnId, u64>,
    pub(crate) since_checkpoint: usize,
    pub(crate) down_until: u64,
}

pub(crate) struct Client {
    pub(crate) id: ClientId,
    pub(crate) next: u64,
    /// The transaction in flight, when it was sent, and its writes.
    pub(crate) current: Option<(TxnId, u64)>,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) started: u64,
    pub(crate) committed: u64,
    pub(crate) aborted: u64,
    pub(crate) timed_out: u64,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
    pub(crate) duplicated: u64,
    pub(crate) late: u64,
    pub(crate) crashes: u64,
    pub(crate) checkpoints: u64,
    pub(crate) max_remembered: usize,
    pub(crate) max_log_records: usize,
}

pub(crate) struct Sim {
    pub(crate) rng: Rng,
    pub(crate) now: u64,
    pub(crate) seq: u64,
    pub(crate) faults: Faults,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) net: BinaryHeap<Reverse<(u64, u64, u32, MessageKey)>>,
    pub(crate) messages: HashMap<u64, Message>,
    pub(crate) clients: Vec<Client>,
    // Ghost state for the checks.
    pub(crate) txns: BTreeMap<TxnId, Prepare>,
    pub(crate) replies: BTreeMap<TxnId, BTreeSet<bool>>,
    pub(crate) applied: BTreeSet<(u32, TxnId)>,
    pub(crate) applied_over: BTreeMap<(u32, PageId, Version), TxnId>,
    pub(crate) decided: BTreeMap<TxnId, Verdict>,
    /// Durable acceptances: (txn, ballot, verdict) → acceptors.
    pub(crate) accepts: BTreeMap<(TxnId, Ballot, Verdict), BTreeSet<u32>>,
    /// F of every transaction started.
    pub(crate) f: u8,
    pub(crate) stats: Stats,
}

/// Messages in the heap are keyed by an id (a `Message` has no total order worth
/// relying on for determinism beyond the sequence number).
pub(crate) type MessageKey = u64;

pub(crate) fn balance(data: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    i64::from_le_bytes(b)
}

impl Sim {
    pub(crate) fn new(seed: u64, faults: Faults) -> Self {
        let nodes = (0..NODES)
            .map(|i| {
                let pages: BTreeMap<PageId, Page> = (0..ACCOUNTS)
                    .map(|p| (PageId(p), (1, INITIAL.to_le_bytes().to_vec())))
                    .collect();
                let versions = pages.iter().map(|(&p, &(v, _))| (p, v)).collect();
                SimNode {
                    node: Some(Node::new(NodeId(i), config(), versions)),
                    durable: Vec::new(),
                    pending: VecDeque::new(),
                    synced: pages.clone(),
                    unsynced: BTreeMap::new(),
                    cache: pages,
                    prepared_since: HashMap::new(),
                    since_checkpoint: 0,
                    down_until: 0,
                }
            })
            .collect();
        let mut rng = Rng::with_seed(seed);
        let clients = (0..CLIENTS)
            .map(|i| Client {
                id: ClientId(100 + i),
                next: rng.u64(1..1 << 40),
                current: None,
            })
            .collect();
        Sim {
            rng,
            now: 0,
            seq: 0,
            faults,
            nodes,
            net: BinaryHeap::new(),
            messages: HashMap::new(),
            clients,
            txns: BTreeMap::new(),
            replies: BTreeMap::new(),
            applied: BTreeSet::new(),
            applied_over: BTreeMap::new(),
            decided: BTreeMap::new(),
            accepts: BTreeMap::new(),
            f: 0,
            stats: Stats::default(),
        }
    }

    pub(crate) fn send(&mut self, to: NodeId, msg: Message, faulty: bool) {
        let f = self.faults;
        if faulty && self.rng.f64() < f.drop {
            self.stats.dropped += 1;
            return;
        }
        let copies = if faulty && self.rng.f64() < f.dup {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let mut delay = 1 + self.rng.u64(0..=f.max_delay);
            if copy == 1 && self.rng.f64() < f.late_dup {
                // Arrives long after: its transaction is finished and, usually,
                // forgotten by then.
                delay += self.rng.u64(1000..4000);
                self.stats.late += 1;
            }
            self.seq += 1;
            self.messages.insert(self.seq, msg.clone());
            self.net
                .push(Reverse((self.now + delay, self.seq, to.0, self.seq)));
        }
    }

    pub(crate) fn start_transfer(&mut self, c: usize) {
        let mut nodes: Vec<u32> = (0..NODES).collect();
        self.rng.shuffle(&mut nodes);
        nodes.truncate(2 + self.rng.usize(0..2));
        self.start_transfer_on(c, &nodes);
    }

    /// A transfer from an account on `nodes[0]` to one on each other node, over the
    /// chain `nodes` (the decider last).
    pub(crate) fn start_transfer_on(&mut self, c: usize, nodes: &[u32]) -> TxnId {
        let mut writes = Vec::new();
        let mut states = Vec::new();
        for &n in nodes {
            let page = PageId(self.rng.u64(0..ACCOUNTS));
            let (version, data) = self.nodes[n as usize].cache[&page].clone();
            states.push((n, page, version, balance(&data)));
        }
        let payees = states.len() as i64 - 1;
        let amount = self.rng.i64(1..=10).min(states[0].3 / payees).max(0);
        for (i, &(n, page, version, bal)) in states.iter().enumerate() {
            let new = if i == 0 {
                bal - amount * payees
            } else {
                bal + amount
            };
            writes.push((
                NodeId(n),
                vec![PageWrite {
                    page,
                    expected: version,
                    data: new.to_le_bytes().to_vec().into(),
                }],
            ));
        }
        let client = &mut self.clients[c];
        let txn = TxnId(client.next);
        client.next += 1;
        client.current = Some((txn, self.now));
        let chain: Vec<NodeId> = nodes.iter().map(|&n| NodeId(n)).collect();
        let prepare = Prepare {
            txn,
            client: client.id,
            chain: chain.clone(),
            writes,
            acceptors: self.f,
        };
        self.txns.insert(txn, prepare.clone());
        self.stats.started += 1;
        // The client's own connection to the head: not subject to faults.
        self.send(chain[0], Message::Prepare(prepare), false);
        txn
    }

    pub(crate) fn step(&mut self, issue: bool, faults: bool) {
        self.now += 1;
        // Clients.
        for c in 0..self.clients.len() {
            if let Some((_, since)) = self.clients[c].current {
                if self.now - since > CLIENT_TIMEOUT {
                    self.clients[c].current = None;
                    self.stats.timed_out += 1;
                }
            }
            if issue && self.clients[c].current.is_none() && self.rng.f64() < 0.2 {
                self.start_transfer(c);
            }
        }
        // The network.
        while let Some(Reverse((at, _, to, key))) = self.net.peek().copied() {
            if at > self.now {
                break;
            }
            self.net.pop();
            let msg = self.messages.remove(&key).expect("message");
            let n = to as usize;
            if let Some(node) = self.nodes[n].node.as_mut() {
                self.stats.delivered += 1;
                let actions = node.handle(msg);
                self.execute(n, actions);
            }
        }
        for n in 0..NODES as usize {
            if self.nodes[n].node.is_none() {
                if self.now >= self.nodes[n].down_until {
                    self.recover(n);
                }
                continue;
            }
            if faults && self.rng.f64() < self.faults.crash {
                let down = self.rng.u64(5..100);
                self.crash(n, down);
                continue;
            }
            if self.rng.f64() < 0.4 {
                let all = self.nodes[n].pending.len();
                self.flush(n, all, true);
            }
            if self.now % TICK_EVERY == n as u64 {
                self.tick(n);
            }
        }
    }

    pub(crate) fn quiet(&self) -> bool {
        self.nodes.iter().all(|s| {
            s.node
                .as_ref()
                .is_some_and(|node| node.unfinished() == 0 && s.pending.is_empty())
        })
    }
}
