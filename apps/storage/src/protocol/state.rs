//! A node's per-transaction state and tunables.

use std::collections::BTreeSet;

use super::{AbortReason, Node, Prepare};
use crate::locks::PrepareError;
use crate::log::{PageWrite, Verdict};
use crate::pages::PAGE_SIZE;
use crate::types::{ClientId, NodeId};

/// A node's tunables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// At most this many pages locked by prepared transactions at once; a prepare that
    /// would exceed it aborts with `NoSpace` (admission control).
    pub lock_capacity: usize,
    /// Pages in the node's page file: a prepare writing a page at or beyond it, or more
    /// than a page of data, is refused (`OutOfRange`, `TooLarge`) rather than accepted
    /// and then failing to apply.
    pub page_capacity: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            lock_capacity: 1 << 16,
            page_capacity: u64::MAX,
        }
    }
}

/// Where a transaction stands on one node (see [`Node::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnStatus {
    /// The node has no record of it.
    Unknown,
    /// Analysis passed, locks held, the intent is being made durable.
    Preparing,
    /// Voted yes (intent durable), waiting for the outcome. `in_doubt` after a restart.
    Prepared {
        /// Recovered from the log rather than prepared in this incarnation.
        in_doubt: bool,
    },
    /// The decider's commit decision is being made durable.
    Deciding,
    /// An abort record is being made durable (failed analysis, or a decider answering a
    /// `Resolve` for a transaction it never saw).
    Refusing,
    /// Commit applied, the completion record is being made durable (then `Ack`).
    Completing,
    /// The decider decided commit and waits for these nodes' acknowledgements.
    AwaitingAcks,
    /// The outcome is final here.
    Finished(Verdict),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Phase {
    Preparing {
        forward: Prepare,
    },
    Prepared {
        in_doubt: bool,
    },
    Deciding,
    Refusing {
        reason: AbortReason,
        askers: BTreeSet<NodeId>,
    },
    Completing,
    AwaitingAcks {
        awaiting: BTreeSet<NodeId>,
    },
    Finished(Verdict),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Txn {
    pub(super) client: ClientId,
    /// Empty when the node learnt of the transaction only through a `Resolve`.
    pub(super) chain: Vec<NodeId>,
    pub(super) writes: Vec<PageWrite>,
    pub(super) phase: Phase,
    /// Finished, and already finished when the last checkpoint was taken: the next
    /// checkpoint forgets it.
    pub(super) aged: bool,
}

impl Node {
    /// Transactions not yet finished here (preparing, prepared or in doubt, deciding,
    /// refusing, completing, or a decider awaiting acknowledgements). Zero once the
    /// node is quiescent.
    pub fn unfinished(&self) -> usize {
        self.txns
            .values()
            .filter(|t| !matches!(t.phase, Phase::Finished(_)))
            .count()
    }

    /// Transactions this node remembers (unfinished ones, and finished ones not yet
    /// forgotten by a checkpoint): bounded by the transactions in flight plus those
    /// finished during the last two checkpoint intervals.
    pub fn remembered(&self) -> usize {
        self.txns.len()
    }

    /// Clients with a low-water mark (one entry per client whose transactions were
    /// forgotten here).
    pub fn clients_with_marks(&self) -> usize {
        self.marks.len()
    }

    /// Give up the checkpoint started by [`checkpoint`](Self::checkpoint) (the host
    /// could not write it): nothing is forgotten, and a later checkpoint may start.
    pub fn cancel_checkpoint(&mut self) {
        self.checkpointing = None;
    }

    /// Whether a checkpoint is on its way to the log.
    pub fn checkpoint_in_progress(&self) -> bool {
        self.checkpointing.is_some()
    }

    pub(super) fn check_writes(&self, writes: &[PageWrite]) -> Result<(), PrepareError> {
        for w in writes {
            if w.page.0 >= self.page_capacity {
                return Err(PrepareError::OutOfRange {
                    page: w.page,
                    capacity: self.page_capacity,
                });
            }
            if w.data.len() > PAGE_SIZE {
                return Err(PrepareError::TooLarge {
                    page: w.page,
                    len: w.data.len(),
                });
            }
        }
        Ok(())
    }
}
