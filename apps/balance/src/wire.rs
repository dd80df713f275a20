//! The wire formats: length-delimited (4-byte big-endian length) postcard frames, for
//! the agent protocol and for the producers' request protocol.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::lease::{ClusterKey, LeaseToken, TAG_LEN};
use crate::shed::{Indicators, Verdict};
use crate::weights::{ConsumerId, ConsumerReport, ProducerId, ProducerReport, WeightView};

/// Largest frame an agent accepts (a lease request with hundreds of reports fits).
pub const MAX_AGENT_FRAME: usize = 64 * 1024;
/// Largest frame a producer accepts.
pub const MAX_PRODUCER_FRAME: usize = 1024 * 1024;

/// The frame codec with a size bound; a longer frame is an error (the connection is
/// closed and the frame counted as malformed).
pub fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max)
        .new_codec()
}

/// Encodes a message as one frame body.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    Bytes::from(postcard::to_allocvec(msg).expect("messages encode"))
}

/// Decodes one frame body; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (v, rest) = postcard::take_from_bytes(bytes)?;
    if rest.is_empty() {
        Ok(v)
    } else {
        Err(postcard::Error::DeserializeUnexpectedEnd)
    }
}

/// A consumer's lease request: renewals, releases, reports and new leases in one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LeaseRequest {
    /// Who asks.
    pub consumer: ConsumerId,
    /// New leases wanted (in addition to the renewed ones).
    pub want: u16,
    /// Leases to extend.
    pub renew: Vec<LeaseToken>,
    /// Leases given back (the consumer moved off them).
    pub release: Vec<LeaseToken>,
    /// What the consumer saw of producers, each proven by a lease it held on it.
    pub reports: Vec<(LeaseToken, ConsumerReport)>,
    /// Producers not to hand out to this consumer now (e.g. the one that just shed it).
    pub avoid: Vec<ProducerId>,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The signed lease id.
    pub token: LeaseToken,
    /// Where the producer serves.
    pub addr: SocketAddr,
    /// Expected latency on this producer, µs (0 = unknown): the starting point of the
    /// consumer's estimate.
    pub latency_hint_us: f64,
}

/// Why a renewal was refused: the lease is over (revoked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The token's tag is not the agent's.
    Forged,
    /// The lease was issued by another agent of the cluster (ask that one).
    OtherAgent,
    /// The token is another consumer's.
    NotYours,
    /// The lease already expired.
    Expired,
    /// The producer is unknown, dead or left.
    ProducerGone,
    /// The producer is shedding connections.
    ProducerShedding,
    /// The producer holds more than twice its weight's share of the leases (it
    /// degraded, or others joined): move to another.
    Rebalance,
}

/// The agent's answer to a [`LeaseRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LeaseResponse {
    /// Renewed leases (new tokens, later expiry).
    pub renewed: Vec<Lease>,
    /// Refused renewals: the consumer must drain and leave these producers.
    pub refused: Vec<(LeaseToken, Refusal)>,
    /// New leases.
    pub granted: Vec<Lease>,
    /// Reports accepted.
    pub reports_accepted: u32,
    /// Reports rejected (forged, not the consumer's, for an unleased producer or repeated).
    pub reports_rejected: u32,
}

/// A producer's periodic status, authenticated with the cluster key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProducerStatus {
    /// The producer.
    pub id: ProducerId,
    /// Where consumers reach it.
    pub addr: SocketAddr,
    /// Where it receives peers' gossip (UDP).
    pub gossip: SocketAddr,
    /// Its load report.
    pub report: ProducerReport,
    /// Its workload indicators.
    pub indicators: Indicators,
    /// Connections it closed by rebalancing, in total.
    pub shed_total: u64,
    /// Its shedding decider's last verdict.
    pub last_verdict: Option<Verdict>,
    /// Leaving: deregister it.
    pub leaving: bool,
}

const STATUS_DOMAIN: &[u8] = b"pipewright-balance producer status v1";

/// A [`ProducerStatus`] with its tag.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SignedStatus {
    /// The status.
    pub status: ProducerStatus,
    /// HMAC-SHA256 (truncated) under the cluster key.
    pub tag: [u8; TAG_LEN],
}

impl SignedStatus {
    /// Signs a status.
    pub fn sign(key: &ClusterKey, status: ProducerStatus) -> Self {
        Self {
            status,
            tag: key.tag(
                STATUS_DOMAIN,
                &postcard::to_allocvec(&status).expect("encode"),
            ),
        }
    }

    /// Whether the tag is right.
    pub fn verify(&self, key: &ClusterKey) -> bool {
        let bytes = postcard::to_allocvec(&self.status).expect("encode");
        key.verify(STATUS_DOMAIN, &bytes, &self.tag)
    }
}

/// A peer producer, for gossip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Its id.
    pub id: ProducerId,
    /// Its gossip address.
    pub gossip: SocketAddr,
}

/// What is sent to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// A consumer's lease request.
    Lease(LeaseRequest),
    /// A producer's status.
    Producer(SignedStatus),
    /// The agent's status (for `pipewright balance status`).
    Status,
}

/// One producer as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducerView {
    /// Its weight and the weight's parts.
    pub weight: WeightView,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its last indicators.
    pub indicators: Indicators,
    /// Its last load report.
    pub report: ProducerReport,
    /// Connections it shed, in total.
    pub shed_total: u64,
    /// Its shedding decider's last verdict.
    pub last_verdict: Option<Verdict>,
}

/// An agent's status and counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentStatus {
    /// The agent's id.
    pub agent: u32,
    /// Its producers.
    pub producers: Vec<ProducerView>,
    /// Leases currently out.
    pub active_leases: u64,
    /// Leases granted since start.
    pub granted: u64,
    /// Renewals since start.
    pub renewed: u64,
    /// Renewals refused (revocations) since start.
    pub refused: u64,
    /// Consumer reports accepted / rejected.
    pub reports_accepted: u64,
    /// Consumer reports rejected.
    pub reports_rejected: u64,
    /// Producer statuses with a bad tag.
    pub forged_status: u64,
    /// Requests answered `Busy`.
    pub busy: u64,
    /// Malformed or oversized frames.
    pub malformed: u64,
}

/// What an agent answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum AgentResponse {
    /// The answer to a lease request.
    Lease(LeaseResponse),
    /// A producer's status was taken: here are its peers.
    Peers(Vec<Peer>),
    /// The status.
    Status(AgentStatus),
    /// The agent is at its in-flight limit: try again later (or another agent).
    Busy,
    /// The request was refused (e.g. a forged producer status).
    Refused(String),
}

/// A consumer's request to a producer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Matches the answer.
    pub id: u64,
    /// Whether the request may be executed twice without harm.
    pub idempotent: bool,
    /// Opaque payload (echoed back).
    pub payload: Vec<u8>,
}

/// What a producer sends on a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProducerFrame {
    /// The answer to request `id`.
    Done {
        /// Request id.
        id: u64,
        /// The payload, echoed.
        payload: Vec<u8>,
    },
    /// Request `id` failed at the producer (it was not, or not completely, done).
    Failed {
        /// Request id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// Request `id` was refused unexecuted: the producer is at capacity.
    Busy {
        /// Request id.
        id: u64,
    },
    /// The producer closes this connection after the requests already sent: reconnect
    /// elsewhere (through the agent). Every request sent before this frame will be
    /// answered; later ones are refused unexecuted with `Busy`.
    GoAway,
}

/// An agent status as pretty JSON.
pub fn status_json(s: &AgentStatus) -> String {
    serde_json::to_string_pretty(s).expect("status encodes")
}
