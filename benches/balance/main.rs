//! Suite `balance`: the lease balancer against client-side and server-load balancers,
//! and connection rebalancing against simpler shedding rules.
//!
//! Every contender talks to the same kind of producers (in-process `ProducerServer`s,
//! real TCP on loopback, fresh ones per run with the same seeds), at the same fixed
//! concurrency, for the same number of requests; faults (a producer degrading, one
//! crashing) are injected at the same request counts.
//!
//! - `p999-heterogeneous` (+ `p50-`, `p99-`, `throughput-`): 10 producers with
//!   different service-time distributions; producer 8 becomes 10x slower at 30 % of
//!   the requests, producer 9 crashes at 50 %. Ours (agent + `BalancedClient`s) vs
//!   `tower-p2c-peak-ewma` (tower's `balance::p2c::Balance` over `PeakEwma`),
//!   `round-robin` (skipping dead endpoints) and `wrr-server-load` (smooth weighted
//!   round robin by gRFC A58 weights from the producers' reports only: blackout 10 s,
//!   expiry 3 min, update 1 s, error penalty 1.0).
//! - `tower76-p999`: tower-rs/tower#76's scenario: 10 endpoints with latency uniform
//!   in [0, max) for max = 1, 10x4, 100x4, 1000 ms; concurrency 50; PeakEwma decay 10 s,
//!   initial estimate 0.5 ms.
//! - `rebalance-converge` / `rebalance-closures` / `rebalance-oscillations`: all
//!   clients on one node, three nodes join; time until max/mean connections <= 1.2,
//!   connections closed, direction changes; peers `no-rebalance`, `threshold-only`,
//!   `ratio-to-average`.
//! - `pulsar-low-load-closures`, `pulsar-one-empty-overshoot`: the shedding rule on
//!   apache/pulsar#18215's load shapes (simulated, sans-I/O).
//!
//! `PIPEWRIGHT_BENCH_QUICK=1`: fewer requests and shorter windows.

#![allow(clippy::needless_range_loop)]

#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use pipewright::balance::{
    AgentConfig, AgentOptions, AgentServer, BalancedClient, ClientOptions, ClusterKey, ConsumerId,
    Indicators, Metric, ProducerFrame, ProducerId, ProducerOptions, ProducerReport, ProducerServer,
    Request, ServiceTime, ShedConfig, Shedder, Verdict, WeightConfig, Weights,
};
use tokio::sync::{mpsc, oneshot};
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts live heap bytes (for the agent's memory per producer and per lease).
struct Counting;

static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

// The one unsafe item of this bench: a global allocator implements an unsafe trait.
#[allow(unsafe_code)]
mod counting_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::Ordering;

    use super::{Counting, LIVE};

    // SAFETY: forwards to the system allocator unchanged; only counts bytes.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
            // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
            // SAFETY: `ptr` came from `System`; the caller upholds `realloc`'s contract.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;
}

/// The agent's state in bytes per producer and per lease (live heap, this process).
fn agent_memory(producers: u64, leases: u64) {
    use pipewright::balance::{AgentCore, LeaseRequest, ProducerStatus};
    let now = 1_800_000_000_000u64;
    let before = LIVE.load(Ordering::Relaxed);
    let mut core = AgentCore::new(AgentConfig::default(), key(), now, &[]);
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for i in 0..producers {
        let status = ProducerStatus {
            id: ProducerId(i),
            addr,
            gossip: addr,
            report: ProducerReport {
                utilisation: 0.5,
                rps: 100.0,
                ..Default::default()
            },
            indicators: Indicators::default(),
            shed_total: 0,
            last_verdict: None,
            leaving: false,
        };
        let _ = core.producer(now, &status);
    }
    let with_producers = LIVE.load(Ordering::Relaxed);
    for i in 0..leases {
        let r = core.lease(
            now + 1,
            &LeaseRequest {
                consumer: ConsumerId(i),
                want: 1,
                ..Default::default()
            },
        );
        assert_eq!(r.granted.len(), 1);
    }
    let with_leases = LIVE.load(Ordering::Relaxed);
    eprintln!(
        "agent memory: {:.0} bytes per producer ({producers} producers), {:.0} bytes per lease ({leases} leases)",
        (with_producers - before) as f64 / producers as f64,
        (with_leases - with_producers) as f64 / leases as f64
    );
    drop(core);
}

