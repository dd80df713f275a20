//! Rebuilding a node from its replayed log.

use std::collections::{BTreeMap, BTreeSet};

use super::state::{Phase, Txn};
use super::{acceptors_of, Action, Ballot, Message, Node, NodeConfig};
use crate::locks::PrepareError;
use crate::log::{Intent, Record, Verdict};
use crate::types::{ClientId, NodeId, PageId, TxnId, Version};

/// The log cannot be recovered from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// Two in-doubt intents lock the same page: the log is not one this node wrote.
    #[error("in-doubt intents of transaction {txn} and another transaction overlap: {error}")]
    OverlappingIntents {
        /// The second transaction.
        txn: TxnId,
        /// The conflict.
        error: PrepareError,
    },
}

#[derive(Default)]
struct Summary {
    client: Option<ClientId>,
    intent: Option<Intent>,
    decision: Option<Verdict>,
    completion: Option<Verdict>,
    forgotten: bool,
    /// As an acceptor: the highest ballot promised and the highest accepted.
    promised: Ballot,
    accepted: Option<(Ballot, Verdict)>,
    /// Log position of the record that made the outcome known here (commit redo order).
    outcome_at: usize,
}

impl Node {
    /// Rebuild a node after a restart from its page versions (a [`scan`] of its page
    /// store) and the records [`replay`]ed from its log, in log order.
    ///
    /// A [`Record::Checkpoint`] replaces everything before it: its low-water marks,
    /// its finished transactions and its re-logged open records are the state the
    /// records after it build on.
    ///
    /// Returns the node and the actions to carry out first:
    /// - `Apply` redoes committed writes the page file may have lost, in commit order.
    ///   A write is redone only where the page is at or below the write's expected
    ///   version (writes carry whole pages, so this also repairs a page torn by a
    ///   crash, which scans as version 0); versions only grow, so redo is idempotent;
    /// - for every **in-doubt** intent (voted yes, no outcome logged) the node re-takes
    ///   the intent's page locks and sends `Resolve` to the decider: a node that voted
    ///   yes never aborts on its own;
    /// - a decider re-sends `Commit` to every node of each committed transaction it had
    ///   not yet forgotten (nodes that already completed just acknowledge again).
    ///
    /// A decider's own intent without a logged decision is dropped: nothing was decided
    /// or answered, so the transaction is unknown and a later `Resolve` for it is
    /// answered abort (presumed abort).
    ///
    /// [`scan`]: crate::pages::PageStore::scan
    /// [`replay`]: crate::log::replay
    pub fn recover(
        id: NodeId,
        config: NodeConfig,
        versions: BTreeMap<PageId, Version>,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<(Node, Vec<Action>), RecoverError> {
        let mut node = Node::new(id, config, versions);
        let mut out = Vec::new();
        let mut txns: BTreeMap<TxnId, Summary> = BTreeMap::new();
        let mut finished: BTreeMap<TxnId, (ClientId, Verdict)> = BTreeMap::new();
        let mut at = 0;
        let mut todo: Vec<Record> = records.into_iter().collect();
        todo.reverse();
        while let Some(record) = todo.pop() {
            at += 1;
            let txn = match &record {
                Record::Checkpoint(cp) => {
                    txns.clear();
                    finished = cp.finished.iter().map(|&(t, c, v)| (t, (c, v))).collect();
                    node.marks = cp.marks.iter().map(|&(c, t)| (c, (t, 0))).collect();
                    node.floor = cp.floor;
                    todo.extend(cp.open.iter().rev().cloned());
                    continue;
                }
                other => other.txn().expect("not a checkpoint"),
            };
            let s = txns.entry(txn).or_default();
            match record {
                Record::Intent(intent) => {
                    s.client = Some(intent.client);
                    s.intent = Some(intent);
                }
                Record::Decision {
                    verdict, client, ..
                } => {
                    s.client.get_or_insert(client);
                    (s.decision, s.outcome_at) = (Some(verdict), at)
                }
                Record::Completion {
                    verdict, client, ..
                } => {
                    s.client.get_or_insert(client);
                    (s.completion, s.outcome_at) = (Some(verdict), at)
                }
                Record::Forget { .. } => s.forgotten = true,
                Record::Promise { ballot, client, .. } => {
                    s.client.get_or_insert(client);
                    s.promised = s.promised.max(ballot);
                }
                Record::Accept {
                    ballot,
                    verdict,
                    client,
                    ..
                } => {
                    s.client.get_or_insert(client);
                    s.promised = s.promised.max(ballot);
                    if s.accepted.is_none_or(|(b, _)| b <= ballot) {
                        s.accepted = Some((ballot, verdict));
                    }
                }
                Record::Checkpoint(_) => unreachable!("handled above"),
            }
        }
        // Redo committed writes in the order they were committed here.
        let mut commits: Vec<(usize, TxnId)> = txns
            .iter()
            .filter(|(_, s)| s.decision.or(s.completion) == Some(Verdict::Commit))
            .map(|(&txn, s)| (s.outcome_at, txn))
            .collect();
        commits.sort();
        for (_, txn) in commits {
            let Some(intent) = &txns[&txn].intent else {
                continue;
            };
            let redo: Vec<_> = intent
                .writes
                .iter()
                .filter(|w| node.version(w.page) <= w.expected)
                .cloned()
                .collect();
            for w in &redo {
                node.versions.insert(w.page, w.expected + 1);
            }
            if !redo.is_empty() {
                out.push(Action::Apply { txn, writes: redo });
            }
        }
        for (txn, s) in txns {
            let client = s.client.unwrap_or_default();
            let (chain, writes, f) = match s.intent {
                Some(i) => (i.chain, i.writes, i.acceptors),
                None => Default::default(),
            };
            let replicated = !acceptors_of(&chain, f).is_empty();
            let outcome = s.decision.or(s.completion);
            let phase = match outcome {
                Some(Verdict::Commit) if s.decision.is_some() && !s.forgotten => {
                    let awaiting: BTreeSet<NodeId> =
                        chain.iter().copied().filter(|&n| n != id).collect();
                    for &to in &awaiting {
                        out.push(Action::Send {
                            to,
                            msg: Message::Commit { txn, decider: id },
                        });
                    }
                    if awaiting.is_empty() {
                        Phase::Finished(Verdict::Commit)
                    } else {
                        Phase::AwaitingAcks { awaiting }
                    }
                }
                Some(verdict) => Phase::Finished(verdict),
                // A decider's own intent without a decision, F = 0: it never decided
                // or answered (presumed abort).
                None if chain.last() == Some(&id) && !replicated => continue,
                None if chain.is_empty() => continue,
                // F ≥ 1: it may have proposed commit to the acceptors, so it must not
                // presume abort: in doubt, it learns or settles the outcome with the
                // acceptors (a recovery ballot at its first tick).
                None if chain.last() == Some(&id) => {
                    let pages: Vec<PageId> = writes.iter().map(|w| w.page).collect();
                    node.locks
                        .restore(txn, &pages)
                        .map_err(|error| RecoverError::OverlappingIntents { txn, error })?;
                    Phase::Prepared { in_doubt: true }
                }
                None => {
                    let pages: Vec<PageId> = writes.iter().map(|w| w.page).collect();
                    node.locks
                        .restore(txn, &pages)
                        .map_err(|error| RecoverError::OverlappingIntents { txn, error })?;
                    let decider = *chain.last().expect("non-empty chain");
                    let msg = Message::Resolve {
                        txn,
                        from: id,
                        client,
                    };
                    out.push(Action::Send { to: decider, msg });
                    Phase::Prepared { in_doubt: true }
                }
            };
            let mut t = Txn::new(client, chain, writes, phase, f);
            t.promised = s.promised;
            t.accepted = s.accepted;
            node.insert_txn(txn, t);
        }
        for (txn, (client, verdict)) in finished {
            node.txns.entry(txn).or_insert_with(|| {
                let mut t = Txn::new(client, Vec::new(), Vec::new(), Phase::Finished(verdict), 0);
                t.aged = true;
                t
            });
        }
        node.check_joining();
        Ok((node, out))
    }
}
