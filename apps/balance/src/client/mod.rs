//! The consumer: a `tower::Service<Request>` that holds leases from the agents, sends
//! requests to the leased producers, measures them, reports on renewal, and moves on
//! expiry, revocation, failure or a producer's `GoAway`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::Framed;
use tower_service::Service;

use crate::agent::now_ms;
use crate::agent_client::AgentClient;
use crate::error::BalanceError;
use crate::lease::LeaseToken;
use crate::weights::{ConsumerId, ConsumerReport, ProducerId};
use crate::wire::{
    self, AgentRequest, AgentResponse, Lease, LeaseRequest, ProducerFrame, Request,
    MAX_PRODUCER_FRAME,
};

/// How a [`BalancedClient`] behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The consumer's id.
    pub consumer: ConsumerId,
    /// The agents to ask, tried in turn starting at `consumer % len`.
    pub agents: Vec<SocketAddr>,
    /// Producers leased at once (requests are spread over them by their observed cost).
    pub leases: usize,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Lease renewal and report period (well inside the lease length).
    pub renew_every: Duration,
    /// Attempts of a request that was refused unexecuted (`Busy`, after `GoAway`) or, if
    /// idempotent, lost with its connection.
    pub max_attempts: u32,
    /// A producer that sent `GoAway` is not asked for again for this long.
    pub avoid_for: Duration,
    /// Time constant of the per-producer latency estimate (peak EWMA).
    pub decay: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            consumer: ConsumerId(0),
            agents: Vec::new(),
            leases: 2,
            timeout: Duration::from_secs(5),
            renew_every: Duration::from_secs(1),
            max_attempts: 3,
            avoid_for: Duration::from_secs(3),
            decay: Duration::from_secs(10),
        }
    }
}

/// What a [`BalancedClient`] did.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Requests answered `Done`.
    pub ok: AtomicU64,
    /// Requests answered `Failed` by a producer.
    pub failed: AtomicU64,
    /// Non-idempotent requests whose connection failed in flight (outcome unknown).
    pub interrupted: AtomicU64,
    /// Requests that timed out.
    pub timed_out: AtomicU64,
    /// Requests that found no producer.
    pub no_producer: AtomicU64,
    /// Attempts repeated on another producer (refused unexecuted, or idempotent).
    pub retried: AtomicU64,
    /// Leases given up (revoked, expired, failed, `GoAway`).
    pub moved: AtomicU64,
    /// `GoAway` frames received.
    pub go_aways: AtomicU64,
    /// Lease requests that failed (agent unreachable, or an answer it could not use).
    pub agent_errors: AtomicU64,
    /// Renewal requests an agent answered `Busy` (asked again shortly).
    pub agent_busy: AtomicU64,
}

enum Outcome {
    Done(Vec<u8>),
    Failed(String),
    Busy,
    Lost,
}

type Pending = HashMap<u64, oneshot::Sender<Outcome>>;

struct Held {
    token: Mutex<LeaseToken>,
    producer: ProducerId,
    tx: mpsc::UnboundedSender<(Request, oneshot::Sender<Outcome>)>,
    /// No new requests (GoAway, refused renewal, expiry).
    draining: AtomicBool,
    /// Got `GoAway` from the producer.
    went_away: AtomicBool,
    dead: AtomicBool,
    pending: AtomicU32,
    /// Start times of the requests in flight, by request id.
    outstanding: Mutex<HashMap<u64, Instant>>,
    /// (peak-EWMA latency µs, last update).
    ewma: Mutex<(f64, Instant)>,
    period: Mutex<ConsumerReport>,
}

impl Held {
    fn usable(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && !self.dead.load(Ordering::Acquire)
    }

