//! The four AF_XDP rings (fill, completion, RX, TX), mmap'd from the socket and shared
//! with the kernel.
//!
//! Each ring is a power-of-two array of descriptors with a producer and a consumer
//! index that only ever grow (wrapping at 2^32); slot = index & mask. The side that
//! produces writes descriptors, then publishes the new producer index with a Release
//! store; the side that consumes reads the producer index with an Acquire load, reads
//! the descriptors, then publishes its consumer index with a Release store. Both sides
//! keep cached copies of the other side's index and refresh them only when the cached
//! view says the ring is full (producer) or empty (consumer).
#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;
use std::mem;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::sys::Mmap;

/// Free slots a producer may fill: `cached_cons` is the consumer index plus the ring
/// size (the first index the producer may not write).
#[inline]
pub(super) fn prod_free(cached_cons: u32, prod: u32) -> u32 {
    cached_cons.wrapping_sub(prod)
}

/// Entries a consumer may read.
#[inline]
pub(super) fn cons_avail(prod: u32, cons: u32) -> u32 {
    prod.wrapping_sub(cons)
}

/// The slot of index `idx` in a ring of `mask + 1` entries.
#[inline]
pub(super) fn slot(idx: u32, mask: u32) -> usize {
    (idx & mask) as usize
}

/// One mmap'd ring of `T` descriptors (`u64` addresses for fill/completion,
/// `xdp_desc` for RX/TX). A ring is used either as a producer (`push`/`submit`) or as
/// a consumer (`available`/`peek`/`advance`/`release`), never both.
pub(super) struct Ring<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    cached_prod: u32,
    cached_cons: u32,
    _map: Mmap,
    _t: PhantomData<T>,
}

// SAFETY: the ring owns its mapping; the raw pointers point into it and are only used
// through `&self`/`&mut self`, so moving the ring to another thread is sound for
// descriptor types that are themselves `Send` (plain integers here).
unsafe impl<T: Send> Send for Ring<T> {}

impl<T> std::fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("size", &(self.mask + 1))
            .field("cached_prod", &self.cached_prod)
            .field("cached_cons", &self.cached_cons)
            .finish()
    }
}

