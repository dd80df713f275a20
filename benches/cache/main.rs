//! Suite `cache`: the cache gateway against named peers.
//!
//! - `replay-sim-reqs-<lru|s3fifo>`: policy-only trace replay, requests/s, on the same
//!   oracleGeneral Zipf(0.99) trace; peer `libcachesim` (the PyPI package, its C
//!   simulator driven from Python by `process_trace`, run as a subprocess; only its
//!   replay is timed, not the interpreter start; both sides' timings include reading
//!   the trace file).
//! - `miss-ratio-<policy>-zipf<a>`: miss ratio of FIFO, CLOCK, SIEVE and S3-FIFO at a
//!   cache of 10% of the objects, on Zipf(0.99) and Zipf(0.7) traces; peer `lru`.
//! - `nbd-read-gbps`: sequential reads of a warm export with `nbdcopy ... null:`
//!   (libnbd-bin) through our gateway; peer `nbdkit` (Debian `nbdkit`, file plugin)
//!   serving the same file, read by the same nbdcopy command.
//!
//! - `gateway-zipf-ops` / `gateway-zipf-p99`: 4 KiB reads on a Zipf(0.99) trace over a
//!   volume (the working set), 32 concurrent clients on a 2-thread tokio runtime, cache
//!   at 10% of the working set, both over the same local-file backend (`FileBackend`,
//!   positioned reads on tokio's blocking pool). Ours: the real chunk store (4 KiB
//!   chunks, io_uring, instance-id tags, redb metadata, a 1 MiB memory tier of hot
//!   blocks as foyer's), through the request pipeline
//!   (`pipeline::start` with the gateway's plan: lookup router, hit and fill stages on
//!   a pipewright worker's io_uring, requests in flight across bursts) called as a
//!   `tower::Service` (`PathService`: memory-tier hits answered in the caller's task)
//!   by the same 32 clients, as the NBD server feeds it.
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

// The counting global allocator of `memory-bytes-per-chunk` implements `GlobalAlloc`.
#![allow(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

use pipewright::cache::pipeline::{self, PathResponse};
use pipewright::cache::replay::{
    read_trace, simulate, write_oracle_general, zipf_trace, TraceFormat,
};
use pipewright::cache::{
    Backend, BlockRequest, Cache, CacheConfig, FileBackend, Gateway, PolicyKind,
};
use pipewright::Plan;
use tower::ServiceExt;

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

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const LCS_SCRIPT: &str = r#"
import sys, time, libcachesim as lcs
path, policy, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
cls = {"lru": lcs.LRU, "s3fifo": lcs.S3FIFO}[policy]
p = lcs.ReaderInitParam()
p.ignore_obj_size = True
r = lcs.TraceReader(trace=path, trace_type=lcs.TraceType.ORACLE_GENERAL_TRACE, reader_init_params=p)
c = cls(cache_size=size)
t = time.perf_counter()
mr = c.process_trace(r)[0]
print(time.perf_counter() - t, mr)
"#;

