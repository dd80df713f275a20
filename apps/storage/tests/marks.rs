//! Low-water marks stay bounded: with 100,000 distinct clients (one transaction
//! each, as `storage txn` makes them) checkpoints stay small, their number follows
//! the log bytes written, and the log is truncated; every forgotten transaction stays
//! refused after its client's mark was folded into the floor (a proptest).

use std::collections::{BTreeMap, BTreeSet};

use pipewright_storage::log::{encode, PageWrite, Record};
use pipewright_storage::protocol::{Action, Message, Node, NodeConfig, Outcome, Prepare};
use pipewright_storage::{ClientId, NodeId, PageId, TxnId};
use proptest::prelude::*;

/// A single-node chain driven like its host: records encoded with the real log
/// format, a checkpoint once `checkpoint_bytes` of other records were written (a
/// checkpoint record starts a new segment: the log is truncated to it).
struct Host {
    node: Node,
    checkpoint_bytes: usize,
    segment: Vec<u8>,
    since_checkpoint: usize,
    appended: u64,
    checkpoints: u64,
    max_checkpoint: usize,
    checkpoint_total: u64,
    max_segment: usize,
    replies: Vec<(TxnId, Outcome)>,
    applied: Vec<TxnId>,
}

impl Host {
    fn new(config: NodeConfig, checkpoint_bytes: usize) -> Self {
        Self {
            node: Node::new(NodeId(1), config, BTreeMap::new()),
            checkpoint_bytes,
            segment: Vec::new(),
            since_checkpoint: 0,
            appended: 0,
            checkpoints: 0,
            max_checkpoint: 0,
            checkpoint_total: 0,
            max_segment: 0,
            replies: Vec::new(),
            applied: Vec::new(),
        }
    }

    fn run(&mut self, mut todo: Vec<Action>) {
        todo.reverse();
        while let Some(action) = todo.pop() {
            match action {
                Action::Persist { id, record } => {
                    let checkpoint = matches!(record, Record::Checkpoint(_));
                    let mut bytes = Vec::new();
                    let len = encode(&record, &mut bytes).expect("a record fits a frame");
                    self.appended += len as u64;
                    if checkpoint {
                        self.checkpoints += 1;
                        self.max_checkpoint = self.max_checkpoint.max(len);
                        self.checkpoint_total += len as u64;
                        self.segment = bytes;
                    } else {
                        self.since_checkpoint += len;
                        self.segment.extend_from_slice(&bytes);
                    }
                    self.max_segment = self.max_segment.max(self.segment.len());
                    let mut more = self.node.persisted(id);
                    more.reverse();
                    todo.extend(more);
                }
                Action::Reply { txn, outcome, .. } => self.replies.push((txn, outcome)),
                Action::Apply { txn, .. } => self.applied.push(txn),
                Action::Send { .. } => unreachable!("a single-node chain sends nothing"),
            }
        }
        if self.since_checkpoint >= self.checkpoint_bytes && !self.node.checkpoint_in_progress() {
            self.since_checkpoint = 0;
            let actions = self.node.checkpoint();
            self.run(actions);
        }
    }

    fn prepare(&mut self, txn: TxnId, client: ClientId, page: u64, expected: u64) {
        let p = Prepare {
            txn,
            client,
            chain: vec![NodeId(1)],
            writes: vec![(
                NodeId(1),
                vec![PageWrite {
                    page: PageId(page),
                    expected,
                    data: vec![1; 64].into(),
                }],
            )],
            acceptors: 0,
        };
        let actions = self.node.handle(Message::Prepare(p));
        self.run(actions);
    }
}

const CLIENTS: u64 = 100_000;
const CHECKPOINT_BYTES: usize = 16 << 10;

