//! The records of a node's log.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::Ballot;
use crate::types::{ClientId, NodeId, PageId, TxnId, Version};

/// One page modification: write `data` to `page` if it is still at version `expected`;
/// the page's version becomes `expected + 1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageWrite {
    /// The page to write.
    pub page: PageId,
    /// The version the client based this write on.
    pub expected: Version,
    /// The page's new contents (at most [`PAGE_SIZE`](crate::pages::PAGE_SIZE) bytes;
    /// the rest of the page is zero). Shared, so copies of a write (the client's
    /// resend, the node's intent record and its apply) do not copy the page; encoded
    /// like a `Vec<u8>` (a length, then the bytes), so the log format is unchanged.
    pub data: Bytes,
}

/// The outcome of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Verdict {
    /// Every node's writes take effect.
    Commit,
    /// No node's writes take effect.
    Abort,
}

/// A node's durable intent to commit: its analysis succeeded, its locks are held and it
/// will not abort on its own (it voted yes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Intent {
    /// The transaction.
    pub txn: TxnId,
    /// Who awaits the outcome.
    pub client: ClientId,
    /// The order of commit decisions; the last node is the decider.
    pub chain: Vec<NodeId>,
    /// This node's writes (redone from here on recovery when the outcome is commit).
    pub writes: Vec<PageWrite>,
    /// F, the decision's acceptors besides the decider
    /// ([`Prepare::acceptors`](crate::protocol::Prepare::acceptors)); 0 in logs written
    /// before format 3.
    pub acceptors: u8,
}

/// An intent as formats 1 and 2 encode it (no acceptors: F = 0).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct IntentV1 {
    pub(crate) txn: TxnId,
    pub(crate) client: ClientId,
    pub(crate) chain: Vec<NodeId>,
    pub(crate) writes: Vec<PageWrite>,
}

impl From<IntentV1> for Intent {
    fn from(i: IntentV1) -> Self {
        Intent {
            txn: i.txn,
            client: i.client,
            chain: i.chain,
            writes: i.writes,
            acceptors: 0,
        }
    }
}

impl Intent {
    pub(crate) fn v1(&self) -> IntentV1 {
        IntentV1 {
            txn: self.txn,
            client: self.client,
            chain: self.chain.clone(),
            writes: self.writes.clone(),
        }
    }
}

impl Intent {
    /// The decider of this transaction (the chain's last node).
    pub fn decider(&self) -> Option<NodeId> {
        self.chain.last().copied()
    }
}

/// A record of a node's log.
///
/// ```
/// use pipewright_storage::log::{encode, replay, Record, Verdict};
/// use pipewright_storage::{ClientId, TxnId};
///
/// let mut buf = Vec::new();
/// encode(&Record::Decision { txn: TxnId(1), client: ClientId(7), verdict: Verdict::Commit }, &mut buf).unwrap();
/// encode(&Record::Forget { txn: TxnId(1) }, &mut buf).unwrap();
/// let replayed = replay(&buf);
/// assert_eq!(replayed.records.len(), 2);
/// assert_eq!(replayed.valid_len, buf.len());
/// assert!(replayed.corruption.is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "RecordRepr", into = "RecordRepr")]
pub enum Record {
    /// This node prepared the transaction (voted yes).
    Intent(Intent),
    /// The decider's decision (only in the decider's log). A `Commit` decision always
    /// follows the decider's own `Intent` for the transaction.
    Decision {
        /// The transaction.
        txn: TxnId,
        /// Its client (whose low-water mark covers the transaction once forgotten).
        client: ClientId,
        /// Commit or abort.
        verdict: Verdict,
    },
    /// A non-decider node learnt the outcome (commit: its writes were applied; abort:
    /// its locks were released, or its own analysis refused the transaction).
    Completion {
        /// The transaction.
        txn: TxnId,
        /// Its client (whose low-water mark covers the transaction once forgotten).
        client: ClientId,
        /// Commit or abort.
        verdict: Verdict,
    },
    /// The decider received every completion acknowledgement for a committed
    /// transaction: it no longer re-sends `Commit` for it after a restart.
    Forget {
        /// The transaction.
        txn: TxnId,
    },
    /// The first record of a log segment: everything the node still needs from the
    /// records before it (which recovery then ignores). See [`Checkpoint`].
    Checkpoint(Checkpoint),
    /// An acceptor of the decision promised `ballot`: it accepts no lower ballot.
    Promise {
        /// The transaction.
        txn: TxnId,
        /// Its client.
        client: ClientId,
        /// The promised ballot.
        ballot: Ballot,
    },
    /// An acceptor of the decision accepted `verdict` in `ballot`.
    Accept {
        /// The transaction.
        txn: TxnId,
        /// Its client.
        client: ClientId,
        /// The accepted ballot.
        ballot: Ballot,
        /// The accepted verdict.
        verdict: Verdict,
    },
}

