//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`): buffers the kernel picks from
//! when a multishot receive completes, so no buffer is tied up by a receive that has
//! not happened yet. The consumer hands each buffer back once it has read it.
//!
//! Memory layout, shared with the kernel: `entries` descriptors of 16 bytes
//! (`io_uring_buf`: addr u64, len u32, bid u16, resv u16), page-aligned; the ring's
//! tail is the `resv` field of descriptor 0 (byte 14), written by us with release
//! ordering after the descriptors it publishes.

// Unsafe here: the provided-buffer ring shared with the kernel (raw memory and its tail).
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

const PAGE: usize = 4096;
const DESC: usize = 16;

/// The memory of one provided-buffer ring and its buffers.
pub(crate) struct BufRing {
    ring: NonNull<u8>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    entries: u16,
    size: usize,
    tail: Cell<u16>,
}

impl BufRing {
    /// `entries` (a power of two, at most 32768) buffers of `size` bytes, all provided.
    pub(crate) fn new(entries: u16, size: usize) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 || size == 0 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a provided-buffer ring needs a power-of-two count up to 32768 and a non-zero size; got {entries} of {size}"),
            ));
        }
        let ring_layout = Layout::from_size_align(entries as usize * DESC, PAGE)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let bufs_layout = (entries as usize)
            .checked_mul(size)
            .and_then(|n| Layout::from_size_align(n, PAGE).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffers too large"))?;
        // SAFETY: both layouts have a non-zero size.
        let ring = NonNull::new(unsafe { alloc_zeroed(ring_layout) });
        // SAFETY: as above.
        let bufs = NonNull::new(unsafe { alloc_zeroed(bufs_layout) });
        let (Some(ring), Some(bufs)) = (ring, bufs) else {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "cannot allocate a provided-buffer ring",
            ));
        };
        let this = Self {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            entries,
            size,
            tail: Cell::new(0),
        };
        for bid in 0..entries {
            this.write_desc(bid);
        }
        this.publish();
        Ok(this)
    }

    /// Address of the descriptor array, for registration.
    pub(crate) fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// The first `len` bytes of buffer `bid`, which the kernel filled and handed to us.
    pub(crate) fn filled(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.size);
        // SAFETY: in bounds (checked); the kernel wrote these bytes before posting the
        // completion that gave us `bid`, and does not touch the buffer again until we
        // provide it back (`give_back`), which needs `&self` after this borrow ends.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(bid as usize * self.size), len) }
    }

    /// Writes descriptor for buffer `bid` at the current tail, not yet published.
    fn write_desc(&self, bid: u16) {
        let tail = self.tail.get();
        let slot = (tail & (self.entries - 1)) as usize;
        // SAFETY: `slot < entries`, inside the descriptor array; the kernel only reads
        // descriptors between its head and our published tail, and this one is past
        // the tail until `publish`. Byte 14 of descriptor 0 is the shared tail, which
        // this write leaves alone (it writes addr, len, bid only).
        unsafe {
            let desc = self.ring.as_ptr().add(slot * DESC);
            let addr = self.bufs.as_ptr().add(bid as usize * self.size) as u64;
            desc.cast::<u64>().write(addr);
            desc.add(8).cast::<u32>().write(self.size as u32);
            desc.add(12).cast::<u16>().write(bid);
        }
        self.tail.set(tail.wrapping_add(1));
    }

    /// Makes the descriptors written so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: byte 14 of the page-aligned descriptor array is 2-byte aligned and
        // is the ring tail the kernel reads; it is only ever accessed atomically.
        let tail = unsafe { AtomicU16::from_ptr(self.ring.as_ptr().add(14).cast::<u16>()) };
        tail.store(self.tail.get(), Ordering::Release);
    }

    /// Provides buffers back to the kernel once their contents have been used.
    pub(crate) fn give_back(&self, bids: impl IntoIterator<Item = u16>) {
        let mut any = false;
        for bid in bids {
            debug_assert!(bid < self.entries);
            self.write_desc(bid);
            any = true;
        }
        if any {
            self.publish();
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions came from `alloc_zeroed` with these layouts and are freed
        // once. The owner drops a `BufRing` only after the kernel can no longer use it:
        // its receive ended (or was cancelled and its last completion reaped).
        unsafe {
            dealloc(self.ring.as_ptr(), self.ring_layout);
            dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_and_tail_follow_the_kernel_layout() {
        let ring = BufRing::new(4, 100).unwrap();
        // SAFETY: (test) reading the descriptor array we own, nothing else uses it.
        let (tail, bid2, len0) = unsafe {
            let base = ring.ring.as_ptr();
            (
                base.add(14).cast::<u16>().read(),
                base.add(2 * DESC + 12).cast::<u16>().read(),
                base.add(8).cast::<u32>().read(),
            )
        };
        assert_eq!(tail, 4, "all four buffers provided");
        assert_eq!(bid2, 2);
        assert_eq!(len0, 100);
        ring.give_back([1]);
        // SAFETY: (test) as above.
        let tail = unsafe { ring.ring.as_ptr().add(14).cast::<u16>().read() };
        assert_eq!(tail, 5);
        assert!(BufRing::new(3, 10).is_err());
    }
}
