//! LRU, FIFO, CLOCK and SIEVE: one queue each, a key → node map.

use rustc_hash::FxHashMap;

use super::list::List;
use super::EvictionPolicy;

/// Least recently used: a hit moves the key to the head; the tail is evicted.
#[derive(Debug, Default)]
pub struct Lru {
    list: List,
    map: FxHashMap<u64, u32>,
}

impl Lru {
    /// An empty LRU.
    pub fn new() -> Self {
        Self {
            list: List::new(),
            map: FxHashMap::default(),
        }
    }
}

impl EvictionPolicy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }
    fn lookup(&mut self, key: u64) -> bool {
        match self.map.get(&key) {
            Some(&idx) => {
                self.list.move_to_front(idx);
                true
            }
            None => false,
        }
    }
    fn insert(&mut self, key: u64) {
        let idx = self.list.push_front(key, 0);
        self.map.insert(key, idx);
    }
    fn evict(&mut self) -> Option<u64> {
        let tail = self.list.tail()?;
        let key = self.list.unlink(tail);
        self.map.remove(&key);
        Some(key)
    }
    fn remove(&mut self, key: u64) -> bool {
        match self.map.remove(&key) {
            Some(idx) => {
                self.list.unlink(idx);
                true
            }
            None => false,
        }
    }
    fn len(&self) -> usize {
        self.list.len()
    }
}

/// First in, first out: hits change nothing.
#[derive(Debug, Default)]
pub struct Fifo {
    list: List,
    map: FxHashMap<u64, u32>,
}

impl Fifo {
    /// An empty FIFO.
    pub fn new() -> Self {
        Self {
            list: List::new(),
            map: FxHashMap::default(),
        }
    }
}

impl EvictionPolicy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }
    fn lookup(&mut self, key: u64) -> bool {
        self.map.contains_key(&key)
    }
    fn insert(&mut self, key: u64) {
        let idx = self.list.push_front(key, 0);
        self.map.insert(key, idx);
    }
    fn evict(&mut self) -> Option<u64> {
        let tail = self.list.tail()?;
        let key = self.list.unlink(tail);
        self.map.remove(&key);
        Some(key)
    }
    fn remove(&mut self, key: u64) -> bool {
        match self.map.remove(&key) {
            Some(idx) => {
                self.list.unlink(idx);
                true
            }
            None => false,
        }
    }
    fn len(&self) -> usize {
        self.list.len()
    }
}

/// CLOCK with one reference bit (libCacheSim's `Clock` defaults): a hit sets the bit;
/// eviction looks at the oldest key, and one with its bit set gets it cleared and is
/// reinserted at the head instead of evicted.
#[derive(Debug, Default)]
pub struct Clock {
    list: List,
    map: FxHashMap<u64, u32>,
}

impl Clock {
    /// An empty CLOCK.
    pub fn new() -> Self {
        Self {
            list: List::new(),
            map: FxHashMap::default(),
        }
    }
}

impl EvictionPolicy for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }
    fn lookup(&mut self, key: u64) -> bool {
        match self.map.get(&key) {
            Some(&idx) => {
                self.list.set_bits(idx, 1);
                true
            }
            None => false,
        }
    }
    fn insert(&mut self, key: u64) {
        let idx = self.list.push_front(key, 0);
        self.map.insert(key, idx);
    }
    fn evict(&mut self) -> Option<u64> {
        loop {
            let tail = self.list.tail()?;
            if self.list.bits(tail) > 0 {
                // Second chance: clear the bit, reinsert at the head.
                let key = self.list.unlink(tail);
                let idx = self.list.push_front(key, 0);
                self.map.insert(key, idx);
                continue;
            }
            let key = self.list.unlink(tail);
            self.map.remove(&key);
            return Some(key);
        }
    }
    fn remove(&mut self, key: u64) -> bool {
        match self.map.remove(&key) {
            Some(idx) => {
                self.list.unlink(idx);
                true
            }
            None => false,
        }
    }
    fn len(&self) -> usize {
        self.list.len()
    }
}

/// SIEVE: new keys at the head, a hit sets the visited bit; the hand walks from the
/// tail towards the head clearing visited bits and evicts the first unvisited key,
/// then stays where it stopped (one step towards the head).
#[derive(Debug, Default)]
pub struct Sieve {
    list: List,
    map: FxHashMap<u64, u32>,
    hand: Option<u32>,
}

impl Sieve {
    /// An empty SIEVE.
    pub fn new() -> Self {
        Self {
            list: List::new(),
            map: FxHashMap::default(),
            hand: None,
        }
    }
}

impl EvictionPolicy for Sieve {
    fn name(&self) -> &'static str {
        "sieve"
    }
    fn lookup(&mut self, key: u64) -> bool {
        match self.map.get(&key) {
            Some(&idx) => {
                self.list.set_bits(idx, 1);
                true
            }
            None => false,
        }
    }
    fn insert(&mut self, key: u64) {
        let idx = self.list.push_front(key, 0);
        self.map.insert(key, idx);
    }
    fn evict(&mut self) -> Option<u64> {
        let mut idx = match self.hand {
            Some(h) => h,
            None => self.list.tail()?,
        };
        while self.list.bits(idx) > 0 {
            self.list.set_bits(idx, 0);
            idx = match self.list.prev(idx) {
                Some(p) => p,
                None => self.list.tail()?,
            };
        }
        self.hand = self.list.prev(idx);
        let key = self.list.unlink(idx);
        self.map.remove(&key);
        Some(key)
    }
    fn remove(&mut self, key: u64) -> bool {
        match self.map.remove(&key) {
            Some(idx) => {
                if self.hand == Some(idx) {
                    self.hand = self.list.prev(idx);
                }
                self.list.unlink(idx);
                true
            }
            None => false,
        }
    }
    fn len(&self) -> usize {
        self.list.len()
    }
}
