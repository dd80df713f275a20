//! Lookup with single-flight fills from the backend, slot allocation, and the
//! retirement of slots under new instance ids.

use std::io;
use std::sync::Arc;

use tokio::sync::watch;

use crate::error::CacheError;
use crate::faults::{self, CrashPoint};
use crate::meta::{ChunkRecord, SlotState};
use crate::stats::bump;
use crate::store::{BlockIo, WriteGuard};

use super::{blocking, ChunkKey, Entry, Inner, SlotInfo};

impl Inner {
    /// Resident: `(slot, instance, seq)`. Absent: this call fills it (single flight).
    pub(super) async fn lookup<I: BlockIo>(
        self: &Arc<Self>,
        io: &I,
        key: ChunkKey,
    ) -> Result<(u32, u64, u64), CacheError> {
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
            let filled = self.fill(io, key).await;
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
    pub(super) async fn allocate(self: &Arc<Self>) -> Result<u32, CacheError> {
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

    /// Fetches the chunk from the backend into a free slot through `io`, then
    /// publishes its mapping (see the crate docs: a clean chunk's bytes need not be
    /// durable).
    pub(super) async fn fill<I: BlockIo>(
        self: &Arc<Self>,
        io: &I,
        key: ChunkKey,
    ) -> Result<u32, CacheError> {
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
        if faults::should_crash(CrashPoint::Fill) {
            // A torn fill: half the bytes, no tags, no metadata.
            let _ = self.store.write_torn(slot, &data[..data.len() / 2]);
            let _ = self.store.sync();
            eprintln!("pipewright-cache: crash point fill reached, aborting");
            std::process::abort();
        }
        let written = {
            let _w = WriteGuard::begin(&self.store.cells[slot as usize]);
            io.write_blocks(&self.store.file, slot, 0, data, instance, key.addr())
                .await
        };
        // No fdatasync here: a clean chunk's bytes need not be durable. After a crash
        // that lost some of them, their tags no longer match (instance or CRC) and the
        // chunk is refetched; the next sync of the file (any acknowledged write's)
        // makes them durable anyway. A clean chunk's mapping may be lost at a crash
        // (the chunk is then refetched); it never names bytes that are not synced.
        let stored = match written {
            Ok(_) => {
                let inner = self.clone();
                blocking(move || {
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
                .await
            }
            Err(e) => Err(CacheError::Io(e)),
        };
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
    pub(super) fn release_unwritten(&self, slot: u32) {
        self.lock().free.push(slot);
        self.free_notify.notify_waiters();
    }

    /// Gives `slots` (already out of the index) new instance ids, durably, and only
    /// then frees them.
    pub(super) async fn retire(self: &Arc<Self>, slots: &[u32]) -> Result<(), CacheError> {
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
}
