//! The outcome travels back up the chain: each node applies or drops its writes,
//! logs its completion and acknowledges; [`Node::advance`] takes each step once the
//! record it waited for is durable.

use std::collections::BTreeSet;

use super::node::Node;
use super::state::Phase;
use super::{Action, Ballot, Message, Outcome};
use crate::log::{Record, Verdict};
use crate::types::{NodeId, TxnId};

impl Node {
    /// Apply a committed transaction's writes here and release its locks.
    pub(super) fn apply(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let writes = self.txns[&txn].writes.clone();
        for w in &writes {
            self.versions.insert(w.page, w.expected + 1);
        }
        self.locks.release(txn);
        if !writes.is_empty() {
            out.push(Action::Apply { txn, writes });
        }
    }

    pub(super) fn send_back(&self, txn: TxnId, msg: Message, out: &mut Vec<Action>) {
        if let Some(prev) = self.neighbour(&self.txns[&txn].chain, -1) {
            out.push(Action::Send { to: prev, msg });
        }
    }

    pub(super) fn on_commit(&mut self, txn: TxnId, decider: NodeId, out: &mut Vec<Action>) {
        let ack = Action::Send {
            to: decider,
            msg: Message::Ack { txn, from: self.id },
        };
        let Some(t) = self.txns.get(&txn) else {
            // A commit decision needs our durable intent, which we keep until the
            // outcome is durable here: a transaction we do not know was completed and
            // then forgotten. The decider re-sent `Commit` (it restarted, or our `Ack`
            // was lost): acknowledge again.
            if decider != self.id {
                out.push(ack);
            }
            return;
        };
        if t.chain.last() == Some(&self.id) {
            // The decider learns a verdict settled by a recovery ballot.
            self.decider_settles(txn, Verdict::Commit, out);
            return;
        }
        match t.phase {
            Phase::Prepared { .. } => {
                let client = t.client;
                self.apply(txn, out);
                self.send_back(txn, Message::Commit { txn, decider }, out);
                self.persist_then(
                    txn,
                    Record::Completion {
                        txn,
                        client,
                        verdict: Verdict::Commit,
                    },
                    out,
                );
                self.set_phase(txn, Phase::Completing);
            }
            // The decider re-sent `Commit` (it restarted, or our `Ack` was lost).
            Phase::Finished(Verdict::Commit) if decider != self.id => out.push(ack),
            _ => {}
        }
    }

    pub(super) fn on_abort(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get(&txn) else { return };
        if t.chain.last() == Some(&self.id) {
            self.decider_settles(txn, Verdict::Abort, out);
            return;
        }
        // An `Abort` reaches a node still making its intent durable from a later node
        // that refused (the `Prepare` went on before the intent was durable), a
        // recovery ballot (abort settled) or a node that knows abort: final.
        if let Phase::Prepared { .. } | Phase::Preparing = t.phase {
            let client = t.client;
            self.locks.release(txn);
            // Presumed abort: the abort record need not be forced; if it is lost, the
            // restarted node asks the decider again and gets abort again.
            self.persist(
                Record::Completion {
                    txn,
                    client,
                    verdict: Verdict::Abort,
                },
                out,
            );
            self.send_back(txn, Message::Abort { txn }, out);
            self.set_phase(txn, Phase::Finished(Verdict::Abort));
        }
    }

    pub(super) fn advance(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let phase = std::mem::replace(&mut t.phase, Phase::Finished(Verdict::Abort));
        // Finished for the moment (does not join): `set_phase` below counts the next.
        self.joining -= usize::from(phase.joins());
        self.open -= usize::from(phase.is_open());
        let client = t.client;
        match phase {
            Phase::Proposing { sent: false, .. } => {
                let ballot = Ballot {
                    round: 0,
                    node: self.id,
                };
                for to in self.txns[&txn].acceptor_nodes().to_vec() {
                    let msg = Message::Accept {
                        txn,
                        ballot,
                        verdict: Verdict::Commit,
                        client,
                    };
                    self.send(to, msg, out);
                }
                self.set_phase(
                    txn,
                    Phase::Proposing {
                        sent: true,
                        accepted: BTreeSet::new(),
                    },
                );
            }
            Phase::Preparing => {
                self.set_phase(txn, Phase::Prepared { in_doubt: false });
                self.notify_decider(txn, out);
            }
            Phase::Deciding => {
                self.apply(txn, out);
                out.push(Action::Reply {
                    client,
                    txn,
                    outcome: Outcome::Committed,
                });
                let decider = self.id;
                self.send_back(txn, Message::Commit { txn, decider }, out);
                let awaiting: BTreeSet<NodeId> = self.txns[&txn]
                    .chain
                    .iter()
                    .copied()
                    .filter(|&n| n != self.id)
                    .collect();
                if awaiting.is_empty() {
                    self.persist(Record::Forget { txn }, out);
                    self.set_phase(txn, Phase::Finished(Verdict::Commit));
                } else {
                    self.set_phase(txn, Phase::AwaitingAcks { awaiting });
                }
            }
            Phase::Refusing { reason, askers } => {
                out.push(Action::Reply {
                    client,
                    txn,
                    outcome: Outcome::Aborted(reason),
                });
                self.send_back(txn, Message::Abort { txn }, out);
                for to in askers {
                    out.push(Action::Send {
                        to,
                        msg: Message::Abort { txn },
                    });
                }
                // Finished(Abort) already set by the replace above.
            }
            Phase::Completing => {
                if let Some(&decider) = self.txns[&txn].chain.last() {
                    out.push(Action::Send {
                        to: decider,
                        msg: Message::Ack { txn, from: self.id },
                    });
                }
                self.set_phase(txn, Phase::Finished(Verdict::Commit));
            }
            other => self.set_phase(txn, other),
        }
    }
}
