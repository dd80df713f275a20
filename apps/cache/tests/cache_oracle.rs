//! The oracle test: concurrent readers, writers and eviction over a cache much smaller
//! than its volumes; every byte served must be the backend's original bytes or a
//! write's, never older than the last write acknowledged before the read started; at
//! the end the backend holds exactly the last acknowledged writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pipewright_cache::{Cache, CacheConfig, FileBackend, PolicyKind, VolumeId, WriteMode};

const BS: usize = 4096;
const SECTOR: usize = 512;
const SPB: u64 = (BS / SECTOR) as u64;
const VOL_BLOCKS: u64 = 512; // 2 MiB per volume
const VOLUMES: usize = 3;

/// The bytes of one 512-byte sector at `version` (0: the backend's original).
fn sector(vol: usize, sector: u64, version: u64) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR];
    b[..8].copy_from_slice(&version.to_le_bytes());
    b[8..16].copy_from_slice(&sector.to_le_bytes());
    b[16] = vol as u8;
    let mut x = version
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(sector * 31 + vol as u64)
        | 1;
    for byte in &mut b[17..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    b
}

fn sectors(vol: usize, first: u64, count: u64, version: u64) -> Vec<u8> {
    (first..first + count)
        .flat_map(|s| sector(vol, s, version))
        .collect()
}

