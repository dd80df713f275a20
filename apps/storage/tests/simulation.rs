//! Deterministic simulation of a storage cluster: several real [`Node`] state
//! machines over a simulated network driven by a seeded RNG — message loss,
//! duplication (some copies arriving thousands of steps late, after checkpoints
//! forgot their transaction), delay and reordering — with group-commit log flushes,
//! checkpoints that rotate the log, and crashes that lose unflushed records and
//! unsynced page writes. A bank workload of thousands of transfers runs on it; at the
//! end every node crashes and recovers once more, and the run checks:
//!
//! - **atomicity**: every transaction is applied on every node that writes, or on
//!   none; an applied transaction has a durable commit decision; no client is told
//!   both outcomes, and a client told `Committed` sees its writes everywhere;
//! - **no lost update**: no two transactions are applied over the same version of a
//!   page, and the bank's total is unchanged with no negative balance;
//! - **bounded state**: the transactions a node remembers and its log (records in
//!   the live segment) stay bounded over the whole run.
//!
//! Every run prints its seed and counts; a failure names the seed to replay.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};

use pipewright_storage::bank::Rng;
use pipewright_storage::log::{PageWrite, Record, Verdict};
use pipewright_storage::protocol::{
    acceptors_of, recovery_quorum, Action, Ballot, Message, Node, NodeConfig, Outcome, Prepare,
    RecordId,
};
use pipewright_storage::{ClientId, NodeId, PageId, TxnId, Version};

const NODES: u32 = 3;
const ACCOUNTS: u64 = 6;
const INITIAL: i64 = 1000;
const CLIENTS: u64 = 6;
const TICK_EVERY: u64 = 10;
const RESOLVE_AFTER: u64 = 60;
const CLIENT_TIMEOUT: u64 = 400;
const CHECKPOINT_RECORDS: usize = 150;
/// Ticks a node in doubt waits for its decider before a recovery ballot (F ≥ 1).
const PATIENCE: u32 = 8;

fn config() -> NodeConfig {
    NodeConfig {
        patience: PATIENCE,
        ..NodeConfig::default()
    }
}

#[derive(Clone, Copy)]
struct Faults {
    drop: f64,
    dup: f64,
    late_dup: f64,
    max_delay: u64,
    crash: f64,
}

type Page = (Version, Vec<u8>);

struct SimNode {
    node: Option<Node>,
    durable: Vec<Record>,
    pending: VecDeque<(RecordId, Record)>,
    /// The page file as synced, and the writes since (each may or may not survive a
    /// crash).
    synced: BTreeMap<PageId, Page>,
    unsynced: BTreeMap<PageId, Vec<Page>>,
    /// The page file as the running node sees it.
    cache: BTreeMap<PageId, Page>,
    prepared_since: HashMap<TxnId, u64>,
    since_checkpoint: usize,
    down_until: u64,
}

struct Client {
    id: ClientId,
    next: u64,
    /// The transaction in flight, when it was sent, and its writes.
    current: Option<(TxnId, u64)>,
}

#[derive(Default)]
struct Stats {
    started: u64,
    committed: u64,
    aborted: u64,
    timed_out: u64,
    delivered: u64,
    dropped: u64,
    duplicated: u64,
    late: u64,
    crashes: u64,
    checkpoints: u64,
    max_remembered: usize,
    max_log_records: usize,
}

struct Sim {
    rng: Rng,
    now: u64,
    seq: u64,
    faults: Faults,
    nodes: Vec<SimNode>,
    net: BinaryHeap<Reverse<(u64, u64, u32, MessageKey)>>,
    messages: HashMap<u64, Message>,
    clients: Vec<Client>,
    // Ghost state for the checks.
    txns: BTreeMap<TxnId, Prepare>,
    replies: BTreeMap<TxnId, BTreeSet<bool>>,
    applied: BTreeSet<(u32, TxnId)>,
    applied_over: BTreeMap<(u32, PageId, Version), TxnId>,
    decided: BTreeMap<TxnId, Verdict>,
    /// Durable acceptances: (txn, ballot, verdict) → acceptors.
    accepts: BTreeMap<(TxnId, Ballot, Verdict), BTreeSet<u32>>,
    /// F of every transaction started.
    f: u8,
    stats: Stats,
}

