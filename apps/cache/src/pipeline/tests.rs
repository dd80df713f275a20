//! Tests of the request path: slow misses, pooled replies, readahead, and an oracle
//! through the io_uring path with eviction and reuse.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use pipewright_runtime::{Plan, RequestError};
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

use super::*;
use crate::backend::{Backend, FileBackend, VolumeInfo};
use crate::config::CacheConfig;

const CHUNK: u64 = 128 << 10;

/// The file backend, with reads of one chunk held at a gate until the test opens
/// it: a slow object store, deterministically.
#[derive(Debug)]
struct Gated {
    files: FileBackend,
    gated_offset: u64,
    gate: Semaphore,
    arrived: Notify,
    waiting: AtomicU64,
    reads: AtomicU64,
}

impl Backend for Gated {
    fn volumes(&self) -> BoxFuture<'_, std::io::Result<Vec<VolumeInfo>>> {
        self.files.volumes()
    }
    fn read(
        &self,
        volume: &str,
        offset: u64,
        len: usize,
    ) -> BoxFuture<'_, std::io::Result<Vec<u8>>> {
        let volume = volume.to_string();
        self.reads.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if offset == self.gated_offset {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                self.arrived.notify_one();
                let _permit = self.gate.acquire().await.expect("gate open");
            }
            self.files.read(&volume, offset, len).await
        })
    }
    fn write(
        &self,
        volume: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> BoxFuture<'_, std::io::Result<()>> {
        self.files.write(volume, offset, data)
    }
    fn sync(&self, volume: &str) -> BoxFuture<'_, std::io::Result<()>> {
        self.files.sync(volume)
    }
}

/// Buffers of the pool a 64 KiB read takes from.
fn small_buffers() -> usize {
    crate::store::pool_classes(CHUNK)[0].1
}

fn image() -> Vec<u8> {
    (0..(2usize << 20))
        .map(|i| (i * 31 / 4096 + i % 251) as u8)
        .collect()
}

fn setup(dir: &std::path::Path, gated_offset: u64) -> (Arc<Gated>, CacheConfig) {
    let vdir = dir.join("volumes");
    std::fs::create_dir(&vdir).unwrap();
    std::fs::write(vdir.join("disk"), image()).unwrap();
    let backend = Arc::new(Gated {
        files: FileBackend::new(&vdir).unwrap(),
        gated_offset,
        gate: Semaphore::new(0),
        arrived: Notify::new(),
        waiting: AtomicU64::new(0),
        reads: AtomicU64::new(0),
    });
    let mut cfg = CacheConfig::new(dir.join("cache"), 32);
    cfg.chunk_size = CHUNK;
    cfg.low_watermark = 1;
    cfg.high_watermark = 2;
    (backend, cfg)
}

async fn read(
    svc: &PathService,
    volume: crate::VolumeId,
    offset: u64,
    len: u64,
) -> Result<PipelineReply, RequestError> {
    svc.clone()
        .oneshot(BlockRequest::Read {
            volume,
            offset,
            len,
        })
        .await
}

