//! Write-back: dirty blocks to the backend, the backend synced, then the slot recorded
//! clean; the background flusher.

use std::io;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::error::CacheError;
use crate::faults::{self, CrashPoint};
use crate::meta::{ChunkRecord, SlotState};
use crate::stats::bump;
use crate::store::Blocking;

use super::{bit, blocking, BlockFault, Inner};

impl Inner {
    /// Writes a slot's dirty blocks to the backend, syncs the backend, then records
    /// the slot clean. The caller holds the slot's lock.
    pub(super) async fn flush_slot_locked(self: &Arc<Self>, slot: u32) -> Result<u64, CacheError> {
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
            let seq = self.store.cells[slot as usize].seq();
            // Write-back runs on the blocking path: the flusher and the evictor are
            // not on a worker, and a fill evicting inline must stay `Send`-agnostic.
            let buf = match self
                .read_validated(&Blocking, slot, instance, seq, key, start, b - start)
                .await
            {
                Ok(buf) => buf.into_vec(),
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
            };
            let off = key.chunk * self.cfg.chunk_size + start as u64 * bs;
            // Whole blocks are cached; the volume's last one may be partial: never write
            // past its end (a file volume would grow, and export another size).
            let mut buf = buf;
            if let Some(v) = self.volumes.get(&key.volume) {
                let room = v.size.saturating_sub(off);
                if (buf.len() as u64) > room {
                    buf.truncate(room as usize);
                }
            }
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
    pub(super) async fn flush_older_than(
        self: &Arc<Self>,
        age: Option<Duration>,
    ) -> Result<(), CacheError> {
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
}

pub(super) async fn flusher(inner: Weak<Inner>, deadline: Duration) {
    let period = (deadline / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.is_closed() {
            return;
        }
        if let Err(e) = inner.flush_older_than(Some(deadline / 2)).await {
            eprintln!("pipewright-cache: write-back failed (will retry): {e}");
        }
    }
}
