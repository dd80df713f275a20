//! A node's housekeeping: checkpoints (what it may forget) and the retry timer.

use std::collections::{BTreeMap, BTreeSet};

use super::node::{Checkpointing, Node};
use super::state::Phase;
use super::{Action, Ballot, Message};
use crate::log::{Checkpoint, Intent, Record, Verdict};
use crate::types::{ClientId, NodeId, TxnId};

impl Node {
    /// Start a checkpoint: the action to persist a [`Record::Checkpoint`] that the
    /// host writes as the first record of a **new log segment**, after syncing the
    /// page file (every page write asked for so far must be durable before the
    /// checkpoint is). Once it is durable ([`persisted`](Self::persisted)) the host
    /// may delete the older segments, and the node forgets every transaction that
    /// was already finished at the previous checkpoint: a transaction is remembered
    /// for at least one full checkpoint interval after it finished, then only its
    /// client's low-water mark covers it.
    ///
    /// Returns nothing while an earlier checkpoint is still on its way to the log.
    pub fn checkpoint(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.checkpointing.is_some() {
            return out;
        }
        let mut cp = Checkpoint::default();
        // Clients idle past the horizon: their marks fold into the floor (it refuses
        // all they refused, and more). Only once the checkpoint is durable: until
        // then the node refuses by the marks and floor of the last durable one (an
        // answer given by a floor that a crash could take back could be contradicted
        // after the restart).
        let now = self.checkpoints;
        self.checkpoints += 1;
        // Early `Durable` notices whose `Prepare` did not follow within a checkpoint
        // interval: it was lost (or the notice is a late copy).
        self.early.retain(|_, (_, at)| *at + 1 >= now);
        let horizon = u64::from(self.mark_horizon);
        let mut floor = self.floor;
        let mut marks: BTreeMap<ClientId, TxnId> = BTreeMap::new();
        let mut fold = Vec::new();
        for (&client, &(mark, raised)) in &self.marks {
            if now.saturating_sub(raised) < horizon {
                marks.insert(client, mark);
            } else {
                floor = floor.max(mark);
                fold.push(client);
            }
        }
        cp.floor = floor;
        let mut forget = Vec::new();
        for (&txn, t) in &mut self.txns {
            let client = t.client;
            let intent = || {
                Record::Intent(Intent {
                    txn,
                    client,
                    chain: t.chain.clone(),
                    writes: t.writes.clone(),
                    acceptors: t.acceptors,
                })
            };
            match &t.phase {
                Phase::Finished(_) if t.aged => {
                    forget.push(txn);
                    let mark = marks.entry(client).or_insert(txn);
                    *mark = (*mark).max(txn);
                }
                Phase::Finished(v) => cp.finished.push((txn, client, *v)),
                // Their outcome record precedes the checkpoint in the log.
                Phase::Refusing { .. } => cp.finished.push((txn, client, Verdict::Abort)),
                Phase::Completing => cp.finished.push((txn, client, Verdict::Commit)),
                Phase::Preparing | Phase::Prepared { .. } | Phase::Proposing { .. } => {
                    cp.open.push(intent());
                    // What this node promised and accepted as an acceptor.
                    if t.promised != Ballot::default() {
                        cp.open.push(Record::Promise {
                            txn,
                            client,
                            ballot: t.promised,
                        });
                    }
                    if let Some((ballot, verdict)) = t.accepted {
                        cp.open.push(Record::Accept {
                            txn,
                            client,
                            ballot,
                            verdict,
                        });
                    }
                }
                // Nothing logged yet.
                Phase::Waiting => {}
                Phase::Deciding | Phase::AwaitingAcks { .. } => {
                    cp.open.push(intent());
                    cp.open.push(Record::Decision {
                        txn,
                        client,
                        verdict: Verdict::Commit,
                    });
                }
            }
            if matches!(t.phase, Phase::Finished(_)) {
                t.aged = true;
            }
        }
        cp.marks = marks.into_iter().collect();
        let id = self.persist(Record::Checkpoint(cp), &mut out);
        self.checkpointing = Some(Checkpointing {
            id,
            forget,
            fold,
            floor,
        });
        out
    }

    /// The retry timer fired: prepared nodes ask the decider (`Resolve`) and repeat
    /// their `Durable` notice to the next node (it may have been lost), the decider
    /// re-sends `Commit` to nodes that have not acknowledged and its commit proposal
    /// to acceptors that have not accepted. With acceptors (F ≥ 1), a node prepared
    /// for more than `patience` ticks (a decider in doubt after a restart: at once)
    /// runs a recovery ballot, and a new one at every tick that brought no answer.
    /// Call it every few hundred milliseconds; it only re-sends idempotent messages.
    pub fn tick(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        let me = self.id;
        let txns: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, t)| {
                matches!(
                    t.phase,
                    Phase::Prepared { .. }
                        | Phase::Waiting
                        | Phase::Proposing { sent: true, .. }
                        | Phase::AwaitingAcks { .. }
                )
            })
            .map(|(&txn, _)| txn)
            .collect();
        for txn in txns {
            let patience = self.patience;
            let t = self.txns.get_mut(&txn).expect("listed above");
            let client = t.client;
            match &t.phase {
                &Phase::Prepared { in_doubt } => {
                    let decider = t.chain.last().copied();
                    let is_decider = decider == Some(me);
                    if let (Some(decider), false) = (decider, is_decider) {
                        let msg = Message::Resolve {
                            txn,
                            from: me,
                            client,
                        };
                        out.push(Action::Send { to: decider, msg });
                        // Our `Durable` notice may have been lost, and without it the
                        // decider presumes abort: send it again (a repeat is ignored).
                        // Not after a restart (a liveness nicety only, and leaving it
                        // out keeps the model check's states down): without it the
                        // decider presumes abort, which the node learns by `Resolve`.
                        if !in_doubt {
                            out.push(Action::Send {
                                to: decider,
                                msg: Message::Durable { txn, from: me },
                            });
                        }
                    }
                    if t.acceptor_nodes().is_empty() {
                        continue;
                    }
                    t.waited = t.waited.saturating_add(1);
                    if !is_decider && t.waited <= patience {
                        continue;
                    }
                    match &mut t.recovery {
                        Some(r) if r.progress => r.progress = false,
                        _ => self.start_recovery(txn, &mut out),
                    }
                }
                Phase::Proposing {
                    sent: true,
                    accepted,
                } => {
                    let ballot = Ballot { round: 0, node: me };
                    let missing: Vec<NodeId> = t
                        .acceptor_nodes()
                        .iter()
                        .copied()
                        .filter(|n| !accepted.contains(n))
                        .collect();
                    for to in missing {
                        let msg = Message::Accept {
                            txn,
                            ballot,
                            verdict: Verdict::Commit,
                            client,
                        };
                        out.push(Action::Send { to, msg });
                    }
                }
                Phase::Waiting => {
                    // The earlier nodes' `Durable` notice has not come for `patience`
                    // ticks (a `Prepare` or notice was lost, or a node crashed before
                    // its intent was durable): the decider has not decided, so it
                    // may presume abort.
                    t.waited = t.waited.saturating_add(1);
                    if t.waited > patience {
                        self.abort_unresolved(txn, client, BTreeSet::new(), &mut out);
                    }
                }
                Phase::AwaitingAcks { awaiting } => {
                    for &to in awaiting {
                        out.push(Action::Send {
                            to,
                            msg: Message::Commit { txn, decider: me },
                        });
                    }
                }
                _ => {}
            }
        }
        self.drain(&mut out);
        self.check_joining();
        out
    }
}
