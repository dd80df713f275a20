//! The linear two-phase commit, as a deterministic sans-I/O state machine per node.
//!
//! A [`Node`] consumes inputs — [`Node::handle`] for a message, [`Node::persisted`]
//! when the log has made records durable, [`Node::tick`] on a retry timer — and returns
//! [`Action`]s for its host to carry out in order: send a message, append a record to
//! the log, apply page writes, answer a client. It does no I/O, reads no clock and
//! draws no random numbers, so the same inputs always give the same actions: the model
//! check (`tests/model.rs`) drives it directly, and the node's pipeline drives it with
//! a TCP transport, the group-commit log sink and the page store.
//!
//! See the [crate documentation](crate) for the protocol's sequence diagram, its
//! guarantee and what blocks when.

mod node;
mod recover;
mod state;

use serde::{Deserialize, Serialize};

use crate::locks::PrepareError;
use crate::log::{PageWrite, Record};
use crate::types::{ClientId, NodeId, TxnId};

pub use node::{Node, NodeConfig, TxnStatus};
pub use recover::RecoverError;

/// The prepare message: starts at the chain's head (sent by the client/coordinator) and
/// travels node to node in chain order once each node's intent is durable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Prepare {
    /// The transaction.
    pub txn: TxnId,
    /// The coordinator awaiting the outcome.
    pub client: ClientId,
    /// The order of commit decisions: head first, the decider last.
    pub chain: Vec<NodeId>,
    /// Each chain node's page writes (a node without an entry writes nothing).
    pub writes: Vec<(NodeId, Vec<PageWrite>)>,
}

impl Prepare {
    /// The decider (the chain's last node).
    pub fn decider(&self) -> Option<NodeId> {
        self.chain.last().copied()
    }

    /// `node`'s writes.
    pub fn writes_of(&self, node: NodeId) -> &[PageWrite] {
        self.writes
            .iter()
            .find(|(n, _)| *n == node)
            .map_or(&[], |(_, w)| w.as_slice())
    }
}

/// A message between nodes (and, for [`Message::Prepare`], from a client to the head).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Message {
    /// Prepare, forwarded along the chain.
    Prepare(Prepare),
    /// The decision is commit: sent by the decider to its predecessor and by each node to
    /// its predecessor, or to an in-doubt node as the answer to its `Resolve`.
    Commit {
        /// The transaction.
        txn: TxnId,
        /// The decider, to which a node that completed acknowledges (`Ack`), also
        /// when it already forgot the transaction.
        decider: NodeId,
    },
    /// The transaction aborts: sent toward the head by a node whose analysis failed (and
    /// passed on by each prepared node), or as the answer to a `Resolve`.
    Abort {
        /// The transaction.
        txn: TxnId,
    },
    /// A non-decider's completion of a committed transaction is durable.
    Ack {
        /// The transaction.
        txn: TxnId,
        /// The acknowledging node.
        from: NodeId,
    },
    /// An in-doubt node (prepared, outcome unknown) asks the decider for the outcome.
    Resolve {
        /// The transaction.
        txn: TxnId,
        /// The asking node, to which the decider answers `Commit` or `Abort`.
        from: NodeId,
        /// The client, answered by the decider if it decides abort for this query.
        client: ClientId,
    },
}

impl Message {
    /// The transaction the message is about.
    pub fn txn(&self) -> TxnId {
        match self {
            Message::Prepare(p) => p.txn,
            Message::Commit { txn, .. }
            | Message::Abort { txn }
            | Message::Ack { txn, .. }
            | Message::Resolve { txn, .. } => *txn,
        }
    }
}

/// What was wrong with a `Prepare` a node could not even analyse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum Malformed {
    /// The chain is empty.
    #[error("the chain is empty")]
    EmptyChain,
    /// The receiving node is not in the chain.
    #[error("the node is not in the chain")]
    NotInChain,
    /// A node appears twice in the chain.
    #[error("a node appears twice in the chain")]
    RepeatedNode,
}

/// Why a transaction aborted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum AbortReason {
    /// `node`'s prepare analysis failed (lock conflict, version mismatch, no space).
    #[error("node {node} refused: {error}")]
    Refused {
        /// The refusing node.
        node: NodeId,
        /// Its reason.
        error: PrepareError,
    },
    /// `node` rejected the prepare message itself.
    #[error("node {node} rejected the transaction: {what} — fix the chain")]
    Malformed {
        /// The rejecting node.
        node: NodeId,
        /// What was wrong.
        what: Malformed,
    },
    /// A prepared node asked the decider, which had no record of the transaction and so
    /// decided abort (presumed abort; e.g. the prepare was lost or the coordinator died).
    #[error("the decider had no record of it and presumed abort (a message was lost) — retry")]
    Unresolved,
}

/// What a client is told.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The decider's commit decision is durable; every node will apply its writes.
    Committed,
    /// No node applies any write.
    Aborted(AbortReason),
    /// `node` refused the `Prepare` because the transaction is at or below its client's
    /// low-water mark: either it was overtaken by a later transaction of the same
    /// client that the node already forgot (then it can never commit: it aborts), or
    /// it is a late copy of a transaction finished long ago (whose outcome was told
    /// then). The node cannot tell which, so this is not a verdict: the client should
    /// treat the outcome as unknown (and read the pages).
    Forgotten {
        /// The refusing node.
        node: NodeId,
    },
}

/// Identifies a record a node asked to persist, in its log order. Ids restart at 0 when
/// a node is built or recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub u64);

/// Something the host must do for a node, in the order given.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send `msg` to node `to` (best effort: the protocol retries what matters).
    Send {
        /// The destination.
        to: NodeId,
        /// The message.
        msg: Message,
    },
    /// Append `record` to the log. Records must become durable in id order; when every
    /// record up to `id` is durable the host calls [`Node::persisted`]`(id)`. The node
    /// sends nothing that depends on the record before then.
    Persist {
        /// The record's id.
        id: RecordId,
        /// The record.
        record: Record,
    },
    /// Write each page with version `expected + 1` to the page store. Need not be
    /// synced before later records: the log's intents are the redo source until a
    /// checkpoint syncs the page file.
    Apply {
        /// The committed transaction.
        txn: TxnId,
        /// The writes to apply.
        writes: Vec<PageWrite>,
    },
    /// Tell `client` the transaction's outcome (only ever sent once it is final).
    Reply {
        /// The client.
        client: ClientId,
        /// The transaction.
        txn: TxnId,
        /// Its outcome.
        outcome: Outcome,
    },
}
