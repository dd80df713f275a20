//! What travels over TCP between nodes and between clients and nodes.
//!
//! Every connection carries length-delimited frames ([`codec`]: a 4-byte big-endian
//! length, then the payload; at most [`MAX_FRAME`] bytes) whose payloads are `postcard`
//! encodings of the types here. The accepting node's first frame is a [`Challenge`];
//! the connecting side answers with a [`Hello`] signed under the cluster key over it
//! ([`SignedHello`](crate::auth::SignedHello), see [`auth`](crate::auth)): a peer node
//! then sends protocol [`Message`]s, one per frame; a client waits for
//! [`ClientResponse::Welcome`] and then sends [`ClientRequest`]s. A frame that
//! does not decode as what the connection expects is a [`FrameError`]: the node counts
//! it and closes that connection, and keeps serving the others.
//!
//! ```
//! use pipewright_storage::wire::{decode, encode, Hello};
//! use pipewright_storage::ClientId;
//!
//! let bytes = encode(&Hello::Client { id: ClientId(7) });
//! assert_eq!(decode::<Hello>(&bytes).unwrap(), Hello::Client { id: ClientId(7) });
//! assert!(decode::<Hello>(&[0xff, 0xff, 0xff]).is_err());
//! ```
//!
//! [`Message`]: crate::protocol::Message

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::log::Verdict;
use crate::protocol::{Outcome, Prepare};
use crate::types::{ClientId, NodeId, PageId, TxnId, Version};

/// The largest frame a node or client accepts (a `Prepare` with many page writes fits).
pub const MAX_FRAME: usize = 4 << 20;

/// The frame codec of every storage connection.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// The accepting node's first frame on every connection: a fresh nonce that the
/// connecting side signs with the cluster key in its hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The node that sends it: the connecting side checks that it is the node it
    /// meant to reach, and its signature covers it, so a hello cannot be relayed to
    /// another node.
    pub node: NodeId,
    /// 16 random bytes, new for each connection.
    pub nonce: [u8; 16],
}

/// Who is connecting (sent signed: [`SignedHello`](crate::auth::SignedHello)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hello {
    /// A peer node; protocol messages follow.
    Peer {
        /// The connecting node.
        from: NodeId,
    },
    /// A client (coordinator); requests follow once the node answers `Welcome`.
    Client {
        /// The client's id: outcomes of its transactions are sent on this connection.
        id: ClientId,
    },
}

/// A client's request to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Start a transaction: sent to the chain's head. The node overrides
    /// `Prepare::client` with the connection's client id.
    Prepare(Prepare),
    /// Read a committed page.
    Read {
        /// Echoed in the answer.
        req: u64,
        /// The page.
        page: PageId,
    },
    /// Ask for the node's [`NodeStatus`].
    Status {
        /// Echoed in the answer.
        req: u64,
    },
    /// Settle the node's in-doubt transactions now: ask their deciders and (F ≥ 1)
    /// run recovery ballots with their acceptors. Answered with the node's
    /// [`NodeStatus`] as it was when the request arrived.
    Resolve {
        /// Echoed in the answer.
        req: u64,
    },
    /// Ask for the outcome of transactions as the node knows them.
    Verdicts {
        /// Echoed in the answer.
        req: u64,
        /// The transactions.
        txns: Vec<TxnId>,
    },
}

/// A node's answer to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The hello was refused (to a client or a peer node), then the connection closed.
    Denied {
        /// Why, in words.
        reason: String,
    },
    /// The `Hello` was accepted; outcomes for this client id now come here.
    Welcome {
        /// The answering node.
        node: NodeId,
    },
    /// A transaction's final outcome (from the decider, or from a node that refused).
    Outcome {
        /// The transaction.
        txn: TxnId,
        /// Its outcome.
        outcome: Outcome,
    },
    /// The head's in-flight budget is full: the transaction was not started (nothing of
    /// it exists anywhere); retry later.
    Busy {
        /// The transaction.
        txn: TxnId,
    },
    /// A page read: the committed version and the data as written (empty if never
    /// written).
    Page {
        /// The request.
        req: u64,
        /// The page's committed version (0 if never written).
        version: Version,
        /// Its data.
        data: Vec<u8>,
    },
    /// A read or status request failed.
    Failed {
        /// The request.
        req: u64,
        /// Why.
        error: String,
    },
    /// The node's status.
    Status {
        /// The request.
        req: u64,
        /// The status.
        status: NodeStatus,
    },
    /// The outcomes asked for: `None` while open on the node, or unknown to it.
    Verdicts {
        /// The request.
        req: u64,
        /// Per transaction, its verdict here.
        verdicts: Vec<(TxnId, Option<Verdict>)>,
    },
}

