//! The memory tier: copies of hot whole blocks in memory, in front of the chunk store,
//! under the same instance-id protocol as the blocks on disk.
//!
//! A block enters the tier only from a disk read that passed the instance-id check
//! ([`check`](crate::slot::check) gave `Valid`), together with what that check saw:
//! the slot, its instance id and its write sequence; or from the fill that stored it,
//! with the slot's instance id and its write sequence right after the fill's write,
//! taken before the chunk is published (no other write can reach the slot before). The tier serves the copy only
//! while the slot is still on that instance **and** its write sequence has not moved:
//! every write into a slot moves its sequence (before the write starts) and every
//! eviction gives the slot a new instance id (before the slot is reused), so a copy
//! the tier serves is exactly what a disk read of the block would return at that
//! moment. A copy that fails the check is dropped. Nothing in the tier is durable: a
//! restart starts it empty.
//!
//! Its size is a byte budget ([`CacheConfig::memory_bytes`](crate::CacheConfig)),
//! counted as block bytes plus the key, like foyer's byte weigher; its eviction
//! policy is the cache's ([`PolicyKind`](crate::PolicyKind)). Serving from it needs no
//! I/O and no trip through the request pipeline: [`PathService`](crate::pipeline::PathService)
//! answers such reads in the caller's task.

use rustc_hash::FxHashMap;

use crate::policy::{EvictionPolicy, PolicyKind};
use crate::slot::SlotCell;
use crate::sync::{Mutex, MutexGuard};

/// One block copy and the check it passed.
#[derive(Debug)]
struct Copy {
    slot: u32,
    instance: u64,
    seq: u64,
    data: Box<[u8]>,
}

#[derive(Debug)]
struct Tier {
    map: FxHashMap<u64, Copy>,
    policy: Box<dyn EvictionPolicy>,
}

/// The memory tier (see the module docs).
#[derive(Debug)]
pub(crate) struct MemTier {
    tier: Mutex<Tier>,
    capacity: usize,
}

/// What a lookup in the tier found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MemLookup {
    /// A valid copy of the block.
    Hit(Vec<u8>),
    /// No copy (or an invalid one, now dropped).
    Miss,
}