#[test]
fn a_hundred_thousand_clients_keep_checkpoints_small_and_the_log_truncated() {
    let mut host = Host::new(NodeConfig::default(), CHECKPOINT_BYTES);
    let mut rng = fastrand::Rng::with_seed(17);
    let mut ids = Vec::new();
    let mut retried = 0u64;
    for i in 0..CLIENTS {
        // Each client a random id and a random first transaction id, as clients pick.
        let (client, mut txn) = (ClientId(rng.u64(1..)), TxnId(rng.u64(1..1 << 62)));
        let page = i % 64;
        let expected = host.node.version(PageId(page));
        host.prepare(txn, client, page, expected);
        // Refused at the head as below its floor: nothing started, so the client
        // sends it again with an id above the floor (as `StorageClient::commit`).
        if let Some((_, Outcome::Forgotten { floor, .. })) = host.replies.last() {
            retried += 1;
            txn = TxnId(floor.0 + 1 + rng.u64(0..1 << 40));
            host.prepare(txn, client, page, expected);
        }
        ids.push((client, txn));
    }
    let committed = host
        .replies
        .iter()
        .filter(|(_, o)| *o == Outcome::Committed)
        .count() as u64;
    let (appended, checkpoints) = (host.appended, host.checkpoints);
    println!(
        "{CLIENTS} clients: {committed} committed, {appended} log bytes appended, {checkpoints} checkpoints \
         (largest {} bytes), largest segment {} bytes, {} marks kept, floor {}",
        host.max_checkpoint,
        host.max_segment,
        host.node.clients_with_marks(),
        host.node.floor()
    );
    // Every transaction commits, at the latest when sent again above the floor.
    assert_eq!(committed, CLIENTS);
    println!(
        "{retried} clients were refused once at the head (their random first id below the floor)"
    );
    // Checkpoints follow the log bytes written (not one per append once the marks
    // outgrow the interval): at most one per `CHECKPOINT_BYTES` of other records.
    let other_bytes = appended - host.checkpoint_total;
    assert!(
        checkpoints <= other_bytes / CHECKPOINT_BYTES as u64 + 1,
        "{checkpoints} checkpoints for {other_bytes} bytes of other records"
    );
    assert!(checkpoints >= other_bytes / (2 * CHECKPOINT_BYTES as u64));
    // Marks of the clients of the last `mark_horizon` (+ 2) intervals only: the
    // checkpoint stays within a few intervals' worth of records, and so does the
    // log on disk (one segment: a checkpoint and one interval).
    let horizon = u64::from(NodeConfig::default().mark_horizon) + 2;
    let txns_per_interval = (CLIENTS * CHECKPOINT_BYTES as u64).div_ceil(other_bytes) + 1;
    assert!(
        (host.node.clients_with_marks() as u64) <= (horizon + 1) * txns_per_interval,
        "{} marks kept",
        host.node.clients_with_marks()
    );
    assert!(
        host.max_checkpoint <= 2 * CHECKPOINT_BYTES,
        "a checkpoint of {} bytes",
        host.max_checkpoint
    );
    assert!(host.max_segment <= 4 * CHECKPOINT_BYTES);
    assert!(
        appended > 100 * host.max_segment as u64,
        "the log was not truncated"
    );

    // Every forgotten transaction stays refused: late copies of the first clients'
    // transactions (their marks long folded into the floor) commit nothing.
    host.replies.clear();
    host.applied.clear();
    for &(client, txn) in &ids[..1000] {
        host.prepare(txn, client, 0, host.node.version(PageId(0)));
    }
    assert!(host.applied.is_empty(), "a late copy committed");
    assert_eq!(host.replies.len(), 1000);
    assert!(host
        .replies
        .iter()
        .all(|(_, o)| matches!(o, Outcome::Forgotten { .. })));
    // A new client above the floor commits.
    host.replies.clear();
    let floor = host.node.floor();
    let expected = host.node.version(PageId(0));
    host.prepare(TxnId(floor.0 + 1), ClientId(1), 0, expected);
    assert_eq!(host.replies, vec![(TxnId(floor.0 + 1), Outcome::Committed)]);
}

