//! Warm restart, damaged cache file and metadata, bad requests: in-process.

use std::path::Path;
use std::sync::Arc;

use pipewright_cache::{Cache, CacheConfig, CacheError, FileBackend};

const MIB: usize = 1 << 20;

fn setup(dir: &Path) -> (Arc<FileBackend>, CacheConfig) {
    let vdir = dir.join("volumes");
    std::fs::create_dir_all(&vdir).unwrap();
    if !vdir.join("disk").exists() {
        let bytes: Vec<u8> = (0..4 * MIB).map(|i| (i / 4096) as u8 ^ (i as u8)).collect();
        std::fs::write(vdir.join("disk"), bytes).unwrap();
    }
    let mut cfg = CacheConfig::new(dir.join("cache"), 8);
    cfg.chunk_size = 256 << 10;
    cfg.low_watermark = 1;
    cfg.high_watermark = 2;
    cfg.flush_deadline = std::time::Duration::from_secs(3600);
    (Arc::new(FileBackend::new(vdir).unwrap()), cfg)
}

fn backend_bytes(dir: &Path, off: usize, len: usize) -> Vec<u8> {
    std::fs::read(dir.join("volumes/disk")).unwrap()[off..off + len].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_restart_keeps_chunks_and_dirty_data() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path());
    {
        let cache = Cache::open(cfg.clone(), backend.clone()).await.unwrap();
        let disk = cache.volume("disk").unwrap();
        cache.read(disk, 0, 4096).await.unwrap();
        cache.read(disk, 300_000, 4096).await.unwrap();
        cache.write(disk, 8192, &[0xEE; 4096]).await.unwrap();
        assert_eq!(cache.stats().fills, 2);
        assert_eq!(cache.stats().dirty_chunks, 1);
        // The write is acknowledged, not yet in the backend (flush deadline 1 h).
        assert_ne!(backend_bytes(dir.path(), 8192, 4096), vec![0xEE; 4096]);
    }
    // Dropped without flushing, as a crash would leave it.
    let cache = Cache::open(cfg, backend).await.unwrap();
    let disk = cache.volume("disk").unwrap();
    let s = cache.stats();
    assert_eq!((s.used_chunks, s.dirty_chunks), (2, 1));
    assert_eq!(
        cache.read(disk, 8192, 4096).await.unwrap(),
        vec![0xEE; 4096]
    );
    cache.read(disk, 300_000, 4096).await.unwrap();
    assert_eq!(cache.stats().fills, 0, "both chunks came back warm");
    assert_eq!(cache.stats().hits, 2);
    cache.flush().await.unwrap();
    assert_eq!(backend_bytes(dir.path(), 8192, 4096), vec![0xEE; 4096]);
    assert_eq!(cache.stats().dirty_chunks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_cached_block_is_refetched_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path());
    let cache = Cache::open(cfg, backend).await.unwrap();
    let disk = cache.volume("disk").unwrap();
    let want = backend_bytes(dir.path(), 40960, 8192);
    assert_eq!(cache.read(disk, 40960, 8192).await.unwrap(), want);
    assert!(cache.corrupt_cached_block(disk, 40960 + 4096).unwrap());
    assert_eq!(cache.read(disk, 40960, 8192).await.unwrap(), want);
    let s = cache.stats();
    assert_eq!(s.checksum_failures, 1);
    assert_eq!(
        s.fills, 2,
        "the damaged chunk was dropped and fetched again"
    );
}

