//! A node receives a `Prepare`: its analysis, its intent, the pipelined forward, and
//! the `Durable` notice that follows the prepare down the chain.

use std::collections::BTreeSet;

use super::node::Node;
use super::state::{Phase, Txn};
use super::{AbortReason, Action, Malformed, Message, Outcome, Prepare};
use crate::log::{Intent, Record, Verdict};
use crate::types::{NodeId, PageId, TxnId, Version};

/// The longest chain a node takes part in (a chain names each node once; the check for
/// repeats is quadratic, and real chains have a handful of nodes).
pub(crate) const MAX_CHAIN: usize = 256;

impl Node {
    pub(super) fn on_prepare(&mut self, p: Prepare, out: &mut Vec<Action>) {
        if let Some(t) = self.txns.get(&p.txn) {
            // A duplicate. If we already aborted it, the sender is still prepared: tell it.
            if t.phase == Phase::Finished(Verdict::Abort) {
                if let Some(prev) = self.neighbour(&p.chain, -1) {
                    out.push(Action::Send {
                        to: prev,
                        msg: Message::Abort { txn: p.txn },
                    });
                }
            }
            return;
        }
        if self.is_late(p.client, p.txn) {
            // Forgotten here (finished and checkpointed), or overtaken by a later
            // transaction of the same client that was: refused without any state (the
            // mark is durable, so every later copy is refused too). The verdict is not
            // known here, so the client is told just that (`Forgotten`, not an
            // abort: a late copy of a committed transaction must not read as
            // aborted). Only the decider tells a predecessor still prepared to abort:
            // it forgets a commit only once every node acknowledged it, so no node is
            // prepared on a forgotten commit (see `on_resolve`). Any other node may
            // have forgotten a commit its predecessor has not heard of yet (the
            // `Commit` lost or late); that predecessor asks the decider on its retry
            // timer, which tells it the verdict.
            let decider = p.chain.last() == Some(&self.id);
            if let Some(prev) = self.neighbour(&p.chain, -1).filter(|_| decider) {
                out.push(Action::Send {
                    to: prev,
                    msg: Message::Abort { txn: p.txn },
                });
            }
            out.push(Action::Reply {
                client: p.client,
                txn: p.txn,
                outcome: Outcome::Forgotten {
                    node: self.id,
                    floor: self.floor,
                },
            });
            return;
        }
        let malformed = if p.chain.is_empty() {
            Some(Malformed::EmptyChain)
        } else if !p.chain.contains(&self.id) {
            Some(Malformed::NotInChain)
        } else if p.chain.len() > MAX_CHAIN {
            Some(Malformed::ChainTooLong)
        } else if (1..p.chain.len()).any(|i| p.chain[..i].contains(&p.chain[i])) {
            Some(Malformed::RepeatedNode)
        } else {
            None
        };
        if let Some(what) = malformed {
            let reason = AbortReason::Malformed {
                node: self.id,
                what,
            };
            out.push(Action::Reply {
                client: p.client,
                txn: p.txn,
                outcome: Outcome::Aborted(reason),
            });
            return;
        }
        let writes = p.writes_of(self.id).to_vec();
        let wants: Vec<(PageId, Version)> = writes.iter().map(|w| (w.page, w.expected)).collect();
        let versions = &self.versions;
        let analysis = self.check_writes(&writes).and_then(|()| {
            self.locks.prepare(p.txn, &wants, |page| {
                versions.get(&page).copied().unwrap_or(0)
            })
        });
        let is_decider = p.decider() == Some(self.id);
        let (txn, client, chain, f) = (p.txn, p.client, p.chain.clone(), p.acceptors);
        let phase = match analysis {
            Err(error) => {
                let reason = AbortReason::Refused {
                    node: self.id,
                    error,
                };
                let record = if is_decider {
                    Record::Decision {
                        txn,
                        client,
                        verdict: Verdict::Abort,
                    }
                } else {
                    Record::Completion {
                        txn,
                        client,
                        verdict: Verdict::Abort,
                    }
                };
                self.persist_then(txn, record, out);
                Phase::Refusing {
                    reason,
                    askers: BTreeSet::new(),
                }
            }
            // The decider logs its intent and decides once every earlier intent is
            // durable (at once when it is the head: a one-node chain).
            Ok(()) if is_decider => Phase::Waiting,
            Ok(()) => {
                let intent = Intent {
                    txn,
                    client,
                    chain: chain.clone(),
                    writes: writes.clone(),
                    acceptors: f,
                };
                self.persist_then(txn, Record::Intent(intent), out);
                // Pipelined: forwarded while the intent is on its way to the log; the
                // decider waits for the `Durable` notice before deciding.
                if let Some(next) = self.neighbour(&p.chain, 1) {
                    out.push(Action::Send {
                        to: next,
                        msg: Message::Prepare(p),
                    });
                }
                Phase::Preparing
            }
        };
        let waiting = phase == Phase::Waiting;
        let mut t = Txn::new(client, chain, writes, phase, f);
        if let Some((from, _)) = self.early.remove(&txn) {
            t.durable_from = from;
        }
        self.insert_txn(txn, t);
        if waiting && self.upstream_durable(txn) {
            self.decide(txn, out);
        }
    }

    /// A chain node's `Durable` notice, sent to the decider once that node's intent is
    /// durable: the decider decides once every other chain node's notice arrived.
    pub(super) fn on_durable(&mut self, txn: TxnId, from: NodeId, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get_mut(&txn) else {
            // Overtook its `Prepare` (or a late copy of a forgotten transaction,
            // dropped with the early notices at the next checkpoints).
            let now = self.checkpoints;
            let (from_set, _) = self.early.entry(txn).or_insert((BTreeSet::new(), now));
            from_set.insert(from);
            return;
        };
        if t.phase != Phase::Waiting || !t.durable_from.insert(from) {
            // Decided already, or a repeat.
            return;
        }
        if self.upstream_durable(txn) {
            self.decide(txn, out);
        }
    }

    /// At the decider: every other chain node's `Durable` notice arrived, so every
    /// other chain node's intent is durable (at once for a one-node chain).
    pub(super) fn upstream_durable(&self, txn: TxnId) -> bool {
        let t = &self.txns[&txn];
        t.chain
            .iter()
            .filter(|&&n| n != self.id)
            .all(|n| t.durable_from.contains(n))
    }

    /// Our intent is durable: tell the decider (sent again on every tick while we
    /// are prepared: a notice may be lost).
    pub(super) fn notify_decider(&self, txn: TxnId, out: &mut Vec<Action>) {
        match self.txns[&txn].chain.last() {
            Some(&decider) if decider != self.id => out.push(Action::Send {
                to: decider,
                msg: Message::Durable { txn, from: self.id },
            }),
            _ => {}
        }
    }
}
