//! The linear two-phase commit, as a deterministic sans-I/O state machine per node.
//!
//! A [`Node`] consumes inputs — [`Node::handle`] for a message, [`Node::persisted`]
//! when the log has made records durable, [`Node::tick`] on a retry timer — and returns
//! [`Action`]s for its host to carry out in order: send a message, append a record to
//! the log, apply page writes, answer a client. It does no I/O, reads no clock and
//! draws no random numbers, so the same inputs always give the same actions: the model
//! check (`tests/model/`) drives it directly, and the node's pipeline drives it with
//! a TCP transport, the group-commit log sink and the page store.
//!
//! See the [crate documentation](crate) for the protocol's sequence diagram, its
//! guarantee and what blocks when.

mod ballots;
mod complete;
mod decide;
mod housekeeping;
mod node;
mod prepare;
mod recover;
mod state;

use serde::{Deserialize, Serialize};

use crate::locks::PrepareError;
use crate::log::{PageWrite, Record, Verdict};
use crate::types::{ClientId, NodeId, TxnId};

pub use node::{Node, NodeConfig, TxnStatus};
pub use recover::RecoverError;

/// A ballot of a transaction's decision: `round` 0 belongs to the decider (its commit
/// proposal), higher rounds to recovering nodes (`node` makes each round unique).
/// Ordered by round, then node.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Ballot {
    /// The round: 0 for the decider's proposal.
    pub round: u32,
    /// The proposer.
    pub node: NodeId,
}

/// The decision's acceptors of a transaction over `chain` with `f` acceptors besides
/// the decider: the (at most `f`, and at most all other) chain nodes just before the
/// decider. Empty for `f = 0`: the decider alone decides (plain two-phase commit).
pub fn acceptors_of(chain: &[NodeId], f: u8) -> &[NodeId] {
    let n = chain.len();
    if n == 0 {
        return &[];
    }
    let f = (f as usize).min(n - 1);
    &chain[n - 1 - f..n - 1]
}

/// How many acceptors make a recovery quorum: a majority of them.
pub fn recovery_quorum(acceptors: usize) -> usize {
    acceptors / 2 + 1
}

/// The prepare message: starts at the chain's head (sent by the client/coordinator) and
/// travels node to node in chain order once each node's analysis passed (its intent
/// still on its way to the log; [`Message::Durable`] follows once it is durable).
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
    /// F: how many chain nodes besides the decider must hold the commit decision
    /// durably before anyone acts on it ([`acceptors_of`]). 0 is plain two-phase
    /// commit (the decider alone; in-doubt nodes block while it is down); with F ≥ 1
    /// in-doubt nodes settle the outcome with the acceptors while the decider is down.
    pub acceptors: u8,
}

impl Prepare {
    /// The decider (the chain's last node).
    pub fn decider(&self) -> Option<NodeId> {
        self.chain.last().copied()
    }

    /// The decision's acceptors besides the decider ([`acceptors_of`]).
    pub fn acceptor_nodes(&self) -> &[NodeId] {
        acceptors_of(&self.chain, self.acceptors)
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
    /// Prepare, forwarded along the chain as soon as the node's analysis passed
    /// (before its intent is durable: the syncs of the chain's nodes overlap).
    Prepare(Prepare),
    /// The sender holds its intent durably: sent straight to the decider by every
    /// other chain node once its own intent is durable (and again on every tick while
    /// it is prepared). The decider decides commit only after every other chain
    /// node's notice arrived (see the crate documentation, "Pipelined prepares").
    Durable {
        /// The transaction.
        txn: TxnId,
        /// The chain node whose intent is durable.
        from: NodeId,
    },
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
    /// Phase 1 of a recovery ballot: a node in doubt whose decider does not answer
    /// asks an acceptor to promise `ballot` and report what it accepted (a node that
    /// knows the outcome answers `Commit`/`Abort` instead; one that never prepared
    /// the transaction records abort and answers `Abort`).
    Query {
        /// The transaction.
        txn: TxnId,
        /// The ballot (its `node` is the asker).
        ballot: Ballot,
        /// The client (for an abort record).
        client: ClientId,
    },
    /// An acceptor promised `ballot` (durably) and reports its accepted value.
    Promise {
        /// The transaction.
        txn: TxnId,
        /// The promised ballot.
        ballot: Ballot,
        /// The acceptor.
        from: NodeId,
        /// The highest ballot it accepted, and the verdict.
        accepted: Option<(Ballot, Verdict)>,
    },
    /// Phase 2: accept `verdict` in `ballot` (round 0: the decider's commit).
    Accept {
        /// The transaction.
        txn: TxnId,
        /// The ballot (its `node` is the proposer).
        ballot: Ballot,
        /// The proposed verdict.
        verdict: Verdict,
        /// The client (for an abort record).
        client: ClientId,
    },
    /// An acceptor made `ballot`'s verdict durable.
    Accepted {
        /// The transaction.
        txn: TxnId,
        /// The accepted ballot.
        ballot: Ballot,
        /// The acceptor.
        from: NodeId,
    },
    /// An acceptor refused `ballot`: it promised `promised`, a higher one.
    Nack {
        /// The transaction.
        txn: TxnId,
        /// The refused ballot.
        ballot: Ballot,
        /// The ballot the acceptor promised.
        promised: Ballot,
        /// The acceptor.
        from: NodeId,
    },
}

impl Message {
    /// The transaction the message is about.
    pub fn txn(&self) -> TxnId {
        match self {
            Message::Prepare(p) => p.txn,
            Message::Commit { txn, .. }
            | Message::Durable { txn, .. }
            | Message::Abort { txn }
            | Message::Ack { txn, .. }
            | Message::Resolve { txn, .. }
            | Message::Query { txn, .. }
            | Message::Promise { txn, .. }
            | Message::Accept { txn, .. }
            | Message::Accepted { txn, .. }
            | Message::Nack { txn, .. } => *txn,
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
    /// The chain names more nodes than any cluster has.
    #[error("the chain names more than 256 nodes")]
    ChainTooLong,
    /// A node of the chain is not in the receiving node's peers file: nothing sent
    /// to it would ever arrive, and the transaction could never settle.
    #[error("node {0} of the chain is not in this node's peers file")]
    UnknownNode(NodeId),
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
    /// The decider was unreachable and the in-doubt nodes settled the transaction as
    /// abort with the decision's acceptors (no acceptor held a commit decision).
    #[error(
        "the decider was unreachable and the acceptors settled it as abort (no commit decision was replicated) — retry"
    )]
    Settled,
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
        /// The node's floor ([`Node::floor`]): a client that picks its next
        /// transaction ids above it is not refused as late again.
        floor: TxnId,
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