/// How records are serialized inside a checkpoint: the variants of formats 1 and 2
/// first, unchanged (an intent without acceptors keeps its old layout), new ones after.
#[derive(Clone, Serialize, Deserialize)]
enum RecordRepr {
    Intent(IntentV1),
    Decision {
        txn: TxnId,
        client: ClientId,
        verdict: Verdict,
    },
    Completion {
        txn: TxnId,
        client: ClientId,
        verdict: Verdict,
    },
    Forget {
        txn: TxnId,
    },
    Checkpoint(Checkpoint),
    IntentF(Intent),
    Promise {
        txn: TxnId,
        client: ClientId,
        ballot: Ballot,
    },
    Accept {
        txn: TxnId,
        client: ClientId,
        ballot: Ballot,
        verdict: Verdict,
    },
}

impl From<RecordRepr> for Record {
    fn from(r: RecordRepr) -> Self {
        match r {
            RecordRepr::Intent(i) => Record::Intent(i.into()),
            RecordRepr::IntentF(i) => Record::Intent(i),
            RecordRepr::Decision {
                txn,
                client,
                verdict,
            } => Record::Decision {
                txn,
                client,
                verdict,
            },
            RecordRepr::Completion {
                txn,
                client,
                verdict,
            } => Record::Completion {
                txn,
                client,
                verdict,
            },
            RecordRepr::Forget { txn } => Record::Forget { txn },
            RecordRepr::Checkpoint(c) => Record::Checkpoint(c),
            RecordRepr::Promise {
                txn,
                client,
                ballot,
            } => Record::Promise {
                txn,
                client,
                ballot,
            },
            RecordRepr::Accept {
                txn,
                client,
                ballot,
                verdict,
            } => Record::Accept {
                txn,
                client,
                ballot,
                verdict,
            },
        }
    }
}

impl From<Record> for RecordRepr {
    fn from(r: Record) -> Self {
        match r {
            Record::Intent(i) if i.acceptors == 0 => RecordRepr::Intent(i.v1()),
            Record::Intent(i) => RecordRepr::IntentF(i),
            Record::Decision {
                txn,
                client,
                verdict,
            } => RecordRepr::Decision {
                txn,
                client,
                verdict,
            },
            Record::Completion {
                txn,
                client,
                verdict,
            } => RecordRepr::Completion {
                txn,
                client,
                verdict,
            },
            Record::Forget { txn } => RecordRepr::Forget { txn },
            Record::Checkpoint(c) => RecordRepr::Checkpoint(c),
            Record::Promise {
                txn,
                client,
                ballot,
            } => RecordRepr::Promise {
                txn,
                client,
                ballot,
            },
            Record::Accept {
                txn,
                client,
                ballot,
                verdict,
            } => RecordRepr::Accept {
                txn,
                client,
                ballot,
                verdict,
            },
        }
    }
}

/// A checkpoint: the node's durable state once every transaction it forgets is
/// out of the log.
///
/// Written as the first record of a new log segment, after the page file was synced
/// (so no write of a forgotten transaction needs redo). Recovery from a segment
/// starts from its checkpoint and then replays the records after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Per client, the highest transaction id this node has forgotten: a `Prepare` or
    /// `Resolve` for an unknown transaction at or below its client's mark is a late
    /// one (a duplicate, or overtaken by a later transaction of the same client) and
    /// is refused without creating any state.
    pub marks: Vec<(ClientId, TxnId)>,
    /// Transactions whose outcome is final here and that are still remembered (they
    /// are forgotten at the next checkpoint): `(txn, client, verdict)`.
    pub finished: Vec<(TxnId, ClientId, Verdict)>,
    /// Re-logged records of the transactions not finished here (intents; a decider's
    /// commit decisions still awaiting acknowledgements), in their original order.
    pub open: Vec<Record>,
    /// Every transaction id at or below it is late, whatever its client: the marks of
    /// clients idle for `mark_horizon` checkpoints, folded into one id (0 in logs of
    /// format 3 and older, which kept every mark). A client refused as late picks its
    /// next ids above it.
    pub floor: TxnId,
}

/// A checkpoint as logs of format 3 and older wrote it (every mark, no floor).
#[derive(Deserialize)]
pub(crate) struct CheckpointV3 {
    marks: Vec<(ClientId, TxnId)>,
    finished: Vec<(TxnId, ClientId, Verdict)>,
    open: Vec<Record>,
}

impl From<CheckpointV3> for Checkpoint {
    fn from(c: CheckpointV3) -> Self {
        Checkpoint {
            marks: c.marks,
            finished: c.finished,
            open: c.open,
            floor: TxnId(0),
        }
    }
}

impl Record {
    /// The transaction this record is about (`None` for a checkpoint).
    pub fn txn(&self) -> Option<TxnId> {
        match self {
            Record::Intent(i) => Some(i.txn),
            Record::Decision { txn, .. }
            | Record::Completion { txn, .. }
            | Record::Forget { txn }
            | Record::Promise { txn, .. }
            | Record::Accept { txn, .. } => Some(*txn),
            Record::Checkpoint(_) => None,
        }
    }
}
