//! S3-FIFO as libCacheSim's `S3FIFO.c` runs it (small-size-ratio 0.10,
//! ghost-size-ratio 0.90, move-to-main-threshold 2, 2-bit frequency in main).

use rustc_hash::{FxHashMap, FxHashSet};

use super::list::List;
use super::EvictionPolicy;

const SMALL: u8 = 0;
const MAIN: u8 = 1;

#[derive(Debug, Clone, Copy)]
struct Entry {
    queue: u8,
    idx: u32,
    freq: u8,
}

/// S3-FIFO: new keys enter a small FIFO (10% of the capacity); a key accessed at
/// least twice there moves to the main FIFO, the others leave through a ghost FIFO
/// (keys only) that sends them straight to main when they come back. Main is a CLOCK
/// with a 2-bit counter.
#[derive(Debug)]
pub struct S3Fifo {
    small: List,
    main: List,
    ghost: List,
    map: FxHashMap<u64, Entry>,
    ghost_map: FxHashMap<u64, u32>,
    /// Keys that missed while in the ghost: their insert goes to main.
    ghost_hits: FxHashSet<u64>,
    small_cap: usize,
    main_cap: usize,
    ghost_cap: usize,
    has_evicted: bool,
}

impl S3Fifo {
    /// An empty S3-FIFO for a cache of `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        let small_cap = (capacity as f64 * 0.10) as usize;
        Self {
            small: List::new(),
            main: List::new(),
            ghost: List::new(),
            map: FxHashMap::default(),
            ghost_map: FxHashMap::default(),
            ghost_hits: FxHashSet::default(),
            small_cap,
            main_cap: capacity - small_cap,
            ghost_cap: (capacity as f64 * 0.90) as usize,
            has_evicted: false,
        }
    }

    fn ghost_insert(&mut self, key: u64) {
        if self.ghost_cap == 0 || self.ghost_map.contains_key(&key) {
            return;
        }
        while self.ghost.len() >= self.ghost_cap {
            let Some(t) = self.ghost.tail() else { break };
            let k = self.ghost.unlink(t);
            self.ghost_map.remove(&k);
        }
        let idx = self.ghost.push_front(key, 0);
        self.ghost_map.insert(key, idx);
    }

    fn push_main(&mut self, key: u64, freq: u8) {
        let idx = self.main.push_front(key, 0);
        self.map.insert(
            key,
            Entry {
                queue: MAIN,
                idx,
                freq,
            },
        );
    }

    /// Evicts from small until one key left the cache (others move to main).
    fn evict_small(&mut self) -> Option<u64> {
        while let Some(t) = self.small.tail() {
            let key = self.small.unlink(t);
            let e = self.map[&key];
            if e.freq >= 2 {
                self.push_main(key, 0);
            } else {
                self.map.remove(&key);
                self.ghost_insert(key);
                return Some(key);
            }
        }
        None
    }

    fn evict_main(&mut self) -> Option<u64> {
        while let Some(t) = self.main.tail() {
            let key = self.main.unlink(t);
            let e = self.map[&key];
            if e.freq >= 1 {
                self.push_main(key, e.freq.min(3) - 1);
            } else {
                self.map.remove(&key);
                return Some(key);
            }
        }
        None
    }
}

impl EvictionPolicy for S3Fifo {
    fn name(&self) -> &'static str {
        "s3fifo"
    }

    fn lookup(&mut self, key: u64) -> bool {
        if let Some(e) = self.map.get_mut(&key) {
            e.freq = e.freq.saturating_add(1);
            return true;
        }
        if let Some(idx) = self.ghost_map.remove(&key) {
            self.ghost.unlink(idx);
            self.ghost_hits.insert(key);
        }
        false
    }

    fn insert(&mut self, key: u64) {
        if self.ghost_hits.remove(&key) {
            self.push_main(key, 0);
            return;
        }
        if let Some(idx) = self.ghost_map.remove(&key) {
            // Inserted without a lookup first (the cache's warm start): same rule.
            self.ghost.unlink(idx);
            self.push_main(key, 0);
            return;
        }
        if !self.has_evicted && self.small.len() >= self.small_cap {
            self.push_main(key, 0);
        } else {
            let idx = self.small.push_front(key, 0);
            self.map.insert(
                key,
                Entry {
                    queue: SMALL,
                    idx,
                    freq: 0,
                },
            );
        }
    }

    fn evict(&mut self) -> Option<u64> {
        self.has_evicted = true;
        if self.main.len() > self.main_cap || self.small.len() == 0 {
            self.evict_main().or_else(|| self.evict_small())
        } else {
            self.evict_small().or_else(|| self.evict_main())
        }
    }

    fn remove(&mut self, key: u64) -> bool {
        self.ghost_hits.remove(&key);
        match self.map.remove(&key) {
            Some(e) => {
                if e.queue == SMALL {
                    self.small.unlink(e.idx);
                } else {
                    self.main.unlink(e.idx);
                }
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.small.len() + self.main.len()
    }
}
