//! The cache engine: lookup, single-flight fills, validated block reads, write-back
//! and write-through writes, flushes and batched eviction with new instance ids.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tokio::sync::{watch, Notify};

use crate::backend::{Backend, VolumeInfo};
use crate::config::{CacheConfig, WriteMode};
use crate::error::CacheError;
use crate::faults::{self, CrashPoint};
use crate::meta::{ChunkRecord, MetaStore, SlotState};
use crate::policy::EvictionPolicy;
use crate::slot::{check, Verdict};
use crate::stats::{bump, CacheStats, Counters};
use crate::store::{BlockAddr, ChunkStore, Geometry};

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
    evict_lock: tokio::sync::Mutex<()>,
    free_notify: Notify,
    evict_wanted: Arc<Notify>,
    counters: Counters,
    volumes: FxHashMap<u32, Volume>,
    by_name: FxHashMap<String, u32>,
}

/// The chunk cache: block reads and writes of the backend's volumes through a cache
/// file of chunk slots. Cheap to clone (one shared engine).
///
/// Background tasks (the flusher and the evictor) run on the tokio runtime that
/// [`Cache::open`] was called on, until the last clone is dropped.
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
        let vols = backend.volumes().map_err(|source| CacheError::Backend {
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
        tokio::spawn(flusher(weak.clone(), deadline));
        tokio::spawn(evictor(weak));
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
        self.inner.check_range(volume.0, offset, len)?;
        let cs = self.inner.cfg.chunk_size;
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk = pos / cs;
            let in_chunk = pos % cs;
            let n = (cs - in_chunk).min(end - pos);
            let key = ChunkKey {
                volume: volume.0,
                chunk,
            };
            self.inner.read_segment(key, in_chunk, n, &mut out).await?;
            pos += n;
        }
        Ok(out)
    }

    /// Whether every chunk of `[offset, offset+len)` of `volume` is resident now (the
    /// lookup of the request path; a `false` read will fill).
    pub fn is_resident(&self, volume: VolumeId, offset: u64, len: u64) -> bool {
        let cs = self.inner.cfg.chunk_size;
        if len == 0 {
            return true;
        }
        let st = self.inner.lock();
        (offset / cs..=(offset + len - 1) / cs).all(|chunk| {
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
    /// under the configured [`WriteMode`].
    pub async fn write(
        &self,
        volume: VolumeId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), CacheError> {
        self.inner
            .check_range(volume.0, offset, data.len() as u64)?;
        let cs = self.inner.cfg.chunk_size;
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = pos / cs;
            let in_chunk = pos % cs;
            let n = ((cs - in_chunk) as usize).min(rest.len());
            let key = ChunkKey {
                volume: volume.0,
                chunk,
            };
            self.inner.write_segment(key, in_chunk, &rest[..n]).await?;
            pos += n as u64;
            rest = &rest[n..];
        }
        bump(&self.inner.counters.writes, "cache_writes_total", 1);
        Ok(())
    }

    /// Writes every dirty chunk back to the backend now.
    pub async fn flush(&self) -> Result<(), CacheError> {
        self.inner.flush_older_than(None).await
    }

    /// Evicts until `free` slots are free (or nothing more can be evicted); returns
    /// how many chunks it evicted.
    pub async fn evict_to(&self, free: u32) -> Result<u64, CacheError> {
        let mut evicted = 0;
        loop {
            if self.inner.lock().free.len() as u32 >= free {
                return Ok(evicted);
            }
            let _g = self.inner.evict_lock.lock().await;
            let n = self.inner.evict_batch().await?;
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
        let cs = self.inner.cfg.chunk_size;
        let key = ChunkKey {
            volume: volume.0,
            chunk: offset / cs,
        };
        let slot = match self.inner.lock().index.get(&key) {
            Some(Entry::Resident(s)) => *s,
            _ => return Ok(false),
        };
        let block = ((offset % cs) / self.inner.cfg.block_size as u64) as u32;
        self.inner.store.corrupt_byte(slot, block)?;
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

impl Inner {
    fn open(
        cfg: CacheConfig,
        backend: Arc<dyn Backend>,
        vols: Vec<VolumeInfo>,
    ) -> Result<Inner, CacheError> {
        let geometry = Geometry {
            chunks: cfg.chunks,
            chunk_size: cfg.chunk_size,
            block_size: cfg.block_size,
        };
        let (store, _formatted) = ChunkStore::open(&cfg.cache_file, geometry)?;
        let meta = MetaStore::open(&cfg.meta_path())?;
        let loaded = meta.load()?;
        let counters = Counters::default();
        // Volume ids are durable: a volume keeps its id across restarts.
        let mut by_name: FxHashMap<String, u32> = loaded.volumes.iter().cloned().collect();
        let mut new_vols = Vec::new();
        let mut next_vol = by_name.values().copied().max().map_or(1, |m| m + 1);
        let mut volumes = FxHashMap::default();
        for v in vols {
            let id = match by_name.get(&v.name) {
                Some(&id) => id,
                None => {
                    let id = next_vol;
                    next_vol += 1;
                    by_name.insert(v.name.clone(), id);
                    new_vols.push((v.name.clone(), id));
                    id
                }
            };
            volumes.insert(
                id,
                Volume {
                    name: v.name,
                    size: v.size,
                },
            );
        }
        by_name.retain(|_, id| volumes.contains_key(id));
        let same_format = loaded.nonce == Some(store.nonce);
        let n = cfg.chunks as usize;
        let mut slots = vec![SlotInfo::default(); n];
        let mut index = FxHashMap::default();
        let mut policy = cfg.policy.build(n);
        let mut next_instance = loaded.next_instance.max(1);
        let mut records = Vec::new();
        let mut free = Vec::new();
        let mut kept = vec![false; n];
        if same_format {
            for (slot, rec) in &loaded.records {
                let slot = *slot;
                if slot as usize >= n {
                    continue;
                }
                let Some(rec) = rec else {
                    bump(&counters.meta_corrupt, "cache_meta_corrupt_total", 1);
                    continue;
                };
                if rec.state == SlotState::Free || !volumes.contains_key(&rec.volume) {
                    continue;
                }
                let key = ChunkKey {
                    volume: rec.volume,
                    chunk: rec.chunk,
                };
                if index.contains_key(&key) {
                    continue;
                }
                store.cells[slot as usize].set_instance(rec.instance);
                slots[slot as usize] = SlotInfo {
                    key: Some(key),
                    dirty: rec.dirty.clone(),
                    dirty_since: rec.dirty.iter().any(|w| *w != 0).then(Instant::now),
                };
                index.insert(key, Entry::Resident(slot));
                policy.insert(key.policy_key());
                kept[slot as usize] = true;
            }
        }
        // Every other slot is free under a fresh instance id: whatever a fill that
        // crashed before its commit left there can never match.
        for slot in (0..n as u32).rev() {
            if kept[slot as usize] {
                continue;
            }
            let id = next_instance;
            next_instance += 1;
            store.cells[slot as usize].set_instance(id);
            records.push((slot, ChunkRecord::free(id)));
            free.push(slot);
        }
        bump(
            &counters.instance_ids_issued,
            "cache_instance_ids_issued_total",
            records.len() as u64,
        );
        meta.commit(&records, Some(next_instance), Some(store.nonce), &new_vols)?;
        let slot_locks = (0..n).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(Inner {
            state: Mutex::new(State {
                index,
                slots,
                free,
                policy,
                next_instance,
            }),
            cfg,
            store,
            meta,
            backend,
            slot_locks,
            evict_lock: tokio::sync::Mutex::new(()),
            free_notify: Notify::new(),
            evict_wanted: Arc::new(Notify::new()),
            counters,
            volumes,
            by_name,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_range(&self, volume: u32, offset: u64, len: u64) -> Result<(), CacheError> {
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

    /// Resident: `(slot, instance, seq)`. Absent: this call fills it (single flight).
    async fn lookup(self: &Arc<Self>, key: ChunkKey) -> Result<(u32, u64, u64), CacheError> {
        let mut counted_miss = false;
        enum Found {
            Hit(u32, u64, u64),
            Wait(watch::Receiver<bool>),
            Fill(watch::Sender<bool>),
        }
        loop {
            let found = {
                let mut st = self.lock();
                match st.index.get(&key) {
                    Some(Entry::Resident(slot)) => {
                        let slot = *slot;
                        st.policy.lookup(key.policy_key());
                        let cell = &self.store.cells[slot as usize];
                        Found::Hit(slot, cell.instance(), cell.seq())
                    }
                    Some(Entry::Filling(rx)) => Found::Wait(rx.clone()),
                    None => {
                        st.policy.lookup(key.policy_key());
                        let (tx, rx) = watch::channel(false);
                        st.index.insert(key, Entry::Filling(rx));
                        Found::Fill(tx)
                    }
                }
            };
            let tx = match found {
                Found::Hit(slot, instance, seq) => return Ok((slot, instance, seq)),
                Found::Wait(mut rx) => {
                    if !counted_miss {
                        counted_miss = true;
                        bump(&self.counters.misses, "cache_misses_total", 1);
                    }
                    bump(
                        &self.counters.single_flight_waits,
                        "cache_single_flight_waits_total",
                        1,
                    );
                    let _ = rx.wait_for(|done| *done).await;
                    continue;
                }
                Found::Fill(tx) => tx,
            };
            if !counted_miss {
                bump(&self.counters.misses, "cache_misses_total", 1);
            }
            let filled = self.fill(key).await;
            let mut st = self.lock();
            match filled {
                Ok(slot) => {
                    st.index.insert(key, Entry::Resident(slot));
                    st.slots[slot as usize].key = Some(key);
                    st.policy.insert(key.policy_key());
                    drop(st);
                    let _ = tx.send(true);
                    // Loop: the lookup now finds it resident.
                    counted_miss = true;
                }
                Err(e) => {
                    st.index.remove(&key);
                    drop(st);
                    let _ = tx.send(true);
                    return Err(e);
                }
            }
        }
    }

    /// A free slot, evicting a batch when there is none.
    async fn allocate(self: &Arc<Self>) -> Result<u32, CacheError> {
        loop {
            let notified = self.free_notify.notified();
            {
                let mut st = self.lock();
                if let Some(slot) = st.free.pop() {
                    if (st.free.len() as u32) < self.cfg.low_watermark {
                        self.evict_wanted.notify_one();
                    }
                    return Ok(slot);
                }
            }
            let guard = match self.evict_lock.try_lock() {
                Ok(g) => g,
                Err(_) => {
                    // Someone is evicting: wait for freed slots.
                    notified.await;
                    continue;
                }
            };
            let n = self.evict_batch().await?;
            drop(guard);
            if n == 0 {
                // Nothing evictable now (every slot is being filled): wait.
                notified.await;
            }
        }
    }

    /// Fetches the chunk from the backend into a free slot; durable data, then
    /// durable metadata.
    async fn fill(self: &Arc<Self>, key: ChunkKey) -> Result<u32, CacheError> {
        let slot = self.allocate().await?;
        let cs = self.cfg.chunk_size;
        let name = self.volume_name(key.volume);
        let data = match self.backend.read(&name, key.chunk * cs, cs as usize).await {
            Ok(d) if d.len() == cs as usize => d,
            Ok(d) => {
                self.release_unwritten(slot);
                bump(
                    &self.counters.backend_errors,
                    "cache_backend_errors_total",
                    1,
                );
                return Err(CacheError::Backend {
                    volume: name,
                    source: io::Error::other(format!("short read: {} of {cs} bytes", d.len())),
                });
            }
            Err(source) => {
                self.release_unwritten(slot);
                bump(
                    &self.counters.backend_errors,
                    "cache_backend_errors_total",
                    1,
                );
                return Err(CacheError::Backend {
                    volume: name,
                    source,
                });
            }
        };
        let instance = self.store.cells[slot as usize].instance();
        let inner = self.clone();
        let stored = blocking(move || {
            let cell = &inner.store.cells[slot as usize];
            if faults::should_crash(CrashPoint::Fill) {
                // A torn fill: half the bytes, no tags, no metadata.
                let _ = inner.store.write_torn(slot, &data[..data.len() / 2]);
                let _ = inner.store.sync();
                eprintln!("pipewright-cache: crash point fill reached, aborting");
                std::process::abort();
            }
            cell.begin_write();
            let w = inner
                .store
                .write_blocks(slot, 0, &data, instance, key.addr());
            cell.end_write();
            w?;
            // No fdatasync here: a clean chunk's bytes need not be durable. After a
            // crash that lost some of them, their tags no longer match (instance or
            // CRC) and the chunk is refetched; the next sync of the file (any
            // acknowledged write's) makes them durable anyway.
            // A clean chunk's mapping may be lost at a crash (the chunk is then
            // refetched); it never names bytes that are not synced.
            inner.meta.commit_lazy(&[(
                slot,
                ChunkRecord {
                    state: SlotState::Clean,
                    volume: key.volume,
                    chunk: key.chunk,
                    instance,
                    dirty: Vec::new(),
                },
            )])?;
            Ok(())
        })
        .await;
        match stored {
            Ok(()) => {
                bump(&self.counters.fills, "cache_fills_total", 1);
                bump(&self.counters.fill_bytes, "cache_fill_bytes_total", cs);
                Ok(slot)
            }
            Err(e) => {
                // The slot may hold part of the chunk under its instance id: retire it.
                let _ = self.retire(&[slot]).await;
                Err(e)
            }
        }
    }

    /// Returns a slot nothing was written to.
    fn release_unwritten(&self, slot: u32) {
        self.lock().free.push(slot);
        self.free_notify.notify_waiters();
    }

    /// Gives `slots` (already out of the index) new instance ids, durably, and only
    /// then frees them.
    async fn retire(self: &Arc<Self>, slots: &[u32]) -> Result<(), CacheError> {
        if slots.is_empty() {
            return Ok(());
        }
        let (records, next) = {
            let mut st = self.lock();
            let mut records = Vec::with_capacity(slots.len());
            for &slot in slots {
                let id = st.next_instance;
                st.next_instance += 1;
                records.push((slot, ChunkRecord::free(id)));
                st.slots[slot as usize] = SlotInfo::default();
            }
            (records, st.next_instance)
        };
        let inner = self.clone();
        let recs = records.clone();
        blocking(move || inner.meta.commit(&recs, Some(next), None, &[])).await?;
        bump(
            &self.counters.instance_ids_issued,
            "cache_instance_ids_issued_total",
            records.len() as u64,
        );
        for (slot, rec) in &records {
            self.store.cells[*slot as usize].set_instance(rec.instance);
        }
        self.lock().free.extend(slots.iter().copied());
        self.free_notify.notify_waiters();
        Ok(())
    }

    /// Reads blocks `[first, first+count)` of a resident slot and validates them.
    #[allow(clippy::too_many_arguments)]
    fn read_validated(
        &self,
        slot: u32,
        instance: u64,
        seq: u64,
        key: ChunkKey,
        first: u32,
        count: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), BlockFault> {
        let tags = self
            .store
            .read_blocks(slot, first, count, buf)
            .map_err(BlockFault::Io)?;
        let bs = self.cfg.block_size as usize;
        let cell = &self.store.cells[slot as usize];
        let mut worst = None;
        for (i, tag) in tags.iter().enumerate() {
            let b = first + i as u32;
            let ok = tag.matches(key.addr(), b, &buf[i * bs..(i + 1) * bs]);
            match check(instance, tag.instance, ok, cell, seq) {
                Verdict::Valid => {}
                Verdict::Stale => return Err(BlockFault::Stale),
                Verdict::Torn => worst = Some(BlockFault::Torn),
                Verdict::Corrupt => {
                    if worst.is_none() {
                        worst = Some(BlockFault::Corrupt(b));
                    }
                }
            }
        }
        match worst {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }

    async fn read_segment(
        self: &Arc<Self>,
        key: ChunkKey,
        in_chunk: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), CacheError> {
        let bs = self.cfg.block_size as u64;
        let first = (in_chunk / bs) as u32;
        let last = ((in_chunk + len - 1) / bs) as u32;
        let count = last - first + 1;
        let skip = (in_chunk % bs) as usize;
        let mut buf = Vec::new();
        loop {
            let (slot, instance, seq) = self.lookup(key).await?;
            let every = self.cfg.stall_reads_every as u64;
            if every > 0
                && self
                    .counters
                    .hits
                    .load(std::sync::atomic::Ordering::Relaxed)
                    % every
                    == 0
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The block read runs on the blocking pool (positioned I/O); eviction and
            // reuse of the slot may race it, which the check below catches.
            let inner = self.clone();
            let (verdict, b) = tokio::task::spawn_blocking(move || {
                let mut buf = buf;
                let v = inner.read_validated(slot, instance, seq, key, first, count, &mut buf);
                (v, buf)
            })
            .await
            .map_err(|e| CacheError::Io(io::Error::other(e.to_string())))?;
            buf = b;
            match verdict {
                Ok(()) => {
                    bump(&self.counters.hits, "cache_hits_total", 1);
                    out.extend_from_slice(&buf[skip..skip + len as usize]);
                    return Ok(());
                }
                Err(BlockFault::Stale) => {
                    bump(
                        &self.counters.stale_refusals,
                        "cache_stale_refusals_total",
                        1,
                    );
                }
                Err(BlockFault::Torn) => {
                    bump(&self.counters.torn_retries, "cache_torn_retries_total", 1);
                    tokio::task::yield_now().await;
                }
                Err(BlockFault::Corrupt(block)) => {
                    bump(
                        &self.counters.checksum_failures,
                        "cache_checksum_failures_total",
                        1,
                    );
                    self.drop_corrupt(key, slot, instance, block).await?;
                }
                Err(BlockFault::Io(e)) => return Err(e.into()),
            }
        }
    }

    /// A block of `slot` failed its checksum: a clean chunk is dropped (and refetched
    /// by the next lookup); a dirty block's data is lost, which is an error.
    async fn drop_corrupt(
        self: &Arc<Self>,
        key: ChunkKey,
        slot: u32,
        instance: u64,
        block: u32,
    ) -> Result<(), CacheError> {
        let _g = self.slot_locks[slot as usize].lock().await;
        let needs_flush = {
            let st = self.lock();
            let still = matches!(st.index.get(&key), Some(Entry::Resident(s)) if *s == slot)
                && self.store.cells[slot as usize].instance() == instance;
            if !still {
                return Ok(());
            }
            if bit(&st.slots[slot as usize].dirty, block) {
                return Err(CacheError::DirtyBlockCorrupt {
                    volume: self.volume_name(key.volume),
                    chunk: key.chunk,
                    block,
                });
            }
            st.slots[slot as usize].is_dirty()
        };
        if needs_flush {
            // Flush the chunk's other dirty blocks before dropping it.
            self.flush_slot_locked(slot).await?;
        }
        {
            let mut st = self.lock();
            st.index.remove(&key);
            st.policy.remove(key.policy_key());
        }
        self.retire(&[slot]).await
    }

    async fn write_segment(
        self: &Arc<Self>,
        key: ChunkKey,
        in_chunk: u64,
        data: &[u8],
    ) -> Result<(), CacheError> {
        let bs = self.cfg.block_size as u64;
        let first = (in_chunk / bs) as u32;
        let last = ((in_chunk + data.len() as u64 - 1) / bs) as u32;
        let count = last - first + 1;
        loop {
            let (slot, instance, _) = self.lookup(key).await?;
            let _g = self.slot_locks[slot as usize].lock().await;
            let cell = &self.store.cells[slot as usize];
            let still = matches!(self.lock().index.get(&key), Some(Entry::Resident(s)) if *s == slot)
                && cell.instance() == instance;
            if !still {
                continue;
            }
            // Whole blocks: merge a partial first/last block with the stored bytes.
            let start = (in_chunk % bs) as usize;
            let mut buf = if start == 0 && data.len() as u64 % bs == 0 {
                data.to_vec()
            } else {
                let mut existing = Vec::new();
                let seq = cell.seq();
                match self.read_validated(slot, instance, seq, key, first, count, &mut existing) {
                    Ok(()) => {}
                    Err(BlockFault::Corrupt(block)) => {
                        bump(
                            &self.counters.checksum_failures,
                            "cache_checksum_failures_total",
                            1,
                        );
                        drop(_g);
                        self.drop_corrupt(key, slot, instance, block).await?;
                        continue;
                    }
                    Err(BlockFault::Io(e)) => return Err(e.into()),
                    // We hold the slot's lock: no write or eviction can overlap.
                    Err(BlockFault::Stale | BlockFault::Torn) => continue,
                }
                existing[start..start + data.len()].copy_from_slice(data);
                existing
            };
            let write_back = self.cfg.write_mode == WriteMode::WriteBack;
            if write_back {
                // The dirty state is durable before the bytes land.
                let (record, newly) = {
                    let st = self.lock();
                    let mut dirty = st.slots[slot as usize].dirty.clone();
                    let mut newly = false;
                    for b in first..=last {
                        if !bit(&dirty, b) {
                            set_bit(&mut dirty, b);
                            newly = true;
                        }
                    }
                    (
                        ChunkRecord {
                            state: SlotState::Dirty,
                            volume: key.volume,
                            chunk: key.chunk,
                            instance,
                            dirty,
                        },
                        newly,
                    )
                };
                if newly {
                    let inner = self.clone();
                    let rec = record.clone();
                    blocking(move || inner.meta.commit(&[(slot, rec)], None, None, &[])).await?;
                    let mut st = self.lock();
                    let info = &mut st.slots[slot as usize];
                    info.dirty = record.dirty;
                    info.dirty_since.get_or_insert_with(Instant::now);
                }
            }
            let inner = self.clone();
            let bytes = std::mem::take(&mut buf);
            let bytes = blocking(move || {
                let cell = &inner.store.cells[slot as usize];
                cell.begin_write();
                let w = inner
                    .store
                    .write_blocks(slot, first, &bytes, instance, key.addr());
                cell.end_write();
                w?;
                inner.store.sync()?;
                Ok(bytes)
            })
            .await?;
            if !write_back {
                let name = self.volume_name(key.volume);
                let off = key.chunk * self.cfg.chunk_size + first as u64 * bs;
                let backend_err = |source| CacheError::Backend {
                    volume: name.clone(),
                    source,
                };
                self.backend
                    .write(&name, off, bytes)
                    .await
                    .map_err(backend_err)?;
                self.backend.sync(&name).await.map_err(backend_err)?;
            }
            bump(
                &self.counters.written_blocks,
                "cache_written_blocks_total",
                count as u64,
            );
            return Ok(());
        }
    }

    /// Writes a slot's dirty blocks to the backend, syncs the backend, then records
    /// the slot clean. The caller holds the slot's lock.
    async fn flush_slot_locked(self: &Arc<Self>, slot: u32) -> Result<u64, CacheError> {
        let (key, dirty) = {
            let st = self.lock();
            let info = &st.slots[slot as usize];
            match info.key {
                Some(k) if info.is_dirty() => (k, info.dirty.clone()),
                _ => return Ok(0),
            }
        };
        let instance = self.store.cells[slot as usize].instance();
        let name = self.volume_name(key.volume);
        let bs = self.cfg.block_size as u64;
        let bpc = (self.cfg.chunk_size / bs) as u32;
        let mut written = 0u64;
        let mut b = 0u32;
        while b < bpc {
            if !bit(&dirty, b) {
                b += 1;
                continue;
            }
            let start = b;
            while b < bpc && bit(&dirty, b) {
                b += 1;
            }
            let mut buf = Vec::new();
            let seq = self.store.cells[slot as usize].seq();
            match self.read_validated(slot, instance, seq, key, start, b - start, &mut buf) {
                Ok(()) => {}
                Err(BlockFault::Corrupt(block)) => {
                    bump(
                        &self.counters.checksum_failures,
                        "cache_checksum_failures_total",
                        1,
                    );
                    return Err(CacheError::DirtyBlockCorrupt {
                        volume: name,
                        chunk: key.chunk,
                        block,
                    });
                }
                Err(BlockFault::Io(e)) => return Err(e.into()),
                Err(BlockFault::Stale | BlockFault::Torn) => {
                    return Err(CacheError::Io(io::Error::other(
                        "a dirty slot changed under its lock",
                    )))
                }
            }
            let off = key.chunk * self.cfg.chunk_size + start as u64 * bs;
            self.backend
                .write(&name, off, buf)
                .await
                .map_err(|source| CacheError::Backend {
                    volume: name.clone(),
                    source,
                })?;
            written += (b - start) as u64;
        }
        self.backend
            .sync(&name)
            .await
            .map_err(|source| CacheError::Backend {
                volume: name.clone(),
                source,
            })?;
        faults::reached(CrashPoint::Flush);
        let inner = self.clone();
        let rec = ChunkRecord {
            state: SlotState::Clean,
            volume: key.volume,
            chunk: key.chunk,
            instance,
            dirty: Vec::new(),
        };
        blocking(move || inner.meta.commit(&[(slot, rec)], None, None, &[])).await?;
        {
            let mut st = self.lock();
            let info = &mut st.slots[slot as usize];
            info.dirty.clear();
            info.dirty_since = None;
        }
        bump(&self.counters.flushes, "cache_flushes_total", 1);
        bump(
            &self.counters.flushed_blocks,
            "cache_flushed_blocks_total",
            written,
        );
        Ok(written)
    }

    /// Flushes dirty slots (those dirty for longer than `age`, or all).
    async fn flush_older_than(self: &Arc<Self>, age: Option<Duration>) -> Result<(), CacheError> {
        let now = Instant::now();
        let slots: Vec<u32> = {
            let st = self.lock();
            st.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.dirty_since
                        .is_some_and(|t| age.is_none_or(|a| now.duration_since(t) >= a))
                })
                .map(|(i, _)| i as u32)
                .collect()
        };
        let mut first_err = None;
        for slot in slots {
            let _g = self.slot_locks[slot as usize].lock().await;
            if let Err(e) = self.flush_slot_locked(slot).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// One eviction batch: the policy's victims are flushed if dirty, leave the index,
    /// get new instance ids in one durable commit, and only then become free.
    /// The caller holds `evict_lock`. Returns how many slots it freed.
    async fn evict_batch(self: &Arc<Self>) -> Result<u64, CacheError> {
        let victims: Vec<(ChunkKey, u32)> = {
            let mut st = self.lock();
            let mut v = Vec::new();
            let mut skipped = Vec::new();
            while v.len() < self.cfg.eviction_batch as usize {
                let Some(pk) = st.policy.evict() else { break };
                let key = ChunkKey::from_policy_key(pk);
                let found = match st.index.get(&key) {
                    Some(Entry::Resident(s)) => Some((key, *s)),
                    _ => None,
                };
                match found {
                    Some(kv) => v.push(kv),
                    None => skipped.push(pk),
                }
            }
            drop(skipped);
            v
        };
        if victims.is_empty() {
            return Ok(0);
        }
        let mut freed = Vec::new();
        let mut guards = Vec::new();
        for (key, slot) in &victims {
            let g = self.slot_locks[*slot as usize].lock().await;
            let dirty = self.lock().slots[*slot as usize].is_dirty();
            if dirty {
                match self.flush_slot_locked(*slot).await {
                    Ok(_) => bump(
                        &self.counters.dirty_evictions,
                        "cache_dirty_evictions_total",
                        1,
                    ),
                    Err(e) => {
                        // Keep it: it cannot leave before its dirty data is safe.
                        self.lock().policy.insert(key.policy_key());
                        tracing_warn(&e);
                        continue;
                    }
                }
            }
            {
                let mut st = self.lock();
                st.index.remove(key);
            }
            freed.push(*slot);
            guards.push(g);
        }
        faults::reached(CrashPoint::Evict);
        self.retire(&freed).await?;
        drop(guards);
        let n = freed.len() as u64;
        bump(&self.counters.evictions, "cache_evictions_total", n);
        bump(
            &self.counters.eviction_batches,
            "cache_eviction_batches_total",
            1,
        );
        Ok(n)
    }
}

fn tracing_warn(e: &CacheError) {
    eprintln!("pipewright-cache: eviction kept a chunk: {e}");
}

async fn flusher(inner: Weak<Inner>, deadline: Duration) {
    let period = (deadline / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.flush_older_than(Some(deadline / 2)).await {
            eprintln!("pipewright-cache: write-back failed (will retry): {e}");
        }
    }
}

async fn evictor(weak: Weak<Inner>) {
    let wanted = match weak.upgrade() {
        Some(inner) => inner.evict_wanted.clone(),
        None => return,
    };
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(200), wanted.notified()).await;
        let Some(inner) = weak.upgrade() else { return };
        if (inner.lock().free.len() as u32) >= inner.cfg.low_watermark {
            continue;
        }
        let _g = inner.evict_lock.lock().await;
        while (inner.lock().free.len() as u32) < inner.cfg.high_watermark {
            match inner.evict_batch().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("pipewright-cache: eviction failed (will retry): {e}");
                    break;
                }
            }
        }
    }
}
