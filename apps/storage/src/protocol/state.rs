//! A node's per-transaction state and tunables.

use std::collections::{BTreeMap, BTreeSet};

use super::{AbortReason, Ballot, Node};
use crate::locks::PrepareError;
use crate::log::{PageWrite, Verdict};
use crate::pages::PAGE_SIZE;
use crate::types::{ClientId, NodeId, TxnId};

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
    /// Ticks a prepared node of a transaction with acceptors (F ≥ 1) waits for its
    /// decider before it runs a recovery ballot with the acceptors (a decider in doubt
    /// after a restart runs one at its first tick).
    pub patience: u32,
    /// Checkpoints a client's low-water mark is kept after it was last raised; then
    /// it is folded into the node's floor (one id for all clients, see
    /// [`Checkpoint::floor`](crate::log::Checkpoint::floor)), so the marks are bounded
    /// by the clients active during the last `mark_horizon` checkpoint intervals.
    pub mark_horizon: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            lock_capacity: 1 << 16,
            page_capacity: u64::MAX,
            patience: 10,
            mark_horizon: 4,
        }
    }
}

/// Where a transaction stands on one node (see [`Node::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnStatus {
    /// The node has no record of it.
    Unknown,
    /// Analysis passed, locks held, the intent is being made durable (at the decider:
    /// it waits for the earlier nodes' intents to be durable before logging its own).
    Preparing,
    /// Voted yes (intent durable), waiting for the outcome. `in_doubt` after a restart.
    Prepared {
        /// Recovered from the log rather than prepared in this incarnation.
        in_doubt: bool,
    },
    /// The decider's intent is being made durable, or its commit proposal (ballot 0)
    /// waits for the acceptors (F ≥ 1).
    Replicating,
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
    /// A non-decider's intent is on its way to the log (the `Prepare` was forwarded).
    Preparing,
    /// The decider: analysis passed and locks held, nothing logged yet; waits for
    /// the [`Message::Durable`](super::Message::Durable) notice of its predecessor
    /// (every earlier intent durable) before it logs its intent and decides.
    Waiting,
    Prepared {
        in_doubt: bool,
    },
    /// The decider (F ≥ 1): its intent is on its way to the log (`sent` false), then
    /// its `Accept` of ballot 0 (commit) is out and `accepted` have answered.
    Proposing {
        sent: bool,
        accepted: BTreeSet<NodeId>,
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

impl Phase {
    /// Whether a transaction in this phase may still add a record to this node's log
    /// without first waiting on another node's log: its own record is on its way to
    /// the log (preparing, proposing, deciding, refusing, completing), or (the
    /// decider, waiting) it logs its intent as soon as its predecessor's intent is
    /// durable. Not: prepared or in doubt (waits for the decision), a decider
    /// awaiting acknowledgements (logs nothing more), finished.
    pub(super) fn joins(&self) -> bool {
        match self {
            Phase::Preparing
            | Phase::Waiting
            | Phase::Proposing { .. }
            | Phase::Deciding
            | Phase::Refusing { .. }
            | Phase::Completing => true,
            Phase::Prepared { .. } | Phase::AwaitingAcks { .. } | Phase::Finished(_) => false,
        }
    }

    /// Not finished (counted by [`Node::unfinished`]).
    pub(super) fn is_open(&self) -> bool {
        !matches!(self, Phase::Finished(_))
    }
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
    /// F: the decision's acceptors besides the decider.
    pub(super) acceptors: u8,
    /// As an acceptor: the highest ballot promised (durable).
    pub(super) promised: Ballot,
    /// As an acceptor: the highest ballot accepted and its verdict (durable).
    pub(super) accepted: Option<(Ballot, Verdict)>,
    /// Ticks spent prepared (or, at the decider, waiting) without an outcome.
    pub(super) waited: u32,
    /// At the decider: the chain nodes whose intent is durable (their
    /// [`Message::Durable`](super::Message::Durable) notice arrived).
    pub(super) durable_from: BTreeSet<NodeId>,
    /// The highest round seen in a refusal.
    pub(super) max_round: u32,
    /// The recovery ballot this node runs, if any.
    pub(super) recovery: Option<Recovery>,
}

impl Txn {
    pub(super) fn new(
        client: ClientId,
        chain: Vec<NodeId>,
        writes: Vec<PageWrite>,
        phase: Phase,
        acceptors: u8,
    ) -> Self {
        Txn {
            client,
            chain,
            writes,
            phase,
            aged: false,
            acceptors,
            promised: Ballot::default(),
            accepted: None,
            waited: 0,
            durable_from: BTreeSet::new(),
            max_round: 0,
            recovery: None,
        }
    }

    /// The decision's acceptors besides the decider.
    pub(super) fn acceptor_nodes(&self) -> &[NodeId] {
        super::acceptors_of(&self.chain, self.acceptors)
    }
}

/// A recovery ballot run by a node in doubt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Recovery {
    pub(super) ballot: Ballot,
    /// Phase 1: the acceptors that promised, with what they had accepted.
    pub(super) promises: BTreeMap<NodeId, Option<(Ballot, Verdict)>>,
    /// Phase 2: the verdict proposed, once a quorum promised.
    pub(super) proposal: Option<Verdict>,
    /// Phase 2: the acceptors that accepted it.
    pub(super) accepted: BTreeSet<NodeId>,
    /// An answer arrived since the last tick.
    pub(super) progress: bool,
}

impl Node {
    /// Transactions not yet finished here (preparing, prepared or in doubt, deciding,
    /// refusing, completing, or a decider awaiting acknowledgements). Zero once the
    /// node is quiescent. O(1): the count is kept up to date as the transactions
    /// change phase (the group-commit log reads it at every burst).
    pub fn unfinished(&self) -> usize {
        self.open
    }

    /// Transactions that may still add a record to this node's log without first
    /// waiting on another node's log (see [`TxnStatus`]): `Preparing`, `Replicating`,
    /// `Deciding`, `Refusing` and `Completing` — not `Prepared` (durable here, waiting
    /// for the decision), `AwaitingAcks` or `Finished`. The group-commit log lingers
    /// for at most this many records. O(1): the count is kept up to date as the
    /// transactions change phase.
    pub fn joinable(&self) -> usize {
        self.joining
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

    /// The floor: every transaction id at or below it is refused as late, whatever
    /// its client (see [`Checkpoint::floor`](crate::log::Checkpoint::floor)).
    pub fn floor(&self) -> TxnId {
        self.floor
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
