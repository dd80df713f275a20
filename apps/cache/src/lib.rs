//! pipewright's cache gateway: a chunk cache on local disk in front of object storage,
//! with a new instance id per evicted chunk, durable metadata and pluggable eviction.
//!
//! - [`Cache`]: the engine. One preallocated cache file of chunk slots (default 1 MiB
//!   chunks of 4 KiB blocks, every block tagged with its instance id and a CRC-32C),
//!   metadata in `redb`, volumes from a [`Backend`] ([`FileBackend`]: files of a
//!   directory; [`S3Backend`]: a bucket through `object_store`, each volume stored as
//!   part objects of the chunk size, since S3 cannot rewrite part of an object: see
//!   its docs for the layout, timeouts, retries and typed errors). Reads fill whole chunks on a miss, one backend fetch per chunk however
//!   many requests miss on it at once.
//! - [`CacheService`]: the cache as a `tower::Service<BlockRequest>`; [`pipeline`]: the
//!   request path as a pipewright pipeline on the runtime (lookup router → hit / fill /
//!   write stages → reply), served as a `tower::Service` too; the gateway's NBD
//!   connections feed it.
//! - [`nbd`]: the NBD server; [`Gateway`]: cache + pipeline + NBD listener + status.
//! - [`replay`]: libCacheSim-compatible trace replay, policy-only or through the real
//!   chunk store.
//! - [`EvictionPolicy`]: sans-I/O victim choice, with [`Lru`], [`Fifo`], [`Clock`],
//!   [`Sieve`] and [`S3Fifo`]; [`simulate_request`] drives one the way libCacheSim
//!   does for trace replay.
//!
//! ```
//! use std::sync::Arc;
//! use pipewright_cache::{Cache, CacheConfig, FileBackend};
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! std::fs::create_dir(dir.path().join("volumes"))?;
//! std::fs::write(dir.path().join("volumes/disk0"), vec![7u8; 4 << 20])?;
//! let backend = Arc::new(FileBackend::new(dir.path().join("volumes"))?);
//! let mut cfg = CacheConfig::new(dir.path().join("cache"), 8);
//! cfg.chunk_size = 256 << 10;
//! let cache = Cache::open(cfg, backend).await?;
//! let disk = cache.volume("disk0")?;
//! cache.write(disk, 4096, &[1u8; 4096]).await?;   // acknowledged: durable in the cache
//! assert_eq!(cache.read(disk, 4096, 2).await?, vec![1, 1]);
//! assert_eq!(cache.stats().misses, 1);  // one fill for the write, then a hit
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # The instance-id protocol
//!
//! Each chunk slot has a current **instance id**, a `u64` from one durable counter in
//! the metadata store. A block is stored with a tag: the instance id of the slot when
//! it was written, and a CRC-32C over (instance id, volume, chunk, block, bytes). A read
//! looks the chunk up (slot, instance id *i*, the slot's write sequence), reads the
//! block and its tag, and serves the bytes only if the tag says *i*, no write overlapped,
//! the checksum holds and the slot is still on *i*. Otherwise:
//!
//! - tag ≠ *i* or slot moved on: a **stale** block (counted in
//!   `stale_refusals`); the read looks the chunk up again (and misses if it was evicted);
//! - a write overlapped: read again;
//! - checksum failure on the current instance: a **corrupt** block (counted); a clean
//!   chunk is dropped and refetched, a dirty block is an error (its data is lost).
//!
//! Eviction never rewrites or erases blocks and never waits for readers:
//!
//! ```text
//!  evictor                                   reader of chunk C (slot S, instance i)
//!  policy picks C in S                       lookup: S, i
//!  lock S (no writer), flush dirty blocks
//!    to the backend, backend sync,
//!    record S clean (commit)
//!  remove C from the index                   (a new lookup of C misses → backend)
//!  commit S → free, instance j = next++ ──── durable before S is reused
//!  S.instance = j; S joins the free list
//!  a fill of D into S writes tags j          read block: tag j ≠ i → stale, refused
//! ```
//!
//! Instance ids never repeat: the counter only grows, is durable in the same
//! transaction that hands an id out, and at every open each free slot gets a fresh id
//! (so the tags a fill wrote before a crash, under an id the metadata never recorded
//! for that chunk, can never match). **Why no wrap-around GC:** bcache keeps an 8-bit
//! generation per bucket because the generation is copied into every btree pointer, so
//! it wraps after 256 reuses and a garbage collector must first drop the pointers that
//! still carry old generations. Our id is stored once per chunk in the metadata and once
//! per 4 KiB block in its 16-byte tag (0.4% of the space), so it can be 64 bits: at a
//! million evictions per second it wraps after 584,000 years. Nothing has to be swept.
//!
//! A **fill** writes the chunk's blocks and tags (data and tags in flight together, no
//! `fdatasync`) and stages the slot's mapping in an in-memory batch; no transaction, no
//! thread hop on the miss path. A publisher task commits the batch, one redb write
//! transaction per burst of fills (every 50 ms, or at 128 staged), non-durably except
//! at most once a second; any other transaction (an eviction's, a write's) takes the
//! batch first under the same lock, so a later record of a slot always lands after
//! its fill's. A clean chunk needs no durability of its own, and each case of a crash
//! is a counted miss, never data:
//!
//! - the mapping was lost: the slot's durable record still says free, and every open
//!   gives free slots a fresh instance id, so the fill's tags can never match;
//! - the mapping survived but some bytes or tags did not reach the disk: a block's
//!   tag then carries another instance (or zeros) while its slot is still on the
//!   expected one, or its CRC fails; the read counts it (`checksum_failures`), drops
//!   the chunk and fetches it again (a stale verdict is kept for tags of another
//!   instance *after* the slot moved on, which only eviction does).
//!
//! What must be durable before acting is: a retired slot's new instance id (one
//! durable commit per eviction batch, before any slot of the batch is reused), a
//! write's dirty-block set (before the write is acknowledged) and a flushed slot's
//! clean state (before it may be retired). See the `meta` module for each commit.
//!
//! The **memory tier** (`CacheConfig::memory_bytes`, off by default) keeps copies of
//! hot whole blocks under the same protocol: a copy enters only from a read that
//! passed the check above, with the slot, instance id and write sequence that read
//! saw, and is served only while the slot is still on that instance and its write
//! sequence has not moved (two atomic loads). Every write into a slot moves its
//! sequence before it starts and every eviction gives the slot a new instance id
//! before reuse, so a copy served is what a disk read would return at that moment;
//! an outdated copy is dropped. Nothing in the tier is durable.
//!
//! **The checksum** ([`CacheConfig::verify`]): by default ([`Verify::EveryRead`])
//! every hit checks the CRC of every block it serves, so damage that appears in the
//! cache file under a running cache (a medium returning other bytes than it stored,
//! once the page cache dropped them) is a miss — counted, refetched — at the first
//! read after it, never data. [`Verify::OncePerWrite`] trades that for speed on large
//! hot reads: a block's CRC is marked verified (see `slot::Verified`) by a read whose
//! whole check passed, or by the fill that wrote the block and its CRC itself, for
//! the slot's write sequence at that moment; a later hit under the same sequence
//! checks the tag's instance id, the slot's instance id and the sequence, and skips
//! the CRC pass. A hit can still never be stale or torn (the instance-id and sequence
//! checks catch reuse and overlapping writes, and every write moves the sequence), but
//! damage appearing under a running cache is served until the block is written again
//! or the cache reopens (nothing is marked then). The CRC is CRC-32C computed with
//! `crc-fast` (carry-less-multiply folding, ~76 GB/s on 4 KiB blocks on an AVX-512
//! Xeon); measured with the `cache` bench's `nbd-read-gbps` (1 MiB sequential NBD
//! reads of a warm cache, quick mode, 2 vCPUs): 1.98–2.19 GB/s every read, 2.30 GB/s
//! once per write, nbdkit 1.88–2.14 (`PIPEWRIGHT_BENCH_CACHE_VERIFY` picks the mode).
//!
//! **Direct hits** ([`CacheConfig::direct_hits`], on by default): a verified range
//! inside one resident chunk whose bytes and tags the page cache holds is served in the
//! caller's task, without a trip through the pipeline: read with
//! `preadv2(RWF_NOWAIT)` (which never waits for the disk) by
//! [`pipeline::PathService`], or, for an NBD read of 32 KiB or more, written into the
//! socket right away with one non-blocking `writev`: from a per-thread buffer the
//! blocks were read into and their CRCs checked in (every-read checks, the default),
//! or from the mapped cache file (once-per-write checks: one copy where a read and a
//! send are two). The same checks run first. A slot is pinned from before that check
//! until its bytes are in the socket (or copied out, when the socket took only part),
//! and a retired slot joins the free list only once its pins are gone: the check sees
//! the new instance id or the retire sees the pin, so the bytes sent are the checked
//! chunk's. A client write to the same chunk during the reply may show in it, as NBD
//! allows for a read and a write in flight together.
//!
//! # The write guarantee
//!
//! - **Write-back** (default): a write is acknowledged only after (1) the chunk's
//!   dirty-block set including the written blocks is committed in the metadata store,
//!   then (2) the bytes and their tags are written to the cache file and `fdatasync`ed.
//!   Dirty blocks reach the backend (written and synced) within the flush deadline
//!   (the flusher runs every deadline/4 and writes back what has been dirty for
//!   deadline/2), and always before their chunk is evicted: eviction flushes and
//!   records the chunk clean before its slot gets a new instance id. After a crash the
//!   metadata's dirty sets are reloaded and flushed. An acknowledged write is lost only
//!   if the cache file itself loses synced data, or a later write to the same block
//!   tears it at a crash (the tag's checksum then catches it and the block is reported,
//!   never served).
//! - **Write-through**: acknowledged once durable in the cache file and written and
//!   synced to the backend.
//!
//! A request that reaches past a volume's end, or names an unknown volume, is refused
//! with a typed error ([`CacheError`]) and counted in `bad_requests`.
//!
//! # Which I/O path runs where
//!
//! The chunk store's block reads and writes take one of two paths, chosen by the
//! caller, never by accident:
//!
//! - **io_uring** (the request [`pipeline`]'s hit, fill and write stages, so the
//!   gateway's NBD traffic): the stages run on pipewright workers and submit to their
//!   worker's ring: a block range is one read of the data and one of its tags, in
//!   flight together, into pooled buffers registered as fixed buffers (the plan gives
//!   the stages a `UringBudget`, see [`pipeline::uring_budget`]); writes (fills and
//!   client writes) are two positioned writes on the worker (into the page cache:
//!   through io_uring ext4 would hand each to an io-wq thread), then, when the write
//!   must be durable, `fdatasync` on the ring. A read inside one chunk is
//!   answered in its pooled buffer ([`pipeline::ReadBuf`]) and written to the NBD
//!   socket from there. A miss reads a local-file backend through the same ring
//!   ([`Backend::local_file`]; other backends through [`Backend::read`]) and is
//!   answered from the bytes it fetched, not by reading back what it just stored.
//!   The gateway runs these stages on two workers ([`pipeline::gateway_plan`]), and
//!   each NBD connection feeds them through one answer queue
//!   ([`pipeline::PathService::send_queued`]): one wake-up per burst of answers.
//!   Direct hits (above) skip the pipeline: `preadv2(RWF_NOWAIT)` in the caller's
//!   task, or one `writev` per large NBD read (see above).
//! - **blocking pool** (positioned `pread`/`pwrite` on tokio's blocking threads):
//!   [`Cache::read`]/[`Cache::write`] called directly (tests, [`CacheService`], the
//!   CLI, `replay --real`), the background flusher and evictor, and the chunks a
//!   sequential readahead ([`CacheConfig::readahead`]) stores after the chunk that
//!   missed.
//!
//! Both paths write the same bytes and tags and run the same instance-id / write
//! sequence / CRC check on what they read; nothing above depends on the path.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod sync;

