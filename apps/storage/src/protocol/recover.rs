//! Rebuilding a node from its replayed log.

use std::collections::{BTreeMap, BTreeSet};

use super::state::{Phase, Txn};
use super::{Action, Message, Node, NodeConfig};
use crate::locks::PrepareError;
use crate::log::{Intent, Record, Verdict};
use crate::types::{NodeId, PageId, TxnId, Version};

/// The log cannot be recovered from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// Two in-doubt intents lock the same page: the log is not one this node wrote.
    #[error("in-doubt intents of {txn} and another transaction overlap: {error}")]
    OverlappingIntents {
        /// The second transaction.
        txn: TxnId,
        /// The conflict.
        error: PrepareError,
    },
}

#[derive(Default)]
struct Summary {
    intent: Option<Intent>,
    decision: Option<Verdict>,
    completion: Option<Verdict>,
    forgotten: bool,
    /// Log position of the record that made the outcome known here (commit redo order).
    outcome_at: usize,
}

impl Node {
    /// Rebuild a node after a restart from its page versions (a [`scan`] of its page
    /// store) and the records [`replay`]ed from its log, in log order.
    ///
    /// Returns the node and the actions to carry out first:
    /// - `Apply` redoes committed writes the page file may have lost (a write is redone
    ///   only where the page is still at the write's expected version, so redo is
    ///   idempotent), in commit order;
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
        for (at, record) in records.into_iter().enumerate() {
            let s = txns.entry(record.txn()).or_default();
            match record {
                Record::Intent(intent) => s.intent = Some(intent),
                Record::Decision { verdict, .. } => {
                    (s.decision, s.outcome_at) = (Some(verdict), at)
                }
                Record::Completion { verdict, .. } => {
                    (s.completion, s.outcome_at) = (Some(verdict), at)
                }
                Record::Forget { .. } => s.forgotten = true,
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
                .filter(|w| node.version(w.page) == w.expected)
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
            let (client, chain, writes) = match s.intent {
                Some(i) => (i.client, i.chain, i.writes),
                None => Default::default(),
            };
            let outcome = s.decision.or(s.completion);
            let phase = match outcome {
                Some(Verdict::Commit) if s.decision.is_some() && !s.forgotten => {
                    let awaiting: BTreeSet<NodeId> =
                        chain.iter().copied().filter(|&n| n != id).collect();
                    for &to in &awaiting {
                        out.push(Action::Send {
                            to,
                            msg: Message::Commit { txn },
                        });
                    }
                    if awaiting.is_empty() {
                        Phase::Finished(Verdict::Commit)
                    } else {
                        Phase::AwaitingAcks { awaiting }
                    }
                }
                Some(verdict) => Phase::Finished(verdict),
                None if chain.last() == Some(&id) => continue,
                None if chain.is_empty() => continue,
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
            node.txns.insert(
                txn,
                Txn {
                    client,
                    chain,
                    writes,
                    phase,
                },
            );
        }
        Ok((node, out))
    }
}
