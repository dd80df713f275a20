//! The decider: its commit decision once every earlier intent is durable, its
//! presumed abort, its answers to nodes in doubt, and the acknowledgements it collects.

use std::collections::BTreeSet;

use super::node::Node;
use super::state::{Phase, Txn};
use super::{AbortReason, Action, Message};
use crate::log::{Intent, Record, Verdict};
use crate::types::{ClientId, NodeId, TxnId};

impl Node {
    /// The decider: every earlier intent is durable; log its own intent and decide
    /// commit (F = 0), or propose commit to the acceptors once it is durable.
    pub(super) fn decide(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get(&txn) else { return };
        if t.phase != Phase::Waiting {
            return;
        }
        let client = t.client;
        let replicated = !t.acceptor_nodes().is_empty();
        let intent = Intent {
            txn,
            client,
            chain: t.chain.clone(),
            writes: t.writes.clone(),
            acceptors: t.acceptors,
        };
        let phase = if replicated {
            // The commit proposal goes to the acceptors once the intent is durable (a
            // decider restarted without it must be able to presume abort: it never
            // proposed).
            self.persist_then(txn, Record::Intent(intent), out);
            Phase::Proposing {
                sent: false,
                accepted: BTreeSet::new(),
            }
        } else {
            self.persist(Record::Intent(intent), out);
            self.persist_then(
                txn,
                Record::Decision {
                    txn,
                    client,
                    verdict: Verdict::Commit,
                },
                out,
            );
            Phase::Deciding
        };
        self.set_phase(txn, phase);
    }

    /// The decider decides abort without having decided anything before (presumed
    /// abort): the earlier nodes' `Durable` notice never came (`Waiting` past its
    /// patience, its locks released), or a prepared node asks about a transaction whose
    /// `Prepare` it never saw (or that is still on its way; `askers` holds the asker).
    /// The abort is durable before anyone hears of it, so that a late `Prepare` or
    /// notice can never make this node decide commit; then the client, the
    /// predecessor and the askers are told (see [`Node::advance`]).
    pub(super) fn abort_unresolved(
        &mut self,
        txn: TxnId,
        client: ClientId,
        askers: BTreeSet<NodeId>,
        out: &mut Vec<Action>,
    ) {
        self.locks.release(txn);
        self.persist_then(
            txn,
            Record::Decision {
                txn,
                client,
                verdict: Verdict::Abort,
            },
            out,
        );
        let phase = Phase::Refusing {
            reason: AbortReason::Unresolved,
            askers,
        };
        if self.txns.contains_key(&txn) {
            self.set_phase(txn, phase);
        } else {
            let t = Txn::new(client, Vec::new(), Vec::new(), phase, 0);
            self.insert_txn(txn, t);
        }
    }

    pub(super) fn on_resolve(
        &mut self,
        txn: TxnId,
        from: NodeId,
        client: ClientId,
        out: &mut Vec<Action>,
    ) {
        let me = self.id;
        let answer = |verdict| Action::Send {
            to: from,
            msg: match verdict {
                Verdict::Commit => Message::Commit { txn, decider: me },
                Verdict::Abort => Message::Abort { txn },
            },
        };
        let late = self.is_late(client, txn);
        match self.txns.get_mut(&txn).map(|t| &mut t.phase) {
            Some(Phase::AwaitingAcks { .. }) => out.push(answer(Verdict::Commit)),
            Some(Phase::Finished(v)) => out.push(answer(*v)),
            Some(Phase::Refusing { askers, .. }) => {
                askers.insert(from);
            }
            // Our own decision is on its way to the log; the asker retries.
            Some(_) => {}
            // Forgotten: a committed transaction is forgotten only once every node
            // acknowledged it, so no node is still prepared and this `Resolve` is a
            // stale copy; an aborted one, or one whose `Prepare` is refused as late
            // from now on, can only abort. Answer abort, with no record and no reply
            // to the client (whose answer, if any, was given long ago).
            None if late => out.push(answer(Verdict::Abort)),
            // Presumed abort: never saw the prepare (or it is still on its way).
            None => self.abort_unresolved(txn, client, BTreeSet::from([from]), out),
        }
    }

    pub(super) fn on_ack(&mut self, txn: TxnId, from: NodeId, out: &mut Vec<Action>) {
        let Some(Txn {
            phase: Phase::AwaitingAcks { awaiting },
            ..
        }) = self.txns.get_mut(&txn)
        else {
            return;
        };
        awaiting.remove(&from);
        if awaiting.is_empty() {
            self.persist(Record::Forget { txn }, out);
            self.set_phase(txn, Phase::Finished(Verdict::Commit));
        }
    }
}
