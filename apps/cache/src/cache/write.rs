//! Block writes: whole-block merges, durable dirty state before the bytes (write-back)
//! or the backend written and synced before the acknowledgement (write-through).

use std::sync::Arc;
use std::time::Instant;

use crate::config::WriteMode;
use crate::error::CacheError;
use crate::meta::{ChunkRecord, SlotState};
use crate::stats::bump;

use super::{bit, blocking, set_bit, BlockFault, ChunkKey, Entry, Inner};

impl Inner {
    pub(super) async fn write_segment(
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
}
