//! Lookup with single-flight fills from the backend, slot allocation, and the
//! retirement of slots under new instance ids.

use std::io;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::CacheError;
use crate::faults::{self, CrashPoint};
use crate::meta::{ChunkRecord, SlotState};
use crate::stats::bump;
use crate::store::{BlockIo, Blocking, WriteGuard};

use super::{blocking, ChunkKey, Entry, Inner, SlotInfo, State, PUBLISH_BATCH};

/// What [`Inner::lookup_or_fill`] found.
pub(super) enum Looked {
    /// Resident in `(slot, instance, seq)`.
    Resident(u32, u64, u64),
    /// Filled by this lookup.
    Filled(Stored),
}

/// A chunk a fill stored: its slot, and the slot's instance id and write sequence
/// right after the chunk's bytes were written (taken before the chunk is published,
/// so nothing else can have written the slot in between), and the bytes.
pub(super) struct Stored {
    pub(super) slot: u32,
    pub(super) instance: u64,
    pub(super) seq: u64,
    pub(super) bytes: Vec<u8>,
}

/// How long a fill waits for a slot before it fails (every slot being filled, or the
/// metadata store failing the commits that free them).
pub(crate) const ALLOCATE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a fill waiting for a slot tries eviction again.
const RETRY_EVICTION: std::time::Duration = std::time::Duration::from_millis(100);

impl Inner {
    /// Resident: `(slot, instance, seq)`. Absent: this call fills it (single flight).
    pub(super) async fn lookup<I: BlockIo>(
        self: &Arc<Self>,
        io: &I,
        key: ChunkKey,
    ) -> Result<(u32, u64, u64), CacheError> {
        loop {
            if let Looked::Resident(slot, instance, seq) =
                self.lookup_or_fill(io, key, false).await?
            {
                return Ok((slot, instance, seq));
            }
        }
    }

