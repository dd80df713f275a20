//! No phantom entries after a restart. foyer's docs warn that a hybrid cache whose
//! keys are updated can bring an old value back after a restart: the disk tier still
//! holds the old version, the index recovered from disk points at it. Here a chunk's
//! old blocks carry the instance id they were written under; after an update, an
//! eviction, a slot's reuse or a restart, only the chunk's current instance (from the
//! metadata store) is ever served.
//!
//! A seeded random run over 8 chunks and a 4-slot cache: writes (new versions), reads,
//! forced evictions (slots reused by other chunks) and restarts (the cache dropped
//! without flushing and opened again from its file and metadata), every read checked
//! against the last acknowledged version of its block.

use std::path::Path;
use std::sync::Arc;

use pipewright_cache::{Cache, CacheConfig, FileBackend};

const CHUNK: u64 = 64 << 10;
const BS: u64 = 4096;
const CHUNKS: u64 = 8;
const BLOCKS_PER_CHUNK: u64 = CHUNK / BS;

fn block(b: u64, version: u64) -> Vec<u8> {
    let mut v = vec![(b as u8) ^ (version as u8).wrapping_mul(31); BS as usize];
    v[..8].copy_from_slice(&b.to_le_bytes());
    v[8..16].copy_from_slice(&version.to_le_bytes());
    v
}

fn setup(dir: &Path) -> (Arc<FileBackend>, CacheConfig) {
    let vdir = dir.join("volumes");
    std::fs::create_dir_all(&vdir).unwrap();
    let data: Vec<u8> = (0..CHUNKS * BLOCKS_PER_CHUNK)
        .flat_map(|b| block(b, 0))
        .collect();
    std::fs::write(vdir.join("disk"), data).unwrap();
    let mut cfg = CacheConfig::new(dir.join("cache"), 4);
    cfg.chunk_size = CHUNK;
    cfg.low_watermark = 1;
    cfg.high_watermark = 2;
    cfg.eviction_batch = 1;
    cfg.flush_deadline = std::time::Duration::from_secs(3600);
    (Arc::new(FileBackend::new(vdir).unwrap()), cfg)
}

/// Opens the cache again once the dropped one's background task (an eviction batch
/// it may be finishing) has let go of the metadata store's lock.
async fn reopen(cfg: &CacheConfig, backend: &Arc<FileBackend>) -> Cache {
    for _ in 0..500 {
        match Cache::open(cfg.clone(), backend.clone()).await {
            Ok(c) => return c,
            Err(e) if e.to_string().contains("already open") => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
    panic!("the dropped cache never released its metadata store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_chunks_never_come_back_stale_after_eviction_reuse_or_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path());
    let mut version = vec![0u64; (CHUNKS * BLOCKS_PER_CHUNK) as usize];
    let mut next = 1u64;
    let mut rng = fastrand::Rng::with_seed(10);
    let mut cache = Cache::open(cfg.clone(), backend.clone()).await.unwrap();
    let (mut reads, mut writes, mut restarts, mut evictions) = (0, 0, 0, 0);
    for _ in 0..600 {
        let disk = cache.volume("disk").unwrap();
        match rng.u32(0..100) {
            0..=34 => {
                let b = rng.u64(0..CHUNKS * BLOCKS_PER_CHUNK);
                cache.write(disk, b * BS, &block(b, next)).await.unwrap();
                version[b as usize] = next;
                next += 1;
                writes += 1;
            }
            35..=84 => {
                let b = rng.u64(0..CHUNKS * BLOCKS_PER_CHUNK);
                let got = cache.read(disk, b * BS, BS).await.unwrap();
                let v = u64::from_le_bytes(got[8..16].try_into().unwrap());
                assert_eq!(v, version[b as usize], "block {b}: a stale version served");
                assert_eq!(got, block(b, version[b as usize]));
                reads += 1;
            }
            85..=94 => {
                evictions += cache.evict_to(4).await.unwrap();
            }
            _ => {
                // A restart without a flush: what a crash after the last ack leaves.
                drop(cache);
                cache = reopen(&cfg, &backend).await;
                restarts += 1;
            }
        }
    }
    // Everything once more, then through the backend after a flush.
    let disk = cache.volume("disk").unwrap();
    for b in 0..CHUNKS * BLOCKS_PER_CHUNK {
        let got = cache.read(disk, b * BS, BS).await.unwrap();
        assert_eq!(got, block(b, version[b as usize]), "block {b} at the end");
    }
    cache.flush().await.unwrap();
    let bytes = std::fs::read(dir.path().join("volumes/disk")).unwrap();
    for b in 0..CHUNKS * BLOCKS_PER_CHUNK {
        let at = (b * BS) as usize;
        assert_eq!(
            bytes[at..at + BS as usize],
            block(b, version[b as usize])[..],
            "backend block {b}"
        );
    }
    let s = cache.stats();
    println!(
        "no phantoms: {reads} reads, {writes} writes, {evictions} forced evictions, {restarts} restarts; instance ids issued since the last open {}, stale blocks refused {}",
        s.instance_ids_issued, s.stale_refusals
    );
    assert!(restarts > 10 && evictions > 20);
}
