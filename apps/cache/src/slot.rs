//! The instance-id check: what a reader of a cached block compares before it may
//! serve the bytes.
//!
//! Every chunk slot of the cache file has a [`SlotCell`]: its *current* instance id and
//! a write sequence (odd while a write into the slot is in progress). Every stored
//! block carries a tag: the instance id it was written under and a CRC-32C over that
//! id, the block's address and its bytes. A reader snapshots the slot's instance id
//! (from the lookup) and write sequence, reads the block and its tag, and calls
//! [`check`]: only a tag written under the expected instance, a sequence that did not
//! move, a matching checksum and a slot still on that instance give
//! [`Verdict::Valid`]. Eviction never waits for readers: it gives the slot a new
//! instance id and the next fill writes blocks tagged with it, so a reader that raced
//! the reuse sees [`Verdict::Stale`] and goes back to the lookup.
//!
//! A direct reply, which sends a slot's bytes after its check instead of copying them
//! first, also *pins* the slot ([`SlotCell::pin`]) from before its check until the
//! bytes are out; a retired slot is reused only once [`SlotCell::unpinned`].

// `pub` items: the loom model reaches them through `loom_api` (loom builds only).
#![allow(unreachable_pub)]

use crate::sync::{fence, AtomicU64, Ordering};

/// A chunk slot's shared state: current instance id, write sequence and the direct
/// replies sending from it.
#[derive(Debug)]
pub struct SlotCell {
    instance: AtomicU64,
    seq: AtomicU64,
    pins: AtomicU64,
}

impl SlotCell {
    /// A slot on `instance`, no write in progress.
    pub fn new(instance: u64) -> Self {
        Self {
            instance: AtomicU64::new(instance),
            seq: AtomicU64::new(0),
            pins: AtomicU64::new(0),
        }
    }

    /// The slot's current instance id.
    pub fn instance(&self) -> u64 {
        self.instance.load(Ordering::SeqCst)
    }

    /// Gives the slot a new instance id (only after it is durable in the metadata).
    pub fn set_instance(&self, id: u64) {
        self.instance.store(id, Ordering::SeqCst);
    }

    /// The write sequence a reader snapshots before reading.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Moves the sequence on by a whole write, as if the slot had been written: every
    /// copy and check taken under the old sequence (the memory tier's, a reader's) is
    /// stale from now on. For a chunk leaving the index before its slot gets a new
    /// instance id (that waits for a durable commit).
    pub fn invalidate(&self) {
        self.seq.fetch_add(2, Ordering::SeqCst);
    }

    /// A write into the slot starts (the sequence becomes odd).
    pub fn begin_write(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    /// The write ended (the sequence is even again).
    pub fn end_write(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    /// Pins the slot for a reply sending from its bytes: until the pin is dropped,
    /// [`SlotCell::unpinned`] is false and a retired slot is not reused. Pin first,
    /// then check the instance id; a retire sets the new id first, then waits for the
    /// pins: either the reader sees the new id or the retire sees the pin. Each side
    /// puts a `SeqCst` fence between its write and its read (a store-load order that
    /// `SeqCst` accesses alone give only through their single total order, which loom
    /// does not model: it reported a reuse under a send without the fences).
    /// `tests/loom_instance.rs` checks every interleaving.
    pub fn pin(&self) -> SlotPin<'_> {
        self.pins.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        SlotPin(&self.pins)
    }

    /// Whether no reply is sending from the slot (call after [`SlotCell::set_instance`]
    /// to wait for the replies that may have checked the old id).
    pub fn unpinned(&self) -> bool {
        fence(Ordering::SeqCst);
        self.pins.load(Ordering::SeqCst) == 0
    }
}

/// A slot pinned by a reply sending from it (see [`SlotCell::pin`]).
#[derive(Debug)]
pub struct SlotPin<'a>(&'a AtomicU64);