/// A snapshot of a node's state and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node: NodeId,
    /// Transactions not yet finished on this node (0 when quiescent).
    pub unfinished: u64,
    /// Client transactions admitted at this node (as head) and not yet finished here.
    pub in_flight: u64,
    /// Client transactions refused with `Busy`.
    pub busy: u64,
    /// Frames that failed to decode (each closed its connection).
    pub malformed_frames: u64,
    /// Connections refused because their hello was not signed with the cluster key.
    pub auth_failures: u64,
    /// Messages to peers dropped (link queue full or peer unknown); the protocol
    /// re-sends what matters.
    pub dropped_sends: u64,
    /// Bytes appended to the log since the node started.
    pub log_bytes: u64,
    /// Group-commit bursts (one write + one `fdatasync` each) since the node started.
    pub log_syncs: u64,
    /// Bytes of the log on disk now (the current segment; two segments briefly
    /// during a checkpoint).
    pub log_disk_bytes: u64,
    /// Checkpoints made durable since the node started.
    pub checkpoints: u64,
    /// Transactions the node remembers (unfinished, or finished and not yet
    /// forgotten by a checkpoint).
    pub remembered: u64,
    /// Clients with a low-water mark of forgotten transactions.
    pub low_water_marks: u64,
    /// Fault injection on the peer links (off unless enabled for tests): messages
    /// dropped, duplicated and delayed. Always 0 from a node built without the
    /// feature `faults` (the fields stay, so every build speaks the same protocol).
    pub net_dropped: u64,
    /// See `net_dropped`.
    pub net_duplicated: u64,
    /// See `net_dropped`.
    pub net_delayed: u64,
    /// Transactions that voted yes here and wait for their outcome, oldest first (the
    /// first is the oldest intent).
    pub in_doubt: Vec<InDoubt>,
    /// How long the node's recovery took when it started, in milliseconds.
    pub recovery_ms: u64,
    /// Log records written since the node started (`log_records / log_syncs`: records
    /// per `fdatasync`).
    pub log_records: u64,
    /// Microseconds the log waited (group-commit linger) for fuller bursts.
    pub linger_us: u64,
}

/// A transaction prepared on a node and waiting for its outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InDoubt {
    /// The transaction.
    pub txn: TxnId,
    /// The node that decides it (none if only known through a `Resolve`).
    pub decider: Option<NodeId>,
    /// Found in the log by recovery (rather than prepared since the node started).
    pub recovered: bool,
    /// How long it has been waiting, in milliseconds (measured by the node's retry
    /// timer: up to one tick short).
    pub age_ms: u64,
}

/// A frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed, or a frame exceeded [`MAX_FRAME`].
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The payload is not a valid encoding of the expected type.
    #[error("malformed frame: {0}")]
    Decode(#[from] postcard::Error),
    /// The payload decoded but has bytes left over.
    #[error("malformed frame: {0} trailing bytes")]
    Trailing(usize),
    /// The connection ended where a frame was expected.
    #[error("connection closed")]
    Closed,
    /// A valid frame that is not allowed here (e.g. a second `Hello`).
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
}

/// Encode a frame payload.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(postcard::to_allocvec(value).expect("in-memory postcard encoding cannot fail"))
}

/// Decode a frame payload; the whole payload must be used.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(FrameError::Trailing(rest.len()))
    }
}