impl MemTier {
    /// A tier of `bytes` for blocks of `block_size` bytes; `None` when the budget holds
    /// no block.
    pub(crate) fn new(bytes: u64, block_size: u32, policy: PolicyKind) -> Option<Self> {
        let capacity = (bytes / (block_size as u64 + 8)) as usize;
        if capacity == 0 {
            return None;
        }
        Some(Self {
            tier: Mutex::new(Tier {
                map: FxHashMap::default(),
                policy: policy.build(capacity),
            }),
            capacity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tier> {
        self.tier.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The copy of block `key`, if the tier holds one that is still valid against
    /// `cells` (the chunk store's slot cells); an invalid copy is dropped. A miss is
    /// remembered by the policy (as S3-FIFO's ghost does).
    pub(crate) fn get(&self, key: u64, cells: &[SlotCell]) -> MemLookup {
        let mut t = self.lock();
        let valid = match t.map.get(&key) {
            None => {
                t.policy.lookup(key);
                return MemLookup::Miss;
            }
            Some(c) => {
                let cell = &cells[c.slot as usize];
                cell.instance() == c.instance && cell.seq() == c.seq
            }
        };
        if valid {
            t.policy.lookup(key);
            let data = t.map.get(&key).map(|c| c.data.to_vec()).unwrap_or_default();
            MemLookup::Hit(data)
        } else {
            t.map.remove(&key);
            t.policy.remove(key);
            MemLookup::Miss
        }
    }

    /// Whether the tier holds a copy of `key` (valid or not).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn contains(&self, key: u64) -> bool {
        self.lock().map.contains_key(&key)
    }

    /// Keeps a copy of block `key`, read from `slot` under `instance` at write
    /// sequence `seq` and found valid; evicts by the policy to stay in budget.
    pub(crate) fn insert(&self, key: u64, slot: u32, instance: u64, seq: u64, data: &[u8]) {
        let copy = Copy {
            slot,
            instance,
            seq,
            data: data.into(),
        };
        let mut t = self.lock();
        if let Some(old) = t.map.get_mut(&key) {
            *old = copy;
            return;
        }
        while t.map.len() >= self.capacity {
            match t.policy.evict() {
                Some(victim) => {
                    t.map.remove(&victim);
                }
                None => break,
            }
        }
        t.map.insert(key, copy);
        t.policy.insert(key);
    }

    /// Copies held.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cells(n: usize) -> Vec<SlotCell> {
        (0..n).map(|i| SlotCell::new(100 + i as u64)).collect()
    }

    #[test]
    fn a_copy_is_served_only_while_its_slot_is_unchanged() {
        let cells = cells(2);
        let tier = MemTier::new(4 * (4096 + 8), 4096, PolicyKind::S3Fifo).unwrap();
        tier.insert(7, 1, 101, cells[1].seq(), &[1u8; 4096]);
        assert_eq!(tier.get(7, &cells), MemLookup::Hit(vec![1u8; 4096]));
        // A write into the slot moves its sequence: the copy is dropped.
        cells[1].begin_write();
        cells[1].end_write();
        assert_eq!(tier.get(7, &cells), MemLookup::Miss);
        assert!(!tier.contains(7));
        // A new instance (eviction) drops it too.
        tier.insert(8, 0, 100, cells[0].seq(), &[2u8; 4096]);
        cells[0].set_instance(500);
        assert_eq!(tier.get(8, &cells), MemLookup::Miss);
        assert_eq!(tier.len(), 0);
    }

    #[test]
    fn no_budget_no_tier() {
        assert!(MemTier::new(4000, 4096, PolicyKind::Lru).is_none());
    }

    proptest! {
        /// Whatever the sequence of inserts, lookups, writes and evictions: the tier
        /// stays within its budget and a hit always returns the bytes the slot its copy
        /// came from holds now (a copy of an earlier write or instance is never served).
        #[test]
        fn hits_are_always_current(
            ops in proptest::collection::vec((0u8..4, 0u64..32, 0u32..4), 1..400),
            policy in prop::sample::select(PolicyKind::ALL.to_vec()),
        ) {
            let cells = cells(4);
            // What each slot holds now: a version that moves with every write and instance.
            let mut version = [0u64; 4];
            let mut from_slot = std::collections::HashMap::new();
            let tier = MemTier::new(8 * (4096 + 8), 4096, policy).unwrap();
            let bytes = |v: u64, key: u64| {
                let mut b = vec![0u8; 4096];
                b[..8].copy_from_slice(&v.to_le_bytes());
                b[8..16].copy_from_slice(&key.to_le_bytes());
                b
            };
            for (op, key, slot) in ops {
                let s = slot as usize;
                match op {
                    0 => {
                        tier.insert(key, slot, cells[s].instance(), cells[s].seq(), &bytes(version[s], key));
                        from_slot.insert(key, s);
                    }
                    1 => {
                        if let MemLookup::Hit(d) = tier.get(key, &cells) {
                            prop_assert_eq!(d, bytes(version[from_slot[&key]], key));
                        }
                    }
                    2 => {
                        cells[s].begin_write();
                        version[s] += 1;
                        cells[s].end_write();
                    }
                    _ => {
                        cells[s].set_instance(cells[s].instance() + 1000);
                        version[s] += 1;
                    }
                }
                prop_assert!(tier.len() <= 8);
            }
        }
    }
}

/// The tier's admission racing a write, model-checked
/// (`RUSTFLAGS="--cfg loom" cargo test -p pipewright-cache --release --lib memtier::loom`).
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::Arc;

    use super::*;
    use crate::slot::{check, Verdict};

    const I1: u64 = 1;
    const KEY: u64 = 7;
    const OLD: u64 = 0xA;
    const NEW: u64 = 0xB;

    /// One slot holding block `KEY` (bytes `OLD`, the "disk" an atomic). A reader reads
    /// the block as the read path does (write sequence, then bytes, then the check)
    /// and admits it to the tier when the check passes; meanwhile a writer writes
    /// `NEW` into the slot, moving its sequence around the write. Once the write is
    /// done, the tier must never serve `OLD`. `seq_after_read` is the deliberate bug:
    /// the sequence taken after the bytes instead of before.
    fn admission_races_a_write(seq_after_read: bool) {
        loom::model(move || {
            let cells = Arc::new(vec![SlotCell::new(I1)]);
            let disk = Arc::new(AtomicU64::new(OLD));
            let tier = Arc::new(MemTier::new(4 * 16, 8, PolicyKind::Lru).expect("room"));
            let writer = {
                let (cells, disk) = (cells.clone(), disk.clone());
                loom::thread::spawn(move || {
                    cells[0].begin_write();
                    disk.store(NEW, Ordering::SeqCst);
                    cells[0].end_write();
                })
            };
            let instance = cells[0].instance();
            let mut seq = cells[0].seq();
            let data = disk.load(Ordering::SeqCst);
            if seq_after_read {
                seq = cells[0].seq();
            }
            if check(instance, I1, true, &cells[0], seq) == Verdict::Valid {
                tier.insert(KEY, 0, instance, seq, &data.to_le_bytes());
            }
            writer.join().expect("writer");
            if let MemLookup::Hit(bytes) = tier.get(KEY, &cells) {
                assert_eq!(
                    bytes,
                    NEW.to_le_bytes(),
                    "the tier served a block older than the last write"
                );
            }
        });
    }

    #[test]
    fn a_copy_admitted_during_a_write_is_never_served_after_it() {
        admission_races_a_write(false);
    }

    #[test]
    #[should_panic(expected = "older than the last write")]
    fn the_model_catches_a_sequence_taken_after_the_read() {
        admission_races_a_write(true);
    }
}
