//! The producer process: a TCP service with a configurable service time, capacity and
//! failure behaviour that reports to its agent, gossips its workload indicators to its
//! peers and sheds connections by the [`Shedder`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::Framed;

use crate::admission::{Admission, Admitted};
use crate::agent_client::AgentClient;
use crate::error::BalanceError;
use crate::gossip::{unix_ms, Gossip, GossipFilter, SignedGossip};
use crate::lease::ClusterKey;
use crate::shed::{Indicators, ShedConfig, Shedder, Verdict};
use crate::weights::{ProducerId, ProducerReport};
use crate::wire::{
    self, AgentRequest, AgentResponse, Peer, ProducerFrame, ProducerStatus, Request, SignedStatus,
    MAX_PRODUCER_FRAME,
};

mod conn;
use conn::serve;

/// A service-time distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ServiceTime {
    /// Always this long.
    Fixed(Duration),
    /// Uniform in `[0, max)`.
    Uniform(Duration),
    /// Exponential with this mean.
    Exp(Duration),
}

impl ServiceTime {
    /// Draws one service time.
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform(max) => times(max, rng.random::<f64>()),
            Self::Exp(mean) => times(mean, -(1.0 - rng.random::<f64>()).ln()),
        }
    }

    /// Scaled by `f` (a factor that is negative or not a number counts as 0, one too
    /// large for a `Duration` as the longest `Duration`).
    pub fn scaled(&self, f: f64) -> Self {
        match *self {
            Self::Fixed(d) => Self::Fixed(times(d, f)),
            Self::Uniform(d) => Self::Uniform(times(d, f)),
            Self::Exp(d) => Self::Exp(times(d, f)),
        }
    }
}

/// `d * f`, saturating instead of panicking as `Duration::mul_f64` does.
fn times(d: Duration, f: f64) -> Duration {
    let secs = d.as_secs_f64() * f;
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "ms"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 5ms, 1.5s, 200us"))?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        _ => return Err(format!("bad duration unit in {s:?}: use us, ms or s")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("bad duration {s:?}: use a non-negative number"));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("duration {s:?} is too long: use at most a few years"))
}

impl FromStr for ServiceTime {
    type Err = String;

    /// `fixed:5ms`, `uniform:10ms` (in `[0, 10ms)`), `exp:20ms` (mean).
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, d) = s.split_once(':').ok_or_else(|| {
            format!("bad service time {s:?}: use fixed:5ms, uniform:10ms or exp:20ms")
        })?;
        let d = parse_duration(d)?;
        match kind {
            "fixed" => Ok(Self::Fixed(d)),
            "uniform" => Ok(Self::Uniform(d)),
            "exp" => Ok(Self::Exp(d)),
            _ => Err(format!(
                "unknown distribution {kind:?}: use fixed, uniform or exp"
            )),
        }
    }
}

/// How to run a producer.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Its id.
    pub id: ProducerId,
    /// Where it serves.
    pub listen: SocketAddr,
    /// Its agent (none: it runs unmanaged, e.g. for client-side balancing peers).
    pub agent: Option<SocketAddr>,
    /// The cluster key.
    pub key: ClusterKey,
    /// Service time per request.
    pub service_time: ServiceTime,
    /// Requests served at once.
    pub capacity: usize,
    /// Requests waiting for a slot before new ones are answered `Busy`.
    pub queue_limit: usize,
    /// Fraction of requests that fail.
    pub error_rate: f64,
    /// After this long, the service time is multiplied by `degrade_factor`.
    pub degrade_after: Option<Duration>,
    /// See `degrade_after`.
    pub degrade_factor: f64,
    /// Status report (and gossip, and shedding decision) period.
    pub report_every: Duration,
    /// Connection rebalancing, if on.
    pub shed: Option<ShedConfig>,
    /// Relative capacity in the gossiped indicators.
    pub capacity_weight: f64,
    /// Seed of the service times and failures.
    pub seed: u64,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        Self {
            id: ProducerId(0),
            listen: "127.0.0.1:0".parse().expect("addr"),
            agent: None,
            key: ClusterKey::from_passphrase("pipewright"),
            service_time: ServiceTime::Fixed(Duration::from_millis(1)),
            capacity: 64,
            queue_limit: 1024,
            error_rate: 0.0,
            degrade_after: None,
            degrade_factor: 1.0,
            report_every: Duration::from_millis(500),
            shed: None,
            capacity_weight: 1.0,
            seed: 1,
        }
    }
}

