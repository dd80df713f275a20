//! Validated block reads: tags checked against the slot's instance id and CRCs, torn
//! reads retried, corrupt clean chunks dropped and refetched.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Verify;
use crate::error::CacheError;
use crate::slot::{check, Verdict};
use crate::stats::bump;
use crate::store::{BlockBuf, BlockIo, ReadBuf};

use super::fill::Looked;
use super::{bit, BlockFault, Cache, ChunkKey, Entry, Inner, VolumeId};

impl Cache {
    /// Reads `len` bytes of `volume` from `offset` through `io`. A read inside one
    /// chunk comes back in the buffer it was read into (with the io_uring path, a
    /// pooled buffer: no copy); a read across chunks is gathered into one vector.
    pub(crate) async fn read_with<I: BlockIo>(
        &self,
        io: &I,
        volume: VolumeId,
        offset: u64,
        len: u64,
    ) -> Result<ReadBuf, CacheError> {
        let inner = &self.inner;
        inner.check_range(volume.0, offset, len)?;
        let cs = inner.cfg.chunk_size;
        let key = |chunk| ChunkKey {
            volume: volume.0,
            chunk,
        };
        if len == 0 {
            return Ok(ReadBuf::from_vec(Vec::new()));
        }
        if offset / cs == (offset + len - 1) / cs {
            return inner
                .read_segment(io, key(offset / cs), offset % cs, len)
                .await;
        }
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let in_chunk = pos % cs;
            let n = (cs - in_chunk).min(end - pos);
            let seg = inner.read_segment(io, key(pos / cs), in_chunk, n).await?;
            out.extend_from_slice(&seg);
            pos += n;
        }
        Ok(ReadBuf::from_vec(out))
    }
}

impl Inner {
    /// Reads blocks `[first, first+count)` of a resident slot through `io` and
    /// validates them.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn read_validated<I: BlockIo>(
        &self,
        io: &I,
        slot: u32,
        instance: u64,
        seq: u64,
        key: ChunkKey,
        first: u32,
        count: u32,
    ) -> Result<BlockBuf, BlockFault> {
        let (buf, tags) = io
            .read_blocks(&self.store.file, slot, first, count)
            .await
            .map_err(BlockFault::Io)?;
        let bs = self.cfg.block_size as usize;
        let cell = &self.store.cells[slot as usize];
        let verified = &self.store.verified[slot as usize];
        // With `Verify::OncePerWrite`, blocks whose checksum passed under this write
        // sequence: their tags' instance ids and the sequence are checked below, the
        // CRC pass is skipped.
        let trusted = self.cfg.verify == Verify::OncePerWrite && verified.covers(seq, first, count);
        let mut worst = None;
        for (i, tag) in tags.iter().enumerate() {
            let b = first + i as u32;
            let ok = if trusted {
                tag.magic_ok
            } else {
                tag.matches(key.addr(), b, &buf[i * bs..(i + 1) * bs])
            };
            match check(instance, tag.instance, ok, cell, seq) {
                Verdict::Valid => {}
                // A tag of another instance while the slot is still on `instance`
                // (ids never come back, so it has not moved): the block's fill was
                // never synced and a crash lost it. Nothing races this: a fill or a
                // write of the slot tags its blocks with `instance` before anyone can
                // read them. The block is damaged, not stale.
                Verdict::Stale if cell.instance() == instance => {
                    if worst.is_none() {
                        worst = Some(BlockFault::Corrupt(b));
                    }
                }
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
            None => {
                if trusted {
                    metrics::counter!("cache_crc_skipped_blocks_total").increment(count as u64);
                } else {
                    verified.mark(seq, first, count);
                }
                Ok(buf)
            }
            Some(f) => Err(f),
        }
    }

    /// Reads `len` bytes from `in_chunk` of chunk `key` through `io`: validated, filled
    /// from the backend first if the chunk is not resident.
    pub(super) async fn read_segment<I: BlockIo>(
        self: &Arc<Self>,
        io: &I,
        key: ChunkKey,
        in_chunk: u64,
        len: u64,
    ) -> Result<ReadBuf, CacheError> {
        let bs = self.cfg.block_size as u64;
        let first = (in_chunk / bs) as u32;
        let last = ((in_chunk + len - 1) / bs) as u32;
        let count = last - first + 1;
        let skip = (in_chunk % bs) as usize;
        let mut io_faults = 0;
        loop {
            let (slot, instance, seq) = match self.lookup_or_fill(io, key, true).await? {
                Looked::Resident(slot, instance, seq) => (slot, instance, seq),
                // This request filled the chunk: served from the bytes it fetched (and
                // stored), which the memory tier may keep under the fill's instance
                // and sequence (see `Stored`).
                Looked::Filled(stored) => {
                    if let Some(mem) = &self.mem {
                        if count == 1 && skip == 0 && len == bs {
                            let blocks = self.cfg.chunk_size / bs;
                            let at = first as usize * bs as usize;
                            mem.insert(
                                key.block_key(blocks, first),
                                stored.slot,
                                stored.instance,
                                stored.seq,
                                &stored.bytes[at..at + bs as usize],
                            );
                        }
                    }
                    return Ok(ReadBuf::new(
                        BlockBuf::Heap(stored.bytes),
                        in_chunk as usize,
                        len as usize,
                    ));
                }
            };
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
            // Eviction and reuse of the slot may race the block read, which the
            // check in `read_validated` catches.
            match self
                .read_validated(io, slot, instance, seq, key, first, count)
                .await
            {
                Ok(buf) => {
                    bump(&self.counters.hits, "cache_hits_total", 1);
                    if let Some(mem) = &self.mem {
                        if count == 1 && skip == 0 && len == bs {
                            // Valid under (slot, instance, seq): the tier may serve
                            // it while those stay (see `memtier`).
                            let blocks = self.cfg.chunk_size / bs;
                            mem.insert(key.block_key(blocks, first), slot, instance, seq, &buf);
                        }
                    }
                    return Ok(ReadBuf::new(buf, skip, len as usize));
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
                Err(BlockFault::Io(e)) => {
                    // A bad sector, or a short cache file: a clean chunk is fetched
                    // again, like a corrupt one (once; a second failure is reported).
                    // Dirty blocks have no other copy: their error stands.
                    let dirty_in_range = {
                        let st = self.lock();
                        let still =
                            matches!(st.index.get(&key), Some(Entry::Resident(s)) if *s == slot);
                        !still
                            || (first..first + count)
                                .any(|b| bit(&st.slots[slot as usize].dirty, b))
                    };
                    io_faults += 1;
                    if dirty_in_range || io_faults > 1 {
                        return Err(e.into());
                    }
                    bump(&self.counters.io_refetches, "cache_io_refetches_total", 1);
                    self.drop_corrupt(key, slot, instance, first).await?;
                }
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
        self.unindex(key, slot);
        self.lock().policy.remove(key.policy_key());
        self.retire(&[slot]).await
    }
}
