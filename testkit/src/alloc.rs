//! A global allocator that counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The system allocator, counting: every allocation and reallocation (see
/// [`allocations`](Self::allocations)), and the blocks of one watched size alive now
/// and at most (see [`watch`](Self::watch)). Install it in a test binary with
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: pipewright_testkit::CountingAlloc = pipewright_testkit::CountingAlloc::new();
/// ```
///
/// The counts are process-wide: tests that read them run alone in their binary (or
/// hold a lock around the measured part).
#[derive(Debug)]
pub struct CountingAlloc {
    calls: AtomicU64,
    watched: AtomicUsize,
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl CountingAlloc {
    /// A counter with no size watched.
    pub const fn new() -> Self {
        Self {
            calls: AtomicU64::new(0),
            watched: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Allocations plus reallocations so far.
    pub fn allocations(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// From now on, tracks blocks of exactly `size` bytes (allocated after this call):
    /// [`live`](Self::live) and [`peak`](Self::peak) start again from zero.
    pub fn watch(&self, size: usize) {
        self.watched.store(size, Ordering::Relaxed);
        self.live.store(0, Ordering::Relaxed);
        self.peak.store(0, Ordering::Relaxed);
    }

    /// Watched-size blocks alive now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The most watched-size blocks alive at once since [`watch`](Self::watch).
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn born(&self, size: usize) {
        if size != 0 && size == self.watched.load(Ordering::Relaxed) {
            let now = self.live.fetch_add(1, Ordering::Relaxed) + 1;
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn died(&self, size: usize) {
        if size != 0 && size == self.watched.load(Ordering::Relaxed) {
            // Saturating: a block born before `watch` may die after it.
            let _ = self
                .live
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call forwards to the system allocator unchanged; the counting only
// touches atomics (it never allocates).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.born(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.born(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.died(layout.size());
        // SAFETY: `ptr` came from `System` through us with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.died(layout.size());
        self.born(new_size);
        // SAFETY: `ptr` came from `System` through us with this `layout`; the caller
        // upholds the rest of `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_and_watched_blocks() {
        let a = CountingAlloc::new();
        a.watch(64);
        let small = Layout::from_size_align(64, 8).unwrap();
        let other = Layout::from_size_align(32, 8).unwrap();
        // SAFETY: non-zero layouts; every block is freed with the layout it was
        // allocated (or reallocated) with.
        unsafe {
            let p = a.alloc(small);
            let q = a.alloc(small);
            let r = a.alloc(other);
            assert_eq!((a.allocations(), a.live(), a.peak()), (3, 2, 2));
            a.dealloc(p, small);
            let q = a.realloc(q, small, 32);
            assert_eq!((a.allocations(), a.live(), a.peak()), (4, 0, 2));
            a.dealloc(q, other);
            a.dealloc(r, other);
        }
        assert_eq!(a.live(), 0);
    }
}