/// A fill is not synced: a crash can lose a block of it (its tag still the slot's
/// previous life's, or zeros) while the mapping survived. The block is refused (not
/// read again forever as "stale": the slot is still on the instance) and the chunk
/// fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_block_of_an_unsynced_fill_is_refetched() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path());
    let cache = Cache::open(cfg, backend).await.unwrap();
    let disk = cache.volume("disk").unwrap();
    let want = backend_bytes(dir.path(), 270_336, 8192);
    assert_eq!(cache.read(disk, 270_336, 8192).await.unwrap(), want);
    assert!(cache.lose_cached_block(disk, 270_336 + 4096).unwrap());
    assert_eq!(cache.read(disk, 270_336, 8192).await.unwrap(), want);
    let s = cache.stats();
    assert_eq!(s.checksum_failures, 1);
    assert_eq!(s.fills, 2, "the chunk was dropped and fetched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_dirty_block_is_an_error_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path());
    let cache = Cache::open(cfg, backend).await.unwrap();
    let disk = cache.volume("disk").unwrap();
    cache.write(disk, 0, &[1; 4096]).await.unwrap();
    assert!(cache.corrupt_cached_block(disk, 0).unwrap());
    match cache.read(disk, 0, 4096).await {
        Err(CacheError::DirtyBlockCorrupt { block: 0, .. }) => {}
        other => panic!("expected DirtyBlockCorrupt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_metadata_record_drops_the_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path());
    {
        let cache = Cache::open(cfg.clone(), backend.clone()).await.unwrap();
        let disk = cache.volume("disk").unwrap();
        cache.read(disk, 0, 4096).await.unwrap();
        cache.read(disk, 600_000, 4096).await.unwrap();
        assert!(cache.corrupt_meta_record(disk, 0).unwrap());
    }
    let cache = Cache::open(cfg, backend).await.unwrap();
    let disk = cache.volume("disk").unwrap();
    let s = cache.stats();
    assert_eq!(s.meta_corrupt, 1);
    assert_eq!(s.used_chunks, 1, "the damaged record's chunk was dropped");
    assert_eq!(
        cache.read(disk, 0, 4096).await.unwrap(),
        backend_bytes(dir.path(), 0, 4096)
    );
    assert_eq!(cache.stats().fills, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_slot_refuses_the_old_instance() {
    // Fill every slot, evict them all, refill with other chunks: the blocks of the old
    // chunks are still on disk under their old instance ids, and a second cache on the
    // same files (after a restart) must not serve them for the old chunks.
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path());
    let cache = Cache::open(cfg.clone(), backend.clone()).await.unwrap();
    let disk = cache.volume("disk").unwrap();
    let before = cache.stats();
    for c in 0..8u64 {
        cache.read(disk, c * 256 * 1024, 4096).await.unwrap();
    }
    cache.evict_to(7).await.unwrap();
    assert!(cache.stats().free_chunks >= 7, "{:?}", cache.stats());
    // One new instance id per evicted chunk, once every retirement committed: the
    // background evictor (the fills went below the low watermark) may still be
    // finishing a batch, whose chunks are counted when they leave the index and their
    // new ids when the retirement is durable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let after = cache.stats();
        let ids = after.instance_ids_issued - before.instance_ids_issued;
        let evicted = after.evictions - before.evictions;
        if ids == evicted && evicted > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ids} instance ids for {evicted} evicted chunks"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for c in 8..15u64 {
        cache.read(disk, c * 256 * 1024, 4096).await.unwrap();
    }
    for c in 0..16u64 {
        let off = c as usize * 256 * 1024;
        assert_eq!(
            cache.read(disk, off as u64, 4096).await.unwrap(),
            backend_bytes(dir.path(), off, 4096)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_typed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path());
    let cache = Cache::open(cfg, backend).await.unwrap();
    assert!(matches!(
        cache.volume("nope"),
        Err(CacheError::UnknownVolume(_))
    ));
    let disk = cache.volume("disk").unwrap();
    assert!(matches!(
        cache.read(disk, 4 * MIB as u64 - 10, 20).await,
        Err(CacheError::OutOfRange { .. })
    ));
    assert!(matches!(
        cache.write(disk, u64::MAX - 2, &[0; 8]).await,
        Err(CacheError::OutOfRange { .. })
    ));
    assert_eq!(cache.stats().bad_requests, 2);
    // Still serving.
    cache.read(disk, 0, 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, mut cfg) = setup(dir.path());
    cfg.block_size = 1024;
    assert!(matches!(
        Cache::open(cfg.clone(), backend.clone()).await,
        Err(CacheError::Config(_))
    ));
    let (_, cfg) = setup(dir.path());
    Cache::open(cfg.clone(), backend.clone()).await.unwrap();
    let mut other = cfg;
    other.chunks = 9;
    other.high_watermark = 3;
    assert!(matches!(
        Cache::open(other, backend).await,
        Err(CacheError::GeometryMismatch { .. })
    ));
}

/// `close` writes every dirty block back (the backend holds them), commits the clean
/// fills' metadata (the next open is warm: no fill), and refuses later requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_commits_and_refuses_later_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, mut cfg) = setup(dir.path());
    cfg.flush_deadline = std::time::Duration::from_secs(120);
    {
        let cache = Cache::open(cfg.clone(), backend.clone()).await.unwrap();
        let disk = cache.volume("disk").unwrap();
        for i in 0..4u64 {
            cache
                .write(disk, i * 300_000, &[i as u8 + 1; 4096])
                .await
                .unwrap();
        }
        // Clean fills only: their mapping is staged, not yet committed.
        cache.read(disk, 3 * MIB as u64, 4096).await.unwrap();
        assert_eq!(cache.stats().dirty_chunks, 4);
        assert_ne!(backend_bytes(dir.path(), 0, 4096), vec![1u8; 4096]);
        cache.close().await.unwrap();
        for i in 0..4usize {
            assert_eq!(
                backend_bytes(dir.path(), i * 300_000, 4096),
                vec![i as u8 + 1; 4096],
                "write {i} reached the backend"
            );
        }
        assert_eq!(cache.stats().dirty_chunks, 0);
        match cache.read(disk, 0, 4096).await {
            Err(CacheError::Closed) => {}
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    let cache = Cache::open(cfg, backend).await.unwrap();
    let disk = cache.volume("disk").unwrap();
    let used = cache.stats().used_chunks;
    assert_eq!(used, 5, "every chunk came back warm");
    assert_eq!(
        cache.read(disk, 3 * MIB as u64, 4096).await.unwrap(),
        backend_bytes(dir.path(), 3 * MIB, 4096)
    );
    assert_eq!(cache.stats().fills, 0);
}

/// Acknowledged writes not yet written back are never discarded by an open: not when the
/// backend no longer lists their volume (a mistyped `--backend`), not when the cache
/// file's header is damaged. The open is refused, saying what to do, and the writes are
/// there once the cause is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_that_would_discard_unflushed_writes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, cfg) = setup(dir.path());
    {
        let cache = Cache::open(cfg.clone(), backend.clone()).await.unwrap();
        let disk = cache.volume("disk").unwrap();
        cache.write(disk, 8192, &[0xAB; 4096]).await.unwrap();
    }
    // Dropped without flushing. Reopened against a backend without the volume:
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let wrong = Arc::new(FileBackend::new(empty).unwrap());
    let e = Cache::open(cfg.clone(), wrong).await.err().unwrap();
    assert!(
        matches!(e, CacheError::UnflushedWritesUnreachable { chunks: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("\"disk\""), "{e}");
    // A damaged header: refused too, not reformatted.
    let cache_file = cfg.cache_file.clone();
    let mut bytes = std::fs::read(&cache_file).unwrap();
    bytes[20] ^= 0xFF;
    std::fs::write(&cache_file, &bytes).unwrap();
    let e = Cache::open(cfg.clone(), backend.clone())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, CacheError::UnflushedWritesUnreachable { chunks: 1, .. }),
        "{e}"
    );
    // Repaired: the write is there, and reaches the backend.
    bytes[20] ^= 0xFF;
    std::fs::write(&cache_file, &bytes).unwrap();
    let cache = Cache::open(cfg, backend).await.unwrap();
    let disk = cache.volume("disk").unwrap();
    assert_eq!(
        cache.read(disk, 8192, 4096).await.unwrap(),
        vec![0xAB; 4096]
    );
    cache.flush().await.unwrap();
    assert_eq!(backend_bytes(dir.path(), 8192, 4096), vec![0xAB; 4096]);
}
