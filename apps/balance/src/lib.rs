//! pipewright's lease balancer and connection rebalancing.
//!
//! # The weight formula
//!
//! Per producer `p`, [`Weights`] combines what the producer says about itself
//! (gRFC A58's server load report) with what consumers saw of it (tower's
//! client-observed latency idea, reported to the agent instead of kept per client):
//!
//! ```text
//! base(p)   = rps / (utilisation + (error_rate / rps) * error_penalty)       (A58)
//!             from p's last non-empty report (rps and utilisation > 0; empty
//!             reports are ignored, as in A58) — or the mean base of the others
//!             while p is in its blackout period (from its first non-empty report) or
//!             that report is older than weight_expiry
//! lat(p)    = clamp(geomean_q(latency_q) / latency_p, 1/C, C) ^ fade      (consumers)
//! err(p)    = 1 / (1 + consumer_error_penalty * failure_fraction_p * fade)
//! fade      = exp(-age of p's last consumer report / consumer_decay)
//! weight(p) = base(p) * lat(p) * err(p), and 0 if p has not reported for dead_after
//! ```
//!
//! Why: `rps/utilisation` is the producer's own estimate of what it can serve at full
//! use (its capacity); the error term makes a producer that answers fast with errors
//! look busy (A58). A new producer gets the mean, not its first (often optimistic,
//! idle) report, until its blackout ends — so a joining producer is not flooded. The
//! consumers' view catches what the producer cannot see of itself (network, a stuck
//! thread, slow answers under a low utilisation): latency relative to the fleet's
//! geometric mean is scale-free, and clamped so one bad report cannot zero a producer.
//! Consumer latencies and failures are exponentially weighted averages; when no
//! consumer reports arrive their influence fades back to neutral, so a producer once
//! judged slow gets traffic again and is re-measured. Reports are sanitised (non-finite
//! or negative fields count as 0), so weights are always finite and non-negative.
//!
//! Selection is **weighted power of two choices** with a seeded RNG: two draws in
//! proportion to weight, the one with fewer active leases per unit weight wins. Many
//! consumers asking at once therefore spread (each grant raises the winner's lease
//! count) instead of all getting the heaviest producer.
//!
//! # The shedding rule
//!
//! [`Shedder`] runs once per interval on a node with its own [`Indicators`] and its
//! peers' gossiped ones. With `load = metric / capacity` and `mean` over this node and
//! the peers whose indicators are fresh (stale peers count as no capacity):
//!
//! 1. overloaded iff `load > threshold` and `load > mean * (1 + ratio)` (with no fresh
//!    peer, the threshold alone decides — and then there is no peer to shed to);
//! 2. shed only after `hits` consecutive overloaded intervals (hysteresis; the count
//!    restarts after each shed, so the effect of one shed is seen before the next);
//! 3. and only if at least one fresh peer has headroom: `load_peer <= mean` and
//!    `load_peer <= load * (1 - margin)`;
//! 4. close `ceil(connections * min(load - mean, room) / load)` connections, where
//!    `room` is the summed gap to the mean of the peers with headroom — the moved load
//!    is bounded by what all of them can take, not aimed at the single emptiest node;
//! 5. capped by a token bucket (`max_rate` per second, depth `burst`) whose allowance
//!    is scaled by a seeded random factor in `[1 - jitter, 1]`.
//!
//! Every decision carries its [`Verdict`].
//!
//! # The lease protocol
//!
//! A consumer sends its agent one [`LeaseRequest`] per renewal period (a third of the
//! lease length or less) carrying: the leases to **renew**, the leases it **releases**
//! (it moved off them), its **reports** (per leased producer: requests, mean latency,
//! errors, timeouts — each paired with the lease token that proves it held that
//! producer), producers to **avoid** (one that just sent it `GoAway`) and how many new
//! leases it **wants**. The agent answers renewed leases (new tokens, later expiry),
//! refused renewals with a [`Refusal`] (revocation: forged, not yours, expired,
//! producer gone, or `Rebalance` — the producer holds more than twice its weight's
//! share of the leases) and granted leases.
//!
//! A lease id ([`LeaseToken`]) is `{id, agent, consumer, producer, expiry}` and an
//! HMAC-SHA256 tag under the cluster key: any agent of the cluster verifies it without
//! state, so an agent restart keeps every lease valid until its expiry and renewable.
//! A report is accepted only with a genuine token of *this* consumer, for a producer of
//! this agent, not expired by more than a lease length, and once per token: a client
//! cannot push down a producer it never leased, nor repeat one report.
//!
//! Producers send a [`SignedStatus`] (their [`ProducerReport`] and [`Indicators`],
//! tagged with the cluster key) every period; the first registers them in the agent's
//! registry (`producers.json`, written with fsync and an atomic rename before the
//! answer), so a restarted agent knows every producer before it reports again. The
//! answer lists its peers' gossip addresses; producers gossip indicators to each other
//! over UDP and run the [`Shedder`]. A shed connection is drained: the producer sends
//! [`ProducerFrame::GoAway`], answers everything sent before it, refuses later requests
//! unexecuted (`Busy`, safe to resend anywhere), and closes when the client has taken
//! its answers; the client asks for a new lease avoiding that producer, and the agent
//! gives a shedding producer no new leases.
//!
//! The consumer ([`BalancedClient`], a `tower::Service<Request>`) spreads requests over
//! its leased producers by power of two choices on a peak-EWMA latency estimate times
//! outstanding requests (tower's `PeakEwma` cost). A request refused unexecuted is sent
//! elsewhere; a request whose connection fails in flight is retried only if idempotent,
//! otherwise it fails with [`BalanceError::Interrupted`] — never silently duplicated.
//!
//! # Example
//!
//! The weight engine and the shedding decider are plain values: feed them reports and
//! the time, read decisions.
//!
//! ```
//! use std::time::Duration;
//! use pipewright_balance::*;
//!
//! let mut w = Weights::new(WeightConfig { blackout: Duration::ZERO, ..Default::default() });
//! let t = Duration::from_secs(1);
//! let report = |utilisation, rps| ProducerReport { utilisation, rps, ..Default::default() };
//! w.producer_report(t, ProducerId(1), report(0.5, 100.0)); // capacity ~200/s
//! w.producer_report(t, ProducerId(2), report(0.5, 400.0)); // capacity ~800/s
//! assert_eq!(w.weight(t, ProducerId(2)), 4.0 * w.weight(t, ProducerId(1)));
//! let picks: Vec<_> = (0..10).flat_map(|_| w.select(t, 1, &[])).collect();
//! assert!(picks.contains(&ProducerId(1)) && picks.contains(&ProducerId(2)));
//!
//! let mut shed = Shedder::new(ShedConfig { hits: 2, jitter: 0.0, ..Default::default() });
//! let conns = |n| Indicators { connections: n, capacity: 1.0, ..Default::default() };
//! shed.peer(t, 7, conns(10));
//! assert_eq!(shed.tick(t, conns(30)).verdict, Verdict::Warming);
//! let d = shed.tick(t + Duration::from_millis(500), conns(30));
//! assert_eq!((d.verdict, d.close), (Verdict::Shed, 10)); // toward the mean of 20
//! ```
#![deny(missing_docs)]

