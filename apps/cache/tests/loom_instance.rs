//! Loom model of the instance-id check racing eviction and reuse.
//!
//! One chunk slot, its block and tag modelled as atomics ("the disk"). A reader looks
//! the chunk up (instance `I1`), reads the block's bytes then its tag, and runs the
//! shipped `check`. Concurrently the evictor gives the slot a new instance `I2` and a
//! refill writes another chunk's bytes (and then tag) under `I2`, bumping the slot's
//! write sequence around the write. Whatever the interleaving, a block the check calls
//! valid carries the bytes of the chunk the reader looked up.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use pipewright_cache::loom_api::{check, SlotCell, Verdict, Verified};

const I1: u64 = 1;
const I2: u64 = 2;
/// The block's bytes: which chunk they belong to.
const CHUNK_A: u64 = 0xA;
const CHUNK_B: u64 = 0xB;

struct Disk {
    data: AtomicU64,
    tag_instance: AtomicU64,
    /// The tag's checksum: here, the chunk the tag was written for.
    tag_sum: AtomicU64,
}

/// A slot on instance `I1` whose block holds chunk A, written and tagged under `I1`.
fn slot_holding_chunk_a() -> (Arc<SlotCell>, Arc<Disk>) {
    let cell = Arc::new(SlotCell::new(I1));
    let disk = Arc::new(Disk {
        data: AtomicU64::new(CHUNK_A),
        tag_instance: AtomicU64::new(I1),
        tag_sum: AtomicU64::new(CHUNK_A),
    });
    (cell, disk)
}

#[test]
fn stale_block_is_never_served() {
    loom::model(|| {
        let (cell, disk) = slot_holding_chunk_a();

        let evictor = {
            let (cell, disk) = (cell.clone(), disk.clone());
            loom::thread::spawn(move || {
                // Eviction: the new id (durable first, in the real code), then reuse.
                cell.set_instance(I2);
                cell.begin_write();
                disk.data.store(CHUNK_B, Ordering::SeqCst);
                disk.tag_instance.store(I2, Ordering::SeqCst);
                disk.tag_sum.store(CHUNK_B, Ordering::SeqCst);
                cell.end_write();
            })
        };

        // The reader: lookup snapshot, then the block read.
        let expected = cell.instance();
        let seq = cell.seq();
        let data = disk.data.load(Ordering::SeqCst);
        let tag_instance = disk.tag_instance.load(Ordering::SeqCst);
        let tag_sum = disk.tag_sum.load(Ordering::SeqCst);
        let verdict = check(expected, tag_instance, tag_sum == data, &cell, seq);
        if verdict == Verdict::Valid {
            let want = if expected == I1 { CHUNK_A } else { CHUNK_B };
            assert_eq!(data, want, "served another chunk's bytes");
        }
        assert_ne!(verdict, Verdict::Corrupt, "a race was mistaken for damage");
        evictor.join().unwrap();
    });
}

/// The checksum skip (`Verified`) racing a write and a late mark: a reader that skips
/// the CRC of a block (a mark covers the write sequence it snapshotted) and whose check
/// passes has read the bytes that were verified under that sequence, never bytes a
/// later write put down unverified; and a mark of an old sequence never covers a new
/// one.
#[test]
fn a_checksum_skip_covers_only_its_write_sequence() {
    /// Bytes verified under sequence 0, and bytes a write puts down (not verified).
    const OLD: u64 = 0xA;
    const NEW: u64 = 0xB;
    loom::model(|| {
        let cell = Arc::new(SlotCell::new(I1));
        let verified = Arc::new(Verified::new(1));
        let data = Arc::new(AtomicU64::new(OLD));
        verified.mark(0, 0, 1);

        let writer = {
            let (cell, data) = (cell.clone(), data.clone());
            loom::thread::spawn(move || {
                cell.begin_write();
                data.store(NEW, Ordering::SeqCst);
                cell.end_write();
            })
        };
        // A reader that verified the old bytes under sequence 0 marks them late.
        let marker = {
            let verified = verified.clone();
            loom::thread::spawn(move || verified.mark(0, 0, 1))
        };

        let seq = cell.seq();
        let trusted = verified.covers(seq, 0, 1);
        let bytes = data.load(Ordering::SeqCst);
        if trusted && check(I1, I1, true, &cell, seq) == Verdict::Valid {
            assert_eq!(seq, 0, "a mark of sequence 0 covered another sequence");
            assert_eq!(bytes, OLD, "served unverified bytes without their CRC");
        }
        writer.join().unwrap();
        marker.join().unwrap();
        assert!(
            !verified.covers(cell.seq(), 0, 1),
            "the write's sequence is not verified"
        );
    });
}

/// A direct reply sends a slot's bytes *after* its check (no copy first), so it pins
/// the slot before the check and a retire waits for the pins before the slot is reused
/// (`SlotCell::pin`). Whatever the interleaving, a reply whose check passed sends the
/// bytes of the chunk it looked up, never the refill's.
///
/// The model fails if the reader pins after its check (a retire between the check and
/// the pin reuses the slot under the send), or if the retire does not wait for pins.
#[test]
fn a_pinned_slot_is_not_reused_under_a_send() {
    loom::model(|| {
        let (cell, disk) = slot_holding_chunk_a();

        let retire = {
            let (cell, disk) = (cell.clone(), disk.clone());
            loom::thread::spawn(move || {
                // `Inner::retire`: the new id, then wait for the pins, then free (the
                // refill follows).
                cell.set_instance(I2);
                while !cell.unpinned() {
                    loom::thread::yield_now();
                }
                cell.begin_write();
                disk.data.store(CHUNK_B, Ordering::SeqCst);
                disk.tag_instance.store(I2, Ordering::SeqCst);
                disk.tag_sum.store(CHUNK_B, Ordering::SeqCst);
                cell.end_write();
            })
        };

        // `Cache::send_direct`: the lookup, the pin, the tags' check, then the send.
        let expected = cell.instance();
        let pin = cell.pin();
        let seq = cell.seq();
        let tag_instance = disk.tag_instance.load(Ordering::SeqCst);
        let tag_sum = disk.tag_sum.load(Ordering::SeqCst);
        if expected == I1 && check(expected, tag_instance, true, &cell, seq) == Verdict::Valid {
            // Only the old chunk's tag passes this check; the bytes go out now.
            assert_eq!(tag_sum, CHUNK_A);
            let sent = disk.data.load(Ordering::SeqCst);
            assert_eq!(sent, CHUNK_A, "a retired slot was reused under a send");
        }
        drop(pin);
        retire.join().unwrap();
    });
}
