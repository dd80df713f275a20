//! The per-trust-group content store: one copy of each distinct page, in a tmpfs file
//! that guest memory maps `MAP_PRIVATE`.
//!
//! [`ContentIndex`] is the sans-I/O part (content id → slots, reference counts, free
//! slots); [`ContentStore`] adds the file. A page is shared only after its bytes compare
//! equal to the stored slot's: two different pages with the same id (a hash collision)
//! get two slots.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::Hash;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use crate::error::Error;
use crate::image::{is_zero, ContentId, Image};
use crate::loader::LoaderConfig;
use crate::sys::PAGE;

/// The slot a zero page maps to: none (fresh anonymous memory reads as zeros).
pub const ZERO_SLOT: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Slot<K> {
    id: Option<K>,
    refs: u32,
}

/// What [`ContentIndex::share`] did with a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// An equal page was stored already: shared.
    Shared(u32),
    /// New content: stored in a new slot (write it there).
    Stored(u32),
    /// Same id as a stored page but different bytes: stored in a new slot, not shared.
    Collision(u32),
}

impl Placed {
    /// The slot the page now maps to.
    pub fn slot(self) -> u32 {
        match self {
            Placed::Shared(s) | Placed::Stored(s) | Placed::Collision(s) => s,
        }
    }
}

/// Content id → slots with reference counts; no I/O, no clock.
#[derive(Debug, Clone)]
pub struct ContentIndex<K> {
    by_id: HashMap<K, Vec<u32>>,
    slots: Vec<Slot<K>>,
    free: Vec<u32>,
    live: u64,
    refs: u64,
}

impl<K> Default for ContentIndex<K> {
    fn default() -> Self {
        Self {
            by_id: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            refs: 0,
        }
    }
}

impl<K: Hash + Eq + Clone> ContentIndex<K> {
    /// Place one page with id `id`: share a stored slot whose bytes `equal(slot)` says
    /// are the page's, or allocate a new slot. The slot's reference count goes up by one.
    pub fn share(&mut self, id: &K, mut equal: impl FnMut(u32) -> bool) -> Placed {
        let candidates = self.by_id.get(id).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(&s) = candidates.iter().find(|&&s| equal(s)) {
            self.retain(s);
            return Placed::Shared(s);
        }
        let collision = !candidates.is_empty();
        let s = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot { id: None, refs: 0 });
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[s as usize].id = Some(id.clone());
        self.by_id.entry(id.clone()).or_default().push(s);
        self.live += 1;
        self.retain(s);
        if collision {
            Placed::Collision(s)
        } else {
            Placed::Stored(s)
        }
    }

    /// Take one more reference to a live `slot` (false if the slot is not live).
    pub fn retain(&mut self, s: u32) -> bool {
        match self.slots.get_mut(s as usize) {
            Some(e) if e.id.is_some() => {
                e.refs += 1;
                self.refs += 1;
                true
            }
            _ => false,
        }
    }

    /// Drop one reference to `slot`; returns true when the slot became free (its page
    /// can be released).
    pub fn release(&mut self, slot: u32) -> bool {
        let Some(e) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        if e.refs == 0 {
            return false;
        }
        e.refs -= 1;
        self.refs -= 1;
        if e.refs > 0 {
            return false;
        }
        let id = e.id.take().expect("a referenced slot has an id");
        if let Some(v) = self.by_id.get_mut(&id) {
            v.retain(|&x| x != slot);
            if v.is_empty() {
                self.by_id.remove(&id);
            }
        }
        self.free.push(slot);
        self.live -= 1;
        true
    }

    /// Slots holding content (referenced at least once).
    pub fn live_slots(&self) -> u64 {
        self.live
    }

    /// Distinct content ids among the live slots.
    pub fn distinct_ids(&self) -> u64 {
        self.by_id.len() as u64
    }

    /// References to `slot`.
    pub fn refs(&self, slot: u32) -> u32 {
        self.slots.get(slot as usize).map_or(0, |s| s.refs)
    }

    /// All references (one per mapped image page).
    pub fn total_refs(&self) -> u64 {
        self.refs
    }
}

/// Where each page of one loaded image lives: image block `i` → store slot (or
/// [`ZERO_SLOT`]); the guest sees block `i` at guest page `IMAGE_GPA/4096 + i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadMap {
    /// Slot per image block.
    pub slots: Vec<u32>,
}

impl LoadMap {
    /// Runs `(first image page, first slot, pages)` of consecutive non-zero slots: each
    /// becomes one `mmap`.
    pub fn runs(&self) -> Vec<(usize, u32, usize)> {
        let mut out: Vec<(usize, u32, usize)> = Vec::new();
        for (i, &s) in self.slots.iter().enumerate() {
            if s == ZERO_SLOT {
                continue;
            }
            match out.last_mut() {
                Some((p, first, n)) if *p + *n == i && first.wrapping_add(*n as u32) == s => {
                    *n += 1
                }
                _ => out.push((i, s, 1)),
            }
        }
        out
    }

