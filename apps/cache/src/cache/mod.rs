//! The cache engine: lookup, single-flight fills, validated block reads, write-back
//! and write-through writes, flushes and batched eviction with new instance ids.
//!
//! This file holds the engine's state and its public API; the work is in one file per
//! path: [`open`] (coming back warm), [`fill`] (lookup, single-flight fills, slot
//! allocation and retirement), [`read`] (validated block reads), [`write`], [`flush`]
//! (write-back) and [`evict`] (batched eviction).

mod direct;
pub(crate) use direct::DirectSend;
mod evict;
mod fill;
mod flush;
mod open;
mod read;
mod write;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rustc_hash::FxHashMap;
use tokio::sync::{watch, Notify};

use crate::backend::{Backend, VolumeInfo};
use crate::config::CacheConfig;
use crate::error::CacheError;
use crate::memtier::{MemLookup, MemTier};
use crate::meta::MetaStore;
use crate::policy::EvictionPolicy;
use crate::stats::{bump, CacheStats, Counters};
use crate::store::{BlockAddr, Blocking, ChunkStore, ReadBuf};

/// A volume of the cache, by its durable id (see [`Cache::volume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VolumeId(pub(crate) u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ChunkKey {
    volume: u32,
    chunk: u64,
}

impl ChunkKey {
    fn policy_key(self) -> u64 {
        ((self.volume as u64) << 44) | self.chunk
    }
    fn from_policy_key(pk: u64) -> Self {
        Self {
            volume: (pk >> 44) as u32,
            chunk: pk & ((1 << 44) - 1),
        }
    }
    /// The memory tier's key of block `block` of this chunk, `blocks` blocks a chunk.
    fn block_key(self, blocks: u64, block: u32) -> u64 {
        ((self.volume as u64) << 44) | (self.chunk * blocks + block as u64)
    }
    fn addr(self) -> BlockAddr {
        BlockAddr {
            volume: self.volume,
            chunk: self.chunk,
        }
    }
}

#[derive(Debug, Clone)]
struct Volume {
    name: String,
    size: u64,
}

#[derive(Debug)]
enum Entry {
    /// Being fetched; waiters watch for the end of the fill.
    Filling(watch::Receiver<bool>),
    /// In this slot.
    Resident(u32),
}

#[derive(Debug, Default, Clone)]
struct SlotInfo {
    key: Option<ChunkKey>,
    dirty: Vec<u64>,
    dirty_since: Option<Instant>,
}

impl SlotInfo {
    fn is_dirty(&self) -> bool {
        self.dirty.iter().any(|w| *w != 0)
    }
}

fn bit(bits: &[u64], i: u32) -> bool {
    bits.get(i as usize / 64)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(bits: &mut Vec<u64>, i: u32) {
    let w = i as usize / 64;
    if bits.len() <= w {
        bits.resize(w + 1, 0);
    }
    bits[w] |= 1 << (i % 64);
}

struct State {
    index: FxHashMap<ChunkKey, Entry>,
    slots: Vec<SlotInfo>,
    free: Vec<u32>,
    /// Slots out of the index whose new instance ids could not be committed (see
    /// `Inner::retire`): retired again before the next eviction, so a failed commit
    /// does not lose them until a restart.
    unretired: Vec<u32>,
    policy: Box<dyn EvictionPolicy>,
    next_instance: u64,
}

struct Inner {
    cfg: CacheConfig,
    store: ChunkStore,
    meta: MetaStore,
    backend: Arc<dyn Backend>,
    state: Mutex<State>,
    slot_locks: Vec<tokio::sync::Mutex<()>>,
    evict_lock: Arc<tokio::sync::Mutex<()>>,
    /// The runtime [`Cache::open`] ran on (the background tasks' runtime): eviction
    /// and retirement run there as tasks of their own (see [`detached`]), not on the
    /// caller's runtime, which may be a pipeline worker's that ends with the worker.
    background: tokio::runtime::Handle,
    free_notify: Notify,
    evict_wanted: Arc<Notify>,
    /// Wakes the publisher of clean fills' metadata (see [`publisher`]).
    publish_wanted: Arc<Notify>,
    /// Set by [`Cache::close`]: new requests are refused, background tasks end.
    closed: std::sync::atomic::AtomicBool,
    counters: Counters,
    /// The memory tier, when it has a budget.
    mem: Option<MemTier>,
    /// Buffers of direct hits ([`Cache::read_direct`]), when they are on.
    direct: Option<pipewright_runtime::uring::BufferPool>,
    volumes: FxHashMap<u32, Volume>,
    by_name: FxHashMap<String, u32>,
}

/// The chunk cache: block reads and writes of the backend's volumes through a cache
/// file of chunk slots. Cheap to clone (one shared engine).
///
/// Background tasks (the flusher and the evictor) run on the tokio runtime that
/// [`Cache::open`] was called on, until the last clone is dropped, and so does every
/// eviction, also one a request starts (so that a cancelled request cannot stop it
/// half way): keep that runtime running while the cache is used, a multi-thread
/// runtime or a current-thread one whose thread stays in `block_on`, as the pipeline's
/// workers call into the cache from threads of their own.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("cache_file", &self.inner.cfg.cache_file)
            .field("chunks", &self.inner.cfg.chunks)
            .finish_non_exhaustive()
    }
}

