//! Single-producer single-consumer ring (Lamport queue with cached indices, as in rtrb
//! and DPDK's `rte_ring` SP/SC mode).

// Unsafe here: slots of `MaybeUninit` written once and read once, ordered by head and tail.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{Arc, AtomicBool, AtomicUsize, Ordering, UnsafeCell};

struct Shared<T> {
    /// Next position the consumer reads; written by the consumer only.
    head: CachePadded<AtomicUsize>,
    /// Next position the producer writes; written by the producer only.
    tail: CachePadded<AtomicUsize>,
    closed: AtomicBool,
    mask: usize,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: a slot is accessed by one side at a time: the producer only writes slots in
// [tail, head + capacity), the consumer only reads slots in [head, tail), and the
// Release/Acquire pairs on `head` and `tail` order those accesses. Items move between
// threads, so `T: Send` is required and sufficient.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above; shared references only reach the atomics and, through the
// protocol, disjoint slots.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        for pos in head..tail {
            // SAFETY: both handles are gone (we are in the last Arc's drop), and slots in
            // [head, tail) hold initialised items that nobody has read.
            self.slots[pos & self.mask].with_mut(|slot| unsafe { (*slot).assume_init_drop() });
        }
    }
}

/// The producing half of an SPSC ring.
pub struct SpscProducer<T> {
    shared: Arc<Shared<T>>,
    tail: usize,
    cached_head: usize,
}

/// The consuming half of an SPSC ring.
pub struct SpscConsumer<T> {
    shared: Arc<Shared<T>>,
    head: usize,
    cached_tail: usize,
}

impl<T> std::fmt::Debug for SpscProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpscProducer")
            .field("tail", &self.tail)
            .finish()
    }
}
impl<T> std::fmt::Debug for SpscConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpscConsumer")
            .field("head", &self.head)
            .finish()
    }
}

pub(super) fn new<T>(capacity: usize) -> (SpscProducer<T>, SpscConsumer<T>) {
    let slots = super::slots_for(capacity);
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        closed: AtomicBool::new(false),
        mask: slots - 1,
        slots: (0..slots)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect(),
    });
    (
        SpscProducer {
            shared: shared.clone(),
            tail: 0,
            cached_head: 0,
        },
        SpscConsumer {
            shared,
            head: 0,
            cached_tail: 0,
        },
    )
}

impl<T> SpscProducer<T> {
    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }

    #[inline]
    fn free(&mut self, want: usize) -> usize {
        let capacity = self.shared.mask + 1;
        let mut free = capacity - (self.tail - self.cached_head);
        if free < want {
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            free = capacity - (self.tail - self.cached_head);
        }
        free
    }

    #[inline]
    fn write(&mut self, item: T) {
        let pos = self.tail;
        // SAFETY: `free()` showed this slot is past the consumer's head by a full lap:
        // the consumer will not read it until we publish `tail`, and any item it held
        // was moved out (head's Acquire load orders that read before this write).
        self.shared.slots[pos & self.shared.mask].with_mut(|slot| unsafe { (*slot).write(item) });
        self.tail = pos + 1;
    }

    /// Moves as many items as fit from the front of `items`; returns how many moved.
    #[inline]
    pub fn push_burst(&mut self, items: &mut VecDeque<T>) -> usize {
        let n = self.free(items.len()).min(items.len());
        let shared = &*self.shared;
        let (mask, start) = (shared.mask, self.tail);
        for (pos, item) in (start..start + n).zip(items.drain(..n)) {
            // SAFETY: as in `write`: `free()` showed every position in start..start+n is
            // a full lap past the consumer's head and unpublished.
            shared.slots[pos & mask].with_mut(|slot| unsafe { (*slot).write(item) });
        }
        self.tail = start + n;
        if n > 0 {
            self.shared.tail.store(self.tail, Ordering::Release);
        }
        n
    }

    /// Pushes one item, or hands it back when the ring is full.
    #[inline]
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.free(1) == 0 {
            return Err(item);
        }
        self.write(item);
        self.shared.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Items in the ring as last seen by the producer.
    pub fn len(&self) -> usize {
        self.tail - self.shared.head.load(Ordering::Acquire)
    }

    /// True when the ring looked empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Declares that nothing more will be pushed. Everything pushed before stays
    /// readable; the consumer then reports [`is_finished`](SpscConsumer::is_finished).
    pub fn close(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

impl<T> Drop for SpscProducer<T> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<T> SpscConsumer<T> {
    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }

    /// Moves up to `max` items to the back of `out`; returns how many moved.
    #[inline]
    pub fn pop_burst(&mut self, out: &mut VecDeque<T>, max: usize) -> usize {
        let mut avail = self.cached_tail - self.head;
        if avail < max {
            self.cached_tail = self.shared.tail.load(Ordering::Acquire);
            avail = self.cached_tail - self.head;
        }
        let n = avail.min(max);
        let shared = &*self.shared;
        let mask = shared.mask;
        out.extend((self.head..self.head + n).map(|pos| {
            // SAFETY: pos < tail (Acquire-loaded), so the producer initialised this slot
            // and will not touch it again until we publish a head past it. We move the
            // item out exactly once.
            shared.slots[pos & mask].with(|slot| unsafe { (*slot).assume_init_read() })
        }));
        if n > 0 {
            self.head += n;
            self.shared.head.store(self.head, Ordering::Release);
        }
        n
    }

    /// Pops one item.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.cached_tail == self.head {
            self.cached_tail = self.shared.tail.load(Ordering::Acquire);
            if self.cached_tail == self.head {
                return None;
            }
        }
        let pos = self.head;
        // SAFETY: as in `pop_burst`.
        let item = self.shared.slots[pos & self.shared.mask]
            .with(|slot| unsafe { (*slot).assume_init_read() });
        self.head = pos + 1;
        self.shared.head.store(self.head, Ordering::Release);
        Some(item)
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.shared.tail.load(Ordering::Acquire) - self.head
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cheap handle that reports the ring's occupancy from any thread.
    pub fn depth_probe(&self) -> impl Fn() -> usize + Send + Sync + 'static
    where
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        move || {
            let tail = shared.tail.load(Ordering::Acquire);
            tail.saturating_sub(shared.head.load(Ordering::Acquire))
        }
    }

    /// True once the producer closed and every item it pushed has been popped.
    pub fn is_finished(&self) -> bool {
        // `closed` first: its Acquire makes every push before the close visible to the
        // `tail` load that follows.
        self.shared.closed.load(Ordering::Acquire)
            && self.shared.tail.load(Ordering::Acquire) == self.head
    }
}
