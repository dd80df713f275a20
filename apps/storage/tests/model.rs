//! Model check of the commit-chain protocol with `stateright`.
//!
//! The model drives the real [`Node`] state machines (no re-implementation) over a
//! network that loses, duplicates and reorders messages, with per-record log flushes
//! (a crash can fall between any two log writes), node crashes (volatile state and
//! unflushed log records lost; the page file survives, as with `kill -9`), restarts
//! through [`Node::recover`] from the durable records, retry timer ticks, and
//! checkpoints (a flushed checkpoint record replaces the durable log, as the new log
//! segment does; the node then forgets transactions finished at the previous one).
//! Faults are bounded by per-run budgets so the state space is finite.
//!
//! Sized to finish in well under 60 s in the default debug test profile on 2 cores;
//! each case prints its state count and time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use pipewright_storage::log::{PageWrite, Record, Verdict};
use pipewright_storage::protocol::{
    acceptors_of, recovery_quorum, Action, Ballot, Message, Node, NodeConfig, Outcome, Prepare,
    RecordId, TxnStatus,
};
use pipewright_storage::{ClientId, NodeId, PageId, TxnId, Version};
use stateright::{Checker, Model, Property};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Budget {
    crashes: u8,
    losses: u8,
    dups: u8,
    ticks: u8,
    checkpoints: u8,
}

struct ChainModel {
    nodes: usize,
    txns: Vec<Prepare>,
    faults: Budget,
    liveness: bool,
    /// A node that may crash once and never come back (the decider, for the
    /// "decisions survive the decider" cases); liveness then asks that every live
    /// node settles every transaction.
    killable: Option<usize>,
    /// Nodes whose retry timer may fire (all when empty).
    tickers: Vec<usize>,
    /// Nodes that may crash (and restart) within the crash budget (all when empty).
    crashers: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    nodes: Vec<Option<Node>>,
    durable: Vec<Vec<Record>>,
    pending: Vec<VecDeque<(RecordId, Record)>>,
    pages: Vec<BTreeMap<PageId, Version>>,
    net: BTreeSet<(NodeId, Message)>,
    budget: Budget,
    // Ghost (history) variables, for the properties.
    outcomes: BTreeSet<(usize, TxnId, Verdict)>,
    applied: BTreeSet<(usize, PageId, Version, TxnId)>,
    decided: BTreeSet<(TxnId, Verdict)>,
    replies: BTreeSet<(TxnId, bool)>,
    commit_before_decision: bool,
    unilateral_abort: bool,
    /// (node, txn) forgotten by a checkpoint.
    forgotten: BTreeSet<(usize, TxnId)>,
    revived: bool,
    /// Durable intents ever written: (node, txn).
    intents: BTreeSet<(usize, TxnId)>,
    /// Durable acceptances ever written: (txn, ballot, verdict, node).
    accepts: BTreeSet<(TxnId, Ballot, Verdict, usize)>,
    /// The killable node crashed for good.
    killed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Act {
    Deliver(NodeId, Message),
    Duplicate(NodeId, Message),
    Lose(NodeId, Message),
    Flush(usize),
    Crash(usize),
    Recover(usize),
    Tick(usize),
    Checkpoint(usize),
    Kill(usize),
}

fn config() -> NodeConfig {
    NodeConfig {
        lock_capacity: 4,
        // A node in doubt runs a recovery ballot at its first tick (F ≥ 1).
        patience: 0,
        ..NodeConfig::default()
    }
}

impl ChainModel {
    fn run(&self, s: &mut State, n: usize, actions: Vec<Action>, spontaneous: bool) {
        for action in actions {
            match action {
                Action::Send { to, msg } => {
                    s.net.insert((to, msg));
                }
                Action::Persist { id, record } => s.pending[n].push_back((id, record)),
                Action::Apply { txn, writes } => {
                    if !s.decided.contains(&(txn, Verdict::Commit)) {
                        s.commit_before_decision = true;
                    }
                    for w in writes {
                        s.pages[n].insert(w.page, w.expected + 1);
                        s.applied.insert((n, w.page, w.expected, txn));
                    }
                    s.outcomes.insert((n, txn, Verdict::Commit));
                }
                Action::Reply { txn, outcome, .. } => {
                    if matches!(outcome, Outcome::Forgotten { .. }) {
                        // Not a verdict (the node cannot tell): nothing to check.
                        continue;
                    }
                    let committed = outcome == Outcome::Committed;
                    if committed && !s.decided.contains(&(txn, Verdict::Commit)) {
                        s.commit_before_decision = true;
                    }
                    s.replies.insert((txn, committed));
                }
            }
        }
        let Some(node) = &s.nodes[n] else { return };
        for p in &self.txns {
            if s.forgotten.contains(&(n, p.txn)) && node.status(p.txn) != TxnStatus::Unknown {
                s.revived = true;
            }
            let verdict = match node.status(p.txn) {
                TxnStatus::Finished(v) => v,
                TxnStatus::Completing | TxnStatus::AwaitingAcks => Verdict::Commit,
                _ => continue,
            };
            if s.outcomes.insert((n, p.txn, verdict)) && spontaneous && verdict == Verdict::Abort {
                s.unilateral_abort = true;
            }
        }
    }