/// A producer's counters.
#[derive(Debug, Default)]
pub struct ProducerStats {
    /// Open connections.
    pub connections: AtomicU32,
    /// Requests in flight (waiting or in service).
    pub in_flight: AtomicU32,
    /// Waiting for a slot.
    pub waiting: AtomicU32,
    /// Completed requests.
    pub completed: AtomicU64,
    /// Failed requests.
    pub failed: AtomicU64,
    /// Requests refused `Busy` (queue full or after `GoAway`).
    pub busy: AtomicU64,
    /// Microseconds of service performed.
    pub busy_us: AtomicU64,
    /// Connections closed by rebalancing.
    pub shed: AtomicU64,
    /// Malformed or oversized frames.
    pub malformed: AtomicU64,
}

struct Conn {
    go_away: mpsc::UnboundedSender<()>,
    opened: Instant,
}

struct Inner {
    opts: ProducerOptions,
    stats: ProducerStats,
    slots: Semaphore,
    /// Requests accepted and not yet in service ([`ProducerOptions::queue_limit`]).
    queue: Admission,
    started: Instant,
    conns: Mutex<HashMap<u64, Conn>>,
    next_conn: AtomicU64,
    rng: Mutex<ChaCha8Rng>,
    last_verdict: Mutex<Option<Verdict>>,
    stop: AtomicBool,
    /// Service-time multiplier set at run time (f64 bits; 1.0 = none).
    factor: AtomicU64,
    crashed: tokio::sync::watch::Sender<bool>,
}

/// A running producer.
pub struct ProducerServer {
    local_addr: SocketAddr,
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ProducerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl ProducerServer {
    /// Listens, and starts reporting and gossiping.
    pub async fn start(opts: ProducerOptions) -> Result<Self, BalanceError> {
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|e| BalanceError::Io {
                what: format!("listening on {}", opts.listen),
                source: e,
            })?;
        let local_addr = listener.local_addr().map_err(|e| BalanceError::Io {
            what: "listener address".into(),
            source: e,
        })?;
        let gossip = UdpSocket::bind(SocketAddr::new(local_addr.ip(), 0))
            .await
            .map_err(|e| BalanceError::Io {
                what: "binding the gossip socket".into(),
                source: e,
            })?;
        let inner = Arc::new(Inner {
            slots: Semaphore::new(opts.capacity.max(1)),
            queue: Admission::new(opts.queue_limit),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(opts.seed)),
            opts,
            stats: ProducerStats::default(),
            started: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            last_verdict: Mutex::new(None),
            stop: AtomicBool::new(false),
            factor: AtomicU64::new(1.0f64.to_bits()),
            crashed: tokio::sync::watch::Sender::new(false),
        });
        let gossip = Arc::new(gossip);
        let tasks = vec![
            tokio::spawn(accept_loop(listener, inner.clone())),
            tokio::spawn(control_loop(inner.clone(), local_addr, gossip)),
        ];
        Ok(Self {
            local_addr,
            inner,
            tasks,
        })
    }

    /// Where it serves.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its counters.
    pub fn stats(&self) -> &ProducerStats {
        &self.inner.stats
    }

    /// Multiplies its service time by `factor` from now on (a producer degrading).
    pub fn degrade(&self, factor: f64) {
        self.inner.factor.store(factor.to_bits(), Ordering::Relaxed);
    }

    /// Stops at once like a crashed process: connections reset, nothing answered,
    /// no more reports.
    pub fn crash(self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.crashed.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Tells its agent it leaves, then stops.
    pub async fn leave(self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(agent) = self.inner.opts.agent {
            if let Ok(mut c) = AgentClient::connect(agent).await {
                let mut status = status_of(&self.inner, self.local_addr, self.local_addr, 1.0);
                status.leaving = true;
                let _ = c
                    .call(&AgentRequest::Producer(SignedStatus::sign(
                        &self.inner.opts.key,
                        status,
                    )))
                    .await;
            }
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for ProducerServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, inner.clone()));
    }
}

fn indicators(inner: &Inner, utilisation: f64) -> Indicators {
    Indicators {
        connections: inner.stats.connections.load(Ordering::Relaxed),
        in_flight: inner.stats.in_flight.load(Ordering::Relaxed),
        utilisation,
        capacity: inner.opts.capacity_weight,
    }
}

fn status_of(inner: &Inner, addr: SocketAddr, gossip: SocketAddr, util: f64) -> ProducerStatus {
    ProducerStatus {
        id: inner.opts.id,
        addr,
        gossip,
        report: ProducerReport::default(),
        indicators: indicators(inner, util),
        shed_total: inner.stats.shed.load(Ordering::Relaxed),
        last_verdict: *inner.last_verdict.lock().unwrap_or_else(|p| p.into_inner()),
        leaving: false,
    }
}