    /// Little-endian `u32` per block.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.slots.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    /// Parse [`LoadMap::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() % 4 == 0).then(|| Self {
            slots: b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        })
    }
}

/// Counts of one image load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadStats {
    /// Pages loaded.
    pub pages: u64,
    /// Zero pages (not stored).
    pub zero: u64,
    /// Pages that found their content stored already.
    pub shared: u64,
    /// Pages stored as new content.
    pub stored: u64,
    /// Pages whose id matched stored content of different bytes.
    pub collisions: u64,
}

/// Places the pages of one load, in image order: the store's index (lent for the load)
/// and a handle on its file. The inline loop and the loader's `place` stage both use it.
#[derive(Debug)]
pub(crate) struct Placer {
    index: ContentIndex<ContentId>,
    file: File,
    path: PathBuf,
    map: LoadMap,
    stats: LoadStats,
    stored: Vec<u8>,
    /// The first error; nothing is placed after it.
    pub(crate) error: Option<Error>,
}

impl Placer {
    /// Place the next image page (content id `id`, all zeros if `zero`): share an equal
    /// stored page or store it in a new slot.
    pub(crate) fn place(&mut self, page: &[u8], id: ContentId, zero: bool) -> Result<(), Error> {
        self.stats.pages += 1;
        if zero {
            self.stats.zero += 1;
            self.map.slots.push(ZERO_SLOT);
            return Ok(());
        }
        let (file, stored) = (&self.file, &mut self.stored);
        let mut read_err = None;
        let placed = self.index.share(&id, |s| {
            match file.read_exact_at(stored, u64::from(s) * PAGE as u64) {
                Ok(()) => stored[..] == *page,
                Err(e) => {
                    read_err = Some(e);
                    false
                }
            }
        });
        self.map.slots.push(placed.slot());
        if let Some(e) = read_err {
            return Err(self.io(e));
        }
        match placed {
            Placed::Shared(_) => self.stats.shared += 1,
            Placed::Stored(s) | Placed::Collision(s) => {
                if matches!(placed, Placed::Collision(_)) {
                    self.stats.collisions += 1;
                }
                self.stats.stored += 1;
                if let Err(e) = self.file.write_all_at(page, u64::from(s) * PAGE as u64) {
                    return Err(self.io(e));
                }
            }
        }
        Ok(())
    }

    /// Record `e` as the load's error unless an earlier one is recorded.
    pub(crate) fn fail(&mut self, e: Error) {
        self.error.get_or_insert(e);
    }

    /// Pages placed so far.
    pub(crate) fn placed(&self) -> u64 {
        self.map.slots.len() as u64
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Store {
            path: self.path.clone(),
            source,
        }
    }
}

/// One trust group's content store file and index.
#[derive(Debug)]
pub struct ContentStore {
    path: PathBuf,
    file: File,
    index: ContentIndex<ContentId>,
}

impl ContentStore {
    /// Create (or empty) the store file at `path` (put it on tmpfs, e.g. /dev/shm).
    pub fn create(path: &Path) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| Error::Store {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            index: ContentIndex::default(),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Store {
            path: self.path.clone(),
            source,
        }
    }

    /// Load `image` into the store: every non-zero block is shared with an equal stored
    /// page or stored once. On error nothing stays referenced.
    ///
    /// The load runs on pipewright stages ([`LoaderConfig::default`]: blocks read in
    /// chunks, hashed by replicated stages, placed in image order by one stage owning
    /// the index); see [`ContentStore::load_with`].
    pub fn load(&mut self, image: &mut Image) -> Result<(LoadMap, LoadStats), Error> {
        self.load_with(image, &LoaderConfig::default())
    }

    /// [`ContentStore::load`] on a loader pipeline configured by `config`.
    pub fn load_with(
        &mut self,
        image: &mut Image,
        config: &LoaderConfig,
    ) -> Result<(LoadMap, LoadStats), Error> {
        let placer = self.placer(image.blocks())?;
        let placer = crate::loader::run(image, placer, config);
        self.finish(placer)
    }

    /// The same load as [`ContentStore::load`] as one loop on the calling thread (read,
    /// hash, place block by block): the reference the staged loader is tested and
    /// benchmarked against.
    pub fn load_inline(&mut self, image: &mut Image) -> Result<(LoadMap, LoadStats), Error> {
        let mut placer = self.placer(image.blocks())?;
        let r = image.for_each_block::<Error>(|_, page, id| placer.place(page, id, is_zero(page)));
        if let Err(e) = r {
            placer.fail(e);
        }
        self.finish(placer)
    }

