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

// `pub` items: the loom model reaches them through `loom_api` (loom builds only).
#![allow(unreachable_pub)]

use crate::sync::{AtomicU64, Ordering};

/// A chunk slot's shared state: current instance id and write sequence.
#[derive(Debug)]
pub struct SlotCell {
    instance: AtomicU64,
    seq: AtomicU64,
}

impl SlotCell {
    /// A slot on `instance`, no write in progress.
    pub fn new(instance: u64) -> Self {
        Self {
            instance: AtomicU64::new(instance),
            seq: AtomicU64::new(0),
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

    /// A write into the slot starts (the sequence becomes odd).
    pub fn begin_write(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    /// The write ended (the sequence is even again).
    pub fn end_write(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
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
