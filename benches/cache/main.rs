//! Suite `cache`: the cache gateway against named peers.
//!
//! - `replay-sim-reqs-<lru|s3fifo>`: policy-only trace replay, requests/s, on the same
//!   oracleGeneral Zipf(0.99) trace; peer `libcachesim` (the PyPI package, its C
//!   simulator driven from Python by `process_trace`, run as a subprocess; only its
//!   replay is timed, not the interpreter start; both sides' timings include reading
//!   the trace file).
//! - `miss-ratio-<policy>-zipf<a>`: miss ratio of FIFO, CLOCK, SIEVE and S3-FIFO at a
//!   cache of 10% of the objects, on Zipf(0.99) and Zipf(0.7) traces; peer `lru`.
//! - `nbd-read-gbps`: sequential 1 MiB reads of a warm export with `nbdcopy
//!   --request-size=1M ... null:` (libnbd-bin) through our gateway; peer `nbdkit` (Debian `nbdkit`, file plugin)
//!   serving the same file, read by the same nbdcopy command. The stderr line also
//!   gives each server's CPU seconds per GiB over the timed passes (ours: this
//!   process; nbdkit's: its process), which machine load bends less than GB/s.
//!
//! - `gateway-zipf-ops` / `gateway-zipf-p99`: 4 KiB reads on a Zipf(0.99) trace over a
//!   volume (the working set), 32 reads in flight on a 2-thread tokio runtime, cache
//!   at 10% of the working set, both over the same local-file backend (`FileBackend`:
//!   foyer's misses read it on tokio's blocking pool, ours on the worker's io_uring,
//!   `Backend::local_file`). Ours: the real chunk store (4 KiB chunks, io_uring,
//!   instance-id tags, redb metadata, a 1 MiB memory tier of hot blocks as foyer's),
//!   through the request pipeline (`pipeline::start` with the gateway's plan: lookup
//!   and hits on one worker, fills on another, requests in flight across bursts), fed
//!   as the NBD server feeds it: two client tasks (one per runtime thread) keep 16
//!   reads each in flight through one answer queue each (`PathService::send_queued`;
//!   memory-tier hits and direct hits, `CacheConfig::direct_hits`: verified blocks the
//!   page cache holds, read with `preadv2(RWF_NOWAIT)`, answered in the caller's
//!   task). `PIPEWRIGHT_BENCH_CACHE_CLIENT=tasks`
//!   drives ours as foyer is driven (32 tasks, one future per read);
//!   `PIPEWRIGHT_BENCH_CACHE_PLAN=fused` runs the pipeline on one worker.
//!   Peer `foyer`: its `HybridCache<u64, Vec<u8>>` with a byte weigher on a 1 MiB memory
//!   tier and a disk tier (`FsDevice`, block engine, 1 MiB blocks, 1 MiB buffer pool)
//!   of exactly our cache file's data bytes; a miss goes through `get_or_fetch` to the
//!   same backend. Neither side keeps block data in its own memory beyond its 1 MiB (both
//!   files go through the OS page cache). Every read's first 8 bytes are checked
//!   against the block number on both sides.
//!   The phantom-entry problem foyer's docs warn about (an updated key coming back with
//!   old bytes after a restart) is ruled out here by instance ids: see
//!   `apps/cache/tests/no_phantom.rs`.
//! - `memory-bytes-per-chunk`: heap bytes per cached chunk of our cache's in-memory
//!   metadata (index, slot table, policy, store cells), counted by a counting global
//!   allocator, filling N 4 KiB chunks of a 1 M-slot cache; peer `lru`: the `lru`
//!   crate's `LruCache<(u32, u64), u32>` (key → slot) with N entries, the least an LRU
//!   chunk index needs. A plain `REPORT` line gives the process RSS of the 1 M-slot
//!   cache and its redb metadata bytes per chunk.
//!
//! Rounds alternate ours/peer; each RESULT is the median per side.
//! `PIPEWRIGHT_BENCH_QUICK=1`: smaller traces and volume, fewer rounds (< 60 s).
//! `PIPEWRIGHT_BENCH_CACHE_MEMORY=<bytes>`: our memory tier's budget in
//! `gateway-zipf-*` (default 1 MiB, foyer's; 0 measures ours without the tier).
//! `PIPEWRIGHT_BENCH_CACHE_DIRECT=0`: ours without direct hits (`gateway-zipf-*` and
//! `nbd-read-gbps`: every hit through the pipeline, every NBD reply from a buffer).
//! `PIPEWRIGHT_BENCH_CACHE_VERIFY=once-per-write`: ours checks a block's CRC once per
//! write of its slot instead of on every hit (`Verify::OncePerWrite`).

// The counting global allocator of `memory-bytes-per-chunk` implements `GlobalAlloc`.
#![allow(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;
mod memory;
mod nbd;
mod replay;
mod zipf;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// The system allocator, counting live heap bytes (for `memory-bytes-per-chunk`).
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with layout `l` (see `alloc`).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with layout `l`; the caller's
        // contract for `realloc` is passed on.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(l) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_heap() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn result(case: &str, ours: f64, peer: &str, theirs: f64, unit: &str, better: &str) {
    println!(
        "RESULT suite=cache case={case} ours={ours:.4} peer={peer}:{theirs:.4} unit={unit} better={better} ratio={:.3}",
        ours / theirs
    );
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("pipewright-bench-cache-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch directory");
    d
}

/// `PIPEWRIGHT_BENCH_CACHE_DIRECT`: whether ours serves direct hits (default yes).
fn direct_hits() -> bool {
    std::env::var("PIPEWRIGHT_BENCH_CACHE_DIRECT").map_or(true, |v| v != "0")
}

/// `PIPEWRIGHT_BENCH_CACHE_VERIFY`: how often ours checks hits' CRCs (`every-read`, the
/// default, or `once-per-write`).
fn verify() -> pipewright::cache::Verify {
    std::env::var("PIPEWRIGHT_BENCH_CACHE_VERIFY").map_or(Default::default(), |v| {
        v.parse()
            .unwrap_or_else(|e| panic!("PIPEWRIGHT_BENCH_CACHE_VERIFY: {e}"))
    })
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let filter = common::case_filter();
    let start = Instant::now();
    replay::replay_sim(filter.as_deref());
    replay::miss_ratios(filter.as_deref());
    nbd::nbd_read(filter.as_deref());
    zipf::gateway_zipf(filter.as_deref());
    memory::memory(filter.as_deref());
    let _ = std::fs::remove_dir_all(scratch());
    eprintln!("suite cache done in {:.1} s", start.elapsed().as_secs_f64());
}