    fn deliver(&self, s: &mut State, to: NodeId, msg: Message) {
        let n = to.0 as usize;
        if let Some(node) = s.nodes[n].as_mut() {
            let actions = node.handle(msg);
            self.run(s, n, actions, false);
        }
    }

    fn settled(&self, s: &State) -> bool {
        self.txns.iter().all(|p| {
            // With the decider gone for good, nobody may be left to answer the client.
            (s.killed || s.replies.iter().any(|&(t, _)| t == p.txn))
                && s.nodes.iter().flatten().all(|node| {
                    matches!(
                        node.status(p.txn),
                        TxnStatus::Unknown | TxnStatus::Finished(_)
                    )
                })
        })
    }
}

impl Model for ChainModel {
    type State = State;
    type Action = Act;

    fn init_states(&self) -> Vec<State> {
        let n = self.nodes;
        let net = self
            .txns
            .iter()
            .map(|p| (p.chain[0], Message::Prepare(p.clone())))
            .collect();
        vec![State {
            nodes: (0..n)
                .map(|i| Some(Node::new(NodeId(i as u32), config(), BTreeMap::new())))
                .collect(),
            durable: vec![Vec::new(); n],
            pending: vec![VecDeque::new(); n],
            pages: vec![BTreeMap::new(); n],
            net,
            budget: self.faults,
            outcomes: BTreeSet::new(),
            applied: BTreeSet::new(),
            decided: BTreeSet::new(),
            replies: BTreeSet::new(),
            commit_before_decision: false,
            unilateral_abort: false,
            forgotten: BTreeSet::new(),
            revived: false,
            intents: BTreeSet::new(),
            accepts: BTreeSet::new(),
            killed: false,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Act>) {
        for (to, msg) in &s.net {
            out.push(Act::Deliver(*to, msg.clone()));
            if s.budget.dups > 0 {
                out.push(Act::Duplicate(*to, msg.clone()));
            }
            if s.budget.losses > 0 {
                out.push(Act::Lose(*to, msg.clone()));
            }
        }
        for (i, node) in s.nodes.iter().enumerate() {
            match node {
                Some(node) => {
                    if !s.pending[i].is_empty() {
                        out.push(Act::Flush(i));
                    }
                    let may_crash = self.crashers.is_empty() || self.crashers.contains(&i);
                    if may_crash && s.budget.crashes > 0 {
                        out.push(Act::Crash(i));
                    }
                    if self.killable == Some(i) && !s.killed {
                        out.push(Act::Kill(i));
                    }
                    let ticks = self.tickers.is_empty() || self.tickers.contains(&i);
                    if ticks && s.budget.ticks > 0 && !node.clone().tick().is_empty() {
                        out.push(Act::Tick(i));
                    }
                    // Only on a node whose log is flushed (fewer interleavings, same
                    // coverage: records queued after the checkpoint behave alike).
                    if s.budget.checkpoints > 0
                        && !node.checkpoint_in_progress()
                        && s.pending[i].is_empty()
                    {
                        out.push(Act::Checkpoint(i));
                    }
                }
                None if s.killed && self.killable == Some(i) => {}
                None => out.push(Act::Recover(i)),
            }
        }
    }

    fn next_state(&self, last: &State, action: Act) -> Option<State> {
        let mut s = last.clone();
        match action {
            Act::Deliver(to, msg) => {
                s.net.remove(&(to, msg.clone()));
                self.deliver(&mut s, to, msg);
            }
            Act::Duplicate(to, msg) => {
                s.budget.dups -= 1;
                self.deliver(&mut s, to, msg);
            }
            Act::Lose(to, msg) => {
                s.budget.losses -= 1;
                s.net.remove(&(to, msg));
            }
            Act::Flush(n) => {
                let (id, record) = s.pending[n].pop_front()?;
                match &record {
                    Record::Decision { txn, verdict, .. } => {
                        s.decided.insert((*txn, *verdict));
                    }
                    Record::Intent(i) => {
                        s.intents.insert((n, i.txn));
                    }
                    Record::Accept {
                        txn,
                        ballot,
                        verdict,
                        ..
                    } => {
                        s.accepts.insert((*txn, *ballot, *verdict, n));
                        // Chosen: ballot 0 (the decider's) on every acceptor, a
                        // recovery ballot on a majority of them.
                        if let Some(p) = self.txns.iter().find(|p| p.txn == *txn) {
                            let acceptors = acceptors_of(&p.chain, p.acceptors);
                            let votes = s
                                .accepts
                                .iter()
                                .filter(|a| (a.0, a.1, a.2) == (*txn, *ballot, *verdict))
                                .count();
                            let need = if ballot.round == 0 {
                                acceptors.len()
                            } else {
                                recovery_quorum(acceptors.len())
                            };
                            if votes >= need {
                                s.decided.insert((*txn, *verdict));
                            }
                        }
                    }
                    _ => {}
                }
                let checkpoint = matches!(record, Record::Checkpoint(_));
                if checkpoint {
                    // A new log segment; the older one is deleted.
                    s.durable[n].clear();
                }
                s.durable[n].push(record);
                let node = s.nodes[n].as_mut()?;
                let known: Vec<TxnId> = self
                    .txns
                    .iter()
                    .map(|p| p.txn)
                    .filter(|&t| node.status(t) != TxnStatus::Unknown)
                    .collect();
                let actions = node.persisted(id);
                if checkpoint {
                    for t in known {
                        if node.status(t) == TxnStatus::Unknown {
                            s.forgotten.insert((n, t));
                        }
                    }
                }
                self.run(&mut s, n, actions, false);
            }
            Act::Crash(n) => {
                s.budget.crashes -= 1;
                s.nodes[n] = None;
                s.pending[n].clear();
            }
            Act::Kill(n) => {
                s.killed = true;
                s.nodes[n] = None;
                s.pending[n].clear();
            }
            Act::Recover(n) => {
                let id = NodeId(n as u32);
                let records = s.durable[n].clone();
                let (node, actions) =
                    Node::recover(id, config(), s.pages[n].clone(), records).ok()?;
                s.nodes[n] = Some(node);
                self.run(&mut s, n, actions, true);
            }
            Act::Tick(n) => {
                s.budget.ticks -= 1;
                let actions = s.nodes[n].as_mut()?.tick();
                self.run(&mut s, n, actions, true);
            }
            Act::Checkpoint(n) => {
                s.budget.checkpoints -= 1;
                let actions = s.nodes[n].as_mut()?.checkpoint();
                self.run(&mut s, n, actions, false);
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut props = vec![
            Property::always("atomicity", |_, s: &State| {
                let committed = |t| {
                    s.outcomes
                        .iter()
                        .any(|&(_, x, v)| x == t && v == Verdict::Commit)
                        || s.replies.contains(&(t, true))
                };
                let aborted = |t| {
                    s.outcomes
                        .iter()
                        .any(|&(_, x, v)| x == t && v == Verdict::Abort)
                        || s.replies.contains(&(t, false))
                };
                s.outcomes
                    .iter()
                    .all(|&(_, t, _)| !(committed(t) && aborted(t)))
                    && s.replies
                        .iter()
                        .all(|&(t, _)| !(committed(t) && aborted(t)))
            }),
            Property::always(
                "commit applied or replied only after a durable decision",
                |_, s: &State| !s.commit_before_decision,
            ),
            Property::always("a yes-voter never aborts on its own", |_, s: &State| {
                !s.unilateral_abort
            }),
            Property::always(
                "agreement: no transaction is decided both ways",
                |_, s: &State| {
                    s.decided.iter().all(|&(t, v)| {
                        v == Verdict::Abort || !s.decided.contains(&(t, Verdict::Abort))
                    })
                },
            ),
            Property::always(
                "validity: a commit needs every chain node's durable intent",
                |m: &ChainModel, s: &State| {
                    let committed = |t: TxnId| {
                        s.outcomes
                            .iter()
                            .any(|&(_, x, v)| x == t && v == Verdict::Commit)
                            || s.replies.contains(&(t, true))
                            || s.decided.contains(&(t, Verdict::Commit))
                    };
                    m.txns.iter().all(|p| {
                        !committed(p.txn)
                            || p.chain
                                .iter()
                                .all(|n| s.intents.contains(&(n.0 as usize, p.txn)))
                    })
                },
            ),
            Property::always(
                "a forgotten transaction never comes back",
                |_, s: &State| !s.revived,
            ),
            Property::always("no lost update", |_, s: &State| {
                let keys: Vec<_> = s.applied.iter().map(|&(n, p, v, _)| (n, p, v)).collect();
                keys.windows(2).all(|w| w[0] != w[1])
            }),
            Property::sometimes("a transaction commits", |_, s: &State| {
                s.replies.iter().any(|r| r.1)
            }),
            Property::sometimes("a transaction aborts", |_, s: &State| {
                s.replies.iter().any(|r| !r.1)
            }),
        ];
        if self.faults.checkpoints > 0 {
            props.push(Property::sometimes(
                "a checkpoint forgets a transaction",
                |_, s: &State| !s.forgotten.is_empty(),
            ));
        }
        if self.liveness {
            props.push(Property::eventually(
                "every transaction is decided everywhere (on every live node)",
                |m: &ChainModel, s| m.settled(s),
            ));
        }
        props
    }
}

fn write(page: u64) -> Vec<PageWrite> {
    vec![PageWrite {
        page: PageId(page),
        expected: 0,
        data: vec![page as u8 + 1].into(),
    }]
}

/// Transaction 1 writes page 0 on every node, chain 0 → 1 → … (decider: the last node).
/// Transaction 2 writes page 0 on node 0 (conflicting with transaction 1) and page 1 on
/// node 1, over the reversed two-node chain 1 → 0 (another decider).
fn txns(nodes: usize, count: usize) -> Vec<Prepare> {
    txns_f(nodes, count, 0)
}

/// [`txns`] with `f` acceptors besides each decider.
fn txns_f(nodes: usize, count: usize, f: u8) -> Vec<Prepare> {
    let chain: Vec<NodeId> = (0..nodes as u32).map(NodeId).collect();
    let mut out = vec![Prepare {
        txn: TxnId(1),
        client: ClientId(1),
        writes: chain.iter().map(|&n| (n, write(0))).collect(),
        acceptors: f,
        chain,
    }];
    if count > 1 {
        out.push(Prepare {
            txn: TxnId(2),
            client: ClientId(2),
            chain: vec![NodeId(1), NodeId(0)],
            writes: vec![(NodeId(0), write(0)), (NodeId(1), write(1))],
            acceptors: f,
        });
    }
    out
}

fn check(name: &str, model: ChainModel) {
    let start = Instant::now();
    let checker = model.checker().threads(2).spawn_bfs().join();
    let elapsed = start.elapsed();
    println!(
        "model {name}: {} unique states ({} visited), max depth {}, {:.1?}",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        elapsed
    );
    checker.assert_properties();
}

const NO_FAULTS: Budget = Budget {
    crashes: 0,
    losses: 0,
    dups: 0,
    ticks: 0,
    checkpoints: 0,
};

#[test]
fn two_nodes_two_txns_no_faults_all_decided() {
    let faults = Budget {
        dups: 1,
        ..NO_FAULTS
    };
    check(
        "n2-t2-dup",
        ChainModel {
            nodes: 2,
            txns: txns(2, 2),
            faults,
            liveness: true,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

#[test]
fn three_nodes_two_txns_no_faults_all_decided() {
    let faults = Budget {
        dups: 1,
        ..NO_FAULTS
    };
    check(
        "n3-t2-dup",
        ChainModel {
            nodes: 3,
            txns: txns(3, 2),
            faults,
            liveness: true,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

#[test]
fn two_nodes_two_txns_with_crash_loss_dup() {
    // No duplicate here: with the pipelined prepare's Durable notice, a duplicate on
    // top of a crash, a loss and two transactions took 2 M states (about 4 minutes of
    // CI on 2 cores). Duplicates with a crash are covered by the one-transaction
    // cases below (which also catch a notice sent before the intent is durable).
    let faults = Budget {
        crashes: 1,
        losses: 1,
        dups: 0,
        ticks: 1,
        checkpoints: 0,
    };
    check(
        "n2-t2-faults",
        ChainModel {
            nodes: 2,
            txns: txns(2, 2),
            faults,
            liveness: false,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

#[test]
fn three_nodes_one_txn_with_crash_loss_dup() {
    let faults = Budget {
        crashes: 1,
        losses: 1,
        dups: 1,
        ticks: 1,
        checkpoints: 0,
    };
    check(
        "n3-t1-faults",
        ChainModel {
            nodes: 3,
            txns: txns(3, 1),
            faults,
            liveness: false,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

/// Checkpoints forget finished transactions (after two of them); a late duplicate
/// `Prepare` or `Resolve` must still be refused, and every transaction still decided
/// everywhere.
#[test]
fn two_nodes_two_txns_with_checkpoints_and_dups_all_decided() {
    let faults = Budget {
        dups: 1,
        checkpoints: 2,
        ..NO_FAULTS
    };
    check(
        "n2-t2-checkpoints",
        ChainModel {
            nodes: 2,
            txns: txns(2, 2),
            faults,
            liveness: true,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

/// Recovery from a checkpoint keeps every in-doubt intent and undelivered commit
/// decision, across a crash at any point (before, during or after the checkpoint).
#[test]
fn two_nodes_one_txn_with_checkpoints_crash_dup() {
    let faults = Budget {
        crashes: 1,
        losses: 0,
        dups: 1,
        ticks: 1,
        checkpoints: 2,
    };
    check(
        "n2-t1-checkpoints-crash",
        ChainModel {
            nodes: 2,
            txns: txns(2, 1),
            faults,
            liveness: false,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

/// F = 1 (chain 0 → 1 → 2, acceptor: node 1): safety (atomicity, agreement,
/// validity, no unilateral abort, no lost update) with the decider crashing at any
/// step and restarting (a recovery ballot racing its restart), one retry tick.
#[test]
fn f1_three_nodes_one_txn_decider_crash_anywhere() {
    let faults = Budget {
        crashes: 1,
        losses: 0,
        dups: 0,
        ticks: 1,
        checkpoints: 0,
    };
    check(
        "f1-n3-t1-crash",
        ChainModel {
            nodes: 3,
            txns: txns_f(3, 1, 1),
            faults,
            liveness: false,
            killable: None,
            tickers: Vec::new(),
            crashers: vec![2],
        },
    );
}

/// F = 1: the decider (node 2) dies for good at any step; every live node still
/// settles the transaction (liveness), by a recovery ballot with the acceptor
/// (node 1), and all properties hold. Node 0 (the head) runs the retry timer.
#[test]
fn f1_decider_killed_at_any_step_others_settle() {
    let faults = Budget {
        ticks: 1,
        ..NO_FAULTS
    };
    check(
        "f1-n3-t1-decider-killed",
        ChainModel {
            nodes: 3,
            txns: txns_f(3, 1, 1),
            faults,
            liveness: true,
            killable: Some(2),
            tickers: vec![0],
            crashers: Vec::new(),
        },
    );
}

/// F = 1 with two transactions of different deciders (node 2 for chain 0 → 1 → 2,
/// node 0 for chain 1 → 0) and a duplicate: every transaction decided everywhere.
#[test]
fn f1_three_nodes_two_txns_all_decided() {
    let faults = Budget {
        dups: 1,
        ..NO_FAULTS
    };
    check(
        "f1-n3-t2-dup",
        ChainModel {
            nodes: 3,
            txns: txns_f(3, 2, 1),
            faults,
            liveness: true,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}
