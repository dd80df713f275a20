//! The model: the real nodes, a faulty network, per-record log flushes, crashes,
//! restarts, ticks and checkpoints (see the crate-level doc of this test).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use pipewright_storage::log::{Record, Verdict};
use pipewright_storage::protocol::{
    acceptors_of, recovery_quorum, Action, Ballot, Message, Node, NodeConfig, Outcome, Prepare,
    RecordId, TxnStatus,
};
use pipewright_storage::{NodeId, PageId, TxnId, Version};
use stateright::{Model, Property};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Budget {
    pub(crate) crashes: u8,
    pub(crate) losses: u8,
    pub(crate) dups: u8,
    pub(crate) ticks: u8,
    pub(crate) checkpoints: u8,
}

pub(crate) struct ChainModel {
    pub(crate) nodes: usize,
    pub(crate) txns: Vec<Prepare>,
    pub(crate) faults: Budget,
    pub(crate) liveness: bool,
    /// A node that may crash once and never come back (the decider, for the
    /// "decisions survive the decider" cases); liveness then asks that every live
    /// node settles every transaction.
    pub(crate) killable: Option<usize>,
    /// Nodes whose retry timer may fire (all when empty).
    pub(crate) tickers: Vec<usize>,
    /// Nodes that may crash (and restart) within the crash budget (all when empty).
    pub(crate) crashers: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct State {
    pub(crate) nodes: Vec<Option<Node>>,
    pub(crate) durable: Vec<Vec<Record>>,
    pub(crate) pending: Vec<VecDeque<(RecordId, Record)>>,
    pub(crate) pages: Vec<BTreeMap<PageId, Version>>,
    pub(crate) net: BTreeSet<(NodeId, Message)>,
    pub(crate) budget: Budget,
    // Ghost (history) variables, for the properties.
    pub(crate) outcomes: BTreeSet<(usize, TxnId, Verdict)>,
    pub(crate) applied: BTreeSet<(usize, PageId, Version, TxnId)>,
    pub(crate) decided: BTreeSet<(TxnId, Verdict)>,
    pub(crate) replies: BTreeSet<(TxnId, bool)>,
    pub(crate) commit_before_decision: bool,
    pub(crate) unilateral_abort: bool,
    /// (node, txn) forgotten by a checkpoint.
    pub(crate) forgotten: BTreeSet<(usize, TxnId)>,
    pub(crate) revived: bool,
    /// Durable intents ever written: (node, txn).
    pub(crate) intents: BTreeSet<(usize, TxnId)>,
    /// Durable acceptances ever written: (txn, ballot, verdict, node).
    pub(crate) accepts: BTreeSet<(TxnId, Ballot, Verdict, usize)>,
    /// The killable node crashed for good.
    pub(crate) killed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Act {
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

pub(crate) fn config() -> NodeConfig {
    NodeConfig {
        lock_capacity: 4,
        // A node in doubt runs a recovery ballot at its first tick (F ≥ 1).
        patience: 0,
        ..NodeConfig::default()
    }
}

impl ChainModel {
    pub(crate) fn run(&self, s: &mut State, n: usize, actions: Vec<Action>, spontaneous: bool) {
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

    pub(crate) fn deliver(&self, s: &mut State, to: NodeId, msg: Message) {
        let n = to.0 as usize;
        if let Some(node) = s.nodes[n].as_mut() {
            let actions = node.handle(msg);
            self.run(s, n, actions, false);
        }
    }

    pub(crate) fn settled(&self, s: &State) -> bool {
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
        crate::properties::all(self)
    }
}
