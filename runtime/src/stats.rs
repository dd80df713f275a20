//! Per-stage counters: written once per burst by the stage's worker, read at any time
//! by [`Running::snapshot`](crate::Running::snapshot), and mirrored to the `metrics`
//! facade (so any installed recorder, e.g. the Prometheus exporter, sees them).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{counter, histogram, Counter, Histogram};
use pipewright_stages::exec::{DropReason, Observer};

const BUCKETS: usize = 40;

/// Counters of one stage. Single writer (the stage's worker), any number of readers.
#[derive(Debug)]
pub(crate) struct StageStats {
    items_in: AtomicU64,
    items_out: AtomicU64,
    bursts: AtomicU64,
    panics: AtomicU64,
    dropped: [AtomicU64; 5],
    timed_items: AtomicU64,
    timed_nanos: AtomicU64,
    /// Bucket `b` counts sampled bursts whose ns/item was in [2^b, 2^(b+1)).
    ns_per_item: [AtomicU64; BUCKETS],
    /// The error that ended this stage, if it is a source that failed.
    source_error: std::sync::Mutex<Option<String>>,
}

impl Default for StageStats {
    fn default() -> Self {
        Self {
            items_in: AtomicU64::new(0),
            items_out: AtomicU64::new(0),
            bursts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            dropped: Default::default(),
            timed_items: AtomicU64::new(0),
            timed_nanos: AtomicU64::new(0),
            ns_per_item: std::array::from_fn(|_| AtomicU64::new(0)),
            source_error: std::sync::Mutex::new(None),
        }
    }
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    // Single writer: a load and a store are enough and cheaper than a locked add.
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

fn reason_index(reason: DropReason) -> usize {
    DropReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("ALL lists every reason")
}

/// Feeds one stage's [`StageStats`] and its `metrics` handles.
pub(crate) struct StatsObserver {
    stats: Arc<StageStats>,
    items_in: Counter,
    items_out: Counter,
    dropped: [Counter; 5],
    panics: Counter,
    stage: String,
    burst_size: Histogram,
    ns_per_item: Histogram,
}

impl StatsObserver {
    pub(crate) fn new(stage: &str, stats: Arc<StageStats>) -> Self {
        let s = stage.to_string();
        Self {
            stats,
            items_in: counter!("pipewright_stage_items_in_total", "stage" => s.clone()),
            items_out: counter!("pipewright_stage_items_out_total", "stage" => s.clone()),
            dropped: DropReason::ALL.map(|r| counter!("pipewright_stage_dropped_total", "stage" => s.clone(), "reason" => r.as_str())),
            panics: counter!("pipewright_stage_panics_total", "stage" => s.clone()),
            stage: s.clone(),
            burst_size: histogram!("pipewright_stage_burst_size", "stage" => s.clone()),
            ns_per_item: histogram!("pipewright_stage_service_ns_per_item", "stage" => s),
        }
    }
}

impl Observer for StatsObserver {
    #[inline]
    fn burst(&mut self, items_in: usize, items_out: usize, nanos: Option<u64>) {
        let s = &*self.stats;
        bump(&s.items_in, items_in as u64);
        bump(&s.items_out, items_out as u64);
        bump(&s.bursts, 1);
        self.items_in.increment(items_in as u64);
        self.items_out.increment(items_out as u64);
        if let Some(nanos) = nanos {
            // Only sampled bursts reach the histograms: recording is not free.
            let items = items_in.max(items_out).max(1) as u64;
            bump(&s.timed_items, items);
            bump(&s.timed_nanos, nanos);
            let per_item = nanos / items;
            let bucket = (u64::BITS - per_item.leading_zeros()).min(BUCKETS as u32 - 1) as usize;
            bump(&s.ns_per_item[bucket], 1);
            self.burst_size.record(items as f64);
            self.ns_per_item.record(per_item as f64);
        }
    }

    fn dropped(&mut self, reason: DropReason, count: usize) {
        let i = reason_index(reason);
        bump(&self.stats.dropped[i], count as u64);
        self.dropped[i].increment(count as u64);
    }

    fn panicked(&mut self, message: &str) {
        bump(&self.stats.panics, 1);
        self.panics.increment(1);
        tracing::error!(target: "pipewright", panic = message, "stage panicked");
    }