fn key() -> ClusterKey {
    ClusterKey::from_passphrase("bench")
}

fn result(case: &str, ours: f64, peer: &str, theirs: f64, unit: &str, better: &str) {
    let ratio = if theirs == 0.0 {
        if ours == 0.0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        ours / theirs
    };
    println!(
        "RESULT suite=balance case={case} ours={ours:.3} peer={peer}:{theirs:.3} unit={unit} better={better} ratio={ratio:.3}"
    );
}

// ---------------------------------------------------------------------------------
// A direct connection to one producer, as a tower::Service (for the peers).

type Reply = oneshot::Sender<Result<Vec<u8>, BoxError>>;

#[derive(Clone)]
struct Endpoint {
    tx: mpsc::UnboundedSender<(Vec<u8>, Reply)>,
    dead: Arc<AtomicBool>,
}

impl Endpoint {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, Reply)>();
        let dead = Arc::new(AtomicBool::new(false));
        let d = dead.clone();
        tokio::spawn(async move {
            let codec = pipewright::balance::codec(pipewright::balance::MAX_PRODUCER_FRAME);
            let (mut sink, mut frames) = tokio_util_framed(stream, codec).split();
            let mut pending: HashMap<u64, Reply> = HashMap::new();
            let mut next = 0u64;
            loop {
                tokio::select! {
                    m = rx.recv() => {
                        let Some((payload, reply)) = m else { break };
                        next += 1;
                        pending.insert(next, reply);
                        let req = Request { id: next, idempotent: false, payload };
                        if sink.send(pipewright::balance::encode(&req)).await.is_err() { break; }
                    }
                    f = frames.next() => {
                        let Some(Ok(b)) = f else { break };
                        let Ok(frame) = pipewright::balance::decode::<ProducerFrame>(&b) else { break };
                        match frame {
                            ProducerFrame::Done { id, payload } => {
                                if let Some(r) = pending.remove(&id) { let _ = r.send(Ok(payload)); }
                            }
                            ProducerFrame::Failed { id, reason } => {
                                if let Some(r) = pending.remove(&id) { let _ = r.send(Err(reason.into())); }
                            }
                            ProducerFrame::Busy { id } => {
                                if let Some(r) = pending.remove(&id) { let _ = r.send(Err("busy".into())); }
                            }
                            ProducerFrame::GoAway => {}
                        }
                    }
                }
            }
            d.store(true, Ordering::Release);
            for (_, r) in pending.drain() {
                let _ = r.send(Err("connection lost".into()));
            }
            rx.close();
            while let Ok((_, r)) = rx.try_recv() {
                let _ = r.send(Err("connection lost".into()));
            }
        });
        Self { tx, dead }
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

fn tokio_util_framed(
    s: tokio::net::TcpStream,
    c: tokio_util::codec::LengthDelimitedCodec,
) -> tokio_util::codec::Framed<tokio::net::TcpStream, tokio_util::codec::LengthDelimitedCodec> {
    tokio_util::codec::Framed::new(s, c)
}

impl Service<Vec<u8>> for Endpoint {
    type Response = Vec<u8>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Vec<u8>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.is_dead() {
            Poll::Ready(Err("endpoint down".into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, payload: Vec<u8>) -> Self::Future {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send((payload, tx));
        Box::pin(async move {
            if sent.is_err() {
                return Err("endpoint down".into());
            }
            rx.await.unwrap_or_else(|_| Err("connection lost".into()))
        })
    }
}

// ---------------------------------------------------------------------------------
// Contenders.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Ours,
    TowerP2c,
    RoundRobin,
    Wrr,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::TowerP2c => "tower-p2c-peak-ewma",
            Self::RoundRobin => "round-robin",
            Self::Wrr => "wrr-server-load",
        }
    }
}