/// Every period: measure, decide shedding, gossip, report to the agent.
async fn control_loop(inner: Arc<Inner>, addr: SocketAddr, gossip: Arc<UdpSocket>) {
    let gossip_addr = gossip.local_addr().unwrap_or(addr);
    let shedder = Arc::new(Mutex::new(inner.opts.shed.map(Shedder::new)));
    let filter = Arc::new(Mutex::new(GossipFilter::default()));
    // Receive peers' gossip (the task ends with the control loop).
    let receiver = {
        let (gossip, shedder, inner, filter) = (
            gossip.clone(),
            shedder.clone(),
            inner.clone(),
            filter.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            loop {
                let Ok((n, _)) = gossip.recv_from(&mut buf).await else {
                    // An ICMP error from a peer that went away: back off a little.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let taken = match wire::decode::<SignedGossip>(&buf[..n]) {
                    Ok(g) if g.verify(&inner.opts.key) => {
                        let ok = lock(&filter).take(&g.gossip);
                        if ok {
                            if let Some(s) = lock(&shedder).as_mut() {
                                s.peer(inner.started.elapsed(), g.gossip.from, g.gossip.ind);
                            }
                        }
                        ok
                    }
                    _ => false,
                };
                if !taken {
                    metrics::counter!("balance_gossip_ignored_total").increment(1);
                }
            }
        })
    };
    let _receiver = AbortOnDrop(receiver);
    let mut agent: Option<AgentClient> = None;
    let mut peers: Vec<Peer> = Vec::new();
    let mut last_refusal: Option<String> = None;
    let mut last = (Instant::now(), 0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(inner.opts.report_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if inner.stop.load(Ordering::Acquire) {
            return;
        }
        let s = &inner.stats;
        let now = Instant::now();
        let (done, failed, busy_us) = (
            s.completed.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.busy_us.load(Ordering::Relaxed),
        );
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let util =
            ((busy_us - last.3) as f64 / 1e6 / (secs * inner.opts.capacity.max(1) as f64)).min(1.0);
        let report = ProducerReport {
            utilisation: util,
            // Admitted and not yet in service: what the queue limit counts.
            queue_depth: inner.queue.held() as u32,
            rps: (done - last.1) as f64 / secs,
            error_rate: (failed - last.2) as f64 / secs,
            shedding: false,
            service_us: if done > last.1 {
                (busy_us - last.3) as f64 / (done - last.1) as f64
            } else {
                0.0
            },
        };
        last = (now, done, failed, busy_us);
        let local = indicators(&inner, util);
        // Gossip, then decide.
        let msg = wire::encode(&SignedGossip::sign(
            &inner.opts.key,
            Gossip {
                from: inner.opts.id.0,
                sent_ms: unix_ms(),
                ind: local,
            },
        ));
        for p in &peers {
            let _ = gossip.send_to(&msg, p.gossip).await;
        }
        let mut shedding = false;
        let decision = shedder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(|sh| sh.tick(inner.started.elapsed(), local));
        if let Some(d) = decision {
            *inner.last_verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(d.verdict);
            metrics::counter!("balance_shed_decisions_total", "verdict" => format!("{:?}", d.verdict)).increment(1);
            if d.close > 0 {
                shedding = true;
                // Close the newest connections first: the oldest clients keep their
                // warm connections, and a client just moved here is the cheapest to move.
                let conns = inner.conns.lock().unwrap_or_else(|p| p.into_inner());
                let mut by_age: Vec<(&u64, &Conn)> = conns.iter().collect();
                by_age.sort_by_key(|(id, c)| (std::cmp::Reverse(c.opened), **id));
                for (_, c) in by_age.into_iter().take(d.close as usize) {
                    if c.go_away.send(()).is_ok() {
                        s.shed.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("balance_shed_connections_total").increment(1);
                    }
                }
            }
        }
        let Some(agent_addr) = inner.opts.agent else {
            continue;
        };
        let mut status = status_of(&inner, addr, gossip_addr, util);
        status.report = ProducerReport { shedding, ..report };
        let req = AgentRequest::Producer(SignedStatus::sign(&inner.opts.key, status));
        if agent.is_none() {
            agent = AgentClient::connect(agent_addr).await.ok();
        }
        if let Some(c) = agent.as_mut() {
            match c.call(&req).await {
                Ok(AgentResponse::Peers(p)) => {
                    // Peers the agent no longer lists (gone or dead) stop counting.
                    for gone in lock(&filter).relist(&p) {
                        if let Some(s) = lock(&shedder).as_mut() {
                            s.forget(gone);
                        }
                    }
                    peers = p;
                    last_refusal = None;
                }
                Ok(AgentResponse::Refused(why)) => {
                    metrics::counter!("balance_producer_status_refused_total").increment(1);
                    // Said once per distinct reason, not every period.
                    if last_refusal.as_deref() != Some(why.as_str()) {
                        tracing::warn!(
                            producer = inner.opts.id.0,
                            agent = %agent_addr,
                            "the agent refuses this producer's status: {why}"
                        );
                        last_refusal = Some(why);
                    }
                }
                Ok(_) => {}
                Err(_) => agent = None,
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