    /// Peak-EWMA cost: the latency estimate (decayed since its last update, and never
    /// below the age of the oldest request still outstanding — a producer that has not
    /// answered yet is at least that slow) times the outstanding requests plus one.
    fn cost(&self, decay: Duration) -> f64 {
        let (est, at) = *self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let d = (-at.elapsed().as_secs_f64() / decay.as_secs_f64().max(1e-9)).exp();
        let oldest = self
            .outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .min()
            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e6);
        ((est * d).max(oldest) + 1.0) * (f64::from(self.pending.load(Ordering::Relaxed)) + 1.0)
    }

    fn observe(&self, rtt: Duration, decay: Duration) {
        let rtt = rtt.as_secs_f64() * 1e6;
        let mut e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        e.0 = if rtt > e.0 {
            rtt
        } else {
            let d = (-now.duration_since(e.1).as_secs_f64() / decay.as_secs_f64().max(1e-9)).exp();
            e.0 * d + rtt * (1.0 - d)
        };
        e.1 = now;
        let mut p = self.period.lock().unwrap_or_else(|p| p.into_inner());
        let n = f64::from(p.requests);
        p.mean_latency_us = (p.mean_latency_us * n + rtt) / (n + 1.0);
        p.requests += 1;
    }

    fn take_report(&self) -> ConsumerReport {
        std::mem::take(&mut *self.period.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct Shared {
    opts: ClientOptions,
    leases: Mutex<Vec<Arc<Held>>>,
    wake: Notify,
    ready: Notify,
    next_id: AtomicU64,
    stats: ClientStats,
    closed: AtomicBool,
}

/// The consumer client. Cheap to clone; all clones share the leases.
#[derive(Clone)]
pub struct BalancedClient {
    shared: Arc<Shared>,
    _manager: Arc<ManagerGuard>,
}

struct ManagerGuard(tokio::task::JoinHandle<()>, Arc<Shared>);

impl Drop for ManagerGuard {
    fn drop(&mut self) {
        self.1.closed.store(true, Ordering::Release);
        self.0.abort();
        // Calls still waiting for a lease end now, with `Closed`.
        self.1.ready.notify_waiters();
    }
}

impl std::fmt::Debug for BalancedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancedClient")
            .field("consumer", &self.shared.opts.consumer)
            .finish()
    }
}

impl BalancedClient {
    /// Starts the lease manager (in the current tokio runtime).
    pub fn new(opts: ClientOptions) -> Self {
        let shared = Arc::new(Shared {
            opts,
            leases: Mutex::new(Vec::new()),
            wake: Notify::new(),
            ready: Notify::new(),
            next_id: AtomicU64::new(1),
            stats: ClientStats::default(),
            closed: AtomicBool::new(false),
        });
        let manager = tokio::spawn(manage(shared.clone()));
        Self {
            _manager: Arc::new(ManagerGuard(manager, shared.clone())),
            shared,
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &ClientStats {
        &self.shared.stats
    }

    /// Producers currently leased and usable.
    pub fn producers(&self) -> Vec<ProducerId> {
        self.shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|h| h.usable())
            .map(|h| h.producer)
            .collect()
    }

    /// Waits until at least one producer is leased (or `timeout`).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            // Created before the check: `notify_waiters` reaches a `Notified` from its
            // creation on, so a lease granted between the check and the wait is not
            // missed (the wait would last until the next renewal or the timeout).
            let ready = self.shared.ready.notified();
            if !self.producers().is_empty() {
                return true;
            }
            if tokio::time::timeout_at(end, ready).await.is_err() {
                return !self.producers().is_empty();
            }
        }
    }

    /// Sends one request (see [`Service::call`]).
    pub async fn send(&self, idempotent: bool, payload: Vec<u8>) -> Result<Vec<u8>, BalanceError> {
        call(self.shared.clone(), idempotent, payload).await
    }
}

