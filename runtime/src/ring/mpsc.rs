//! Multi-producer single-consumer ring for merges and application inputs.
//!
//! Producers claim a run of positions with one CAS on `tail` (a burst costs one CAS,
//! not one per item), write their items, and publish each slot by storing its
//! sequence number; the consumer reads slots in position order once published (the
//! per-slot sequence scheme of Vyukov's bounded queue). The top bit of `tail` marks
//! the ring closed, so a close and a claim cannot race: a producer either claims before
//! the close (and its items will be consumed) or sees the mark and gets its items back.

// Unsafe here: slots of `MaybeUninit` written once and read once, ordered by the sequence numbers.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};

const CLOSED: usize = 1 << (usize::BITS - 1);

struct Slot<T> {
    /// `pos + 1` once the item for position `pos` is written.
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

struct Shared<T> {
    tail: CachePadded<AtomicUsize>,
    head: CachePadded<AtomicUsize>,
    open_producers: AtomicUsize,
    mask: usize,
    slots: Box<[Slot<T>]>,
}

// SAFETY: a position is owned by exactly one producer between its claim (CAS on tail)
// and its publication (seq store, Release), then by the consumer until it advances
// `head` (Release), which producers Acquire before reusing the slot a lap later.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let mut pos = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed) & !CLOSED;
        while pos < tail {
            let slot = &self.slots[pos & self.mask];
            if slot.seq.load(Ordering::Relaxed) == pos + 1 {
                // SAFETY: published and never read: initialised, owned by nobody else now
                // that the last handle is gone.
                slot.value.with_mut(|v| unsafe { (*v).assume_init_drop() });
            }
            pos += 1;
        }
    }
}

/// Why a push did not take every item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The ring is full; the rest of the items are still in the caller's buffer.
    Full,
    /// The ring is closed; the items are still in the caller's buffer.
    Closed,
}

/// A producing handle of an MPSC ring.
pub struct MpscProducer<T> {
    shared: Arc<Shared<T>>,
    closed: bool,
}

/// The consuming handle of an MPSC ring.
pub struct MpscConsumer<T> {
    shared: Arc<Shared<T>>,
    head: usize,
}

impl<T> std::fmt::Debug for MpscProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MpscProducer")
    }
}
impl<T> std::fmt::Debug for MpscConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpscConsumer")
            .field("head", &self.head)
            .finish()
    }
}

