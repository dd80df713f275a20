//! `Node::joinable` and `Node::unfinished` (kept up to date incrementally, O(1))
//! against their O(n) definitions over the transactions' statuses, along random schedules: random
//! transactions on random chains (with and without acceptors), messages delivered in
//! random order, lost or duplicated, log records made durable in random-sized steps,
//! ticks, checkpoints and crashes with recovery from the durable records.

use std::collections::VecDeque;

use pipewright_storage::log::{PageWrite, Record};
use pipewright_storage::protocol::{
    Action, Message, Node, NodeConfig, Prepare, RecordId, TxnStatus,
};
use pipewright_storage::{ClientId, NodeId, PageId, TxnId};
use proptest::prelude::*;

const NODES: u32 = 3;

/// One step of a schedule.
#[derive(Clone, Debug)]
enum Step {
    /// Deliver the in-flight message at this index (modulo), or lose it, or deliver
    /// it and keep a duplicate in flight.
    Deliver(usize, u8),
    /// Make this many of a node's pending records durable.
    Persist(u32, usize),
    Tick(u32),
    Checkpoint(u32),
    /// Crash a node (its pending records are lost) and recover it from its durable log.
    Crash(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<usize>(), 0u8..10).prop_map(|(i, how)| Step::Deliver(i, how)),
        4 => (0..NODES, 1usize..4).prop_map(|(n, k)| Step::Persist(n, k)),
        1 => (0..NODES).prop_map(Step::Tick),
        1 => (0..NODES).prop_map(Step::Checkpoint),
        1 => (0..NODES).prop_map(Step::Crash),
    ]
}

fn prepare(id: u64, chain: Vec<NodeId>, pages: &[u64], acceptors: u8) -> Prepare {
    let writes = chain
        .iter()
        .zip(pages)
        .map(|(&n, &p)| {
            let w = PageWrite {
                page: PageId(p),
                expected: 0,
                data: vec![id as u8].into(),
            };
            (n, vec![w])
        })
        .collect();
    Prepare {
        txn: TxnId(id),
        client: ClientId(id % 2),
        chain,
        writes,
        acceptors,
    }
}

fn txns() -> impl Strategy<Value = Vec<Prepare>> {
    prop::collection::vec(
        (
            Just(vec![0u32, 1, 2]).prop_shuffle(),
            2usize..=3,
            prop::collection::vec(0u64..3, 3),
            0u8..2,
        ),
        1..6,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (order, len, pages, f))| {
                let chain: Vec<NodeId> = order[..len].iter().map(|&n| NodeId(n)).collect();
                let f = if len == 3 { f } else { 0 };
                prepare(i as u64 + 1, chain, &pages, f)
            })
            .collect()
    })
}

struct World {
    nodes: Vec<Node>,
    durable: Vec<Vec<Record>>,
    pending: Vec<VecDeque<(RecordId, Record)>>,
    net: Vec<(NodeId, Message)>,
    ids: Vec<TxnId>,
}

impl World {
    fn run(&mut self, n: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, msg } => self.net.push((to, msg)),
                Action::Persist { id, record } => self.pending[n].push_back((id, record)),
                Action::Apply { .. } | Action::Reply { .. } => {}
            }
        }
    }

    /// The O(n) definition, over the public statuses.
    fn by_status(&self, n: usize) -> usize {
        self.ids
            .iter()
            .filter(|&&t| {
                matches!(
                    self.nodes[n].status(t),
                    TxnStatus::Preparing
                        | TxnStatus::Replicating
                        | TxnStatus::Deciding
                        | TxnStatus::Refusing
                        | TxnStatus::Completing
                )
            })
            .count()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn joinable_and_unfinished_match_their_definitions_along_any_schedule(
        txns in txns(),
        steps in prop::collection::vec(step(), 0..120),
    ) {
        let config = NodeConfig { patience: 2, ..NodeConfig::default() };
        let mut w = World {
            nodes: (0..NODES)
                .map(|i| Node::new(NodeId(i), config, Default::default()))
                .collect(),
            durable: vec![Vec::new(); NODES as usize],
            pending: vec![VecDeque::new(); NODES as usize],
            net: Vec::new(),
            ids: txns.iter().map(|p| p.txn).collect(),
        };
        for p in txns {
            let head = p.chain[0];
            w.net.push((head, Message::Prepare(p)));
        }
        for s in steps {
            match s {
                Step::Deliver(i, how) => {
                    if w.net.is_empty() {
                        continue;
                    }
                    let (to, msg) = w.net.swap_remove(i % w.net.len());
                    if how == 0 {
                        continue; // lost
                    }
                    if how == 1 {
                        w.net.push((to, msg.clone())); // duplicated
                    }
                    let n = to.0 as usize;
                    let out = w.nodes[n].handle(msg);
                    w.run(n, out);
                }
                Step::Persist(n, k) => {
                    let n = n as usize;
                    let mut last = None;
                    for _ in 0..k {
                        let Some((id, record)) = w.pending[n].pop_front() else { break };
                        w.durable[n].push(record);
                        last = Some(id);
                    }
                    if let Some(id) = last {
                        let out = w.nodes[n].persisted(id);
                        w.run(n, out);
                    }
                }
                Step::Tick(n) => {
                    let out = w.nodes[n as usize].tick();
                    w.run(n as usize, out);
                }
                Step::Checkpoint(n) => {
                    let out = w.nodes[n as usize].checkpoint();
                    w.run(n as usize, out);
                }
                Step::Crash(n) => {
                    let n = n as usize;
                    w.pending[n].clear();
                    let recovered = Node::recover(
                        NodeId(n as u32),
                        config,
                        Default::default(),
                        w.durable[n].clone(),
                    );
                    let Ok((node, out)) = recovered else { continue };
                    w.nodes[n] = node;
                    w.run(n, out);
                }
            }
            for n in 0..NODES as usize {
                prop_assert_eq!(w.nodes[n].joinable(), w.by_status(n), "node {}", n);
                let open = w.ids.iter().filter(|&&t| {
                    !matches!(w.nodes[n].status(t), TxnStatus::Unknown | TxnStatus::Finished(_))
                }).count();
                prop_assert_eq!(w.nodes[n].unfinished(), open, "node {}", n);
            }
        }
    }
}