/// Sends requests through whichever balancer.
#[derive(Clone)]
enum Sender {
    Ours(Vec<BalancedClient>),
    Tower(Arc<tokio::sync::Mutex<TowerBalance>>),
    RoundRobin(Arc<Vec<Endpoint>>, Arc<AtomicU64>),
    Wrr(Arc<Vec<Endpoint>>, Arc<Mutex<Swrr>>),
}

type TowerBalance = tower::balance::p2c::Balance<
    tower::discover::ServiceList<
        Vec<tower::load::PeakEwma<Endpoint, tower::load::CompleteOnResponse>>,
    >,
    Vec<u8>,
>;

/// Smooth weighted round robin (nginx) over weights from a gRFC A58 engine.
struct Swrr {
    weights: Vec<f64>,
    current: Vec<f64>,
}

impl Swrr {
    fn pick(&mut self, eps: &[Endpoint]) -> Option<usize> {
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for i in 0..eps.len() {
            if eps[i].is_dead() || self.weights[i] <= 0.0 {
                continue;
            }
            self.current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

impl Sender {
    async fn send(&self, worker: usize, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        match self {
            Self::Ours(clients) => clients[worker % clients.len()]
                .send(false, payload)
                .await
                .map_err(|e| e.to_string()),
            Self::Tower(b) => {
                let fut = {
                    let mut b = b.lock().await;
                    let svc = tower::ServiceExt::ready(&mut *b)
                        .await
                        .map_err(|e| e.to_string())?;
                    svc.call(payload)
                };
                fut.await.map_err(|e| e.to_string())
            }
            Self::RoundRobin(eps, next) => {
                for _ in 0..eps.len() {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize % eps.len();
                    if !eps[i].is_dead() {
                        return eps[i]
                            .clone()
                            .call(payload)
                            .await
                            .map_err(|e| e.to_string());
                    }
                }
                Err("no live endpoint".into())
            }
            Self::Wrr(eps, swrr) => {
                let i = swrr.lock().unwrap().pick(eps).ok_or("no live endpoint")?;
                eps[i]
                    .clone()
                    .call(payload)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

struct Fleet {
    agent: AgentServer,
    producers: Vec<Option<ProducerServer>>,
}

async fn fleet(services: &[ServiceTime], capacity: usize, blackout: Duration) -> Fleet {
    let dir = std::env::temp_dir().join(format!(
        "pw-balance-bench-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let agent = AgentServer::start(AgentOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir,
        key: key(),
        config: AgentConfig {
            lease_ttl: Duration::from_secs(3),
            weights: WeightConfig {
                blackout,
                dead_after: Duration::from_millis(600),
                ..WeightConfig::default()
            },
            ..AgentConfig::default()
        },
        max_in_flight: 4096,
        trace: None,
    })
    .await
    .unwrap();
    let mut producers = Vec::new();
    for (i, st) in services.iter().enumerate() {
        producers.push(Some(
            ProducerServer::start(ProducerOptions {
                id: ProducerId(i as u64),
                agent: Some(agent.local_addr()),
                key: key(),
                service_time: *st,
                capacity,
                queue_limit: 1 << 20,
                report_every: Duration::from_millis(200),
                seed: 1000 + i as u64,
                ..ProducerOptions::default()
            })
            .await
            .unwrap(),
        ));
    }
    // Every producer registered.
    for _ in 0..500 {
        if agent.status().producers.len() == services.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Fleet { agent, producers }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

async fn sender(
    c: Contender,
    f: &Fleet,
    concurrency: usize,
    decay: Duration,
    rtt0: Duration,
) -> (Sender, Option<tokio::task::JoinHandle<()>>) {
    let addrs: Vec<SocketAddr> = f
        .producers
        .iter()
        .flatten()
        .map(|p| p.local_addr())
        .collect();
    let endpoints = || async {
        let mut v = Vec::new();
        for a in &addrs {
            v.push(Endpoint::connect(*a).await);
        }
        v
    };
    match c {
        Contender::Ours => {
            let consumers = 10;
            let clients: Vec<BalancedClient> = (0..consumers)
                .map(|i| {
                    BalancedClient::new(ClientOptions {
                        consumer: ConsumerId(i as u64),
                        agents: vec![f.agent.local_addr()],
                        leases: 3,
                        renew_every: Duration::from_millis(250),
                        decay,
                        timeout: Duration::from_secs(30),
                        ..ClientOptions::default()
                    })
                })
                .collect();
            for cl in &clients {
                cl.wait_ready(Duration::from_secs(10)).await;
            }
            let _ = concurrency;
            (Sender::Ours(clients), None)
        }
        Contender::TowerP2c => {
            let svcs: Vec<_> = endpoints()
                .await
                .into_iter()
                .map(|e| {
                    tower::load::PeakEwma::new(
                        e,
                        rtt0,
                        decay.as_nanos() as f64,
                        tower::load::CompleteOnResponse::default(),
                    )
                })
                .collect();
            let b = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(svcs));
            (Sender::Tower(Arc::new(tokio::sync::Mutex::new(b))), None)
        }
        Contender::RoundRobin => (
            Sender::RoundRobin(Arc::new(endpoints().await), Arc::new(AtomicU64::new(0))),
            None,
        ),
        Contender::Wrr => {
            let eps = Arc::new(endpoints().await);
            let n = eps.len();
            let swrr = Arc::new(Mutex::new(Swrr {
                weights: vec![1.0; n],
                current: vec![0.0; n],
            }));
            // gRFC A58 defaults; weights from the producers' own reports only, updated
            // every second.
            let mut engine = Weights::new(WeightConfig {
                blackout: Duration::from_secs(10),
                weight_expiry: Duration::from_secs(180),
                dead_after: Duration::from_secs(3600),
                error_penalty: 1.0,
                ..WeightConfig::default()
            });
            let (s2, status) = (swrr.clone(), f.agent.status_handle());
            let ids: Vec<ProducerId> = (0..n as u64).map(ProducerId).collect();
            let start = Instant::now();
            let task = tokio::spawn(async move {
                let mut seen: HashMap<ProducerId, ProducerReport> = HashMap::new();
                loop {
                    let now = start.elapsed();
                    for p in status().producers {
                        if seen.get(&p.weight.producer) != Some(&p.report) {
                            seen.insert(p.weight.producer, p.report);
                            engine.producer_report(now, p.weight.producer, p.report);
                        }
                    }
                    let view = engine.view(now);
                    let w: Vec<f64> = ids
                        .iter()
                        .map(|id| {
                            view.iter()
                                .find(|v| v.producer == *id)
                                .map_or(1.0, |v| v.base)
                        })
                        .collect();
                    s2.lock().unwrap().weights = w;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            (Sender::Wrr(eps, swrr), Some(task))
        }
    }
}

struct Outcome {
    hist: Histogram<u64>,
    errors: u64,
    secs: f64,
}

/// Runs `total` requests at `concurrency`; `fault(done)` is called as requests finish.
async fn drive(
    s: &Sender,
    concurrency: usize,
    total: u64,
    faults: Arc<dyn Fn(u64) + Send + Sync>,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap(),
    ));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (s, next, done, errors, hist, faults) = (
            s.clone(),
            next.clone(),
            done.clone(),
            errors.clone(),
            hist.clone(),
            faults.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                match s.send(w, vec![0; 8]).await {
                    Ok(_) => {
                        let _ = hist
                            .lock()
                            .unwrap()
                            .record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                faults(done.fetch_add(1, Ordering::Relaxed) + 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let hist = hist.lock().unwrap().clone();
    Outcome {
        hist,
        errors: errors.load(Ordering::Relaxed),
        secs,
    }
}

struct Scenario {
    services: Vec<ServiceTime>,
    capacity: usize,
    total: u64,
    concurrency: usize,
    degrade: Option<(usize, f64, f64)>,
    crash: Option<(usize, f64)>,
    decay: Duration,
    rtt0: Duration,
    warmup: u64,
}

async fn run_one(c: Contender, sc: &Scenario) -> Outcome {
    let f = fleet(&sc.services, sc.capacity, Duration::from_secs(1)).await;
    let (s, task) = sender(c, &f, sc.concurrency, sc.decay, sc.rtt0).await;
    // The same warm-up for everyone (connections, estimates, first reports).
    if sc.warmup > 0 {
        drive(&s, sc.concurrency, sc.warmup, Arc::new(|_| {})).await;
    }
    let producers = Arc::new(Mutex::new(f.producers));
    let p2 = producers.clone();
    let (total, degrade, crash) = (sc.total, sc.degrade, sc.crash);
    let faults: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |done| {
        if let Some((i, at, factor)) = degrade {
            if done == (total as f64 * at) as u64 {
                if let Some(p) = &p2.lock().unwrap()[i] {
                    p.degrade(factor);
                }
            }
        }
        if let Some((i, at)) = crash {
            if done == (total as f64 * at) as u64 {
                if let Some(p) = p2.lock().unwrap()[i].take() {
                    p.crash();
                }
            }
        }
    });
    let out = drive(&s, sc.concurrency, sc.total, faults).await;
    let served: Vec<u64> = producers
        .lock()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_ref()
                .map_or(0, |p| p.stats().completed.load(Ordering::Relaxed))
        })
        .collect();
    eprintln!(
        "    {:<20} requests served per producer {served:?}",
        c.name()
    );
    if let Some(t) = task {
        t.abort();
    }
    drop(s);
    let _ = f.agent.run_until(async {}).await;
    drop(producers);
    out
}

async fn compare(case: &str, sc: &Scenario, rounds: usize, peers: &[Contender], extra: bool) {
    let mut all: Vec<Contender> = vec![Contender::Ours];
    all.extend_from_slice(peers);
    let mut res: HashMap<&'static str, Vec<Outcome>> = HashMap::new();
    for _ in 0..rounds {
        for &c in &all {
            let o = run_one(c, sc).await;
            eprintln!(
                "  {case} {:<20} p50 {:>8}us p99 {:>8}us p999 {:>8}us max {:>8}us {:>7.0} req/s errors {}",
                c.name(),
                o.hist.value_at_quantile(0.5),
                o.hist.value_at_quantile(0.99),
                o.hist.value_at_quantile(0.999),
                o.hist.max(),
                o.hist.len() as f64 / o.secs,
                o.errors
            );
            res.entry(c.name()).or_default().push(o);
        }
    }
    let med =
        |name: &str, f: &dyn Fn(&Outcome) -> f64| common::median(res[name].iter().map(f).collect());
    let q = |p: f64| move |o: &Outcome| o.hist.value_at_quantile(p) as f64 / 1000.0;
    for p in peers {
        result(
            case,
            med("ours", &q(0.999)),
            p.name(),
            med(p.name(), &q(0.999)),
            "ms",
            "lower",
        );
    }
    if extra {
        let t = Contender::TowerP2c.name();
        let base = case.trim_start_matches("p999-");
        result(
            &format!("p50-{base}"),
            med("ours", &q(0.5)),
            t,
            med(t, &q(0.5)),
            "ms",
            "lower",
        );
        result(
            &format!("p99-{base}"),
            med("ours", &q(0.99)),
            t,
            med(t, &q(0.99)),
            "ms",
            "lower",
        );
        let thr = |o: &Outcome| o.hist.len() as f64 / o.secs;
        result(
            &format!("throughput-{base}"),
            med("ours", &thr),
            t,
            med(t, &thr),
            "req/s",
            "higher",
        );
        let errs = |o: &Outcome| o.errors as f64;
        result(
            &format!("errors-{base}"),
            med("ours", &errs),
            t,
            med(t, &errs),
            "requests",
            "lower",
        );
    }
}

// ---------------------------------------------------------------------------------
// Rebalancing.

#[derive(Clone, Copy, Debug)]
enum Rule {
    Ours,
    None,
    ThresholdOnly,
    RatioToAverage,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::None => "no-rebalance",
            Self::ThresholdOnly => "threshold-only",
            Self::RatioToAverage => "ratio-to-average",
        }
    }

    fn config(self, clients: u32, nodes: u32) -> Option<ShedConfig> {
        let ours = ShedConfig {
            stale_after: Duration::from_millis(400),
            ..ShedConfig::default()
        };
        match self {
            Self::Ours => Some(ours),
            Self::None => None,
            // A static threshold (20 % over the even share), no peer-capacity check.
            Self::ThresholdOnly => Some(ShedConfig {
                threshold: f64::from(clients) / f64::from(nodes) * 1.2,
                ratio: -1.0,
                require_peer_capacity: false,
                ..ours
            }),
            // piko: shed everything above average * (1 + 15 %) at once.
            Self::RatioToAverage => Some(ShedConfig {
                hits: 1,
                require_peer_capacity: false,
                max_rate: 1e9,
                burst: 1e9,
                jitter: 0.0,
                ..ours
            }),
        }
    }
}

struct Converge {
    converge_ms: f64,
    closures: u64,
    errors: u64,
    flips: u64,
    final_conns: Vec<u32>,
}

async fn rebalance(rule: Rule, clients_n: u32, window: Duration) -> Converge {
    let dir = std::env::temp_dir().join(format!(
        "pw-balance-bench-r-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let agent = AgentServer::start(AgentOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir,
        key: key(),
        config: AgentConfig {
            lease_ttl: Duration::from_secs(3),
            // Only the nodes' shedding moves connections in this comparison.
            rebalance_leases: false,
            weights: WeightConfig {
                blackout: Duration::from_millis(300),
                dead_after: Duration::from_millis(600),
                ..WeightConfig::default()
            },
            ..AgentConfig::default()
        },
        max_in_flight: 4096,
        trace: None,
    })
    .await
    .unwrap();
    let shed = rule.config(clients_n, 4);
    let node = |id: u64| {
        ProducerServer::start(ProducerOptions {
            id: ProducerId(id),
            agent: Some(agent.local_addr()),
            key: key(),
            service_time: ServiceTime::Fixed(Duration::from_micros(200)),
            report_every: Duration::from_millis(100),
            shed,
            seed: id,
            ..ProducerOptions::default()
        })
    };
    let mut nodes = vec![node(0).await.unwrap()];
    while agent.status().producers.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let clients: Vec<BalancedClient> = (0..clients_n)
        .map(|i| {
            BalancedClient::new(ClientOptions {
                consumer: ConsumerId(u64::from(i)),
                agents: vec![agent.local_addr()],
                leases: 1,
                renew_every: Duration::from_millis(250),
                ..ClientOptions::default()
            })
        })
        .collect();
    for c in &clients {
        c.wait_ready(Duration::from_secs(10)).await;
    }
    for id in 1..4 {
        nodes.push(node(id).await.unwrap());
    }
    let joined = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = clients
        .iter()
        .map(|c| {
            let (c, stop, errors) = (c.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if c.send(false, vec![1]).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let mut converge = None;
    let mut last: Vec<u32> = Vec::new();
    let mut dir = [0i64; 4];
    let mut flips = 0;
    while joined.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let conns: Vec<u32> = nodes
            .iter()
            .map(|n| n.stats().connections.load(Ordering::Relaxed))
            .collect();
        let mean = conns.iter().sum::<u32>() as f64 / 4.0;
        let max = *conns.iter().max().unwrap() as f64;
        if converge.is_none() && mean > 0.0 && max <= 1.2 * mean {
            converge = Some(joined.elapsed());
        }
        if !last.is_empty() {
            for i in 0..4 {
                let d = (i64::from(conns[i]) - i64::from(last[i])).signum();
                if d != 0 {
                    if dir[i] != 0 && d != dir[i] {
                        flips += 1;
                    }
                    dir[i] = d;
                }
            }
        }
        last = conns;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    let closures = nodes
        .iter()
        .map(|n| n.stats().shed.load(Ordering::Relaxed))
        .sum();
    let _ = agent.run_until(async {}).await;
    Converge {
        converge_ms: converge.map_or(window.as_secs_f64() * 1000.0, |d| d.as_secs_f64() * 1000.0),
        closures,
        errors: errors.load(Ordering::Relaxed),
        flips,
        final_conns: last,
    }
}

/// A fluid model of the shedding rule on fixed utilisation shapes: every closure moves
/// `unit` of load to the least-loaded node (the worst case for over-unloading).
fn simulate(cfg: ShedConfig, start: &[f64], unit: f64, ticks: u64) -> (u64, f64) {
    let n = start.len();
    let mut load = start.to_vec();
    let mut sh: Vec<Shedder> = (0..n)
        .map(|i| {
            Shedder::new(ShedConfig {
                seed: i as u64,
                ..cfg
            })
        })
        .collect();
    let ind = |u: f64| Indicators {
        connections: (u / unit).round() as u32,
        utilisation: u,
        capacity: 1.0,
        in_flight: 0,
    };
    let mut closures = 0;
    for t in 0..ticks {
        let now = Duration::from_millis(t * 500);
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    sh[i].peer(now, j as u64, ind(load[j]));
                }
            }
        }
        for i in 0..n {
            let d = sh[i].tick(now, ind(load[i]));
            if d.verdict == Verdict::Shed {
                for _ in 0..d.close {
                    if load[i] < unit {
                        break;
                    }
                    load[i] -= unit;
                    let j = (0..n).min_by(|&a, &b| load[a].total_cmp(&load[b])).unwrap();
                    load[j] += unit;
                    closures += 1;
                }
            }
        }
    }
    let mean = load.iter().sum::<f64>() / n as f64;
    let max = load.iter().cloned().fold(0.0, f64::max);
    (closures, max / mean)
}

fn pulsar_cases() {
    let util = |r: Rule| {
        let mut c = r.config(100, 4).unwrap();
        c.metric = Metric::Utilisation;
        if matches!(r, Rule::ThresholdOnly) {
            c.threshold = 0.1;
        }
        if matches!(r, Rule::Ours) {
            // Operators' floor: not overloaded below 50 % utilisation.
            c.threshold = 0.5;
        }
        c
    };
    // apache/pulsar#18215: 12/2/1/1 % — nothing is overloaded; shedding is churn.
    let low = [0.12, 0.02, 0.01, 0.01];
    let (ours, _) = simulate(util(Rule::Ours), &low, 0.005, 200);
    for r in [Rule::ThresholdOnly, Rule::RatioToAverage] {
        let (peer, _) = simulate(util(r), &low, 0.005, 200);
        result(
            "pulsar-low-load-closures",
            ours as f64,
            r.name(),
            peer as f64,
            "closures",
            "lower",
        );
    }
    // Five loaded nodes and an empty one (#18215, PIP-364): the moved load must not
    // all land on the empty node and overload it: max/mean after 100 decisions.
    let shape = [0.8, 0.8, 0.8, 0.8, 0.8, 0.0];
    let (_, ours) = simulate(util(Rule::Ours), &shape, 0.01, 100);
    for r in [Rule::ThresholdOnly, Rule::RatioToAverage] {
        let (_, peer) = simulate(util(r), &shape, 0.01, 100);
        result(
            "pulsar-one-empty-max-over-mean",
            ours,
            r.name(),
            peer,
            "ratio",
            "lower",
        );
    }
}

async fn agent_cost(n: u64) {
    let f = fleet(
        &[ServiceTime::Fixed(Duration::from_millis(1)); 10],
        8,
        Duration::ZERO,
    )
    .await;
    let svc = f.agent.service();
    let start = Instant::now();
    let tasks: Vec<_> = (0..8u64)
        .map(|w| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..n / 8 {
                    let r = tower::ServiceExt::ready(&mut svc)
                        .await
                        .unwrap()
                        .call(pipewright::balance::LeaseRequest {
                            consumer: ConsumerId(w * 1_000_000 + i),
                            want: 1,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    assert_eq!(r.granted.len(), 1);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let s = f.agent.status();
    eprintln!(
        "agent cost: {:.0} lease requests/s on one agent worker ({} leases out over {} producers)",
        n as f64 / secs,
        s.active_leases,
        s.producers.len()
    );
    let _ = f.agent.run_until(async {}).await;
}

fn main() {
    let quick = common::quick();
    let filter = common::case_filter();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    eprintln!("balance suite (quick={quick}, load {})", common::loadavg());
    if common::wants(filter.as_deref(), "agent-cost") {
        // Before any runtime work, so nothing else allocates meanwhile.
        agent_memory(
            if quick { 1_000 } else { 2_000 },
            if quick { 20_000 } else { 100_000 },
        );
    }
    rt.block_on(async {
        let peers = [Contender::TowerP2c, Contender::RoundRobin, Contender::Wrr];
        if common::wants(filter.as_deref(), "p999-heterogeneous") {
            let ms = Duration::from_millis;
            let sc = Scenario {
                services: vec![
                    ServiceTime::Exp(ms(1)),
                    ServiceTime::Exp(ms(2)),
                    ServiceTime::Uniform(ms(4)),
                    ServiceTime::Fixed(ms(3)),
                    ServiceTime::Exp(ms(5)),
                    ServiceTime::Uniform(ms(10)),
                    ServiceTime::Exp(ms(10)),
                    ServiceTime::Exp(ms(20)),
                    ServiceTime::Exp(ms(2)),
                    ServiceTime::Exp(ms(3)),
                ],
                capacity: 8,
                total: if quick { 6_000 } else { 40_000 },
                concurrency: 50,
                degrade: Some((8, 0.3, 10.0)),
                crash: Some((9, 0.5)),
                decay: Duration::from_secs(10),
                rtt0: Duration::from_micros(500),
                warmup: if quick { 1_000 } else { 5_000 },
            };
            compare("p999-heterogeneous", &sc, if quick { 1 } else { 3 }, &peers, true).await;
        }
        if common::wants(filter.as_deref(), "tower76") {
            let ms = Duration::from_millis;
            let mut services = vec![ServiceTime::Uniform(ms(1))];
            services.extend([ServiceTime::Uniform(ms(10)); 4]);
            services.extend([ServiceTime::Uniform(ms(100)); 4]);
            services.push(ServiceTime::Uniform(ms(1000)));
            let sc = Scenario {
                services,
                capacity: 1 << 16,
                total: if quick { 2_500 } else { 20_000 },
                concurrency: 50,
                degrade: None,
                crash: None,
                decay: Duration::from_secs(10),
                rtt0: Duration::from_micros(500),
                warmup: 0,
            };
            compare("tower76-p999", &sc, if quick { 1 } else { 3 }, &[Contender::TowerP2c, Contender::RoundRobin], false).await;
        }
        if common::wants(filter.as_deref(), "rebalance") {
            let window = Duration::from_secs(if quick { 5 } else { 15 });
            let n = 48;
            let ours = rebalance(Rule::Ours, n, window).await;
            eprintln!("  rebalance ours: converge {:.0} ms, closures {} (minimum {}), errors {}, flips {}, final {:?}", ours.converge_ms, ours.closures, n - n / 4, ours.errors, ours.flips, ours.final_conns);
            for r in [Rule::None, Rule::ThresholdOnly, Rule::RatioToAverage] {
                let p = rebalance(r, n, window).await;
                eprintln!("  rebalance {}: converge {:.0} ms, closures {}, errors {}, flips {}, final {:?}", r.name(), p.converge_ms, p.closures, p.errors, p.flips, p.final_conns);
                result("rebalance-converge", ours.converge_ms, r.name(), p.converge_ms, "ms", "lower");
                if !matches!(r, Rule::None) {
                    result("rebalance-closures", ours.closures as f64, r.name(), p.closures as f64, "connections", "lower");
                }
                result("rebalance-client-errors", ours.errors as f64, r.name(), p.errors as f64, "requests", "lower");
            }
        }
        if common::wants(filter.as_deref(), "pulsar") {
            pulsar_cases();
        }
        if common::wants(filter.as_deref(), "agent-cost") {
            agent_cost(if quick { 20_000 } else { 200_000 }).await;
        }
    });
}