    /// Resident: [`Looked::Resident`]. Absent: this call fills it (single flight), and
    /// with `want_bytes` answers [`Looked::Filled`] with the chunk's bytes as fetched
    /// (and stored): the read that missed is served from them, without reading back
    /// what it just wrote. Requests that waited for the fill read the cache file.
    pub(super) async fn lookup_or_fill<I: BlockIo>(
        self: &Arc<Self>,
        io: &I,
        key: ChunkKey,
        want_bytes: bool,
    ) -> Result<Looked, CacheError> {
        let mut counted_miss = false;
        enum Found {
            Hit(u32, u64, u64),
            Wait(watch::Receiver<bool>),
            Fill(watch::Sender<bool>, Vec<(ChunkKey, watch::Sender<bool>)>),
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
                        let ahead = self.claim_readahead(&mut st, key);
                        Found::Fill(tx, ahead)
                    }
                }
            };
            let (tx, ahead) = match found {
                Found::Hit(slot, instance, seq) => {
                    return Ok(Looked::Resident(slot, instance, seq))
                }
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
                    if rx.wait_for(|done| *done).await.is_err() {
                        // The filler went away without an answer (its task was
                        // dropped): take the claim back so that this lookup fills.
                        let mut st = self.lock();
                        if matches!(st.index.get(&key), Some(Entry::Filling(r)) if r.same_channel(&rx))
                        {
                            st.index.remove(&key);
                        }
                    }
                    continue;
                }
                Found::Fill(tx, ahead) => (tx, ahead),
            };
            if !counted_miss {
                bump(&self.counters.misses, "cache_misses_total", 1);
            }
            let stored = if ahead.is_empty() {
                let filled = self.fill(io, key).await;
                self.publish(key, filled.as_ref().ok().map(|f| f.slot), tx);
                filled?
            } else {
                self.fill_run(io, key, tx, ahead).await?
            };
            if want_bytes {
                return Ok(Looked::Filled(stored));
            }
            // Loop: the lookup now finds it resident.
            counted_miss = true;
        }
    }

    /// Ends the fill of `key`: resident in `slot`, or (on failure) out of the index;
    /// wakes the requests waiting for it.
    fn publish(&self, key: ChunkKey, slot: Option<u32>, tx: watch::Sender<bool>) {
        let mut st = self.lock();
        match slot {
            Some(slot) => {
                st.index.insert(key, Entry::Resident(slot));
                st.slots[slot as usize].key = Some(key);
                st.policy.insert(key.policy_key());
            }
            None => {
                st.index.remove(&key);
            }
        }
        drop(st);
        let _ = tx.send(true);
    }

    /// Sequential readahead: when `key` misses right after the chunk before it (that
    /// one resident or being filled), the next `readahead` chunks that are absent
    /// (within the volume, at most half the free slots) are claimed for the same fill:
    /// marked filling, so that their readers wait for it instead of fetching them.
    fn claim_readahead(
        &self,
        st: &mut State,
        key: ChunkKey,
    ) -> Vec<(ChunkKey, watch::Sender<bool>)> {
        let want = self.cfg.readahead as u64;
        if want == 0 || key.chunk == 0 {
            return Vec::new();
        }
        let before = ChunkKey {
            volume: key.volume,
            chunk: key.chunk - 1,
        };
        if !st.index.contains_key(&before) {
            return Vec::new();
        }
        let cs = self.cfg.chunk_size;
        let size = self.volumes.get(&key.volume).map_or(0, |v| v.size);
        let room = (st.free.len() / 2) as u64;
        let mut ahead = Vec::new();
        for j in 1..=want.min(room) {
            let next = ChunkKey {
                volume: key.volume,
                chunk: key.chunk + j,
            };
            // Contiguous and absent only: one backend read covers the run.
            if next.chunk * cs >= size || st.index.contains_key(&next) {
                break;
            }
            let (tx, rx) = watch::channel(false);
            st.index.insert(next, Entry::Filling(rx));
            ahead.push((next, tx));
        }
        ahead
    }

    /// Fills `key` and the chunks after it claimed by [`Inner::claim_readahead`] from
    /// one backend read: publishes `key` as soon as it is stored, then stores the
    /// chunks ahead in a task of their own (through the blocking path: the task may
    /// not be on a worker), so the request that missed does not wait for them.
    async fn fill_run<I: BlockIo>(
        self: &Arc<Self>,
        io: &I,
        key: ChunkKey,
        tx: watch::Sender<bool>,
        ahead: Vec<(ChunkKey, watch::Sender<bool>)>,
    ) -> Result<Stored, CacheError> {
        let cs = self.cfg.chunk_size as usize;
        let fail_all = |ahead: Vec<(ChunkKey, watch::Sender<bool>)>, tx| {
            self.publish(key, None, tx);
            for (k, t) in ahead {
                self.publish(k, None, t);
            }
        };
        let slot = match self.allocate().await {
            Ok(slot) => slot,
            Err(e) => {
                fail_all(ahead, tx);
                return Err(e);
            }
        };
        let mut data = match self.fetch(io, key, 1 + ahead.len() as u64).await {
            Ok(d) => d,
            Err(e) => {
                self.release_unwritten(slot);
                fail_all(ahead, tx);
                return Err(e);
            }
        };
        metrics::counter!("cache_readahead_chunks_total").increment(ahead.len() as u64);
        // Split from the back: each chunk's bytes move once.
        let mut parts = Vec::with_capacity(ahead.len());
        for _ in 0..ahead.len() {
            parts.push(data.split_off(data.len() - cs));
        }
        parts.reverse();
        let filled = self.store_chunk(io, slot, key, data).await;
        self.publish(key, filled.as_ref().ok().map(|f| f.slot), tx);
        let inner = self.clone();
        tokio::spawn(async move {
            for ((k, t), bytes) in ahead.into_iter().zip(parts) {
                let stored = match inner.allocate().await {
                    Ok(s) => inner
                        .store_chunk(&Blocking, s, k, bytes)
                        .await
                        .ok()
                        .map(|f| f.slot),
                    Err(_) => None,
                };
                inner.publish(k, stored, t);
            }
        });
        filled
    }

    /// A free slot, evicting a batch when there is none; an error when none could be
    /// freed for [`ALLOCATE_LIMIT`].
    pub(super) async fn allocate(self: &Arc<Self>) -> Result<u32, CacheError> {
        let began = std::time::Instant::now();
        loop {
            if began.elapsed() >= ALLOCATE_LIMIT {
                return Err(CacheError::NoFreeSlot {
                    waited_secs: began.elapsed().as_secs(),
                });
            }
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
            // Waits are bounded: a slot whose fill completed becomes evictable without
            // anything being freed (no notification), so eviction is tried again.
            let held = match self.evict_lock.clone().try_lock_owned() {
                Ok(g) => g,
                Err(_) => {
                    // Someone is evicting: wait for freed slots.
                    let _ = tokio::time::timeout(RETRY_EVICTION, notified).await;
                    continue;
                }
            };
            let n = self.evict_batch(held, self.cfg.eviction_batch).await?;
            if n == 0 {
                // Nothing evictable now (every slot is being filled): wait.
                let _ = tokio::time::timeout(RETRY_EVICTION, notified).await;
            }
        }
    }

    /// Fetches the chunk from the backend into a free slot through `io`, then
    /// publishes its mapping (see the crate docs: a clean chunk's bytes need not be
    /// durable). Returns what it stored.
    pub(super) async fn fill<I: BlockIo>(
        self: &Arc<Self>,
        io: &I,
        key: ChunkKey,
    ) -> Result<Stored, CacheError> {
        let slot = self.allocate().await?;
        match self.fetch(io, key, 1).await {
            Ok(data) => self.store_chunk(io, slot, key, data).await,
            Err(e) => {
                self.release_unwritten(slot);
                Err(e)
            }
        }
    }

    /// `chunks` whole chunks of `key`'s volume from `key` in one backend read (from
    /// the backend's local file through `io` when it has one: see
    /// [`Backend::local_file`](crate::Backend::local_file)).
    async fn fetch<I: BlockIo>(
        &self,
        io: &I,
        key: ChunkKey,
        chunks: u64,
    ) -> Result<Vec<u8>, CacheError> {
        let cs = self.cfg.chunk_size;
        let len = (chunks * cs) as usize;
        let name = self.volume_name(key.volume);
        metrics::counter!("cache_backend_reads_total").increment(1);
        let failed = |source| {
            bump(
                &self.counters.backend_errors,
                "cache_backend_errors_total",
                1,
            );
            CacheError::Backend {
                volume: name.clone(),
                source,
            }
        };
        let read = match self.backend.local_file(&name) {
            Some(file) => io.read_file(&file, key.chunk * cs, len).await,
            None => self.backend.read(&name, key.chunk * cs, len).await,
        };
        match read {
            Ok(d) if d.len() == len => Ok(d),
            Ok(d) => Err(failed(io::Error::other(format!(
                "short read: {} of {len} bytes",
                d.len()
            )))),
            Err(source) => Err(failed(source)),
        }
    }

    /// Writes a fetched chunk into `slot` and records its mapping (not yet in the
    /// index: the caller publishes it). Returns what it stored.
    async fn store_chunk<I: BlockIo>(
        self: &Arc<Self>,
        io: &I,
        slot: u32,
        key: ChunkKey,
        data: Vec<u8>,
    ) -> Result<Stored, CacheError> {
        let cs = self.cfg.chunk_size;
        let instance = self.store.cells[slot as usize].instance();
        if faults::should_crash(CrashPoint::Fill) {
            // A torn fill: half the bytes, no tags, no metadata.
            let _ = self.store.write_torn(slot, &data[..data.len() / 2]);
            let _ = self.store.sync();
            eprintln!("pipewright-cache: crash point fill reached, aborting");
            std::process::abort();
        }
        let cell = &self.store.cells[slot as usize];
        let (written, during) = {
            let _w = WriteGuard::begin(cell);
            let during = cell.seq();
            let r = io
                .write_blocks(&self.store.file, slot, 0, data, instance, key.addr())
                .await;
            (r, during)
        };
        // The fill wrote every block and its CRC itself; if no other write overlapped
        // it, hits under the sequence it ends with need not check the CRCs again.
        let after = cell.seq();
        if written.is_ok() && during % 2 == 1 && after == during + 1 {
            let blocks = (cs / self.cfg.block_size as u64) as u32;
            self.store.verified[slot as usize].mark(after, 0, blocks);
        }
        // No fdatasync here: a clean chunk's bytes need not be durable. After a crash
        // that lost some of them, their tags no longer match (instance or CRC) and the
        // chunk is refetched; the next sync of the file (any acknowledged write's)
        // makes them durable anyway. A clean chunk's mapping may be lost at a crash
        // (the chunk is then refetched); it never names bytes that are not synced.
        let stored = match written {
            Ok(bytes) => {
                // The mapping joins the batch of clean fills (see `meta`): no
                // transaction, no thread hop here.
                let staged = self.meta.stage_clean(
                    slot,
                    ChunkRecord {
                        state: SlotState::Clean,
                        volume: key.volume,
                        chunk: key.chunk,
                        instance,
                        dirty: Vec::new(),
                    },
                );
                if staged >= PUBLISH_BATCH {
                    self.publish_wanted.notify_one();
                }
                Ok(Stored {
                    slot,
                    instance,
                    seq: after,
                    bytes,
                })
            }
            Err(e) => Err(CacheError::Io(e)),
        };
        match stored {
            Ok(stored) => {
                bump(&self.counters.fills, "cache_fills_total", 1);
                bump(&self.counters.fill_bytes, "cache_fill_bytes_total", cs);
                Ok(stored)
            }
            Err(e) => {
                // The slot may hold part of the chunk under its instance id: retire it.
                let _ = self.retire(&[slot]).await;
                Err(e)
            }
        }
    }

    /// Returns a slot nothing was written to.
    pub(super) fn release_unwritten(&self, slot: u32) {
        self.lock().free.push(slot);
        self.free_notify.notify_waiters();
    }

    /// Takes resident chunk `key` out of the index, from `slot`: from now on nobody
    /// finds it there. The slot keeps its instance id until its retirement is durable,
    /// so its write sequence moves now: the memory tier checks its copies against
    /// (instance, sequence) only, and a write of the chunk meanwhile goes to another
    /// slot, for which a copy from this one must not answer.
    pub(super) fn unindex(&self, key: ChunkKey, slot: u32) {
        let mut st = self.lock();
        st.index.remove(&key);
        // Under the lock: whoever finds the chunk gone (and fills it elsewhere) finds
        // the copies already stale.
        self.store.cells[slot as usize].invalidate();
    }

    /// Gives `slots` (already out of the index) new instance ids, durably, and only
    /// then frees them.
    /// Runs to its end once called, even if the caller's future is dropped meanwhile
    /// (the slots are reset at once, and must end free, or in `unretired` if the
    /// commit fails).
    pub(super) async fn retire(self: &Arc<Self>, slots: &[u32]) -> Result<(), CacheError> {
        if slots.is_empty() {
            return Ok(());
        }
        let (inner, slots) = (self.clone(), slots.to_vec());
        super::detached(
            &self.background,
            async move { inner.retire_now(&slots).await },
        )
        .await
    }

    /// [`retire`](Self::retire)'s work, for a caller that already runs as a task of
    /// its own.
    pub(super) async fn retire_now(self: &Arc<Self>, slots: &[u32]) -> Result<(), CacheError> {
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
        if let Err(e) = blocking(move || inner.meta.commit(&recs, Some(next), None, &[])).await {
            // Neither free nor resident: the next eviction retires them again.
            self.lock().unretired.extend_from_slice(slots);
            metrics::counter!("cache_retire_commit_failures_total").increment(1);
            return Err(e);
        }
        bump(
            &self.counters.instance_ids_issued,
            "cache_instance_ids_issued_total",
            records.len() as u64,
        );
        for (slot, rec) in &records {
            self.store.cells[*slot as usize].set_instance(rec.instance);
        }
        // A direct reply that checked a slot's old id before it changed may still be
        // reading or sending the slot's bytes: reuse waits for it (at most a chunk's
        // `preadv2`, its CRCs, one non-blocking `writev` and a copy; see
        // `Cache::send_direct`).
        if !slots.iter().all(|&s| self.store.unpinned(s)) {
            metrics::counter!("cache_retire_pin_waits_total").increment(1);
            while !slots.iter().all(|&s| self.store.unpinned(s)) {
                tokio::task::yield_now().await;
            }
        }
        self.lock().free.extend(slots.iter().copied());
        self.free_notify.notify_waiters();
        Ok(())
    }
}