/// A miss whose fetch is stuck does not hold back a later miss of the same stage
/// (another burst), nor the hits: each request is answered when it completes.
#[test]
fn a_slow_miss_does_not_hold_back_later_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path(), 5 * CHUNK);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = rt.block_on(Cache::open(cfg, backend.clone())).unwrap();
    let disk = cache.volume("disk").unwrap();
    let (running, svc) = start(cache.clone(), Plan::fused()).unwrap();
    let img = image();
    // A hang guard only (no timing is measured): a stage that held later requests
    // behind the stuck one would never answer them.
    let guard = std::time::Duration::from_secs(120);
    let checked = async {
        let slow = tokio::spawn({
            let svc = svc.clone();
            async move { read(&svc, disk, 5 * CHUNK, 4096).await }
        });
        // The slow miss is inside the fill stage, waiting for its fetch.
        while backend.waiting.load(Ordering::SeqCst) == 0 {
            backend.arrived.notified().await;
        }
        for round in 0..4u64 {
            // Misses of other chunks (the same stage), then hits of them.
            for chunk in [1u64, 2, 3, 6] {
                let off = chunk * CHUNK + round * 8192;
                let got = read(&svc, disk, off, 8192).await.unwrap().unwrap();
                let PathResponse::Data(d) = got else {
                    panic!("{got:?}")
                };
                assert_eq!(d[..], img[off as usize..off as usize + 8192]);
            }
        }
        assert!(!slow.is_finished(), "the gated fetch cannot have completed");
        backend.gate.add_permits(1);
        let got = slow.await.unwrap().unwrap().unwrap();
        let PathResponse::Data(d) = got else {
            panic!("{got:?}")
        };
        let off = 5 * CHUNK as usize;
        assert_eq!(d[..], img[off..off + 4096]);
    };
    rt.block_on(async { tokio::time::timeout(guard, checked).await })
        .expect("requests behind a stuck miss were never answered");
    drop(svc);
    assert!(running.drain().unwrap().completed);
    let s = cache.stats();
    println!(
        "a slow miss: {} hits, {} misses, {} fills",
        s.hits, s.misses, s.fills
    );
    assert_eq!(s.fills, 5);
}

/// Reads inside one chunk come back in the stage's pooled buffers, also when many
/// replies are held at once (an exhausted pool reads into heap buffers, never
/// waits); reads across chunks are gathered. Every byte is the backend's.
#[test]
fn reads_come_back_in_pooled_buffers_and_never_wait_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path(), u64::MAX);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = rt.block_on(Cache::open(cfg, backend)).unwrap();
    let disk = cache.volume("disk").unwrap();
    let (running, svc) = start(cache.clone(), Plan::fused()).unwrap();
    let img = image();
    let held = rt.block_on(async {
        let mut held = Vec::new();
        // Three times as many replies held as the pool has buffers.
        let n = 3 * small_buffers() as u64;
        for i in 0..n {
            let chunk = i % 16;
            let off = chunk * CHUNK + (i * 4096) % (CHUNK - 65536);
            let got = read(&svc, disk, off, 65536).await.unwrap().unwrap();
            let PathResponse::Data(d) = got else {
                panic!("{got:?}")
            };
            assert_eq!(d[..], img[off as usize..off as usize + 65536]);
            held.push(d);
        }
        // Across two chunks, unaligned.
        let off = 3 * CHUNK - 1000;
        let got = read(&svc, disk, off, 5000).await.unwrap().unwrap();
        let PathResponse::Data(d) = got else {
            panic!("{got:?}")
        };
        assert_eq!(d[..], img[off as usize..off as usize + 5000]);
        assert!(!d.is_pooled());
        held
    });
    let pooled = held.iter().filter(|d| d.is_pooled()).count();
    println!("{} replies held: {pooled} in pooled buffers", held.len());
    assert_eq!(
        pooled,
        small_buffers(),
        "every pooled buffer is in use, the rest on the heap"
    );
    drop(held);
    drop(svc);
    assert!(running.drain().unwrap().completed);
}

