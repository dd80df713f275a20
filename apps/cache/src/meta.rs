//! Metadata storage in `redb`: chunk slot → (state, volume, chunk, instance id, dirty
//! blocks), the volume ids, and the instance-id counter.
//!
//! Every record carries its own CRC-32C on top of redb's page checksums, so a damaged
//! record is detected, counted and its slot dropped (given a fresh instance id) rather
//! than trusted.
//!
//! # Which commits are durable, and why
//!
//! - [`MetaStore::commit`] (redb's immediate durability: it returns once the
//!   transaction is on disk) for everything correctness rests on: a retired slot's new
//!   instance id (durable **before** the slot is reused, so that no record can ever
//!   name a slot's earlier life after a crash), a dirty-block set (durable before the
//!   write is acknowledged), the clean state after a flush (durable before the slot
//!   may be retired), the nonce and the volume ids.
//! - [`MetaStore::stage_clean`] for a **clean fill**'s mapping: the record only joins
//!   an in-memory batch. Losing it costs a refetch, never data: the slot's durable
//!   record still says free (under the id it was freed with, which the next open
//!   replaces by a fresh one), so the blocks the fill wrote can never match. The batch
//!   reaches redb with the next transaction of any kind (every commit takes the
//!   batch first, under one lock, so a later record of the same slot, e.g. its
//!   retirement, always lands after it), or through [`MetaStore::publish`], which the
//!   cache's publisher task calls for bursts of fills: one write transaction per
//!   burst, non-durable (no fsync; redb makes it durable with the next durable commit)
//!   except at most once per [`DURABLE_EVERY`], so that a warm restart keeps what was
//!   filled before that and redb can reuse the pages non-durable commits freed.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use redb::{Database, ReadableTable, TableDefinition};

use crate::error::CacheError;

const CHUNKS: TableDefinition<'_, u32, &[u8]> = TableDefinition::new("chunks");
const VOLUMES: TableDefinition<'_, &str, u32> = TableDefinition::new("volumes");
const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters");
const NEXT_INSTANCE: &str = "next_instance";
const NONCE: &str = "nonce";

/// A slot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Free = 0,
    Clean = 1,
    Dirty = 2,
}

/// One slot's durable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkRecord {
    pub(crate) state: SlotState,
    pub(crate) volume: u32,
    pub(crate) chunk: u64,
    pub(crate) instance: u64,
    /// Dirty blocks, one bit each.
    pub(crate) dirty: Vec<u64>,
}

impl ChunkRecord {
    /// Holds a chunk with blocks not yet written back.
    pub(crate) fn is_dirty(&self) -> bool {
        self.state != SlotState::Free && self.dirty.iter().any(|w| *w != 0)
    }