impl Drop for SlotPin<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Which blocks of a slot passed their checksum under one write sequence of the slot:
/// a hit of those blocks under the same sequence checks their tags' instance id and
/// the sequence (all of [`check`] but the CRC) and skips the CRC pass over the bytes.
///
/// Why that never serves stale or torn bytes: the instance id and the sequence are
/// still checked on every read. A block is marked only by a reader whose [`check`]
/// passed in full (CRC included) under sequence `s`, or by a fill that wrote the
/// block (and its CRC) itself and saw no other write overlap its own (`s` is the
/// sequence after it). Every write into the slot moves the sequence, so marks of `s`
/// say nothing about the bytes after any later write, and a reader that snapshotted
/// another sequence, or whose read a write overlapped, finds no mark (or a torn
/// verdict). What the skip gives up is re-detecting damage that appears in the cache
/// file *under* a running cache without a write of ours (a medium that returns other
/// bytes than it stored, after the page cache dropped them): that is detected at the
/// first read after the next open, when nothing is marked.
///
/// Marks are a lock-free seqlock: `epoch` is the sequence the bits belong to, or
/// [`Verified::BUSY`] while one marker changes them (a second marker at the same time
/// gives up: a mark is an optimisation). Readers see the bits only if `epoch` reads
/// their sequence before and after.
#[derive(Debug)]
pub struct Verified {
    epoch: AtomicU64,
    /// Blocks 0..64.
    first: AtomicU64,
    /// Blocks from 64 on (empty, no allocation, for chunks of up to 64 blocks).
    rest: Box<[AtomicU64]>,
}

impl Verified {
    /// `epoch` while a marker changes the bits.
    pub const BUSY: u64 = u64::MAX;
    /// `epoch` when nothing is marked (write sequences never reach it).
    const NONE: u64 = u64::MAX - 1;

    /// Nothing marked, for a slot of `blocks` blocks.
    pub fn new(blocks: u32) -> Self {
        let words = (blocks as usize).div_ceil(64).max(1);
        Self {
            epoch: AtomicU64::new(Self::NONE),
            first: AtomicU64::new(0),
            rest: (1..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        if i == 0 {
            &self.first
        } else {
            &self.rest[i - 1]
        }
    }

    /// The bits of blocks `[first, first+count)` in each word they touch.
    fn masks(first: u32, count: u32) -> impl Iterator<Item = (usize, u64)> {
        let (lo, hi) = (first as usize, first as usize + count as usize);
        (lo / 64..hi.div_ceil(64)).map(move |w| {
            let a = lo.max(w * 64) - w * 64;
            let b = hi.min(w * 64 + 64) - w * 64;
            let mask = if b - a == 64 {
                u64::MAX
            } else {
                ((1u64 << (b - a)) - 1) << a
            };
            (w, mask)
        })
    }

    /// Whether blocks `[first, first+count)` passed their checksum under write
    /// sequence `seq`.
    pub fn covers(&self, seq: u64, first: u32, count: u32) -> bool {
        if count == 0 || self.epoch.load(Ordering::SeqCst) != seq {
            return false;
        }
        let all =
            Self::masks(first, count).all(|(w, m)| self.word(w).load(Ordering::SeqCst) & m == m);
        all && self.epoch.load(Ordering::SeqCst) == seq
    }

    /// Records that blocks `[first, first+count)` passed their checksum under write
    /// sequence `seq` (marks of another sequence are dropped first). Gives up if
    /// another marker is at work.
    pub fn mark(&self, seq: u64, first: u32, count: u32) {
        let e = self.epoch.load(Ordering::SeqCst);
        if e == Self::BUSY
            || self
                .epoch
                .compare_exchange(e, Self::BUSY, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        if e != seq {
            self.first.store(0, Ordering::SeqCst);
            for w in self.rest.iter() {
                w.store(0, Ordering::SeqCst);
            }
        }
        for (w, m) in Self::masks(first, count) {
            self.word(w).fetch_or(m, Ordering::SeqCst);
        }
        self.epoch.store(seq, Ordering::SeqCst);
    }
}

/// What a reader may do with a block it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Valid,
    /// Written under another instance, or the slot moved on: never serve; look up again.
    Stale,
    /// A write overlapped the read: read again.
    Torn,
    /// Same instance, no write overlapped, and the checksum fails: the stored bytes are
    /// damaged.
    Corrupt,
}

/// The check, in this order: the tag's and the slot's instance, the write sequence, the
/// checksum.
pub fn check(
    expected: u64,
    tag_instance: u64,
    checksum_ok: bool,
    cell: &SlotCell,
    seq_before: u64,
) -> Verdict {
    if tag_instance != expected || cell.instance() != expected {
        return Verdict::Stale;
    }
    if seq_before % 2 == 1 || cell.seq() != seq_before {
        return Verdict::Torn;
    }
    if !checksum_ok {
        return Verdict::Corrupt;
    }
    Verdict::Valid
}
