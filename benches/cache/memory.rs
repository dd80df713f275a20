//! `memory-bytes-per-chunk`: heap bytes per cached chunk, and the RSS of a 1 M-chunk
//! cache.

use std::sync::Arc;
use std::time::Instant;

use pipewright::cache::{Backend, Cache, CacheConfig, FileBackend};

use super::zipf::{BLOCK, CLIENTS};
use super::{common, live_heap, result, scratch};

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

pub(crate) fn memory(filter: Option<&str>) {
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