    fn source_failed(&mut self, error: &pipewright_stages::StageError) {
        let message = error.to_string();
        tracing::warn!(target: "pipewright", stage = %self.stage, error = %message, "source failed; ending it");
        counter!("pipewright_source_errors_total", "stage" => self.stage.clone()).increment(1);
        *self
            .stats
            .source_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(message);
    }
}

/// A point-in-time copy of one stage's counters.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StageSnapshot {
    /// Stage name.
    pub name: String,
    /// Worker index the stage runs on.
    pub worker: usize,
    /// Burst size in use.
    pub burst: usize,
    /// Items taken from the input.
    pub items_in: u64,
    /// Items emitted.
    pub items_out: u64,
    /// Activations that did work.
    pub bursts: u64,
    /// Panics caught.
    pub panics: u64,
    /// Dropped items by reason (`error`, `panic`, `unrouted`, `aborted`, `timeout`).
    pub dropped: Vec<(Cow<'static, str>, u64)>,
    /// Mean service time per item over sampled bursts, in ns.
    pub mean_ns_per_item: Option<f64>,
    /// Items in the bursts that were timed (the sample behind `mean_ns_per_item`).
    pub timed_items: u64,
    /// Total service time of the timed bursts, in ns.
    pub timed_nanos: u64,
    /// 99th percentile of sampled per-item service time, as a power-of-two upper bound.
    pub p99_ns_per_item: Option<u64>,
    /// Items waiting in the stage's input edge.
    pub queue_depth: usize,
    /// Slots of the stage's input edge (0 for sources).
    pub queue_capacity: usize,
    /// How the input edge is carried now: `fused` (same worker, a plain buffer),
    /// `spsc` or `mpsc` (a lock-free ring between workers), `shared` (planned fused,
    /// but a live move put its ends on different workers: its buffer is shared under a
    /// lock), or `-` (a source).
    pub input_kind: Cow<'static, str>,
    /// For a source that ended with [`SourceState::Failed`](crate::SourceState::Failed):
    /// its error's message.
    pub source_error: Option<String>,
}

impl StageSnapshot {
    /// Sum of all drops.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }
}

impl StageStats {
    pub(crate) fn snapshot(&self, name: &str) -> StageSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let timed_items = load(&self.timed_items);
        let buckets: Vec<u64> = self.ns_per_item.iter().map(load).collect();
        let total: u64 = buckets.iter().sum();
        let p99 = (total > 0).then(|| {
            let target = total - total / 100;
            let mut seen = 0;
            for (b, n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= target {
                    return 1u64 << b;
                }
            }
            1u64 << (BUCKETS - 1)
        });
        StageSnapshot {
            name: name.to_string(),
            items_in: load(&self.items_in),
            items_out: load(&self.items_out),
            bursts: load(&self.bursts),
            panics: load(&self.panics),
            dropped: DropReason::ALL
                .iter()
                .zip(&self.dropped)
                .map(|(r, n)| (Cow::Borrowed(r.as_str()), load(n)))
                .collect(),
            timed_items,
            timed_nanos: load(&self.timed_nanos),
            mean_ns_per_item: (timed_items > 0)
                .then(|| load(&self.timed_nanos) as f64 / timed_items as f64),
            p99_ns_per_item: p99,
            source_error: self
                .source_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..StageSnapshot::default()
        }
    }
}

/// A point-in-time copy of every stage's counters.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Stages in pipeline order.
    pub stages: Vec<StageSnapshot>,
}

impl Snapshot {
    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageSnapshot> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The replicas of replicated stage `name` (`name#0`, `name#1`, ...), in order.
    pub fn replicas(&self, name: &str) -> Vec<&StageSnapshot> {
        self.stages
            .iter()
            .filter(|s| {
                pipewright_stages::parse_replica_name(&s.name).is_some_and(|(b, _)| b == name)
            })
            .collect()
    }

    /// Items currently held in edges (rings and fused buffers) between stages.
    pub fn queued(&self) -> usize {
        self.stages.iter().map(|s| s.queue_depth).sum()
    }
}

impl Snapshot {
    /// The per-stage table every view draws (the `Display` of a snapshot, the CLI's
    /// live view, `pipewright top`). With `since` (an earlier snapshot and the seconds
    /// between them) the item columns are rates per second; without, totals.
    pub fn table(&self, since: Option<(&Snapshot, f64)>) -> String {
        let w = self
            .stages
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let (items_in, items_out) = if since.is_some() {
            ("in/s", "out/s")
        } else {
            ("in", "out")
        };
        let mut out = format!(
            "{:<w$} {:>3} {:>5} {:>12} {:>12} {:>9} {:>9} {:>6} {:>11} {:>7}\n",
            "stage",
            "wkr",
            "burst",
            items_in,
            items_out,
            "ns/item",
            "p99<=ns",
            "input",
            "queue",
            "dropped"
        );
        for s in &self.stages {
            let (a, b) = match since {
                Some((prev, secs)) => {
                    let p = prev.stage(&s.name).cloned().unwrap_or_default();
                    let secs = secs.max(1e-9);
                    (
                        human(s.items_in.saturating_sub(p.items_in) as f64 / secs),
                        human(s.items_out.saturating_sub(p.items_out) as f64 / secs),
                    )
                }
                None => (s.items_in.to_string(), s.items_out.to_string()),
            };
            let queue = if s.queue_capacity == 0 {
                "-".to_string()
            } else {
                format!("{}/{}", s.queue_depth, s.queue_capacity)
            };
            let ns = s
                .mean_ns_per_item
                .map(|n| format!("{n:.1}"))
                .unwrap_or_else(|| "-".into());
            let p99 = s
                .p99_ns_per_item
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<w$} {:>3} {:>5} {:>12} {:>12} {:>9} {:>9} {:>6} {:>11} {:>7}\n",
                s.name,
                s.worker,
                s.burst,
                a,
                b,
                ns,
                p99,
                s.input_kind,
                queue,
                s.dropped_total()
            ));
        }
        out
    }
}

/// A rate with a k/M/G suffix.
fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

impl fmt::Display for Snapshot {
    /// A table: one row per stage, with totals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table(None))
    }
}
