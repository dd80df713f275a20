//! A node's side of recovery ballots (Paxos Commit): settling in-doubt transactions
//! with the acceptors when the decider is away, and answering other nodes' ballots.

use std::collections::{BTreeMap, BTreeSet};

use super::node::Node;
use super::state::{Phase, Recovery, Txn, TxnStatus};
use super::{recovery_quorum, AbortReason, Action, Ballot, Message};
use crate::log::{Record, Verdict};
use crate::types::{ClientId, NodeId, TxnId};

impl Node {
    /// Settle in-doubt transactions now (`pipewright storage resolve`): every
    /// transaction prepared here asks its decider (`Resolve`) at once and, with
    /// acceptors (F ≥ 1), starts a recovery ballot at once instead of after its
    /// patience. Returns the actions, like [`tick`](Self::tick).
    pub fn resolve_now(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        let me = self.id;
        let prepared: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, t)| matches!(t.phase, Phase::Prepared { .. }))
            .map(|(&txn, _)| txn)
            .collect();
        for txn in prepared {
            let t = &self.txns[&txn];
            let decider = t.chain.last().copied();
            if let Some(decider) = decider.filter(|&d| d != me) {
                let msg = Message::Resolve {
                    txn,
                    from: me,
                    client: t.client,
                };
                out.push(Action::Send { to: decider, msg });
            }
            if !t.acceptor_nodes().is_empty() {
                self.start_recovery(txn, &mut out);
            }
        }
        self.drain(&mut out);
        out
    }

    /// The outcome of `txn` as this node knows it: `None` while it is open here, or
    /// when the node never saw it or forgot it.
    pub fn verdict(&self, txn: TxnId) -> Option<Verdict> {
        match self.status(txn) {
            TxnStatus::Finished(v) => Some(v),
            TxnStatus::Completing | TxnStatus::AwaitingAcks | TxnStatus::Deciding => {
                Some(Verdict::Commit)
            }
            _ => None,
        }
    }

    /// Start a recovery ballot for `txn` (prepared here, with acceptors): ask every
    /// other chain node (the acceptors promise; any node that knows the outcome
    /// tells it).
    pub(super) fn start_recovery(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let me = self.id;
        let t = self.txns.get_mut(&txn).expect("caller checked");
        let last = t.recovery.as_ref().map_or(0, |r| r.ballot.round);
        let round = t.max_round.max(t.promised.round).max(last) + 1;
        let ballot = Ballot { round, node: me };
        t.recovery = Some(Recovery {
            ballot,
            promises: BTreeMap::new(),
            proposal: None,
            accepted: BTreeSet::new(),
            progress: false,
        });
        let client = t.client;
        for to in t.chain.clone() {
            let msg = Message::Query {
                txn,
                ballot,
                client,
            };
            self.send(to, msg, out);
        }
    }

    /// The outcome message for `verdict`.
    pub(super) fn verdict_msg(&self, txn: TxnId, verdict: Verdict) -> Message {
        match verdict {
            Verdict::Commit => Message::Commit {
                txn,
                decider: self
                    .txns
                    .get(&txn)
                    .and_then(|t| t.chain.last().copied())
                    .unwrap_or(self.id),
            },
            Verdict::Abort => Message::Abort { txn },
        }
    }

    /// The decider learns `verdict`, settled without it (F ≥ 1): while it had not
    /// decided itself (prepared in doubt after a restart, or proposing), it makes the
    /// verdict its durable decision and then acts as if it had decided so.
    pub(super) fn decider_settles(&mut self, txn: TxnId, verdict: Verdict, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let waiting = t.phase == Phase::Waiting;
        if !matches!(t.phase, Phase::Prepared { .. } | Phase::Proposing { .. }) && !waiting {
            return;
        }
        if waiting && verdict == Verdict::Commit {
            // Impossible: no acceptor accepts commit before this decider proposed it.
            return;
        }
        t.recovery = None;
        let client = t.client;
        let record = Record::Decision {
            txn,
            client,
            verdict,
        };
        match verdict {
            Verdict::Commit => {
                self.persist_then(txn, record, out);
                self.set_phase(txn, Phase::Deciding);
            }
            Verdict::Abort => {
                self.locks.release(txn);
                self.persist_then(txn, record, out);
                let phase = Phase::Refusing {
                    reason: AbortReason::Settled,
                    askers: BTreeSet::new(),
                };
                self.set_phase(txn, phase);
            }
        }
    }

    /// An abort record for a transaction this node never prepared, then `Abort` to
    /// `asker`: it never voted yes and now never will (a later `Prepare` finds it
    /// aborted), so abort is its certain outcome.
    pub(super) fn refuse_unknown(
        &mut self,
        txn: TxnId,
        client: ClientId,
        asker: NodeId,
        out: &mut Vec<Action>,
    ) {
        let record = Record::Completion {
            txn,
            client,
            verdict: Verdict::Abort,
        };
        self.persist_then(txn, record, out);
        let phase = Phase::Refusing {
            reason: AbortReason::Settled,
            askers: BTreeSet::from([asker]),
        };
        self.insert_txn(txn, Txn::new(client, Vec::new(), Vec::new(), phase, 0));
    }

    /// Answer a recovery `Query` or `Accept` with the outcome when it is known here.
    /// Returns `false` when it is not (the transaction is still open here).
    pub(super) fn answer_known(
        &mut self,
        txn: TxnId,
        asker: NodeId,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(t) = self.txns.get_mut(&txn) else {
            return false;
        };
        let verdict = match &mut t.phase {
            Phase::Finished(v) => *v,
            Phase::Completing | Phase::AwaitingAcks { .. } | Phase::Deciding => Verdict::Commit,
            Phase::Refusing { askers, .. } => {
                askers.insert(asker);
                return true;
            }
            _ => return false,
        };
        let msg = self.verdict_msg(txn, verdict);
        self.send(asker, msg, out);
        true
    }

    pub(super) fn on_query(
        &mut self,
        txn: TxnId,
        ballot: Ballot,
        client: ClientId,
        out: &mut Vec<Action>,
    ) {
        let (me, asker) = (self.id, ballot.node);
        if !self.txns.contains_key(&txn) {
            // Forgotten here: the outcome is no longer known (a commit may have been
            // forgotten): no answer. Never seen: abort is certain.
            if !self.is_late(client, txn) {
                self.refuse_unknown(txn, client, asker, out);
            }
            return;
        }
        if self.answer_known(txn, asker, out) {
            return;
        }
        let t = self.txns.get_mut(&txn).expect("checked");
        if !t.acceptor_nodes().contains(&me) {
            return;
        }
        if ballot > t.promised {
            t.promised = ballot;
            let accepted = t.accepted;
            let record = Record::Promise {
                txn,
                client: t.client,
                ballot,
            };
            let msg = Message::Promise {
                txn,
                ballot,
                from: me,
                accepted,
            };
            self.persist_then_send(record, asker, msg, out);
        } else {
            let promised = t.promised;
            self.send_nack(txn, ballot, promised, asker, out);
        }
    }

    /// Tells `asker` its `ballot` lost to the one this node has `promised`.
    fn send_nack(
        &mut self,
        txn: TxnId,
        ballot: Ballot,
        promised: Ballot,
        asker: NodeId,
        out: &mut Vec<Action>,
    ) {
        let msg = Message::Nack {
            txn,
            ballot,
            promised,
            from: self.id,
        };
        self.send(asker, msg, out);
    }

    pub(super) fn on_accept(
        &mut self,
        txn: TxnId,
        ballot: Ballot,
        verdict: Verdict,
        client: ClientId,
        out: &mut Vec<Action>,
    ) {
        let (me, asker) = (self.id, ballot.node);
        if !self.txns.contains_key(&txn) {
            // A commit needs this node's intent: a commit proposal for a transaction
            // it does not know is a stale copy.
            if verdict == Verdict::Abort && !self.is_late(client, txn) {
                self.refuse_unknown(txn, client, asker, out);
            }
            return;
        }
        if self.answer_known(txn, asker, out) {
            return;
        }
        let t = self.txns.get_mut(&txn).expect("checked");
        if !t.acceptor_nodes().contains(&me) || matches!(t.phase, Phase::Proposing { .. }) {
            return;
        }
        if ballot >= t.promised {
            t.promised = ballot;
            t.accepted = Some((ballot, verdict));
            let record = Record::Accept {
                txn,
                client: t.client,
                ballot,
                verdict,
            };
            let msg = Message::Accepted {
                txn,
                ballot,
                from: me,
            };
            self.persist_then_send(record, asker, msg, out);
        } else {
            let promised = t.promised;
            self.send_nack(txn, ballot, promised, asker, out);
        }
    }

    pub(super) fn on_promise(
        &mut self,
        txn: TxnId,
        ballot: Ballot,
        from: NodeId,
        accepted: Option<(Ballot, Verdict)>,
        out: &mut Vec<Action>,
    ) {
        let me = self.id;
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let quorum = recovery_quorum(t.acceptor_nodes().len());
        let is_decider = t.chain.last() == Some(&me);
        let client = t.client;
        let Some(r) = t
            .recovery
            .as_mut()
            .filter(|r| r.ballot == ballot && r.proposal.is_none())
        else {
            return;
        };
        r.promises.insert(from, accepted);
        r.progress = true;
        if r.promises.len() < quorum {
            return;
        }
        // Paxos: the verdict of the highest ballot any of the quorum accepted; if none
        // did, the proposer's own: commit for the decider (every node voted yes before
        // it prepared), abort for any other node.
        let verdict = r
            .promises
            .values()
            .flatten()
            .max_by_key(|(b, _)| *b)
            .map(|&(_, v)| v)
            .unwrap_or(if is_decider {
                Verdict::Commit
            } else {
                Verdict::Abort
            });
        r.proposal = Some(verdict);
        let to: Vec<NodeId> = r.promises.keys().copied().collect();
        for to in to {
            let msg = Message::Accept {
                txn,
                ballot,
                verdict,
                client,
            };
            self.send(to, msg, out);
        }
    }

    pub(super) fn on_accepted(
        &mut self,
        txn: TxnId,
        ballot: Ballot,
        from: NodeId,
        out: &mut Vec<Action>,
    ) {
        let me = self.id;
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        if ballot == (Ballot { round: 0, node: me }) {
            if let Phase::Proposing {
                sent: true,
                accepted,
            } = &mut t.phase
            {
                accepted.insert(from);
                let all = super::acceptors_of(&t.chain, t.acceptors)
                    .iter()
                    .all(|n| accepted.contains(n));
                if all {
                    // Chosen: every acceptor holds the commit durably.
                    let client = t.client;
                    let record = Record::Decision {
                        txn,
                        client,
                        verdict: Verdict::Commit,
                    };
                    self.persist_then(txn, record, out);
                    self.set_phase(txn, Phase::Deciding);
                }
            }
            return;
        }
        let quorum = recovery_quorum(t.acceptor_nodes().len());
        let Some(r) = t.recovery.as_mut().filter(|r| r.ballot == ballot) else {
            return;
        };
        let Some(verdict) = r.proposal else {
            return;
        };
        r.accepted.insert(from);
        r.progress = true;
        if r.accepted.len() < quorum {
            return;
        }
        // Chosen: a quorum of acceptors holds `verdict` durably. Tell every chain
        // node, then act on it here.
        t.recovery = None;
        let msg = self.verdict_msg(txn, verdict);
        for to in self.txns[&txn].chain.clone() {
            if to != me {
                out.push(Action::Send {
                    to,
                    msg: msg.clone(),
                });
            }
        }
        self.dispatch(msg, out);
    }

    pub(super) fn on_nack(&mut self, txn: TxnId, ballot: Ballot, promised: Ballot) {
        let me = self.id;
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        t.max_round = t.max_round.max(promised.round);
        if ballot == (Ballot { round: 0, node: me }) && matches!(t.phase, Phase::Proposing { .. }) {
            // A recovery ballot overtook the decider's proposal: it learns the
            // outcome like any node in doubt (its own ballot proposes commit).
            t.phase = Phase::Prepared { in_doubt: false };
            // Proposing joins, Prepared does not.
            self.joining -= 1;
        }
        if t.recovery.as_ref().is_some_and(|r| r.ballot == ballot) {
            t.recovery = None;
        }
    }
}
