//! What happens to a simulated node: actions carried out, log flushes, crashes,
//! recovery and the retry timer.

use std::collections::BTreeSet;

use pipewright_storage::log::{Record, Verdict};
use pipewright_storage::protocol::{acceptors_of, recovery_quorum, Action, Message, Node, Outcome};
use pipewright_storage::NodeId;

use super::sim::*;

impl Sim {
    pub(crate) fn execute(&mut self, n: usize, actions: Vec<Action>) {
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
                        let page = (w.expected + 1, w.data.to_vec());
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
    pub(crate) fn flush(&mut self, n: usize, count: usize, notify: bool) {
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

    pub(crate) fn crash(&mut self, n: usize, down_for: u64) {
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

    pub(crate) fn recover(&mut self, n: usize) {
        let sim = &mut self.nodes[n];
        let versions = sim.cache.iter().map(|(&p, &(v, _))| (p, v)).collect();
        let (node, actions) =
            Node::recover(NodeId(n as u32), config(), versions, sim.durable.clone())
                .expect("recovery");
        sim.node = Some(node);
        self.execute(n, actions);
    }

    pub(crate) fn tick(&mut self, n: usize) {
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
}