#[cfg(not(loom))]
mod backend;
#[cfg(not(loom))]
mod cache;
#[cfg(not(loom))]
mod config;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
pub mod faults;
#[cfg(not(loom))]
mod gateway;
mod memtier;
#[cfg(not(loom))]
mod meta;
#[cfg(not(loom))]
pub mod nbd;
#[cfg(not(loom))]
pub mod pipeline;
pub mod policy;
#[cfg(not(loom))]
pub mod replay;
#[cfg(not(loom))]
mod service;
mod slot;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod store;

#[cfg(not(loom))]
pub use backend::{
    Backend, BackendErrorKind, FileBackend, RetryPolicy, S3Backend, S3Config, S3Error, S3Stats,
    VolumeInfo,
};
#[cfg(not(loom))]
pub use cache::{Cache, VolumeId};
#[cfg(not(loom))]
pub use config::{CacheConfig, Verify, WriteMode};
#[cfg(not(loom))]
pub use error::CacheError;
#[cfg(not(loom))]
pub use gateway::{io_runtime, parse_size, shutdown_signal, status_path, Gateway};
#[cfg(not(loom))]
pub use policy::{
    simulate_request, Clock, EvictionPolicy, Fifo, Lru, PolicyKind, S3Fifo, Sieve, UnknownPolicy,
};
#[cfg(not(loom))]
pub use service::{BlockRequest, BlockResponse, CacheService};
#[cfg(not(loom))]
pub use stats::CacheStats;

/// The instance-id check, exposed for the loom model (`tests/loom_instance.rs`).
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_api {
    pub use crate::slot::{check, SlotCell, SlotPin, Verdict, Verified};
}