/// Staged clean fills that wake the publisher before its next tick.
const PUBLISH_BATCH: usize = 128;
/// The publisher's tick: a clean fill's mapping is in redb (non-durably) within about
/// this long.
const PUBLISH_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Publishes the batch of clean fills' records (see `meta`): one write transaction
/// per burst of fills, on a tick or when [`PUBLISH_BATCH`] are staged.
async fn publisher(weak: std::sync::Weak<Inner>) {
    let wanted = match weak.upgrade() {
        Some(inner) => inner.publish_wanted.clone(),
        None => return,
    };
    loop {
        let _ = tokio::time::timeout(PUBLISH_TICK, wanted.notified()).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_closed() {
            return;
        }
        if inner.meta.staged() == 0 {
            continue;
        }
        match blocking(move || inner.meta.publish(false)).await {
            Ok(n) => {
                metrics::counter!("cache_meta_published_records_total").increment(n as u64);
                metrics::counter!("cache_meta_publish_commits_total").increment(1);
            }
            Err(e) => {
                metrics::counter!("cache_meta_publish_errors_total").increment(1);
                eprintln!("pipewright-cache: publishing fill metadata failed (will retry): {e}");
            }
        }
    }
}

/// Runs `work` as a task of its own on `runtime` and waits for it: once started it runs
/// to its end even if the caller's future is dropped (a request cancelled by its
/// client, a pipeline worker that stops), for work that must not stop half way (slots
/// out of the index but not yet free).
async fn detached<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    work: impl std::future::Future<Output = Result<T, CacheError>> + Send + 'static,
) -> Result<T, CacheError> {
    match runtime.spawn(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(CacheError::Io(io::Error::other(format!(
            "the runtime stopped the task: {e}"
        )))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CacheError::Io(io::Error::other(e.to_string())))?
}

/// Where a read of blocks went wrong.
enum BlockFault {
    Stale,
    Torn,
    Corrupt(u32),
    Io(io::Error),
}

impl Cache {
    /// Opens (or creates) the cache file and metadata and comes back warm: every chunk
    /// the metadata names under the cache file's current format is resident again,
    /// dirty ones are queued for write-back, and every free slot gets a fresh
    /// instance id. Must be called inside a tokio runtime.
    pub async fn open(cfg: CacheConfig, backend: Arc<dyn Backend>) -> Result<Cache, CacheError> {
        cfg.validate()?;
        let vols = backend
            .volumes()
            .await
            .map_err(|source| CacheError::Backend {
                volume: String::new(),
                source,
            })?;
        let cfg2 = cfg.clone();
        let inner = blocking(move || Inner::open(cfg2, backend, vols)).await?;
        let inner = Arc::new(inner);
        let cache = Cache { inner };
        cache.spawn_background();
        Ok(cache)
    }

    fn spawn_background(&self) {
        let weak = Arc::downgrade(&self.inner);
        let deadline = self.inner.cfg.flush_deadline;
        tokio::spawn(flush::flusher(weak.clone(), deadline));
        tokio::spawn(evict::evictor(weak.clone()));
        tokio::spawn(publisher(weak));
    }

    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Result<VolumeId, CacheError> {
        self.inner
            .by_name
            .get(name)
            .map(|&id| VolumeId(id))
            .ok_or_else(|| CacheError::UnknownVolume(name.to_string()))
    }

    /// The volumes, by name, with their sizes.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        let mut v: Vec<VolumeInfo> = self
            .inner
            .volumes
            .values()
            .map(|v| VolumeInfo {
                name: v.name.clone(),
                size: v.size,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The size of a volume.
    pub fn volume_size(&self, volume: VolumeId) -> u64 {
        self.inner.volumes.get(&volume.0).map_or(0, |v| v.size)
    }

    /// The block size of the cache file.
    pub fn block_size(&self) -> u32 {
        self.inner.cfg.block_size
    }

    /// The chunk size of the cache file.
    pub fn chunk_size(&self) -> u64 {
        self.inner.cfg.chunk_size
    }

    /// The counters and gauges.
    pub fn stats(&self) -> CacheStats {
        let mut s = self.inner.counters.snapshot();
        let st = self.inner.lock();
        s.free_chunks = st.free.len() as u64;
        s.used_chunks = st.slots.iter().filter(|s| s.key.is_some()).count() as u64;
        s.dirty_chunks = st.slots.iter().filter(|s| s.is_dirty()).count() as u64;
        s.total_chunks = st.slots.len() as u64;
        s
    }

    /// Reads `len` bytes of `volume` from `offset`.
    pub async fn read(
        &self,
        volume: VolumeId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, CacheError> {
        if let Some(data) = self.read_memory(volume, offset, len) {
            return Ok(data);
        }
        // Not on a worker (or not known to be): the blocking path (see `store`).
        self.read_with(&Blocking, volume, offset, len)
            .await
            .map(ReadBuf::into_vec)
    }

    /// Answers a read of one whole block from the memory tier, without I/O, if it
    /// holds a valid copy (see [`CacheConfig::memory_bytes`]); `None`: read it through
    /// the chunk store.
    pub fn read_memory(&self, volume: VolumeId, offset: u64, len: u64) -> Option<Vec<u8>> {
        let inner = &self.inner;
        let mem = inner.mem.as_ref()?;
        let bs = inner.cfg.block_size as u64;
        if len != bs || offset % bs != 0 || inner.is_closed() {
            return None;
        }
        let cs = inner.cfg.chunk_size;
        let key = ChunkKey {
            volume: volume.0,
            chunk: offset / cs,
        };
        let block = ((offset % cs) / bs) as u32;
        match mem.get(key.block_key(cs / bs, block), &inner.store.cells) {
            MemLookup::Hit(data) => {
                // The chunk's access counts for the chunk store's policy as well,
                // unless the engine's lock is busy: then this one access is not
                // recorded (approximate recency, as caches that buffer their hits do)
                // rather than the hit waiting.
                if let Ok(mut st) = inner.state.try_lock() {
                    st.policy.lookup(key.policy_key());
                }
                bump(&inner.counters.hits, "cache_hits_total", 1);
                bump(&inner.counters.memory_hits, "cache_memory_hits_total", 1);
                Some(data)
            }
            MemLookup::Miss => None,
        }
    }

    /// Whether every chunk of `[offset, offset+len)` of `volume` is resident now (the
    /// lookup of the request path; a `false` read will fill).
    pub fn is_resident(&self, volume: VolumeId, offset: u64, len: u64) -> bool {
        let cs = self.inner.cfg.chunk_size;
        if len == 0 {
            return true;
        }
        let Some(last) = offset.checked_add(len - 1) else {
            return false;
        };
        let st = self.inner.lock();
        (offset / cs..=last / cs).all(|chunk| {
            matches!(
                st.index.get(&ChunkKey {
                    volume: volume.0,
                    chunk
                }),
                Some(Entry::Resident(_))
            )
        })
    }

    /// Writes `data` at `offset` of `volume`; returns once the write is acknowledged
    /// under the configured [`WriteMode`](crate::WriteMode).
    pub async fn write(
        &self,
        volume: VolumeId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), CacheError> {
        self.write_with(&Blocking, volume, offset, std::borrow::Cow::Borrowed(data))
            .await
    }

    /// Writes every dirty chunk back to the backend now.
    pub async fn flush(&self) -> Result<(), CacheError> {
        self.inner.flush_older_than(None).await
    }

    /// Closes the cache: from now on requests are refused with
    /// [`CacheError::Closed`] (those already running complete); every dirty block is
    /// written back to the backend and synced, within the configured flush deadline
    /// ([`CacheError::CloseDeadline`] if not: the dirty state stays durable in the
    /// metadata and the next open writes it back); the batch of clean fills' metadata
    /// is committed durably (the next open comes back with every chunk); and the
    /// background flusher, evictor and publisher stop. The request pipeline's stages
    /// are their owner's to stop ([`Gateway::close`](crate::Gateway::close) drains
    /// them first, then closes the cache).
    pub async fn close(&self) -> Result<(), CacheError> {
        let inner = &self.inner;
        inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        inner.evict_wanted.notify_one();
        inner.publish_wanted.notify_one();
        // An eviction still running (one a cancelled request started runs on) ends
        // before the final flush and publish, and none starts after.
        let _no_more_evictions = inner.evict_lock.clone().lock_owned().await;
        let deadline = inner.cfg.flush_deadline;
        match tokio::time::timeout(deadline, inner.flush_older_than(None)).await {
            Ok(flushed) => flushed?,
            Err(_) => {
                let dirty = self.stats().dirty_chunks;
                return Err(CacheError::CloseDeadline {
                    deadline_ms: deadline.as_millis() as u64,
                    dirty_chunks: dirty,
                });
            }
        }
        let inner = inner.clone();
        blocking(move || inner.meta.publish(true).map(drop)).await
    }

    /// Evicts until `free` slots are free (or nothing more can be evicted); returns
    /// how many slots it freed (chunks evicted, and slots whose earlier retirement
    /// failed to commit and is completed now).
    pub async fn evict_to(&self, free: u32) -> Result<u64, CacheError> {
        let mut evicted = 0;
        loop {
            if self.inner.lock().free.len() as u32 >= free {
                return Ok(evicted);
            }
            let held = self.inner.evict_lock.clone().lock_owned().await;
            let n = self
                .inner
                .evict_batch(held, self.inner.cfg.eviction_batch)
                .await?;
            if n == 0 {
                return Ok(evicted);
            }
            evicted += n;
        }
    }

    /// Damages one stored byte of a resident chunk of `volume` (for fault tests):
    /// returns whether that chunk was resident.
    #[doc(hidden)]
    pub fn corrupt_cached_block(&self, volume: VolumeId, offset: u64) -> Result<bool, CacheError> {
        let Some((slot, block)) = self.resident_block(volume, offset) else {
            return Ok(false);
        };
        self.inner.store.corrupt_byte(slot, block)?;
        Ok(true)
    }

    /// The slot and block index holding `volume`'s byte at `offset`, if its chunk is
    /// resident.
    fn resident_block(&self, volume: VolumeId, offset: u64) -> Option<(u32, u32)> {
        let cs = self.inner.cfg.chunk_size;
        let key = ChunkKey {
            volume: volume.0,
            chunk: offset / cs,
        };
        let slot = match self.inner.lock().index.get(&key) {
            Some(Entry::Resident(s)) => *s,
            _ => return None,
        };
        Some((
            slot,
            ((offset % cs) / self.inner.cfg.block_size as u64) as u32,
        ))
    }

    /// Zeroes the tag of a resident block of `volume`, as a crash leaves a fill that
    /// was never synced (for fault tests): returns whether that chunk was resident.
    #[doc(hidden)]
    pub fn lose_cached_block(&self, volume: VolumeId, offset: u64) -> Result<bool, CacheError> {
        let Some((slot, block)) = self.resident_block(volume, offset) else {
            return Ok(false);
        };
        self.inner.store.lose_tag(slot, block)?;
        Ok(true)
    }

    /// Damages the metadata record of the slot holding `volume`'s chunk at `offset`
    /// (for fault tests; takes effect at the next open).
    #[doc(hidden)]
    pub fn corrupt_meta_record(&self, volume: VolumeId, offset: u64) -> Result<bool, CacheError> {
        let key = ChunkKey {
            volume: volume.0,
            chunk: offset / self.inner.cfg.chunk_size,
        };
        let slot = match self.inner.lock().index.get(&key) {
            Some(Entry::Resident(s)) => *s,
            _ => return Ok(false),
        };
        self.inner.meta.corrupt_record(slot)?;
        Ok(true)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: the batch of clean fills goes to redb, durably, so
        // that the next open finds them warm (a crash instead only costs refetches).
        if let Err(e) = self.meta.publish(true) {
            eprintln!("pipewright-cache: publishing fill metadata at drop failed: {e}");
        }
    }
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_range(&self, volume: u32, offset: u64, len: u64) -> Result<(), CacheError> {
        if self.is_closed() {
            return Err(CacheError::Closed);
        }
        let v = self.volumes.get(&volume).ok_or_else(|| {
            bump(&self.counters.bad_requests, "cache_bad_requests_total", 1);
            CacheError::UnknownVolume(format!("#{volume}"))
        })?;
        if offset.checked_add(len).is_none_or(|end| end > v.size) {
            bump(&self.counters.bad_requests, "cache_bad_requests_total", 1);
            return Err(CacheError::OutOfRange {
                volume: v.name.clone(),
                offset,
                len,
                size: v.size,
            });
        }
        Ok(())
    }

    fn volume_name(&self, volume: u32) -> String {
        self.volumes
            .get(&volume)
            .map_or_else(String::new, |v| v.name.clone())
    }
}
