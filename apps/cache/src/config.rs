//! The cache's configuration.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::CacheError;
use crate::policy::PolicyKind;

/// When a write reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Acknowledged once durable in the cache file with its dirty state durable in the
    /// metadata; written back within the flush deadline and always before eviction.
    #[default]
    WriteBack,
    /// Acknowledged once durable in the cache file and in the backend.
    WriteThrough,
}

/// How often a hit checks its blocks' checksums (see the crate docs, "The checksum").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Every hit checks the CRC of every block it serves (the default): damage that
    /// appears in the cache file under a running cache (a medium returning other bytes
    /// than it stored) is a miss, counted and refetched, at the first read after it.
    #[default]
    EveryRead,
    /// A block's CRC is checked once per write sequence of its slot: later hits under
    /// the same sequence check the instance id and the sequence only. Never stale or
    /// torn either, and cheaper for large hot reads, but damage appearing under a
    /// running cache is served until the block is written again or the cache reopens.
    OncePerWrite,
}

impl std::str::FromStr for Verify {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "every-read" => Ok(Verify::EveryRead),
            "once-per-write" => Ok(Verify::OncePerWrite),
            _ => Err(format!("`{s}`: one of every-read, once-per-write")),
        }
    }
}

/// How to build a [`Cache`](crate::Cache).
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The cache file (created and preallocated if absent).
    pub cache_file: PathBuf,
    /// The metadata store (default: the cache file's path with `.meta` appended).
    pub meta_file: Option<PathBuf>,
    /// Chunk slots in the cache file.
    pub chunks: u32,
    /// Bytes per chunk (a multiple of the block size).
    pub chunk_size: u64,
    /// Bytes per block (at least 4096, a power of two).
    pub block_size: u32,
    /// Eviction policy.
    pub policy: PolicyKind,
    /// Background eviction starts when fewer slots than this are free.
    pub low_watermark: u32,
    /// ... and runs until this many are free.
    pub high_watermark: u32,
    /// Victims chosen per eviction batch (one metadata commit per batch): at least
    /// this many; the background evictor takes all it needs to reach the high
    /// watermark in one batch.
    pub eviction_batch: u32,
    /// Write-back or write-through.
    pub write_mode: WriteMode,
    /// Dirty data reaches the backend within this long.
    pub flush_deadline: Duration,
    /// Sequential readahead: when a chunk misses right after the chunk before it,
    /// this many following chunks are fetched with it, in one backend read (0: off,
    /// the default).
    pub readahead: u32,
    /// The memory tier's budget in bytes (0: none, the default): copies of hot whole
    /// blocks, served without I/O while their slot's instance id and write sequence
    /// are unchanged (see the crate docs). Counted as block bytes plus an 8-byte key.
    pub memory_bytes: u64,
    /// Fault injection: every n-th block read stalls 10 ms between its lookup and its
    /// read (a slow disk), so eviction and reuse can overtake it (0: never).
    #[doc(hidden)]
    pub stall_reads_every: u32,
    /// Direct hits (default on): a read inside one resident chunk whose blocks passed
    /// their checksum under the slot's current write sequence, and whose bytes and
    /// tags the OS page cache holds, is served in the caller's task of
    /// [`PathService`](crate::pipeline::PathService) with `preadv2(RWF_NOWAIT)` (which
    /// never waits for the disk), with the same instance-id and write-sequence check as
    /// the pipeline's hit stage; anything else goes through the pipeline.
    pub direct_hits: bool,
    /// How often a hit checks its blocks' checksums (default: every read).
    pub verify: Verify,
}

impl CacheConfig {
    /// A configuration of `chunks` 1 MiB chunks of 4 KiB blocks, LRU, write-back,
    /// watermarks at 5% / 10% of the slots, flush deadline 5 s, no readahead.
    pub fn new(cache_file: impl Into<PathBuf>, chunks: u32) -> Self {
        Self {
            cache_file: cache_file.into(),
            meta_file: None,
            chunks,
            chunk_size: 1 << 20,
            block_size: 4096,
            policy: PolicyKind::Lru,
            low_watermark: (chunks / 20).max(1),
            high_watermark: (chunks / 10).max(2),
            eviction_batch: 8,
            write_mode: WriteMode::WriteBack,
            flush_deadline: Duration::from_secs(5),
            readahead: 0,
            memory_bytes: 0,
            stall_reads_every: 0,
            direct_hits: true,
            verify: Verify::EveryRead,
        }
    }

    /// A configuration for a cache of `bytes` (rounded down to whole chunks).
    pub fn with_size(cache_file: impl Into<PathBuf>, bytes: u64, chunk_size: u64) -> Self {
        let chunks = (bytes / chunk_size.max(1)).min(u32::MAX as u64) as u32;
        let mut c = Self::new(cache_file, chunks);
        c.chunk_size = chunk_size;
        c
    }

    pub(crate) fn meta_path(&self) -> PathBuf {
        self.meta_file.clone().unwrap_or_else(|| {
            let mut p = self.cache_file.clone().into_os_string();
            p.push(".meta");
            p.into()
        })
    }

    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        let bad = |m: String| Err(CacheError::Config(m));
        if self.block_size < 4096 || !self.block_size.is_power_of_two() {
            return bad(format!(
                "block size {} must be a power of two of at least 4096",
                self.block_size
            ));
        }
        if self.chunk_size == 0 || self.chunk_size % self.block_size as u64 != 0 {
            return bad(format!(
                "chunk size {} must be a positive multiple of the block size {}",
                self.chunk_size, self.block_size
            ));
        }
        if self.chunks < 3 {
            return bad(format!(
                "{} chunks of {} bytes: the cache needs at least 3 (raise --size or lower --chunk-size)",
                self.chunks, self.chunk_size
            ));
        }
        if self.low_watermark == 0
            || self.high_watermark <= self.low_watermark
            || self.high_watermark >= self.chunks
        {
            return bad(format!(
                "watermarks low {} / high {} must satisfy 0 < low < high < chunks ({})",
                self.low_watermark, self.high_watermark, self.chunks
            ));
        }
        if self.eviction_batch == 0 {
            return bad("eviction batch must be at least 1".into());
        }
        Ok(())
    }
}