    pub(crate) fn free(instance: u64) -> Self {
        Self {
            state: SlotState::Free,
            volume: 0,
            chunk: 0,
            instance,
            dirty: Vec::new(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(25 + self.dirty.len() * 8 + 4);
        b.push(self.state as u8);
        b.extend_from_slice(&self.volume.to_le_bytes());
        b.extend_from_slice(&self.chunk.to_le_bytes());
        b.extend_from_slice(&self.instance.to_le_bytes());
        b.extend_from_slice(&(self.dirty.len() as u32).to_le_bytes());
        for w in &self.dirty {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let crc = crc_fast::crc32_iscsi(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 29 {
            return None;
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc_fast::crc32_iscsi(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let state = match body[0] {
            0 => SlotState::Free,
            1 => SlotState::Clean,
            2 => SlotState::Dirty,
            _ => return None,
        };
        let volume = u32::from_le_bytes(body[1..5].try_into().ok()?);
        let chunk = u64::from_le_bytes(body[5..13].try_into().ok()?);
        let instance = u64::from_le_bytes(body[13..21].try_into().ok()?);
        let n = u32::from_le_bytes(body[21..25].try_into().ok()?) as usize;
        if body.len() != 25 + n * 8 {
            return None;
        }
        let dirty = body[25..]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        Some(Self {
            state,
            volume,
            chunk,
            instance,
            dirty,
        })
    }
}

/// What the metadata store held at open.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) nonce: Option<u64>,
    pub(crate) next_instance: u64,
    pub(crate) volumes: Vec<(String, u32)>,
    /// Slot → record, or `None` for a record that failed its checksum.
    pub(crate) records: Vec<(u32, Option<ChunkRecord>)>,
}

/// How often at most a batch of clean fills is published with a durable commit (the
/// others are non-durable).
pub(crate) const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// redb's page cache: the records are small (about 40 bytes a slot), so a few MiB
/// hold the hot part of the tree; redb's default (1 GiB) would grow the heap by
/// kilobytes per cached chunk.
const REDB_CACHE_BYTES: usize = 8 << 20;

/// The redb database, and the batch of clean fills not yet in a transaction.
#[derive(Debug)]
pub(crate) struct MetaStore {
    db: Database,
    /// Clean fills' records, slot → record (the latest wins).
    staged: Mutex<FxHashMap<u32, ChunkRecord>>,
    /// Held from taking the batch to the end of the commit: transactions apply in
    /// the order their records were made (see the module docs). The time of the last
    /// durable commit.
    commit_lock: Mutex<Instant>,
    /// Tests: this many of the next transactions fail as a full disk would.
    #[cfg(test)]
    pub(crate) fail_next: std::sync::atomic::AtomicU32,
}

impl MetaStore {
    pub(crate) fn open(path: &Path) -> Result<Self, CacheError> {
        let db = redb::Builder::new()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(path)
            .map_err(CacheError::meta)?;
        let tx = db.begin_write().map_err(CacheError::meta)?;
        {
            tx.open_table(CHUNKS).map_err(CacheError::meta)?;
            tx.open_table(VOLUMES).map_err(CacheError::meta)?;
            tx.open_table(COUNTERS).map_err(CacheError::meta)?;
        }
        tx.commit().map_err(CacheError::meta)?;
        Ok(Self {
            db,
            staged: Mutex::new(FxHashMap::default()),
            commit_lock: Mutex::new(Instant::now()),
            #[cfg(test)]
            fail_next: Default::default(),
        })
    }

    /// Adds a clean fill's record to the batch (no I/O); returns the batch's size.
    pub(crate) fn stage_clean(&self, slot: u32, rec: ChunkRecord) -> usize {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        staged.insert(slot, rec);
        staged.len()
    }

    /// Records in the batch.
    pub(crate) fn staged(&self) -> usize {
        self.staged.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Commits the batch of clean fills, if any: non-durable unless the last durable
    /// commit is [`DURABLE_EVERY`] old (or `durable`). Returns how many records it
    /// committed.
    pub(crate) fn publish(&self, durable: bool) -> Result<usize, CacheError> {
        self.commit_with(&[], None, None, &[], durable, true)
    }

    pub(crate) fn load(&self) -> Result<Loaded, CacheError> {
        let tx = self.db.begin_read().map_err(CacheError::meta)?;
        let counters = tx.open_table(COUNTERS).map_err(CacheError::meta)?;
        let mut loaded = Loaded {
            nonce: counters
                .get(NONCE)
                .map_err(CacheError::meta)?
                .map(|v| v.value()),
            next_instance: counters
                .get(NEXT_INSTANCE)
                .map_err(CacheError::meta)?
                .map_or(1, |v| v.value()),
            ..Loaded::default()
        };
        let volumes = tx.open_table(VOLUMES).map_err(CacheError::meta)?;
        for row in volumes.iter().map_err(CacheError::meta)? {
            let (k, v) = row.map_err(CacheError::meta)?;
            loaded.volumes.push((k.value().to_string(), v.value()));
        }
        let chunks = tx.open_table(CHUNKS).map_err(CacheError::meta)?;
        for row in chunks.iter().map_err(CacheError::meta)? {
            let (k, v) = row.map_err(CacheError::meta)?;
            loaded
                .records
                .push((k.value(), ChunkRecord::decode(v.value())));
        }
        Ok(loaded)
    }

    /// One durable transaction: these slot records, optionally the instance counter,
    /// the nonce and new volume ids.
    pub(crate) fn commit(
        &self,
        records: &[(u32, ChunkRecord)],
        next_instance: Option<u64>,
        nonce: Option<u64>,
        volumes: &[(String, u32)],
    ) -> Result<(), CacheError> {
        // Only the commits of records (not the publisher's lazy batches) fail on
        // purpose, so that a test knows which commit it makes fail.
        #[cfg(test)]
        if self
            .fail_next
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok()
        {
            return Err(CacheError::Meta("injected commit failure".into()));
        }
        self.commit_with(records, next_instance, nonce, volumes, true, false)
            .map(drop)
    }

    /// One transaction: the batch of clean fills first, then `records` (a later record
    /// of a slot overrides its staged one). With `lazy`, only when there is a batch,
    /// and non-durable unless `durable` or [`DURABLE_EVERY`] has passed.
    fn commit_with(
        &self,
        records: &[(u32, ChunkRecord)],
        next_instance: Option<u64>,
        nonce: Option<u64>,
        volumes: &[(String, u32)],
        durable: bool,
        lazy: bool,
    ) -> Result<usize, CacheError> {
        let mut last_durable = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let staged = std::mem::take(&mut *self.staged.lock().unwrap_or_else(|e| e.into_inner()));
        if lazy && staged.is_empty() {
            return Ok(0);
        }
        let durable = durable || !lazy || last_durable.elapsed() >= DURABLE_EVERY;
        let n = staged.len();
        let result = self.transaction(&staged, records, next_instance, nonce, volumes, durable);
        match result {
            Ok(()) => {
                if durable {
                    *last_durable = Instant::now();
                }
                Ok(n)
            }
            Err(e) => {
                // Put the batch back (records staged since then are newer: keep them).
                let mut now = self.staged.lock().unwrap_or_else(|e| e.into_inner());
                for (slot, rec) in staged {
                    now.entry(slot).or_insert(rec);
                }
                Err(e)
            }
        }
    }

    fn transaction(
        &self,
        staged: &FxHashMap<u32, ChunkRecord>,
        records: &[(u32, ChunkRecord)],
        next_instance: Option<u64>,
        nonce: Option<u64>,
        volumes: &[(String, u32)],
        durable: bool,
    ) -> Result<(), CacheError> {
        let mut tx = self.db.begin_write().map_err(CacheError::meta)?;
        if !durable {
            tx.set_durability(redb::Durability::None);
        }
        {
            let mut chunks = tx.open_table(CHUNKS).map_err(CacheError::meta)?;
            for (slot, rec) in staged
                .iter()
                .filter(|(s, _)| !records.iter().any(|(r, _)| r == *s))
            {
                chunks
                    .insert(*slot, rec.encode().as_slice())
                    .map_err(CacheError::meta)?;
            }
            for (slot, rec) in records {
                chunks
                    .insert(*slot, rec.encode().as_slice())
                    .map_err(CacheError::meta)?;
            }
            let mut counters = tx.open_table(COUNTERS).map_err(CacheError::meta)?;
            if let Some(n) = next_instance {
                counters
                    .insert(NEXT_INSTANCE, n)
                    .map_err(CacheError::meta)?;
            }
            if let Some(n) = nonce {
                counters.insert(NONCE, n).map_err(CacheError::meta)?;
            }
            let mut vols = tx.open_table(VOLUMES).map_err(CacheError::meta)?;
            for (name, id) in volumes {
                vols.insert(name.as_str(), *id).map_err(CacheError::meta)?;
            }
        }
        crate::faults::reached(crate::faults::CrashPoint::MetaCommit);
        tx.commit().map_err(CacheError::meta)
    }

    /// Overwrites a slot's record with garbage (for tests of the record checksum).
    pub(crate) fn corrupt_record(&self, slot: u32) -> Result<(), CacheError> {
        // The record must be in redb to be damaged there.
        self.publish(true)?;
        let tx = self.db.begin_write().map_err(CacheError::meta)?;
        {
            let mut chunks = tx.open_table(CHUNKS).map_err(CacheError::meta)?;
            let mut bytes = match chunks.get(slot).map_err(CacheError::meta)? {
                Some(v) => v.value().to_vec(),
                None => return Ok(()),
            };
            bytes[3] ^= 0xff;
            chunks
                .insert(slot, bytes.as_slice())
                .map_err(CacheError::meta)?;
        }
        tx.commit().map_err(CacheError::meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip_and_any_flip_is_caught(
            state in 0u8..3, volume: u32, chunk: u64, instance: u64,
            dirty in prop::collection::vec(any::<u64>(), 0..5), flip in any::<prop::sample::Index>(),
        ) {
            let rec = ChunkRecord {
                state: [SlotState::Free, SlotState::Clean, SlotState::Dirty][state as usize],
                volume, chunk, instance, dirty,
            };
            let mut b = rec.encode();
            prop_assert_eq!(ChunkRecord::decode(&b), Some(rec));
            let i = flip.index(b.len());
            b[i] ^= 0x01;
            prop_assert_eq!(ChunkRecord::decode(&b), None);
        }

        #[test]
        fn garbage_never_panics(b in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = ChunkRecord::decode(&b);
        }
    }
}