impl Service<Request> for BalancedClient {
    type Response = Vec<u8>;
    type Error = BalanceError;
    type Future = Pin<Box<dyn Future<Output = Result<Vec<u8>, BalanceError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BalanceError>> {
        if self.shared.closed.load(Ordering::Acquire) {
            Poll::Ready(Err(BalanceError::Closed))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    /// The request's `id` is replaced by the client's own.
    fn call(&mut self, req: Request) -> Self::Future {
        Box::pin(call(self.shared.clone(), req.idempotent, req.payload))
    }
}

fn pick(shared: &Shared) -> Option<Arc<Held>> {
    let leases = shared.leases.lock().unwrap_or_else(|p| p.into_inner());
    let usable: Vec<&Arc<Held>> = leases.iter().filter(|h| h.usable()).collect();
    match usable.len() {
        0 => None,
        1 => Some(usable[0].clone()),
        n => {
            // Power of two choices by peak-EWMA cost among the leased producers.
            let a = fastrand_index(shared, n);
            let mut b = fastrand_index(shared, n - 1);
            if b >= a {
                b += 1;
            }
            let d = shared.opts.decay;
            let (x, y) = (usable[a], usable[b]);
            Some(if y.cost(d) < x.cost(d) {
                y.clone()
            } else {
                x.clone()
            })
        }
    }
}

/// A cheap per-call index from the request counter (splitmix64).
fn fastrand_index(shared: &Shared, n: usize) -> usize {
    let mut z = shared
        .next_id
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % n as u64) as usize
}

async fn call(
    shared: Arc<Shared>,
    idempotent: bool,
    payload: Vec<u8>,
) -> Result<Vec<u8>, BalanceError> {
    let deadline = tokio::time::Instant::now() + shared.opts.timeout;
    let mut attempts = 0u32;
    loop {
        let held = loop {
            // Before the pick, so a grant between the pick and the wait wakes it.
            let ready = shared.ready.notified();
            if let Some(h) = pick(&shared) {
                break h;
            }
            if shared.closed.load(Ordering::Acquire) {
                return Err(BalanceError::Closed);
            }
            shared.wake.notify_one();
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                shared.stats.no_producer.fetch_add(1, Ordering::Relaxed);
                return Err(BalanceError::NoProducer(
                    "no lease could be obtained in time".into(),
                ));
            }
        };
        attempts += 1;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        held.pending.fetch_add(1, Ordering::AcqRel);
        let start = Instant::now();
        held.outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, start);
        let sent = held.tx.send((
            Request {
                id,
                idempotent,
                payload: payload.clone(),
            },
            tx,
        ));
        let outcome = if sent.is_err() {
            // The connection task is gone: nothing was sent.
            Some(Outcome::Busy)
        } else {
            tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .map(|r| r.unwrap_or(Outcome::Lost))
        };
        held.pending.fetch_sub(1, Ordering::AcqRel);
        held.outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match outcome {
            Some(Outcome::Done(p)) => {
                held.observe(start.elapsed(), shared.opts.decay);
                shared.stats.ok.fetch_add(1, Ordering::Relaxed);
                return Ok(p);
            }
            Some(Outcome::Failed(why)) => {
                held.observe(start.elapsed(), shared.opts.decay);
                held.period.lock().unwrap_or_else(|p| p.into_inner()).errors += 1;
                shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                return Err(BalanceError::Failed(why));
            }
            Some(Outcome::Busy) => {
                // Refused unexecuted: safe to send elsewhere, idempotent or not.
                if attempts >= shared.opts.max_attempts {
                    shared.stats.no_producer.fetch_add(1, Ordering::Relaxed);
                    return Err(BalanceError::NoProducer(format!(
                        "refused by {attempts} producers (busy or leaving)"
                    )));
                }
                shared.stats.retried.fetch_add(1, Ordering::Relaxed);
            }
            Some(Outcome::Lost) => {
                held.period
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .timeouts += 1;
                if !idempotent {
                    shared.stats.interrupted.fetch_add(1, Ordering::Relaxed);
                    return Err(BalanceError::Interrupted(held.producer.0));
                }
                if attempts >= shared.opts.max_attempts {
                    shared.stats.interrupted.fetch_add(1, Ordering::Relaxed);
                    return Err(BalanceError::Interrupted(held.producer.0));
                }
                shared.stats.retried.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                held.period
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .timeouts += 1;
                shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                return Err(BalanceError::Timeout);
            }
        }
    }
}

mod manager;
use manager::manage;
