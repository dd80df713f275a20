//! Block writes: whole-block merges, durable dirty state before the bytes (write-back)
//! or the backend written and synced before the acknowledgement (write-through).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use crate::config::WriteMode;
use crate::error::CacheError;
use crate::meta::{ChunkRecord, SlotState};
use crate::stats::bump;
use crate::store::{BlockIo, WriteGuard};

use super::{bit, blocking, set_bit, BlockFault, Cache, ChunkKey, Entry, Inner, VolumeId};

impl Cache {
    /// Writes `data` at `offset` of `volume` through `io`; returns once the write is
    /// acknowledged under the configured write mode.
    pub(crate) async fn write_with<I: BlockIo>(
        &self,
        io: &I,
        volume: VolumeId,
        offset: u64,
        data: Cow<'_, [u8]>,
    ) -> Result<(), CacheError> {
        let inner = &self.inner;
        inner.check_range(volume.0, offset, data.len() as u64)?;
        let cs = inner.cfg.chunk_size;
        if !data.is_empty() && offset / cs == (offset + data.len() as u64 - 1) / cs {
            // Inside one chunk: the caller's buffer goes on to the store as it is
            // (no copy when it is whole blocks).
            let key = ChunkKey {
                volume: volume.0,
                chunk: offset / cs,
            };
            inner.write_segment(io, key, offset % cs, data).await?;
            bump(&inner.counters.writes, "cache_writes_total", 1);
            return Ok(());
        }
        let mut pos = offset;
        let mut rest = &data[..];
        while !rest.is_empty() {
            let in_chunk = pos % cs;
            let n = ((cs - in_chunk) as usize).min(rest.len());
            let key = ChunkKey {
                volume: volume.0,
                chunk: pos / cs,
            };
            inner
                .write_segment(io, key, in_chunk, Cow::Borrowed(&rest[..n]))
                .await?;
            pos += n as u64;
            rest = &rest[n..];
        }
        bump(&inner.counters.writes, "cache_writes_total", 1);
        Ok(())
    }
}

impl Inner {
    /// Writes `data` at `in_chunk` of chunk `key` through `io` (filled first if it is
    /// not resident); returns once acknowledged under the write mode.
    pub(super) async fn write_segment<I: BlockIo>(
        self: &Arc<Self>,
        io: &I,
        key: ChunkKey,
        in_chunk: u64,
        mut data: Cow<'_, [u8]>,
    ) -> Result<(), CacheError> {
        let bs = self.cfg.block_size as u64;
        let first = (in_chunk / bs) as u32;
        let last = ((in_chunk + data.len() as u64 - 1) / bs) as u32;
        let count = last - first + 1;
        loop {
            let (slot, instance, _) = self.lookup(io, key).await?;
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
                // Taken only here: from this point on the loop never goes round again.
                std::mem::take(&mut data).into_owned()
            } else {
                let seq = cell.seq();
                let mut existing = match self
                    .read_validated(io, slot, instance, seq, key, first, count)
                    .await
                {
                    Ok(buf) => buf.into_vec(),
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
                };
                existing[start..start + data.len()].copy_from_slice(&data);
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
            let bytes = {
                let _w = WriteGuard::begin(cell);
                io.write_blocks(
                    &self.store.file,
                    slot,
                    first,
                    std::mem::take(&mut buf),
                    instance,
                    key.addr(),
                )
                .await?
            };
            io.sync(&self.store.file).await?;
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
