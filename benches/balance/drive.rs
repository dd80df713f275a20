//! Driving one contender through a scenario (fixed concurrency, fixed requests,
//! faults at fixed request counts) and comparing it with the peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pipewright::balance::{
    BalancedClient, ClientOptions, ConsumerId, ProducerId, ProducerReport, ServiceTime,
    WeightConfig, Weights,
};

use crate::contenders::{fleet, Contender, Fleet, Sender, Swrr};
use crate::endpoint::Endpoint;
use crate::{common, result};

pub(crate) static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

pub(crate) async fn sender(
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

pub(crate) struct Outcome {
    pub(crate) hist: Histogram<u64>,
    pub(crate) errors: u64,
    pub(crate) secs: f64,
}

/// Runs `total` requests at `concurrency`; `fault(done)` is called as requests finish.
pub(crate) async fn drive(
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

pub(crate) struct Scenario {
    pub(crate) services: Vec<ServiceTime>,
    pub(crate) capacity: usize,
    pub(crate) total: u64,
    pub(crate) concurrency: usize,
    pub(crate) degrade: Option<(usize, f64, f64)>,
    pub(crate) crash: Option<(usize, f64)>,
    pub(crate) decay: Duration,
    pub(crate) rtt0: Duration,
    pub(crate) warmup: u64,
}

pub(crate) async fn run_one(c: Contender, sc: &Scenario) -> Outcome {
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

pub(crate) async fn compare(
    case: &str,
    sc: &Scenario,
    rounds: usize,
    peers: &[Contender],
    extra: bool,
) {
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