pub(super) fn new<T>(capacity: usize, producers: usize) -> (Vec<MpscProducer<T>>, MpscConsumer<T>) {
    let slots = super::slots_for(capacity);
    let shared = Arc::new(Shared {
        tail: CachePadded::new(AtomicUsize::new(if producers == 0 { CLOSED } else { 0 })),
        head: CachePadded::new(AtomicUsize::new(0)),
        open_producers: AtomicUsize::new(producers),
        mask: slots - 1,
        // Position p's slot starts "not published" (seq != p + 1) for every p.
        slots: (0..slots)
            .map(|_| Slot {
                seq: AtomicUsize::new(0),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect(),
    });
    let producers = (0..producers)
        .map(|_| MpscProducer {
            shared: shared.clone(),
            closed: false,
        })
        .collect();
    (producers, MpscConsumer { shared, head: 0 })
}

impl<T> MpscProducer<T> {
    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }

    /// Moves as many items as fit from the front of `items`.
    #[inline]
    pub fn push_burst(&mut self, items: &mut VecDeque<T>) -> Result<usize, PushError> {
        if items.is_empty() {
            return Ok(0);
        }
        let shared = &*self.shared;
        let (start, n) = self.claim(items.len())?;
        for (pos, item) in (start..start + n).zip(items.drain(..n)) {
            let slot = &shared.slots[pos & shared.mask];
            // SAFETY: our CAS gave us position `pos` exclusively, and the `head` we
            // Acquired shows the consumer has moved the previous lap's item out.
            slot.value.with_mut(|v| unsafe { (*v).write(item) });
            slot.seq.store(pos + 1, Ordering::Release);
        }
        Ok(n)
    }

    /// Pushes one item, handing it back with the reason when it cannot.
    #[inline]
    pub fn push(&mut self, item: T) -> Result<(), (T, PushError)> {
        let (pos, _) = match self.claim(1) {
            Ok(claimed) => claimed,
            Err(e) => return Err((item, e)),
        };
        let slot = &self.shared.slots[pos & self.shared.mask];
        // SAFETY: as in `push_burst`: our CAS gave us position `pos` exclusively, and
        // the `head` we Acquired shows the consumer has moved the previous lap's item out.
        slot.value.with_mut(|v| unsafe { (*v).write(item) });
        slot.seq.store(pos + 1, Ordering::Release);
        Ok(())
    }

    /// Claims up to `want` (at least 1) consecutive positions: the first and how many.
    #[inline]
    fn claim(&self, want: usize) -> Result<(usize, usize), PushError> {
        let shared = &*self.shared;
        let capacity = shared.mask + 1;
        // Acquire, here and on a failed CAS: `tail` only changes by read-modify-writes,
        // so reading a value synchronizes with every claim up to it, and each of those
        // claimers had seen `head >= its new tail - capacity`. The `head` we load next
        // is then at least that recent, so `tail - head <= capacity`. (With Relaxed, a
        // fresh `tail` could meet a stale `head`, `free` would wrap around, and the CAS
        // could claim slots the consumer has not read yet.)
        let mut tail = shared.tail.load(Ordering::Acquire);
        loop {
            if tail & CLOSED != 0 {
                return Err(PushError::Closed);
            }
            let head = shared.head.load(Ordering::Acquire);
            // `tail` itself can be stale (the consumer popped past it after other
            // producers claimed more), so `head` may be ahead of it: a plain
            // `tail - head` would underflow. Such a `tail` is not current, so the CAS
            // below fails and we retry with the fresh value; only a `tail` that wins
            // the CAS (then `head <= tail`) decides how many items we take.
            let free = capacity - tail.saturating_sub(head);
            let n = free.min(want);
            if n == 0 {
                return Err(PushError::Full);
            }
            match shared.tail.compare_exchange_weak(
                tail,
                tail + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok((tail, n)),
                Err(now) => tail = now,
            }
        }
    }

    /// Items in the ring (approximate under concurrency).
    pub fn len(&self) -> usize {
        let tail = self.shared.tail.load(Ordering::Acquire) & !CLOSED;
        tail.saturating_sub(self.shared.head.load(Ordering::Acquire))
    }

    /// True when the ring looked empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the ring is closed (by every producer closing, or by `close_all`).
    pub fn is_closed(&self) -> bool {
        self.shared.tail.load(Ordering::Acquire) & CLOSED != 0
    }

    /// This producer is done; the ring closes when the last producer is.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            if self.shared.open_producers.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.shared.tail.fetch_or(CLOSED, Ordering::AcqRel);
            }
        }
    }

    /// Closes the ring for every producer: later pushes get [`PushError::Closed`].
    pub fn close_all(&self) {
        self.shared.tail.fetch_or(CLOSED, Ordering::AcqRel);
    }

    /// A further producing handle (for cloneable application inputs). Fails if closed.
    pub fn try_clone(&self) -> Option<Self> {
        let mut open = self.shared.open_producers.load(Ordering::Relaxed);
        loop {
            if open == 0 || self.is_closed() {
                return None;
            }
            match self.shared.open_producers.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Self {
                        shared: self.shared.clone(),
                        closed: false,
                    })
                }
                Err(now) => open = now,
            }
        }
    }
}

impl<T> Drop for MpscProducer<T> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<T> MpscConsumer<T> {
    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }

    /// Moves up to `max` published items, in position order, to the back of `out`.
    #[inline]
    pub fn pop_burst(&mut self, out: &mut VecDeque<T>, max: usize) -> usize {
        let shared = &*self.shared;
        let start = self.head;
        while self.head - start < max {
            let pos = self.head;
            let slot = &shared.slots[pos & shared.mask];
            if slot.seq.load(Ordering::Acquire) != pos + 1 {
                break;
            }
            // SAFETY: seq == pos + 1 (Acquire) means the producer that claimed `pos`
            // finished writing; nobody else touches the slot until we advance `head`.
            out.push_back(slot.value.with(|v| unsafe { (*v).assume_init_read() }));
            self.head = pos + 1;
        }
        let n = self.head - start;
        if n > 0 {
            shared.head.store(self.head, Ordering::Release);
        }
        n
    }

    /// Pops one item.
    pub fn pop(&mut self) -> Option<T> {
        let mut one = VecDeque::with_capacity(1);
        self.pop_burst(&mut one, 1);
        one.pop_front()
    }

    /// Items claimed by producers and not yet popped (some may still be being written).
    pub fn len(&self) -> usize {
        (self.shared.tail.load(Ordering::Acquire) & !CLOSED) - self.head
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the ring is closed and every claimed item has been popped.
    pub fn is_finished(&self) -> bool {
        let tail = self.shared.tail.load(Ordering::Acquire);
        tail & CLOSED != 0 && tail & !CLOSED == self.head
    }

    /// A cheap handle that reports the ring's occupancy from any thread.
    pub fn depth_probe(&self) -> impl Fn() -> usize + Send + Sync + 'static
    where
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        move || {
            (shared.tail.load(Ordering::Acquire) & !CLOSED)
                .saturating_sub(shared.head.load(Ordering::Acquire))
        }
    }

    /// A handle that closes the ring from any thread (drain of application inputs).
    pub fn closer(&self) -> impl Fn() + Send + Sync + 'static
    where
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        move || {
            shared.tail.fetch_or(CLOSED, Ordering::AcqRel);
        }
    }

    /// Closes the ring to all producers (used by drain and shutdown).
    pub fn close(&self) {
        self.shared.tail.fetch_or(CLOSED, Ordering::AcqRel);
    }
}