struct Model {
    /// Per sector: the version of the last acknowledged write.
    acked: Vec<Vec<AtomicU64>>,
    /// Versions handed out so far (one counter for all writes).
    issued: AtomicU64,
    /// Per block: writers of overlapping ranges take these in order.
    locks: Vec<Vec<tokio::sync::Mutex<()>>>,
    checked_blocks: AtomicU64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(policy: PolicyKind, mode: WriteMode, ops_per_task: u64) {
    let dir = tempfile::tempdir().unwrap();
    let vdir = dir.path().join("volumes");
    std::fs::create_dir(&vdir).unwrap();
    for v in 0..VOLUMES {
        let mut bytes = Vec::with_capacity(VOL_BLOCKS as usize * BS);
        bytes.extend_from_slice(&sectors(v, 0, VOL_BLOCKS * SPB, 0));
        std::fs::write(vdir.join(format!("vol{v}")), bytes).unwrap();
    }
    let backend = Arc::new(FileBackend::new(&vdir).unwrap());
    let mut cfg = CacheConfig::new(dir.path().join("cache"), 12);
    cfg.chunk_size = 64 << 10;
    cfg.policy = policy;
    cfg.low_watermark = 2;
    cfg.high_watermark = 4;
    cfg.eviction_batch = 2;
    cfg.write_mode = mode;
    cfg.flush_deadline = std::time::Duration::from_millis(200);
    // Some readers stall between lookup and read, so eviction and reuse overtake them.
    cfg.stall_reads_every = 3;
    let cache = Cache::open(cfg, backend).await.unwrap();
    let vols: Vec<VolumeId> = (0..VOLUMES)
        .map(|v| cache.volume(&format!("vol{v}")).unwrap())
        .collect();
    let model = Arc::new(Model {
        acked: (0..VOLUMES)
            .map(|_| (0..VOL_BLOCKS * SPB).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        issued: AtomicU64::new(0),
        locks: (0..VOLUMES)
            .map(|_| {
                (0..VOL_BLOCKS)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect()
            })
            .collect(),
        checked_blocks: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for r in 0..4u64 {
        let (cache, model, vols) = (cache.clone(), model.clone(), vols.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(100 + r);
            for _ in 0..ops_per_task {
                let v = rng.usize(0..VOLUMES);
                // Skewed: half the reads go to the first 64 blocks.
                let b = if rng.bool() { rng.u64(0..64) } else { rng.u64(0..VOL_BLOCKS - 3) };
                let n = rng.u64(1..4).min(VOL_BLOCKS - b);
                let (s0, ns) = (b * SPB, n * SPB);
                let before: Vec<u64> = (s0..s0 + ns)
                    .map(|i| model.acked[v][i as usize].load(Ordering::SeqCst))
                    .collect();
                let data = cache.read(vols[v], b * BS as u64, n * BS as u64).await.unwrap();
                let issued = model.issued.load(Ordering::SeqCst);
                for i in 0..ns {
                    let sec = &data[i as usize * SECTOR..(i as usize + 1) * SECTOR];
                    let version = u64::from_le_bytes(sec[..8].try_into().unwrap());
                    assert!(sec == sector(v, s0 + i, version).as_slice(), "vol{v} sector {} served bytes that no write produced", s0 + i);
                    assert!(version >= before[i as usize], "vol{v} sector {}: served version {version}, but {} was acknowledged before the read", s0 + i, before[i as usize]);
                    assert!(version <= issued, "vol{v} sector {}: version {version} never issued", s0 + i);
                    model.checked_blocks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in 0..2u64 {
        let (cache, model, vols) = (cache.clone(), model.clone(), vols.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(200 + w);
            for _ in 0..ops_per_task / 4 {
                let v = rng.usize(0..VOLUMES);
                // Sector-aligned ranges of 1..=24 sectors: whole blocks, parts of a
                // block (read-modify-write in the cache) and ranges across blocks.
                let s0 = if rng.bool() {
                    rng.u64(0..64 * SPB)
                } else {
                    rng.u64(0..(VOL_BLOCKS - 4) * SPB)
                };
                let ns = if rng.bool() { SPB } else { rng.u64(1..25) };
                let s0 = if ns == SPB { s0 / SPB * SPB } else { s0 };
                let (b0, b1) = (s0 / SPB, (s0 + ns - 1) / SPB);
                let mut guards = Vec::new();
                for blk in b0..=b1 {
                    guards.push(model.locks[v][blk as usize].lock().await);
                }
                let version = model.issued.fetch_add(1, Ordering::SeqCst) + 1;
                cache
                    .write(vols[v], s0 * SECTOR as u64, &sectors(v, s0, ns, version))
                    .await
                    .unwrap();
                for i in s0..s0 + ns {
                    model.acked[v][i as usize].store(version, Ordering::SeqCst);
                }
                drop(guards);
            }
        }));
    }
    {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..ops_per_task / 10 {
                // Evict nearly everything, hot chunks with readers in flight included.
                cache.evict_to(11).await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    cache.flush().await.unwrap();
    let stats = cache.stats();
    // The backend holds exactly the last acknowledged write of every block.
    for v in 0..VOLUMES {
        let bytes = std::fs::read(vdir.join(format!("vol{v}"))).unwrap();
        for i in 0..VOL_BLOCKS * SPB {
            let want = model.acked[v][i as usize].load(Ordering::SeqCst);
            assert!(
                bytes[i as usize * SECTOR..(i as usize + 1) * SECTOR] == sector(v, i, want)[..],
                "backend vol{v} sector {i} is not the last acknowledged write ({want})"
            );
        }
    }
    println!(
        "oracle {policy} {mode:?}: {} sectors checked, {} writes, {} fills, {} evictions ({} dirty), {} stale refusals, {} torn retries, {} flushes, hit ratio {:.3}",
        model.checked_blocks.load(Ordering::Relaxed),
        stats.writes,
        stats.fills,
        stats.evictions,
        stats.dirty_evictions,
        stats.stale_refusals,
        stats.torn_retries,
        stats.flushes,
        stats.hit_ratio()
    );
    assert!(stats.evictions > 0 && stats.fills > 0);
    assert_eq!(stats.checksum_failures, 0);
    assert!(
        stats.stale_refusals > 0,
        "no read raced a reuse: the stale path was not exercised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oracle_write_back_lru() {
    run(
        PolicyKind::Lru,
        WriteMode::WriteBack,
        env_u64("PIPEWRIGHT_CACHE_ORACLE_OPS", 2500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oracle_write_back_s3fifo() {
    run(
        PolicyKind::S3Fifo,
        WriteMode::WriteBack,
        env_u64("PIPEWRIGHT_CACHE_ORACLE_OPS", 2500) / 2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oracle_write_through_sieve() {
    run(
        PolicyKind::Sieve,
        WriteMode::WriteThrough,
        env_u64("PIPEWRIGHT_CACHE_ORACLE_OPS", 2500) / 2,
    )
    .await;
}