    /// Lend the index and a second handle on the file to a [`Placer`] for one load.
    fn placer(&mut self, blocks: u64) -> Result<Placer, Error> {
        let file = self.file.try_clone().map_err(|e| self.io(e))?;
        Ok(Placer {
            index: std::mem::take(&mut self.index),
            file,
            path: self.path.clone(),
            map: LoadMap {
                slots: Vec::with_capacity(blocks as usize),
            },
            stats: LoadStats::default(),
            stored: vec![0u8; PAGE],
            error: None,
        })
    }

    /// Take the index back from a finished load; on error drop what it referenced.
    fn finish(&mut self, placer: Placer) -> Result<(LoadMap, LoadStats), Error> {
        let Placer {
            index,
            map,
            stats,
            error,
            ..
        } = placer;
        self.index = index;
        if let Some(e) = error {
            self.unload(&map);
            return Err(e);
        }
        metrics::counter!("memshare_pages_loaded").increment(stats.pages);
        metrics::counter!("memshare_pages_shared_at_load").increment(stats.shared);
        metrics::counter!("memshare_hash_collisions").increment(stats.collisions);
        Ok((map, stats))
    }

    /// Take references for another VM on an image loaded before with `map` (its slots
    /// must still be live, i.e. another VM still maps them). Returns false, with nothing
    /// retained, if one is not.
    pub fn retain(&mut self, map: &LoadMap) -> bool {
        for (n, &s) in map.slots.iter().enumerate() {
            if s != ZERO_SLOT && !self.index.retain(s) {
                self.unload(&LoadMap {
                    slots: map.slots[..n].to_vec(),
                });
                return false;
            }
        }
        true
    }

    /// Drop the references of a loaded image; slots nobody maps any more are punched
    /// out of the file (their memory goes back to the host).
    pub fn unload(&mut self, map: &LoadMap) {
        for &s in &map.slots {
            if s != ZERO_SLOT && self.index.release(s) {
                let _ = fallocate(
                    &self.file,
                    FallocateMode::PunchHole,
                    true,
                    u64::from(s) * PAGE as u64,
                    PAGE as u64,
                );
            }
        }
    }

    /// The index (reference counts).
    pub fn index(&self) -> &ContentIndex<ContentId> {
        &self.index
    }

    /// Bytes of memory the store file holds, as the kernel counts them.
    pub fn resident_bytes(&self) -> Result<u64, Error> {
        Ok(self.file.metadata().map_err(|e| self.io(e))?.blocks() * 512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Load(Vec<u8>),
        Unload(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Pages are 2 bytes; the "hash" is the first byte only, so collisions are common.
        let page = proptest::collection::vec(0u8..4, 2..=2);
        let img = proptest::collection::vec(page, 1..6).prop_map(|v| v.concat());
        proptest::collection::vec(
            prop_oneof![img.prop_map(Op::Load), (0usize..8).prop_map(Op::Unload)],
            1..40,
        )
    }

    proptest! {
        /// Against a model: every page maps to a slot holding exactly its bytes (never a
        /// colliding page), live slots = distinct live contents, refs = live pages.
        #[test]
        fn index_shares_only_equal_pages(ops in ops()) {
            let mut idx: ContentIndex<u8> = ContentIndex::default();
            let mut store: Vec<Vec<u8>> = Vec::new();
            let mut loaded: Vec<(Vec<u8>, Vec<u32>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Load(img) => {
                        let mut slots = Vec::new();
                        for page in img.chunks(2) {
                            let placed = idx.share(&page[0], |s| store[s as usize] == page);
                            let s = placed.slot() as usize;
                            if store.len() <= s { store.resize(s + 1, Vec::new()); }
                            if !matches!(placed, Placed::Shared(_)) { store[s] = page.to_vec(); }
                            prop_assert_eq!(&store[s], page);
                            slots.push(s as u32);
                        }
                        loaded.push((img, slots));
                    }
                    Op::Unload(i) if i < loaded.len() => {
                        let (_, slots) = loaded.remove(i);
                        for s in slots { idx.release(s); }
                    }
                    Op::Unload(_) => {}
                }
                let mut distinct = std::collections::HashSet::new();
                let mut pages = 0u64;
                for (img, slots) in &loaded {
                    for (page, &s) in img.chunks(2).zip(slots) {
                        prop_assert_eq!(&store[s as usize], page);
                        distinct.insert(page.to_vec());
                        pages += 1;
                    }
                }
                prop_assert_eq!(idx.live_slots(), distinct.len() as u64);
                prop_assert_eq!(idx.total_refs(), pages);
            }
        }
    }

    #[test]
    fn runs_merge_consecutive_slots_and_skip_zero() {
        let m = LoadMap {
            slots: vec![0, 1, 2, ZERO_SLOT, 3, 9, 10, 4],
        };
        assert_eq!(m.runs(), vec![(0, 0, 3), (4, 3, 1), (5, 9, 2), (7, 4, 1)]);
        assert_eq!(LoadMap::from_bytes(&m.to_bytes()).unwrap(), m);
    }
}