// Under `--cfg loom` only the admission limit is built (tests/loom_admission.rs).
mod admission;
#[cfg(not(loom))]
mod agent;
#[cfg(not(loom))]
mod agent_client;
#[cfg(not(loom))]
mod client;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod gossip;
#[cfg(not(loom))]
mod lease;
#[cfg(not(loom))]
mod load;
#[cfg(not(loom))]
mod producer;
#[cfg(not(loom))]
mod shed;
#[cfg(not(loom))]
mod weights;
#[cfg(not(loom))]
mod wire;

pub use admission::{Admission, Admitted};
#[cfg(not(loom))]
pub use agent::core::{AgentConfig, AgentCore, Effect, Registered};
#[cfg(not(loom))]
pub use agent::{load_registry, now_ms, AgentOptions, AgentServer, AgentService};
#[cfg(not(loom))]
pub use agent_client::{AgentClient, AGENT_TIMEOUT};
#[cfg(not(loom))]
pub use client::{BalancedClient, ClientOptions, ClientStats};
#[cfg(not(loom))]
pub use error::BalanceError;
#[cfg(not(loom))]
pub use lease::{ClusterKey, LeaseClaims, LeaseToken, TAG_LEN};
#[cfg(not(loom))]
pub use load::{io_runtime, run_load, shutdown_signal, LoadOptions, LoadReport};
#[cfg(not(loom))]
pub use producer::{ProducerOptions, ProducerServer, ProducerStats, ServiceTime};
#[cfg(not(loom))]
pub use wire::{
    codec, decode, encode, status_json, AgentRequest, AgentResponse, AgentStatus, Lease,
    LeaseRequest, LeaseResponse, Peer, ProducerFrame, ProducerStatus, ProducerView, Refusal,
    Request, SignedStatus, MAX_AGENT_FRAME, MAX_PRODUCER_FRAME,
};

#[cfg(not(loom))]
pub use shed::{
    replay_shed, Decision, Indicators, Metric, ShedConfig, ShedEvent, Shedder, Verdict,
};
#[cfg(not(loom))]
pub use weights::{
    replay, ConsumerId, ConsumerReport, Event, ProducerId, ProducerReport, TimedEvent,
    WeightConfig, WeightView, Weights,
};