/// Messages in the heap are keyed by an id (a `Message` has no total order worth
/// relying on for determinism beyond the sequence number).
type MessageKey = u64;

fn balance(data: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    i64::from_le_bytes(b)
}

impl Sim {
    fn new(seed: u64, faults: Faults) -> Self {
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

    fn send(&mut self, to: NodeId, msg: Message, faulty: bool) {
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

    fn execute(&mut self, n: usize, actions: Vec<Action>) {
        let faulty = true;
        for action in actions {
            match action {
                Action::Send { to, msg } => {
                    if to.0 as usize == n {
                        self.send(to, msg, false);
                    } else {
                        self.send(to, msg, faulty);
                    }
                }
                Action::Persist { id, record } => {
                    self.nodes[n].pending.push_back((id, record));
                }
                Action::Apply { txn, writes } => {
                    assert_eq!(
                        self.decided.get(&txn),
                        Some(&Verdict::Commit),
                        "{txn} applied on node {n} without a durable commit decision"
                    );
                    for w in writes {
                        let page = (w.expected + 1, w.data.clone());
                        let sim = &mut self.nodes[n];
                        sim.cache.insert(w.page, page.clone());
                        sim.unsynced.entry(w.page).or_default().push(page);
                        let key = (n as u32, w.page, w.expected);
                        if let Some(&other) = self.applied_over.get(&key) {
                            assert_eq!(
                                other, txn,
                                "lost update: {other} and {txn} both applied over {key:?}"
                            );
                        }
                        self.applied_over.insert(key, txn);
                    }
                    self.applied.insert((n as u32, txn));
                }
                Action::Reply { txn, outcome, .. } => {
                    if matches!(outcome, Outcome::Forgotten { .. }) {
                        // Not a verdict (the node cannot tell): nothing to check.
                        continue;
                    }
                    let committed = outcome == Outcome::Committed;
                    self.replies.entry(txn).or_default().insert(committed);
                    for c in &mut self.clients {
                        if c.current.is_some_and(|(t, _)| t == txn) {
                            c.current = None;
                            if committed {
                                self.stats.committed += 1;
                            } else {
                                self.stats.aborted += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Make `count` pending records of node `n` durable (a checkpoint first syncs
    /// the page file and starts a new segment); tell the node if `notify`.
    fn flush(&mut self, n: usize, count: usize, notify: bool) {
        let mut last = None;
        for _ in 0..count {
            let Some((id, record)) = self.nodes[n].pending.pop_front() else {
                break;
            };
            let sim = &mut self.nodes[n];
            match &record {
                Record::Checkpoint(_) => {
                    sim.synced = sim.cache.clone();
                    sim.unsynced.clear();
                    sim.durable.clear();
                    sim.since_checkpoint = 0;
                    self.stats.checkpoints += 1;
                }
                Record::Decision { txn, verdict, .. } => {
                    let old = self.decided.insert(*txn, *verdict);
                    assert!(
                        old.is_none() || old == Some(*verdict),
                        "{txn} decided both ways"
                    );
                }
                Record::Accept {
                    txn,
                    ballot,
                    verdict,
                    ..
                } => {
                    sim.since_checkpoint += 1;
                    // Chosen: ballot 0 (the decider's) on every acceptor, a recovery
                    // ballot on a majority of them.
                    let voters = self.accepts.entry((*txn, *ballot, *verdict)).or_default();
                    voters.insert(n as u32);
                    let p = &self.txns[txn];
                    let acceptors = acceptors_of(&p.chain, p.acceptors).len();
                    let need = if ballot.round == 0 {
                        acceptors
                    } else {
                        recovery_quorum(acceptors)
                    };
                    if voters.len() >= need {
                        let old = self.decided.insert(*txn, *verdict);
                        assert!(
                            old.is_none() || old == Some(*verdict),
                            "{txn} decided both ways (acceptors chose {verdict:?})"
                        );
                    }
                }
                _ => sim.since_checkpoint += 1,
            }
            sim.durable.push(record);
            last = Some(id);
        }
        let max_log = self.nodes[n].durable.len();
        self.stats.max_log_records = self.stats.max_log_records.max(max_log);
        if let (Some(id), true) = (last, notify) {
            let actions = self.nodes[n].node.as_mut().unwrap().persisted(id);
            self.execute(n, actions);
        }
    }

    fn crash(&mut self, n: usize, down_for: u64) {
        // Some of the pending records reached the disk, unacknowledged.
        let pending = self.nodes[n].pending.len();
        let reached = self.rng.usize(0..=pending);
        self.flush(n, reached, false);
        let rng = &mut self.rng;
        let sim = &mut self.nodes[n];
        sim.node = None;
        sim.pending.clear();
        sim.prepared_since.clear();
        // Each page keeps its synced image or one of the writes since.
        let mut disk = sim.synced.clone();
        for (page, writes) in std::mem::take(&mut sim.unsynced) {
            let pick = rng.usize(0..=writes.len());
            if pick > 0 {
                disk.insert(page, writes[pick - 1].clone());
            }
        }
        sim.synced = disk.clone();
        sim.cache = disk;
        sim.down_until = self.now + down_for;
        self.stats.crashes += 1;
    }

    fn recover(&mut self, n: usize) {
        let sim = &mut self.nodes[n];
        let versions = sim.cache.iter().map(|(&p, &(v, _))| (p, v)).collect();
        let (node, actions) =
            Node::recover(NodeId(n as u32), config(), versions, sim.durable.clone())
                .expect("recovery");
        sim.node = Some(node);
        self.execute(n, actions);
    }

    fn tick(&mut self, n: usize) {
        let now = self.now;
        let sim = &mut self.nodes[n];
        let Some(node) = sim.node.as_mut() else {
            return;
        };
        let mut actions = node.tick();
        let mut waiting = BTreeSet::new();
        actions.retain(|a| match a {
            Action::Send {
                msg: Message::Resolve { txn, .. },
                ..
            } => {
                waiting.insert(*txn);
                let since = *sim.prepared_since.entry(*txn).or_insert(now);
                now - since >= RESOLVE_AFTER
            }
            _ => true,
        });
        sim.prepared_since.retain(|t, _| waiting.contains(t));
        if sim.since_checkpoint >= CHECKPOINT_RECORDS && !node.checkpoint_in_progress() {
            actions.extend(node.checkpoint());
        }
        let remembered = node.remembered();
        self.stats.max_remembered = self.stats.max_remembered.max(remembered);
        self.execute(n, actions);
    }

    fn start_transfer(&mut self, c: usize) {
        let mut nodes: Vec<u32> = (0..NODES).collect();
        self.rng.shuffle(&mut nodes);
        nodes.truncate(2 + self.rng.usize(0..2));
        self.start_transfer_on(c, &nodes);
    }

    /// A transfer from an account on `nodes[0]` to one on each other node, over the
    /// chain `nodes` (the decider last).
    fn start_transfer_on(&mut self, c: usize, nodes: &[u32]) -> TxnId {
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
                    data: new.to_le_bytes().to_vec(),
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

    fn step(&mut self, issue: bool, faults: bool) {
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

    fn quiet(&self) -> bool {
        self.nodes.iter().all(|s| {
            s.node
                .as_ref()
                .is_some_and(|node| node.unfinished() == 0 && s.pending.is_empty())
        })
    }

    fn check(&self, label: &str) {
        // Client answers.
        for (txn, answers) in &self.replies {
            assert_eq!(answers.len(), 1, "{label}: {txn} told both outcomes");
        }
        // Atomicity: applied on every writing node or on none.
        for (txn, p) in &self.txns {
            let writers: Vec<u32> = p
                .writes
                .iter()
                .filter(|(_, w)| !w.is_empty())
                .map(|(n, _)| n.0)
                .collect();
            let applied: Vec<u32> = writers
                .iter()
                .copied()
                .filter(|&n| self.applied.contains(&(n, *txn)))
                .collect();
            assert!(
                applied.is_empty() || applied == writers,
                "{label}: {txn} applied on {applied:?} of {writers:?}"
            );
            let committed = self.decided.get(txn) == Some(&Verdict::Commit);
            assert_eq!(
                !applied.is_empty(),
                committed,
                "{label}: {txn} decided {:?}, applied on {applied:?}",
                self.decided.get(txn)
            );
            if let Some(answers) = self.replies.get(txn) {
                assert_eq!(
                    answers.contains(&true),
                    committed,
                    "{label}: {txn} answered {answers:?}, decided {:?}",
                    self.decided.get(txn)
                );
            }
        }
        // Every page holds its newest committed write; the bank's total is intact.
        let mut total = 0;
        let mut min = i64::MAX;
        for n in 0..NODES {
            for p in 0..ACCOUNTS {
                let page = PageId(p);
                let (version, data) = &self.nodes[n as usize].cache[&page];
                let newest = self
                    .applied_over
                    .range((n, page, 0)..=(n, page, Version::MAX))
                    .next_back()
                    .map(|(&(_, _, v), _)| v + 1)
                    .unwrap_or(1);
                assert_eq!(
                    *version, newest,
                    "{label}: node {n} {page} at version {version}, newest commit {newest}"
                );
                let bal = balance(data);
                total += bal;
                min = min.min(bal);
            }
        }
        assert_eq!(
            total,
            INITIAL * (NODES as i64) * ACCOUNTS as i64,
            "{label}: money created or destroyed"
        );
        assert!(min >= 0, "{label}: negative balance {min}");
    }
}

fn run(seed: u64, faults: Faults, steps: u64) -> Stats {
    run_f(seed, faults, steps, 0)
}

fn run_f(seed: u64, faults: Faults, steps: u64, f: u8) -> Stats {
    let mut sim = Sim::new(seed, faults);
    sim.f = f;
    for _ in 0..steps {
        sim.step(true, true);
    }
    // Let in-flight work finish without new faults (late duplicates still arrive).
    sim.faults.drop = 0.0;
    sim.faults.dup = 0.0;
    let mut settle = 0;
    while !sim.quiet() && settle < 20_000 {
        sim.step(false, false);
        settle += 1;
    }
    assert!(sim.quiet(), "seed {seed}: the cluster did not settle");
    // Crash every node once more (unsynced page writes may be lost), recover, settle.
    for n in 0..NODES as usize {
        sim.crash(n, 1);
    }
    let mut settle = 0;
    while (!sim.quiet() || !sim.net.is_empty()) && settle < 20_000 {
        sim.step(false, false);
        settle += 1;
    }
    assert!(
        sim.quiet(),
        "seed {seed}: the cluster did not settle after the restart"
    );
    sim.check(&format!("seed {seed}"));
    let remembered: Vec<usize> = sim
        .nodes
        .iter()
        .map(|s| s.node.as_ref().unwrap().remembered())
        .collect();
    let s = &sim.stats;
    println!(
        "seed {seed}: {} steps, {} transfers ({} committed, {} aborted, {} timed out), \
         {} messages delivered, {} dropped, {} duplicated ({} late), {} crashes, \
         {} checkpoints; max remembered txns per node {}, max log records {}, \
         remembered at the end {remembered:?}",
        sim.now,
        s.started,
        s.committed,
        s.aborted,
        s.timed_out,
        s.delivered,
        s.dropped,
        s.duplicated,
        s.late,
        s.crashes,
        s.checkpoints,
        s.max_remembered,
        s.max_log_records,
    );
    // Bounded state: a node remembers at most the transactions of ~2 checkpoint
    // intervals (each ≥ CHECKPOINT_RECORDS records) plus those in flight.
    let bound = 3 * CHECKPOINT_RECORDS + 8 * CLIENTS as usize;
    assert!(
        s.max_remembered <= bound,
        "seed {seed}: a node remembered {} transactions (bound {bound})",
        s.max_remembered
    );
    assert!(
        s.max_log_records <= 2 * bound,
        "seed {seed}: a log segment grew to {} records",
        s.max_log_records
    );
    std::mem::take(&mut sim.stats)
}

const FAULTS: Faults = Faults {
    drop: 0.03,
    dup: 0.05,
    late_dup: 0.3,
    max_delay: 15,
    crash: 0.0008,
};

#[test]
fn bank_over_a_lossy_network_with_crashes_and_checkpoints() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED")],
        Err(_) => (1..=4).collect(),
    };
    let mut total = Stats::default();
    for seed in seeds {
        let s = run(seed, FAULTS, 20_000);
        total.started += s.started;
        total.committed += s.committed;
        total.crashes += s.crashes;
        total.checkpoints += s.checkpoints;
        assert!(s.committed > 300, "seed {seed}: too few commits");
        assert!(s.checkpoints > 10, "seed {seed}: too few checkpoints");
    }
    println!(
        "simulation: {} transfers, {} committed, {} crashes, {} checkpoints",
        total.started, total.committed, total.crashes, total.checkpoints
    );
}

#[test]
fn long_run_without_faults_keeps_memory_and_log_bounded() {
    let faults = Faults {
        drop: 0.0,
        dup: 0.0,
        late_dup: 0.0,
        max_delay: 3,
        crash: 0.0,
    };
    let s = run(99, faults, 40_000);
    assert!(s.committed > 3000, "too few commits: {}", s.committed);
}

/// F = 1 under the same faults (loss, duplication with very late copies, crashes of
/// any node, deciders included, at random steps, checkpoints): atomicity,
/// agreement (no transaction chosen both ways by deciders and acceptors), no lost
/// update, bounded state.
#[test]
fn bank_with_one_acceptor_over_a_lossy_network_with_crashes() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED")],
        Err(_) => (11..=12).collect(),
    };
    for seed in seeds {
        let s = run_f(seed, FAULTS, 20_000, 1);
        assert!(s.committed > 300, "seed {seed}: too few commits");
    }
}

/// F = 1, chain 0 → 1 → 2 (decider 2, acceptor 1): the decider is killed at every
/// step of one transfer's life (losing a random part of its unflushed log) and stays
/// down. Nodes 0 and 1 settle the transfer without it; a transfer over their pages
/// then commits while it is still down; after it restarts, every node agrees
/// (atomicity, agreement, no lost update, the bank's total).
#[test]
fn decider_killed_at_every_step_the_others_settle_without_it() {
    let quiet_without = |sim: &Sim| {
        (0..2).all(|n| {
            let s = &sim.nodes[n];
            s.node
                .as_ref()
                .is_some_and(|node| node.unfinished() == 0 && s.pending.is_empty())
        })
    };
    let (mut committed, mut aborted) = (0, 0);
    for kill_at in 0..80u64 {
        let faults = Faults {
            drop: 0.0,
            dup: 0.0,
            late_dup: 0.0,
            max_delay: 2,
            crash: 0.0,
        };
        let mut sim = Sim::new(1000 + kill_at, faults);
        sim.f = 1;
        let first = sim.start_transfer_on(0, &[0, 1, 2]);
        for _ in 0..kill_at {
            sim.step(false, false);
        }
        sim.crash(2, 1 << 40);
        let mut steps = 0;
        while !quiet_without(&sim) && steps < 20_000 {
            sim.step(false, false);
            steps += 1;
        }
        assert!(
            quiet_without(&sim),
            "killed at step {kill_at}: nodes 0 and 1 did not settle {first} without the decider"
        );
        match sim.decided.get(&first) {
            Some(Verdict::Commit) => committed += 1,
            _ => aborted += 1,
        }
        // The pages are writable again while the decider is down.
        let second = sim.start_transfer_on(1, &[0, 1]);
        let mut steps = 0;
        while !sim.replies.contains_key(&second) && steps < 20_000 {
            sim.step(false, false);
            steps += 1;
        }
        assert_eq!(
            sim.replies.get(&second),
            Some(&BTreeSet::from([true])),
            "killed at step {kill_at}: a transfer on nodes 0 and 1 did not commit while the decider is down"
        );
        // The decider comes back and agrees.
        sim.nodes[2].down_until = sim.now;
        let mut steps = 0;
        while (!sim.quiet() || !sim.net.is_empty()) && steps < 20_000 {
            sim.step(false, false);
            steps += 1;
        }
        assert!(
            sim.quiet(),
            "killed at step {kill_at}: no quiet after the restart"
        );
        sim.check(&format!("killed at step {kill_at}"));
    }
    println!(
        "decider killed at steps 0..80: the first transfer committed {committed} times, \
         aborted {aborted} times, always settled without the decider"
    );
    assert!(
        committed > 0 && aborted > 0,
        "the sweep should cover both outcomes"
    );
}
