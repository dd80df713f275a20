//! Validated block reads: tags checked against the slot's instance id and CRCs, torn
//! reads retried, corrupt clean chunks dropped and refetched.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::error::CacheError;
use crate::slot::{check, Verdict};
use crate::stats::bump;

use super::{bit, BlockFault, ChunkKey, Entry, Inner};

impl Inner {
    /// Reads blocks `[first, first+count)` of a resident slot and validates them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_validated(
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

    pub(super) async fn read_segment(
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
    pub(super) async fn drop_corrupt(
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
}