fn libcachesim_reqs(
    trace: &Path,
    policy: PolicyKind,
    size: usize,
    requests: usize,
) -> Option<(f64, f64)> {
    let out = Command::new("python3")
        .args(["-c", LCS_SCRIPT])
        .arg(trace)
        .arg(policy.name())
        .arg(size.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace();
    let secs: f64 = f.next()?.parse().ok()?;
    let mr: f64 = f.next()?.parse().ok()?;
    Some((requests as f64 / secs, mr))
}

fn replay_sim(filter: Option<&str>) {
    let quick = common::quick();
    let (objects, requests) = if quick {
        (100_000, 1_000_000)
    } else {
        (1_000_000, 10_000_000)
    };
    let rounds = if quick { 3 } else { 5 };
    let dir = scratch();
    let ids = zipf_trace(objects, requests, 0.99, 7);
    let trace = dir.join("zipf0.99.oracleGeneral");
    write_oracle_general(&trace, &ids).expect("write trace");
    let size = objects as usize / 10;
    for policy in [PolicyKind::Lru, PolicyKind::S3Fifo] {
        let case = format!("replay-sim-reqs-{}", policy.name());
        if !common::wants(filter, &case) {
            continue;
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            if common::only() != Some(common::Side::Peer) {
                // Timed like the peer's process_trace: reading the trace file included.
                let start = Instant::now();
                let ids = read_trace(&trace, &TraceFormat::OracleGeneral).expect("read trace");
                let r = simulate(&ids, policy, size);
                assert_eq!(r.requests as usize, requests);
                ours.push(requests as f64 / start.elapsed().as_secs_f64());
            }
            if common::only() != Some(common::Side::Ours) {
                match libcachesim_reqs(&trace, policy, size, requests) {
                    Some((rps, mr)) => {
                        let our_mr = simulate(&ids, policy, size).miss_ratio();
                        assert!(
                            (our_mr - mr).abs() < 0.002,
                            "miss ratios diverge: {our_mr} vs {mr}"
                        );
                        theirs.push(rps);
                    }
                    None => {
                        eprintln!("{case}: libcachesim not importable by python3 (pip install libcachesim); peer skipped");
                        break;
                    }
                }
            }
        }
        eprintln!(
            "{case}: ours {ours:.0?} libcachesim {theirs:.0?} (load {})",
            common::loadavg()
        );
        if !ours.is_empty() && !theirs.is_empty() {
            result(
                &case,
                common::median(ours),
                "libcachesim",
                common::median(theirs),
                "req/s",
                "higher",
            );
        }
    }
    let _ = std::fs::remove_file(&trace);
}

fn miss_ratios(filter: Option<&str>) {
    let quick = common::quick();
    let (objects, requests) = if quick {
        (50_000, 500_000)
    } else {
        (200_000, 4_000_000)
    };
    for alpha in [0.99, 0.7] {
        let ids = zipf_trace(objects, requests, alpha, 11);
        let size = objects as usize / 10;
        let lru = simulate(&ids, PolicyKind::Lru, size).miss_ratio();
        for policy in [
            PolicyKind::Fifo,
            PolicyKind::Clock,
            PolicyKind::Sieve,
            PolicyKind::S3Fifo,
        ] {
            let case = format!("miss-ratio-{}-zipf{alpha}", policy.name());
            if !common::wants(filter, &case) {
                continue;
            }
            let mr = simulate(&ids, policy, size).miss_ratio();
            result(&case, mr, "lru", lru, "miss_ratio", "lower");
        }
    }
}

fn nbdcopy_gbps(uri: &str, bytes: u64) -> f64 {
    let start = Instant::now();
    let st = Command::new("nbdcopy")
        .arg(uri)
        .arg("null:")
        .status()
        .expect("run nbdcopy");
    assert!(st.success(), "nbdcopy {uri} failed");
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn nbd_read(filter: Option<&str>) {
    let case = "nbd-read-gbps";
    if !common::wants(filter, case) {
        return;
    }
    if !have("nbdcopy") || !have("nbdkit") {
        eprintln!("{case}: skipped: nbdcopy (libnbd-bin) or nbdkit (nbdkit) not found");
        return;
    }
    let quick = common::quick();
    let mib: u64 = if quick { 256 } else { 1024 };
    let rounds = if quick { 3 } else { 5 };
    let dir = scratch().join("nbd");
    std::fs::create_dir_all(dir.join("volumes")).unwrap();
    let vol = dir.join("volumes/disk");
    let data: Vec<u8> = (0..mib * (1 << 20))
        .map(|i| ((i * 2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&vol, data).unwrap();
    let bytes = mib << 20;
    // Ours: the gateway in this process, the cache as large as the volume (warm after
    // the first pass).
    let rt = pipewright::cache::io_runtime().unwrap();
    let mut cfg = CacheConfig::with_size(dir.join("cache"), bytes + (8 << 20), 1 << 20);
    cfg.low_watermark = 1;
    cfg.high_watermark = 2;
    let gw = rt
        .block_on(Gateway::start(
            cfg,
            Arc::new(FileBackend::new(dir.join("volumes")).unwrap()),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .expect("gateway");
    let ours_uri = format!("nbd://{}/disk", gw.addr());
    // Peer: nbdkit's file plugin on the same file.
    let port = free_port();
    let mut nbdkit = Command::new("nbdkit")
        .args([
            "--foreground",
            "--ip-addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--exportname",
            "disk",
            "file",
        ])
        .arg(format!("file={}", vol.display()))
        .stdout(Stdio::null())
        .spawn()
        .expect("start nbdkit");
    let peer_uri = format!("nbd://127.0.0.1:{port}/disk");
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Warm both (our cache; the page cache for nbdkit).
    nbdcopy_gbps(&ours_uri, bytes);
    nbdcopy_gbps(&peer_uri, bytes);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        if common::only() != Some(common::Side::Peer) {
            ours.push(nbdcopy_gbps(&ours_uri, bytes));
        }
        if common::only() != Some(common::Side::Ours) {
            theirs.push(nbdcopy_gbps(&peer_uri, bytes));
        }
    }
    let stats = gw.cache().stats();
    eprintln!(
        "{case}: {mib} MiB per pass; ours {ours:.3?} nbdkit {theirs:.3?} GB/s; cache hits {} misses {} (load {})",
        stats.hits,
        stats.misses,
        common::loadavg()
    );
    let _ = nbdkit.kill();
    let _ = nbdkit.wait();
    drop(gw);
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    if !ours.is_empty() && !theirs.is_empty() {
        result(
            case,
            common::median(ours),
            "nbdkit",
            common::median(theirs),
            "GB/s",
            "higher",
        );
    }
}

fn main() {
    let filter = common::case_filter();
    let start = Instant::now();
    replay_sim(filter.as_deref());
    miss_ratios(filter.as_deref());
    nbd_read(filter.as_deref());
    gateway_zipf(filter.as_deref());
    memory(filter.as_deref());
    let _ = std::fs::remove_dir_all(scratch());
    eprintln!("suite cache done in {:.1} s", start.elapsed().as_secs_f64());
}

const BLOCK: u64 = 4096;
/// Both sides' memory budget for block copies (foyer's memory tier, our memory tier).
const FOYER_MEMORY: u64 = 1 << 20;
const CLIENTS: usize = 32;

/// The volume: block `i` starts with `i` (little endian), the rest is zeros.
fn zipf_volume(path: &Path, blocks: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).expect("volume");
    f.set_len(blocks * BLOCK).expect("volume size");
    let mut buf = vec![0u8; (BLOCK * 256) as usize];
    for first in (0..blocks).step_by(256) {
        let n = (blocks - first).min(256);
        for i in 0..n {
            buf[(i * BLOCK) as usize..(i * BLOCK + 8) as usize]
                .copy_from_slice(&(first + i).to_le_bytes());
        }
        f.write_all_at(&buf[..(n * BLOCK) as usize], first * BLOCK)
            .expect("write volume");
    }
}

/// Runs the trace with CLIENTS concurrent clients (client c takes requests c, c+CLIENTS,
/// ...); `read(block)` returns the block's bytes. Returns (ops/s, p99 in µs).
fn drive<F, Fut>(rt: &tokio::runtime::Runtime, trace: &Arc<Vec<u64>>, read: F) -> (f64, f64)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send,
{
    let start = Instant::now();
    let hists = rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let trace = trace.clone();
            let read = read.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                for &block in trace.iter().skip(c).step_by(CLIENTS) {
                    let t = Instant::now();
                    let data = read(block).await;
                    h.saturating_record(t.elapsed().as_nanos() as u64);
                    assert_eq!(data.len(), BLOCK as usize);
                    assert_eq!(data[..8], block.to_le_bytes(), "block {block}: wrong bytes");
                }
                h
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for t in tasks {
            all.add(t.await.expect("client")).unwrap();
        }
        all
    });
    let secs = start.elapsed().as_secs_f64();
    (
        trace.len() as f64 / secs,
        hists.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

fn ours_zipf(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    backend: Arc<FileBackend>,
    chunks: u32,
    trace: &Arc<Vec<u64>>,
) -> (f64, f64, f64) {
    let _ = std::fs::remove_file(dir.join("ours.cache"));
    let _ = std::fs::remove_file(dir.join("ours.cache.meta"));
    let mut cfg = CacheConfig::new(dir.join("ours.cache"), chunks);
    cfg.chunk_size = BLOCK;
    cfg.eviction_batch = 32;
    // The same memory budget as foyer's memory tier (`PIPEWRIGHT_BENCH_CACHE_MEMORY`:
    // another budget for ours, e.g. 0 to measure without the tier).
    cfg.memory_bytes = std::env::var("PIPEWRIGHT_BENCH_CACHE_MEMORY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FOYER_MEMORY);
    let cache = rt
        .block_on(Cache::open(cfg, backend as Arc<dyn Backend>))
        .expect("open our cache");
    let vol = cache.volume("disk").unwrap();
    // The path a gateway runs at scale: the request pipeline on a pipewright worker
    // (lookup router, hit / fill stages on the worker's io_uring, many requests in
    // flight), as the NBD server feeds it; the clients call its tower::Service.
    let (running, svc) = rt
        .block_on(async { pipeline::start(cache.clone(), Plan::fused()) })
        .expect("start the request pipeline");
    let s2 = svc.clone();
    let (ops, p99) = drive(rt, trace, move |block| {
        let svc = s2.clone();
        async move {
            let reply = svc
                .oneshot(BlockRequest::Read {
                    volume: vol,
                    offset: block * BLOCK,
                    len: BLOCK,
                })
                .await
                .expect("the pipeline answers")
                .expect("our read");
            match reply {
                PathResponse::Data(d) => d.into_vec(),
                other => panic!("a read answered {other:?}"),
            }
        }
    });
    drop(svc);
    let _ = running.drain();
    let s = cache.stats();
    eprintln!(
        "ours: {} hits ({} from the memory tier), {} misses",
        s.hits, s.memory_hits, s.misses
    );
    drop(cache);
    (ops, p99, s.hit_ratio())
}

fn foyer_zipf(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    backend: Arc<FileBackend>,
    disk_bytes: u64,
    trace: &Arc<Vec<u64>>,
) -> (f64, f64, f64) {
    use foyer::{
        BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    };
    let fdir = dir.join("foyer");
    let _ = std::fs::remove_dir_all(&fdir);
    std::fs::create_dir_all(&fdir).unwrap();
    let hybrid: HybridCache<u64, Vec<u8>> = rt.block_on(async {
        let device = FsDeviceBuilder::new(&fdir)
            .with_capacity(disk_bytes as usize)
            .build()
            .expect("foyer device");
        HybridCacheBuilder::new()
            .memory(FOYER_MEMORY as usize)
            .with_weighter(|_k: &u64, v: &Vec<u8>| 8 + v.len())
            .storage()
            .with_engine_config(
                BlockEngineConfig::new(device)
                    .with_block_size(1 << 20)
                    .with_buffer_pool_size(1 << 20),
            )
            .build()
            .await
            .expect("foyer hybrid cache")
    });
    let h = hybrid.clone();
    // Backend reads: foyer's misses (its hit ratio is 1 - fetches / requests).
    let fetches = Arc::new(AtomicU64::new(0));
    let f2 = fetches.clone();
    let (ops, p99) = drive(rt, trace, move |block| {
        let h = h.clone();
        let backend = backend.clone();
        let fetches = f2.clone();
        async move {
            let e = h
                .get_or_fetch(&block, move || async move {
                    fetches.fetch_add(1, Ordering::Relaxed);
                    backend.read("disk", block * BLOCK, BLOCK as usize).await
                })
                .await
                .expect("foyer read");
            e.value().clone()
        }
    });
    rt.block_on(hybrid.close()).expect("close foyer");
    let hit_ratio = 1.0 - fetches.load(Ordering::Relaxed) as f64 / trace.len() as f64;
    (ops, p99, hit_ratio)
}

fn gateway_zipf(filter: Option<&str>) {
    if !common::wants(filter, "gateway-zipf-ops") && !common::wants(filter, "gateway-zipf-p99") {
        return;
    }
    let quick = common::quick();
    let (blocks, requests, rounds): (u64, usize, usize) = if quick {
        (32_768, 30_000, 2)
    } else {
        (131_072, 400_000, 3)
    };
    let dir = scratch().join("zipf");
    std::fs::create_dir_all(dir.join("volumes")).unwrap();
    zipf_volume(&dir.join("volumes/disk"), blocks);
    // zipf_trace scatters ranks over a wider id space: number the ids densely (in order
    // of first use) so every request names a block of the volume.
    let mut dense = std::collections::HashMap::new();
    let trace: Vec<u64> = zipf_trace(blocks, requests, 0.99, 99)
        .into_iter()
        .map(|id| {
            let n = dense.len() as u64;
            *dense.entry(id).or_insert(n)
        })
        .collect();
    let trace = Arc::new(trace);
    let chunks = (blocks / 10) as u32;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = Arc::new(FileBackend::new(dir.join("volumes")).unwrap());
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        if common::only() != Some(common::Side::Peer) {
            ours.push(ours_zipf(&rt, &dir, backend.clone(), chunks, &trace));
        }
        if common::only() != Some(common::Side::Ours) {
            theirs.push(foyer_zipf(
                &rt,
                &dir,
                backend.clone(),
                chunks as u64 * BLOCK,
                &trace,
            ));
        }
    }
    eprintln!(
        "gateway-zipf: {blocks} blocks of 4 KiB, {requests} reads, cache {chunks} blocks; ours (ops/s, p99 us, hit ratio) {ours:.2?}; foyer (ops/s, p99 us, hit ratio) {theirs:.2?} (load {})",
        common::loadavg()
    );
    let _ = std::fs::remove_dir_all(&dir);
    if ours.is_empty() || theirs.is_empty() {
        return;
    }
    let med = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        common::median(v.iter().map(f).collect())
    };
    if common::wants(filter, "gateway-zipf-ops") {
        result(
            "gateway-zipf-ops",
            med(&ours, |r| r.0),
            "foyer",
            med(&theirs, |r| r.0),
            "ops/s",
            "higher",
        );
    }
    if common::wants(filter, "gateway-zipf-p99") {
        result(
            "gateway-zipf-p99",
            med(&ours, |r| r.1),
            "foyer",
            med(&theirs, |r| r.1),
            "us",
            "lower",
        );
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn memory(filter: Option<&str>) {
    let case = "memory-bytes-per-chunk";
    if !common::wants(filter, case) {
        return;
    }
    let quick = common::quick();
    let slots: u32 = 1 << 20;
    let filled: u64 = if quick { 10_000 } else { 500_000 };
    let dir = scratch().join("memory");
    std::fs::create_dir_all(dir.join("volumes")).unwrap();
    // A sparse volume as large as the cache: every chunk reads as zeros.
    std::fs::File::create(dir.join("volumes/disk"))
        .and_then(|f| f.set_len(slots as u64 * BLOCK))
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend: Arc<dyn Backend> = Arc::new(FileBackend::new(dir.join("volumes")).unwrap());
    let mut cfg = CacheConfig::new(dir.join("cache"), slots);
    cfg.chunk_size = BLOCK;
    let rss0 = rss_bytes();
    let t_open = Instant::now();
    let cache = rt.block_on(Cache::open(cfg, backend)).expect("open");
    let open_secs = t_open.elapsed().as_secs_f64();
    let t_fill = Instant::now();
    let vol = cache.volume("disk").unwrap();
    let heap_open = live_heap();
    let rss_open = rss_bytes();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS as u64 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = c;
                while b < filled {
                    cache.read(vol, b * BLOCK, BLOCK).await.expect("fill");
                    b += CLIENTS as u64;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let fill_secs = t_fill.elapsed().as_secs_f64();
    let heap_filled = live_heap();
    let rss_filled = rss_bytes();
    let used = cache.stats().used_chunks;
    let ours = (heap_filled - heap_open) as f64 / used as f64;
    let meta_bytes = std::fs::metadata(dir.join("cache.meta")).map_or(0, |m| m.len());
    drop(cache);
    drop(rt);
    // Peer: an LRU map from chunk key to slot, N entries.
    let before = live_heap();
    let mut lru = lru::LruCache::<(u32, u64), u32>::unbounded();
    for b in 0..used {
        lru.put((0, b), b as u32);
    }
    let peer = (live_heap() - before) as f64 / used as f64;
    drop(lru);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "REPORT suite=cache case=memory-rss-1m-chunks slots={slots} cached={used} rss_before_open_mib={:.1} rss_open_mib={:.1} rss_filled_mib={:.1} heap_at_open_mib={:.1} redb_meta_bytes_per_slot={:.1} open_s={open_secs:.1} fill_s={fill_secs:.1}",
        rss0 as f64 / 1048576.0,
        rss_open as f64 / 1048576.0,
        rss_filled as f64 / 1048576.0,
        heap_open as f64 / 1048576.0,
        meta_bytes as f64 / slots as f64,
    );
    result(case, ours, "lru", peer, "bytes", "lower");
}