impl<T: Copy> Ring<T> {
    /// Maps the ring of `size` entries at page offset `pgoff` of the socket, laid out as
    /// `off` says (from `XDP_MMAP_OFFSETS`). `producer_side` says which end we are.
    pub(super) fn map(
        fd: BorrowedFd<'_>,
        pgoff: u64,
        off: &libc::xdp_ring_offset,
        size: u32,
        producer_side: bool,
    ) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!(
                "ring size {size} is not a power of two"
            )));
        }
        let len = off.desc as usize + size as usize * mem::size_of::<T>();
        let word_ok = |o: u64| o % 4 == 0 && o as usize + 4 <= len;
        if !(word_ok(off.producer) && word_ok(off.consumer) && word_ok(off.flags))
            || off.desc as usize % mem::align_of::<T>() != 0
        {
            return Err(io::Error::other(format!("unexpected ring layout {off:?}")));
        }
        let map = Mmap::ring(fd, pgoff, len)?;
        let at = |o: u64| {
            // SAFETY: `o` was checked to lie inside the `len`-byte mapping above.
            NonNull::new(unsafe { map.as_ptr().add(o as usize) }).expect("mapping is non-null")
        };
        let (producer, consumer, flags) = (at(off.producer), at(off.consumer), at(off.flags));
        let descs = at(off.desc).cast::<T>();
        let mut ring = Self {
            producer: producer.cast(),
            consumer: consumer.cast(),
            flags: flags.cast(),
            descs,
            mask: size - 1,
            cached_prod: 0,
            cached_cons: 0,
            _map: map,
            _t: PhantomData,
        };
        ring.cached_prod = ring.producer().load(Ordering::Acquire);
        ring.cached_cons = ring.consumer().load(Ordering::Acquire);
        if producer_side {
            ring.cached_cons = ring.cached_cons.wrapping_add(size);
        }
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: `producer` points at an aligned u32 inside the live mapping, which is
        // only ever accessed atomically (by us and by the kernel).
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    /// Entries in the ring.
    pub(super) fn size(&self) -> u32 {
        self.mask + 1
    }

    /// True when the kernel asked to be woken (`XDP_RING_NEED_WAKEUP`).
    pub(super) fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`: an aligned u32 in the mapping, accessed atomically.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Acquire) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    // ---- producer side (fill, TX) ----

    /// Free slots, refreshing the consumer index when fewer than `want` are known free.
    pub(super) fn free(&mut self, want: u32) -> u32 {
        let free = prod_free(self.cached_cons, self.cached_prod);
        if free >= want {
            return free;
        }
        self.cached_cons = self
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.size());
        prod_free(self.cached_cons, self.cached_prod)
    }

    /// Writes `v` into the next free slot (not yet visible to the kernel); false when
    /// the ring is full.
    pub(super) fn push(&mut self, v: T) -> bool {
        if self.free(1) == 0 {
            return false;
        }
        let i = slot(self.cached_prod, self.mask);
        // SAFETY: `i <= mask` is inside the descriptor array of the mapping, and the
        // slot lies between the published producer index and consumer + size, so the
        // kernel does not read it until we publish.
        unsafe { self.descs.as_ptr().add(i).write_volatile(v) };
        self.cached_prod = self.cached_prod.wrapping_add(1);
        true
    }

    /// Publishes everything pushed so far to the kernel.
    pub(super) fn submit(&self) {
        self.producer().store(self.cached_prod, Ordering::Release);
    }

    /// Entries pushed (published or not) that the kernel has not consumed yet, as last
    /// seen.
    pub(super) fn in_flight(&mut self) -> u32 {
        self.size() - self.free(self.size())
    }

    // ---- consumer side (RX, completion) ----

    /// Entries ready to read, refreshing the producer index when fewer than `want` are
    /// known.
    pub(super) fn available(&mut self, want: u32) -> u32 {
        let avail = cons_avail(self.cached_prod, self.cached_cons);
        if avail >= want {
            return avail;
        }
        self.cached_prod = self.producer().load(Ordering::Acquire);
        cons_avail(self.cached_prod, self.cached_cons)
    }

    /// The `i`-th ready entry (`i` below what [`available`](Self::available) said).
    pub(super) fn peek(&self, i: u32) -> T {
        assert!(
            i < cons_avail(self.cached_prod, self.cached_cons),
            "peek past the producer"
        );
        let s = slot(self.cached_cons.wrapping_add(i), self.mask);
        // SAFETY: `s <= mask` is inside the descriptor array; the entry lies between
        // our consumer index and the producer index the kernel published with a
        // Release store we read with Acquire, so it is written and stays untouched
        // until we publish a consumer index past it.
        unsafe { self.descs.as_ptr().add(s).read_volatile() }
    }

    /// Marks `n` ready entries as read (not yet visible to the kernel).
    pub(super) fn advance(&mut self, n: u32) {
        assert!(
            n <= cons_avail(self.cached_prod, self.cached_cons),
            "advance past the producer"
        );
        self.cached_cons = self.cached_cons.wrapping_add(n);
    }

    /// Gives the read entries' slots back to the kernel.
    pub(super) fn release(&self) {
        self.consumer().store(self.cached_cons, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_math_wraps() {
        let size = 8u32;
        // Producer at u32::MAX - 1, consumer 3 behind: 5 free, slots wrap to 6, 7, 0.
        let prod = u32::MAX - 1;
        let cons = prod.wrapping_sub(3);
        assert_eq!(prod_free(cons.wrapping_add(size), prod), 5);
        assert_eq!(cons_avail(prod, cons), 3);
        assert_eq!(slot(prod, size - 1), 6);
        assert_eq!(slot(prod.wrapping_add(2), size - 1), 0);
        // Full and empty.
        assert_eq!(
            prod_free(cons.wrapping_add(size), cons.wrapping_add(size)),
            0
        );
        assert_eq!(cons_avail(cons, cons), 0);
    }
}
