//! The bank benchmark behind `pipewright storage bench`: concurrent clients run
//! transfers for a while, then the cluster is settled and audited.
//!
//! ```no_run
//! use pipewright_storage::bench::{run, BenchOptions};
//! use pipewright_storage::client::StorageClient;
//! use pipewright_storage::peers::Peers;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = StorageClient::new(Peers::load("peers.toml")?);
//! let report = run(client, BenchOptions::default()).await?;
//! println!("{:.0} txn/s, p99 {:?}", report.tps(), report.quantile(0.99));
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bank::{Audit, Bank};
use crate::client::{ClientError, StorageClient};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// How long to run transfers.
    pub seconds: f64,
    /// Concurrent transfer loops.
    pub concurrency: usize,
    /// Nodes per transfer (one page on each; capped at the cluster size).
    pub span: usize,
    /// Accounts (pages) per node.
    pub accounts_per_node: u64,
}

impl Default for BenchOptions {
    /// 10 s, 16 loops, transfers over 3 nodes, 256 accounts per node.
    fn default() -> Self {
        Self {
            seconds: 10.0,
            concurrency: 16,
            span: 3,
            accounts_per_node: 256,
        }
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct BenchReport {
    /// Committed transfers.
    pub committed: u64,
    /// Aborted attempts (conflicts, stale versions), each retried.
    pub aborted: u64,
    /// Attempts refused with `Busy`.
    pub busy: u64,
    /// Attempts with no answer in time (outcome unknown).
    pub timeouts: u64,
    /// Other errors.
    pub errors: u64,
    /// Wall time of the transfer phase.
    pub elapsed: Duration,
    /// Latency of committed transfer attempts (read of uncached accounts + commit), µs.
    pub latency: Histogram<u64>,
    /// The audit after settling.
    pub audit: Audit,
    /// The total the audit must find.
    pub expected_total: i64,
}

impl BenchReport {
    /// Committed transfers per second.
    pub fn tps(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile (`0.5`, `0.99`).
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }

    /// Whether the audit found the total, no negative balance and no lost commit.
    pub fn consistent(&self) -> bool {
        self.audit.total == self.expected_total && self.audit.min >= 0 && self.audit.lost.is_empty()
    }
}

#[derive(Default)]
struct Counts {
    committed: AtomicU64,
    aborted: AtomicU64,
    busy: AtomicU64,
    timeouts: AtomicU64,
    errors: AtomicU64,
}

/// Open the bank (1000 per account if new), run transfers, settle, audit.
pub async fn run(client: StorageClient, opts: BenchOptions) -> Result<BenchReport, ClientError> {
    let bank = Arc::new(Bank::new(client, opts.accounts_per_node.max(1)));
    bank.open(1000).await?;
    let counts = Arc::new(Counts::default());
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(opts.seconds.max(0.0));
    let mut tasks = Vec::new();
    for seed in 0..opts.concurrency.max(1) {
        let (bank, counts, histogram) = (bank.clone(), counts.clone(), histogram.clone());
        let span = opts.span;
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed as u64 ^ fastrand::u64(..));
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let counter = match bank.transfer(span, &mut rng).await {
                    Ok(()) => {
                        let _ = local.record(t0.elapsed().as_micros().max(1) as u64);
                        &counts.committed
                    }
                    Err(ClientError::Aborted(_)) => &counts.aborted,
                    Err(ClientError::Busy { .. }) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        &counts.busy
                    }
                    Err(ClientError::Timeout { .. }) => &counts.timeouts,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        &counts.errors
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let _ = histogram
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(&local);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed();
    bank.settle(Duration::from_secs(30)).await?;
    let audit = bank.audit().await?;
    let latency = histogram.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let c = &counts;
    Ok(BenchReport {
        committed: c.committed.load(Ordering::Relaxed),
        aborted: c.aborted.load(Ordering::Relaxed),
        busy: c.busy.load(Ordering::Relaxed),
        timeouts: c.timeouts.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        elapsed,
        latency,
        audit,
        expected_total: bank.expected_total(),
    })
}
