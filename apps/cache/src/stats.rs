//! The cache's counters: atomics read by [`Cache::stats`](crate::Cache::stats), each
//! also reported through the `metrics` facade (`cache_*`).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Counters { $( pub(crate) $name: AtomicU64, )* }

        /// A snapshot of the cache's counters and gauges.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct CacheStats {
            $( $(#[$doc])* pub $name: u64, )*
            /// Free chunk slots now.
            pub free_chunks: u64,
            /// Slots holding a chunk now.
            pub used_chunks: u64,
            /// Slots holding dirty blocks now.
            pub dirty_chunks: u64,
            /// Slots in the cache.
            pub total_chunks: u64,
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> CacheStats {
                CacheStats { $( $name: self.$name.load(Ordering::Relaxed), )* ..CacheStats::default() }
            }
        }
    };
}

counters! {
    /// Block reads served from the cache (the cache file or the memory tier).
    hits,
    /// ... of which from the memory tier (see `CacheConfig::memory_bytes`).
    memory_hits,
    /// ... of which direct hits, outside the request pipeline (see
    /// `CacheConfig::direct_hits`).
    direct_hits,
    /// Reads that found their chunk absent (each fetched or waited for a fetch).
    misses,
    /// Reads that waited for another request's fill of the same chunk.
    single_flight_waits,
    /// Chunks fetched from the backend and stored.
    fills,
    /// Bytes fetched from the backend.
    fill_bytes,
    /// Backend fetches that failed.
    backend_errors,
    /// Blocks refused because their tag carried another instance id than the chunk's.
    stale_refusals,
    /// Block reads retried because a write overlapped them.
    torn_retries,
    /// Blocks whose checksum failed (the chunk was dropped and refetched).
    checksum_failures,
    /// Clean chunks refetched because reading them from the cache file failed (a bad
    /// sector, a short file).
    io_refetches,
    /// Metadata records that failed their checksum at open (slot dropped).
    meta_corrupt,
    /// Write requests acknowledged.
    writes,
    /// Blocks written.
    written_blocks,
    /// Dirty chunks written back to the backend.
    flushes,
    /// Dirty blocks written back.
    flushed_blocks,
    /// Chunks evicted.
    evictions,
    /// Eviction batches run.
    eviction_batches,
    /// Evictions that had to flush dirty blocks first.
    dirty_evictions,
    /// Instance ids handed out.
    instance_ids_issued,
    /// Requests refused (out of range, unknown volume, ...).
    bad_requests,
}

pub(crate) fn bump(c: &AtomicU64, name: &'static str, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
    metrics::counter!(name).increment(n);
}

impl CacheStats {
    /// Hits / (hits + misses), or 0 before any read.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}
