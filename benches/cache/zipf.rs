//! `gateway-zipf-ops` / `gateway-zipf-p99`: 4 KiB Zipf reads through our request
//! pipeline and through foyer's `HybridCache`, over the same backend.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

use pipewright::cache::pipeline::{self, PathResponse, PathService};
use pipewright::cache::replay::zipf_trace;
use pipewright::cache::{Backend, BlockRequest, Cache, CacheConfig, FileBackend, VolumeId};
use pipewright::{Answers, Pin, Plan};
use tower::ServiceExt;

use super::{common, result, scratch};

pub(crate) const BLOCK: u64 = 4096;
/// Both sides' memory budget for block copies (foyer's memory tier, our memory tier).
const FOYER_MEMORY: u64 = 1 << 20;
pub(crate) const CLIENTS: usize = 32;

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

/// Our plan: the gateway's (`pipeline::gateway_plan`: lookup and hits on one worker,
/// fills and writes on another); `PIPEWRIGHT_BENCH_CACHE_PLAN=fused` puts every stage
/// on one worker (the plan before), `float` too but unpinned.
fn plan() -> Plan {
    let all = ["lookup", "hit", "fill", "write"];
    match std::env::var("PIPEWRIGHT_BENCH_CACHE_PLAN").as_deref() {
        Ok("float") => Plan::explicit().worker(all, Pin::Float),
        Ok("fused") => Plan::fused(),
        _ => pipeline::gateway_plan(),
    }
}

fn data_of(reply: PathResponse) -> Vec<u8> {
    match reply {
        PathResponse::Data(d) => d.into_vec(),
        other => panic!("a read answered {other:?}"),
    }
}

/// Tasks that keep our reads in flight, one per thread of the bench's runtime.
const DRIVERS: usize = 2;

/// Our clients as the NBD server is one: DRIVERS tasks, each keeping CLIENTS / DRIVERS
/// reads in flight (CLIENTS in all, as many as `drive`'s) through one answer queue
/// (`PathService::send_queued`), woken once per burst of answers instead of once per
/// read. Driver `d` takes requests d, d + DRIVERS, ...; each read's latency is from its
/// send to its answer. Returns (ops/s, p99 in µs).
fn drive_queued(
    rt: &tokio::runtime::Runtime,
    trace: &Arc<Vec<u64>>,
    svc: &PathService,
    vol: VolumeId,
) -> (f64, f64) {
    let start = Instant::now();
    let hists = rt.block_on(async {
        let mut tasks = Vec::new();
        for d in 0..DRIVERS {
            let trace = trace.clone();
            let mut svc = svc.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                let mine: Vec<u64> = trace.iter().skip(d).step_by(DRIVERS).copied().collect();
                let window = CLIENTS / DRIVERS;
                let mut answers = Answers::new();
                let mut sent_at = vec![start; mine.len()];
                let mut got = Vec::with_capacity(window);
                let (mut next, mut done) = (0, 0);
                while done < mine.len() {
                    while next < mine.len() && next - done < window {
                        sent_at[next] = Instant::now();
                        let req = BlockRequest::Read {
                            volume: vol,
                            offset: mine[next] * BLOCK,
                            len: BLOCK,
                        };
                        svc.send_queued(&answers, next as u64, req)
                            .await
                            .expect("the pipeline takes the read");
                        next += 1;
                    }
                    answers.recv_many(&mut got, window).await;
                    for (id, reply) in got.drain(..) {
                        let id = id as usize;
                        h.saturating_record(sent_at[id].elapsed().as_nanos() as u64);
                        let data = data_of(reply.expect("the pipeline answers").expect("our read"));
                        let block = mine[id];
                        assert_eq!(data.len(), BLOCK as usize);
                        assert_eq!(data[..8], block.to_le_bytes(), "block {block}: wrong bytes");
                        done += 1;
                    }
                }
                h
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for t in tasks {
            all.add(t.await.expect("driver")).unwrap();
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
    cfg.direct_hits = super::direct_hits();
    cfg.verify = super::verify();
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
        .block_on(async { pipeline::start(cache.clone(), plan()) })
        .expect("start the request pipeline");
    let (ops, p99) = if std::env::var("PIPEWRIGHT_BENCH_CACHE_CLIENT").as_deref() == Ok("tasks") {
        // The old client: CLIENTS tasks, one `oneshot` future per read.
        let s2 = svc.clone();
        drive(rt, trace, move |block| {
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
                data_of(reply)
            }
        })
    } else {
        drive_queued(rt, trace, &svc, vol)
    };
    drop(svc);
    let _ = running.drain();
    let s = cache.stats();
    eprintln!(
        "ours: {} hits ({} from the memory tier, {} direct), {} misses",
        s.hits, s.memory_hits, s.direct_hits, s.misses
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

pub(crate) fn gateway_zipf(filter: Option<&str>) {
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
