//! Opening the engine: the cache file and metadata come back warm.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::backend::{Backend, VolumeInfo};
use crate::config::CacheConfig;
use crate::error::CacheError;
use crate::meta::{ChunkRecord, MetaStore, SlotState};
use crate::stats::{bump, Counters};
use crate::store::{ChunkStore, Geometry};

use crate::memtier::MemTier;

use super::{ChunkKey, Entry, Inner, SlotInfo, State, Volume};

impl Inner {
    pub(super) fn open(
        cfg: CacheConfig,
        backend: Arc<dyn Backend>,
        vols: Vec<VolumeInfo>,
    ) -> Result<Inner, CacheError> {
        let geometry = Geometry {
            chunks: cfg.chunks,
            chunk_size: cfg.chunk_size,
            block_size: cfg.block_size,
        };
        let meta = MetaStore::open(&cfg.meta_path())?;
        let loaded = meta.load()?;
        let unflushed = loaded
            .records
            .iter()
            .filter(|(_, r)| r.as_ref().is_some_and(ChunkRecord::is_dirty))
            .count();
        let (store, _formatted) = ChunkStore::open(&cfg.cache_file, geometry, unflushed)?;
        if unflushed > 0 && loaded.nonce != Some(store.nonce) {
            return Err(CacheError::UnflushedWritesUnreachable {
                chunks: unflushed,
                where_: format!(
                    "in another cache file than {} (the metadata names another one)",
                    cfg.cache_file.display()
                ),
                what_to_do: "open with the cache file these writes are in, or move the .meta \
                             directory away to start empty and discard them"
                    .into(),
            });
        }
        let counters = Counters::default();
        // Volume ids are durable: a volume keeps its id across restarts.
        let mut by_name: FxHashMap<String, u32> = loaded.volumes.iter().cloned().collect();
        let mut new_vols = Vec::new();
        let mut next_vol = by_name.values().copied().max().map_or(1, |m| m + 1);
        let mut volumes = FxHashMap::default();
        for v in vols {
            // Block keys hold a volume's block index in 44 bits.
            let blocks = v.size.div_ceil(u64::from(cfg.block_size));
            if blocks >= 1 << 44 {
                return Err(CacheError::Config(format!(
                    "volume {:?} of {} bytes has more than 2^44 blocks of {} bytes, more than the \
                     cache can address: use a larger block size",
                    v.name, v.size, cfg.block_size
                )));
            }
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
        // Unflushed writes of volumes the backend no longer lists would be dropped below.
        let mut missing: FxHashMap<u32, usize> = FxHashMap::default();
        for (_, r) in &loaded.records {
            if let Some(r) = r.as_ref().filter(|r| r.is_dirty()) {
                if !volumes.contains_key(&r.volume) {
                    *missing.entry(r.volume).or_default() += 1;
                }
            }
        }
        if !missing.is_empty() {
            let names: Vec<String> = by_name
                .iter()
                .filter(|(_, id)| missing.contains_key(id))
                .map(|(name, id)| format!("{name:?} ({} chunks)", missing[id]))
                .collect();
            return Err(CacheError::UnflushedWritesUnreachable {
                chunks: missing.values().sum(),
                where_: format!("of volumes the backend does not list: {}", names.join(", ")),
                what_to_do: "check --backend (path or bucket) and that these volumes exist \
                             there, then open again; the writes are kept until then"
                    .into(),
            });
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
        let mem = MemTier::new(cfg.memory_bytes, cfg.block_size, cfg.policy);
        let direct = if cfg.direct_hits {
            // Buffers for direct hits, as many as the pipeline's small class (a reply
            // holds its buffer until the socket took it; past them, heap buffers).
            let (size, count) = crate::store::pool_classes(cfg.chunk_size)[0];
            Some(pipewright_runtime::uring::BufferPool::new(count, size)?)
        } else {
            None
        };
        Ok(Inner {
            direct,
            mem,
            state: Mutex::new(State {
                index,
                slots,
                free,
                unretired: Vec::new(),
                policy,
                next_instance,
            }),
            cfg,
            store,
            meta,
            backend,
            slot_locks,
            evict_lock: Arc::new(tokio::sync::Mutex::new(())),
            background: tokio::runtime::Handle::current(),
            free_notify: Notify::new(),
            evict_wanted: Arc::new(Notify::new()),
            publish_wanted: Arc::new(Notify::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            counters,
            volumes,
            by_name,
        })
    }
}