/// Sequential readahead: a scan through the pipeline makes fewer backend reads
/// than chunks (one read per run of chunks), every byte still the backend's, and
/// without readahead exactly one read per chunk.
#[test]
fn sequential_readahead_makes_fewer_backend_reads() {
    let img = image();
    let chunks = img.len() as u64 / CHUNK;
    let mut reads = Vec::new();
    for readahead in [0u32, 4] {
        let dir = tempfile::tempdir().unwrap();
        let (backend, mut cfg) = setup(dir.path(), u64::MAX);
        cfg.readahead = readahead;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cache = rt.block_on(Cache::open(cfg, backend.clone())).unwrap();
        let disk = cache.volume("disk").unwrap();
        let (running, svc) = start(cache.clone(), Plan::fused()).unwrap();
        rt.block_on(async {
            // 64 KiB reads, in order, one at a time: a sequential reader.
            for off in (0..img.len() as u64).step_by(65536) {
                let got = read(&svc, disk, off, 65536).await.unwrap().unwrap();
                let PathResponse::Data(d) = got else {
                    panic!("{got:?}")
                };
                assert_eq!(d[..], img[off as usize..off as usize + 65536]);
            }
        });
        drop(svc);
        assert!(running.drain().unwrap().completed);
        let s = cache.stats();
        let n = backend.reads.load(Ordering::SeqCst);
        println!(
            "readahead {readahead}: {chunks} chunks scanned with {n} backend reads ({} fills, {} misses, {} single-flight waits)",
            s.fills, s.misses, s.single_flight_waits
        );
        assert_eq!(s.fills, chunks, "every chunk fetched once");
        reads.push(n);
    }
    assert_eq!(reads[0], chunks);
    // Chunk 0 alone, chunk 1 with 4 ahead, then every 5th chunk with 4 ahead.
    assert!(reads[1] <= 2 + chunks / 5, "{reads:?}");
}

/// An oracle through the io_uring path: writes, then rounds of concurrent reads
/// of random ranges (across chunk boundaries too) over a cache half the volume's
/// size, with some reads stalled between lookup and read so that eviction and
/// reuse overtake them. Every byte equals the last write's or the backend's, and
/// the stale path was exercised.
#[test]
fn oracle_through_the_uring_path_with_eviction_and_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, mut cfg) = setup(dir.path(), u64::MAX);
    cfg.chunks = 8;
    cfg.stall_reads_every = 3;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = rt.block_on(Cache::open(cfg, backend)).unwrap();
    let disk = cache.volume("disk").unwrap();
    let (running, svc) = start(cache.clone(), Plan::fused()).unwrap();
    let mut model = image();
    let size = model.len() as u64;
    let mut rng = fastrand::Rng::with_seed(10);
    let mut checked = 0u64;
    rt.block_on(async {
        for i in 0..32u64 {
            let len = rng.u64(1..20_000);
            let off = rng.u64(0..size - len);
            let data = vec![(i as u8).wrapping_mul(37) ^ 0xa5; len as usize];
            let r = svc
                .clone()
                .oneshot(BlockRequest::Write {
                    volume: disk,
                    offset: off,
                    data: data.clone(),
                })
                .await
                .unwrap();
            assert_eq!(r.unwrap(), PathResponse::Written);
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        let model = Arc::new(model);
        for _ in 0..40 {
            let mut calls = Vec::new();
            for _ in 0..48 {
                let len = rng.u64(1..40_000);
                let off = rng.u64(0..size - len);
                let svc = svc.clone();
                calls.push(tokio::spawn(async move {
                    (off, len, read(&svc, disk, off, len).await)
                }));
            }
            for c in calls {
                let (off, len, got) = c.await.unwrap();
                let got = got.unwrap().unwrap();
                let PathResponse::Data(d) = got else {
                    panic!("{got:?}")
                };
                assert!(
                    d[..] == model[off as usize..(off + len) as usize],
                    "bytes [{off}, +{len}) differ from the oracle"
                );
                checked += len;
            }
        }
    });
    drop(svc);
    assert!(running.drain().unwrap().completed);
    let s = cache.stats();
    println!(
        "uring oracle: {checked} bytes checked; {} fills, {} evictions ({} dirty), {} stale refusals, {} torn retries, {} flushes",
        s.fills, s.evictions, s.dirty_evictions, s.stale_refusals, s.torn_retries, s.flushes
    );
    assert!(s.evictions > 0, "the cache never evicted");
    assert!(
        s.stale_refusals > 0,
        "no read raced a reuse: the stale path was not exercised"
    );
}
