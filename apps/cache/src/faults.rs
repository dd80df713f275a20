//! Crash points for kill -9 tests: `PIPEWRIGHT_CACHE_CRASH_AT=<point>` makes the
//! process abort (no unwinding, no flushing: as `kill -9` would) the
//! `PIPEWRIGHT_CACHE_CRASH_AFTER`-th time (default 1) it reaches that point.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Where a crash can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// During a fill: half the chunk's bytes written, no tags, no metadata.
    Fill,
    /// During an eviction: victims flushed, the new instance ids not yet committed.
    Evict,
    /// During a flush: dirty blocks written to the backend, the clean state not yet
    /// committed.
    Flush,
    /// Inside a metadata transaction, before its commit.
    MetaCommit,
}

impl CrashPoint {
    fn name(self) -> &'static str {
        match self {
            CrashPoint::Fill => "fill",
            CrashPoint::Evict => "evict",
            CrashPoint::Flush => "flush",
            CrashPoint::MetaCommit => "meta-commit",
        }
    }
}

struct Armed {
    point: Option<String>,
    after: u64,
    hits: AtomicU64,
}

fn armed() -> &'static Armed {
    static ARMED: OnceLock<Armed> = OnceLock::new();
    ARMED.get_or_init(|| Armed {
        point: std::env::var("PIPEWRIGHT_CACHE_CRASH_AT").ok(),
        after: std::env::var("PIPEWRIGHT_CACHE_CRASH_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        hits: AtomicU64::new(0),
    })
}

/// Whether the process is armed to crash at `point` (and this is the time).
pub(crate) fn should_crash(point: CrashPoint) -> bool {
    let a = armed();
    if a.point.as_deref() != Some(point.name()) {
        return false;
    }
    a.hits.fetch_add(1, Ordering::SeqCst) + 1 >= a.after
}

/// Aborts the process if armed for `point`.
pub(crate) fn reached(point: CrashPoint) {
    if should_crash(point) {
        eprintln!(
            "pipewright-cache: crash point {} reached, aborting",
            point.name()
        );
        std::process::abort();
    }
}
