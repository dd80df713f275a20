//! A consumer load: clients at a fixed concurrency sending a fixed number of requests,
//! with latency and outcome counts (behind `pipewright balance consumer`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{BalancedClient, ClientOptions, ClientStats};
use crate::weights::ConsumerId;

/// What load to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The agents.
    pub agents: Vec<SocketAddr>,
    /// Consumer clients.
    pub consumers: u64,
    /// First consumer id.
    pub first_id: u64,
    /// Leases per consumer.
    pub leases: usize,
    /// Requests in flight per consumer.
    pub concurrency: usize,
    /// Total requests.
    pub requests: u64,
    /// Requests are idempotent.
    pub idempotent: bool,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

/// The outcome of a load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests answered.
    pub ok: u64,
    /// Requests that ended in an error (any kind).
    pub errors: u64,
    /// Failed by a producer.
    pub failed: u64,
    /// Non-idempotent requests whose connection failed in flight.
    pub interrupted: u64,
    /// Timed out.
    pub timed_out: u64,
    /// No producer available.
    pub no_producer: u64,
    /// Attempts repeated elsewhere.
    pub retried: u64,
    /// Leases given up.
    pub moved: u64,
    /// `GoAway`s received.
    pub go_aways: u64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, µs.
    pub p50_us: u64,
    /// p99.
    pub p99_us: u64,
    /// p99.9.
    pub p999_us: u64,
}

impl LoadReport {
    /// As one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report encodes")
    }
}

fn sum(clients: &[BalancedClient], f: fn(&ClientStats) -> &AtomicU64) -> u64 {
    clients
        .iter()
        .map(|c| f(c.stats()).load(Ordering::Relaxed))
        .sum()
}

/// Runs the load to completion.
pub async fn run_load(o: LoadOptions) -> LoadReport {
    let clients: Vec<BalancedClient> = (0..o.consumers)
        .map(|i| {
            BalancedClient::new(ClientOptions {
                consumer: ConsumerId(o.first_id + i),
                agents: o.agents.clone(),
                leases: o.leases,
                ..ClientOptions::default()
            })
        })
        .collect();
    let hist = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram"),
    ));
    let remaining = Arc::new(AtomicU64::new(o.requests));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in &clients {
        for _ in 0..o.concurrency {
            let (client, hist, remaining, errors) = (
                client.clone(),
                hist.clone(),
                remaining.clone(),
                errors.clone(),
            );
            let idem = o.idempotent;
            tasks.push(tokio::spawn(async move {
                while remaining
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
                    .is_ok()
                {
                    let t = Instant::now();
                    match client.send(idem, vec![0; 16]).await {
                        Ok(_) => {
                            let us = t.elapsed().as_micros().max(1) as u64;
                            let _ = hist.lock().unwrap_or_else(|p| p.into_inner()).record(us);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }
    let ticker = o.progress.then(|| {
        let (hist, clients) = (hist.clone(), clients.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let h = hist.lock().unwrap_or_else(|p| p.into_inner());
                let leased: Vec<u64> = clients
                    .iter()
                    .flat_map(|c| c.producers())
                    .map(|p| p.0)
                    .collect();
                eprintln!(
                    "{:>6.1}s ok {} p50 {}us p99 {}us leased {:?}",
                    start.elapsed().as_secs_f64(),
                    h.len(),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    leased
                );
            }
        })
    });
    for t in tasks {
        let _ = t.await;
    }
    if let Some(t) = ticker {
        t.abort();
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let h = hist.lock().unwrap_or_else(|p| p.into_inner());
    LoadReport {
        ok: h.len(),
        errors: errors.load(Ordering::Relaxed),
        failed: sum(&clients, |s| &s.failed),
        interrupted: sum(&clients, |s| &s.interrupted),
        timed_out: sum(&clients, |s| &s.timed_out),
        no_producer: sum(&clients, |s| &s.no_producer),
        retried: sum(&clients, |s| &s.retried),
        moved: sum(&clients, |s| &s.moved),
        go_aways: sum(&clients, |s| &s.go_aways),
        rps: h.len() as f64 / secs,
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
    }
}

/// A multi-threaded tokio runtime for the processes.
pub fn io_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