#[derive(Clone, Debug)]
enum Op {
    /// Client `c` starts its next transaction (ids increase per client by `gap`).
    Fresh {
        c: u8,
        gap: u8,
    },
    /// A late copy of the `n`-th transaction started so far.
    Late {
        n: usize,
    },
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 1u8..4).prop_map(|(c, gap)| Op::Fresh { c, gap }),
        2 => any::<usize>().prop_map(|n| Op::Late { n }),
        2 => Just(Op::Checkpoint),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the interleaving of transactions, checkpoints (which fold idle
    /// clients' marks into the floor at a horizon of one checkpoint) and late copies:
    /// no transaction is applied twice, and a transaction refused as late never
    /// applies later.
    #[test]
    fn late_copies_never_apply_again(ops in proptest::collection::vec(op(), 1..120)) {
        let config = NodeConfig { mark_horizon: 1, ..NodeConfig::default() };
        let mut host = Host::new(config, usize::MAX);
        let mut next: BTreeMap<u8, u64> = BTreeMap::new();
        let mut started: Vec<(ClientId, TxnId)> = Vec::new();
        // Refused as late, with how many applies had happened then.
        let mut refused: Vec<(TxnId, usize)> = Vec::new();
        for op in ops {
            match op {
                Op::Fresh { c, gap } => {
                    // Client ids interleave their transaction ids, so folding one
                    // client's mark into the floor covers others' ids too.
                    let id = next.entry(c).or_insert(u64::from(c));
                    *id += u64::from(gap) * 8;
                    let (client, txn) = (ClientId(u64::from(c) + 1), TxnId(*id));
                    // Each client writes its own page, at its current version.
                    let page = u64::from(c);
                    host.prepare(txn, client, page, host.node.version(PageId(page)));
                    started.push((client, txn));
                }
                Op::Late { n } if !started.is_empty() => {
                    let (client, txn) = started[n % started.len()];
                    // Expecting the current version: a copy that is not refused as
                    // late would commit again.
                    let page = client.0 - 1;
                    host.prepare(txn, client, page, host.node.version(PageId(page)));
                }
                Op::Late { .. } => {}
                Op::Checkpoint => {
                    let actions = host.node.checkpoint();
                    host.run(actions);
                }
            }
            for (txn, outcome) in host.replies.drain(..) {
                if let Outcome::Forgotten { .. } = outcome {
                    refused.push((txn, host.applied.len()));
                }
            }
        }
        let applied = host.applied.len();
        let distinct: BTreeSet<TxnId> = host.applied.iter().copied().collect();
        prop_assert_eq!(applied, distinct.len(), "a transaction applied twice");
        // Refused as late: never applied after the refusal (fresh transactions whose
        // id fell below the floor were refused before anything happened).
        for (txn, at) in refused {
            prop_assert!(!host.applied[at..].contains(&txn), "refused, then applied");
        }
    }
}

#[test]
fn the_floor_rises_only_once_its_checkpoint_is_durable() {
    // An answer given by a floor that a crash could take back could be contradicted
    // after the restart: the fold takes effect with the checkpoint's durability.
    let config = NodeConfig {
        mark_horizon: 1,
        ..NodeConfig::default()
    };
    let mut host = Host::new(config, usize::MAX);
    host.prepare(TxnId(500), ClientId(7), 0, 0);
    assert_eq!(host.replies, vec![(TxnId(500), Outcome::Committed)]);
    // Two checkpoints forget transaction 500 (client 7's mark: 500), a third one
    // passes without the client.
    for _ in 0..3 {
        let actions = host.node.checkpoint();
        host.run(actions);
    }
    assert_eq!(host.node.clients_with_marks(), 1);
    assert_eq!(host.node.floor(), TxnId(0));
    // The next checkpoint folds the idle client's mark (idle for `mark_horizon`
    // checkpoints); not durable yet.
    let actions = host.node.checkpoint();
    let (id, record) = match &actions[..] {
        [Action::Persist { id, record }] => (*id, record.clone()),
        other => panic!("expected one checkpoint record, got {other:?}"),
    };
    let Record::Checkpoint(cp) = record else {
        panic!("not a checkpoint")
    };
    assert_eq!(cp.floor, TxnId(500));
    assert!(cp.marks.is_empty());
    assert_eq!(host.node.floor(), TxnId(0), "raised before durable");
    assert_eq!(host.node.clients_with_marks(), 1);
    // Another client's transaction 400 is still taken (the durable floor is 0) ...
    host.replies.clear();
    host.prepare(TxnId(400), ClientId(8), 1, 0);
    assert_eq!(host.replies, vec![(TxnId(400), Outcome::Committed)]);
    // ... and refused once the checkpoint is durable.
    let more = host.node.persisted(id);
    host.run(more);
    assert_eq!(host.node.floor(), TxnId(500));
    assert_eq!(host.node.clients_with_marks(), 0);
    host.replies.clear();
    host.prepare(TxnId(450), ClientId(9), 2, 0);
    assert_eq!(
        host.replies,
        vec![(
            TxnId(450),
            Outcome::Forgotten {
                node: NodeId(1),
                floor: TxnId(500)
            }
        )]
    );
}
