//! A stage's I/O buffers: a fixed number of equal, page-aligned buffers in one
//! allocation, handed out one at a time and returned when the holder drops them.
//!
//! The pool is the stage's memory budget for I/O: when every buffer is out, the next
//! read waits for one to come back (backpressure), so bytes in flight never exceed
//! `count × size`. The same memory can be registered with the worker's io_uring as
//! fixed buffers, which spares the kernel pinning and mapping the pages on every
//! operation (`READ_FIXED`/`WRITE_FIXED`).
//!
//! This module holds the only `unsafe` of the pool: the buffers are disjoint slices of
//! one region, and each is handed out to exactly one [`PooledBuf`] at a time.

// Unsafe here: one allocated region split into disjoint buffers, each lent to one owner.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_listener::Event;

const PAGE: usize = 4096;

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Region {
    base: NonNull<u8>,
    layout: Layout,
    pub(crate) size: usize,
    pub(crate) count: usize,
    pub(crate) id: u64,
    free: Mutex<Vec<u32>>,
    returned: Event,
}

// SAFETY: the region is plain memory; every access goes through a `PooledBuf`, which
// owns its disjoint slice exclusively, or through the kernel while an operation that
// owns the `PooledBuf` is in flight. The free list is behind a mutex.
unsafe impl Send for Region {}
// SAFETY: see `Send`: shared references only read `size`, `count`, `id` and lock the
// free list; no slice is reachable through `&Region` alone.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed(self.layout)` and is freed once, here;
        // every `PooledBuf` and every ring registration holds an `Arc<Region>`, so
        // nothing refers to the memory any more.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}

impl Region {
    /// The `iovec` of buffer `index`, for registration with a ring.
    pub(crate) fn iovec(&self, index: usize) -> libc::iovec {
        debug_assert!(index < self.count);
        libc::iovec {
            // SAFETY: `index < count`, so the offset stays inside the allocation.
            iov_base: unsafe { self.base.as_ptr().add(index * self.size) }.cast(),
            iov_len: self.size,
        }
    }
}

/// A pool of `count` I/O buffers of `size` bytes each.
///
/// ```
/// use pipewright::uring::BufferPool;
///
/// let pool = BufferPool::new(4, 64 * 1024)?;
/// let mut buf = pool.try_take().expect("a buffer is free");
/// buf.set_len(5);
/// buf.copy_from_slice(b"hello");
/// assert_eq!(&buf[..], b"hello");
/// assert_eq!(pool.available(), 3);
/// drop(buf);
/// assert_eq!(pool.available(), 4);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct BufferPool {
    pub(crate) region: Arc<Region>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("count", &self.region.count)
            .field("size", &self.region.size)
            .field("available", &self.available())
            .finish()
    }
}

impl BufferPool {
    /// `count` buffers of `size` bytes (rounded up to whole pages), zeroed.
    ///
    /// Fails with `InvalidInput` for a count or size of 0 or more than 65 536
    /// buffers (the ring's fixed-buffer index is 16 bits), and `OutOfMemory` if the
    /// region cannot be allocated.
    pub fn new(count: usize, size: usize) -> std::io::Result<Self> {
        use std::io::{Error, ErrorKind};
        if count == 0 || size == 0 || count > u16::MAX as usize + 1 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("a buffer pool needs 1..=65536 buffers of at least 1 byte; got {count} of {size}"),
            ));
        }
        let size = size.div_ceil(PAGE) * PAGE;
        let layout = count
            .checked_mul(size)
            .and_then(|total| Layout::from_size_align(total, PAGE).ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "buffer pool too large"))?;
        // SAFETY: `layout` has a non-zero size (count, size >= 1).
        let base = NonNull::new(unsafe { alloc_zeroed(layout) })
            .ok_or_else(|| Error::new(ErrorKind::OutOfMemory, "cannot allocate buffer pool"))?;
        Ok(Self {
            region: Arc::new(Region {
                base,
                layout,
                size,
                count,
                id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
                free: Mutex::new((0..count as u32).rev().collect()),
                returned: Event::new(),
            }),
        })
    }

    /// Bytes per buffer.
    pub fn buffer_size(&self) -> usize {
        self.region.size
    }

    /// Buffers in the pool, free or not.
    pub fn count(&self) -> usize {
        self.region.count
    }

    /// Buffers free right now.
    pub fn available(&self) -> usize {
        self.region
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// A free buffer (empty: length 0), if there is one.
    pub fn try_take(&self) -> Option<PooledBuf> {
        let index = self
            .region
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()?;
        Some(PooledBuf {
            region: self.region.clone(),
            index,
            len: 0,
        })
    }

    /// A free buffer, waiting for one to be returned if all are out.
    pub async fn take(&self) -> PooledBuf {
        loop {
            if let Some(buf) = self.try_take() {
                return buf;
            }
            let listener = self.region.returned.listen();
            if let Some(buf) = self.try_take() {
                return buf;
            }
            listener.await;
        }
    }
}

/// One buffer of a [`BufferPool`], returned to the pool when dropped. Dereferences to
/// its filled part (`len` bytes); [`PooledBuf::set_len`] grows or shrinks that up to
/// the buffer's capacity.
pub struct PooledBuf {
    region: Arc<Region>,
    index: u32,
    len: usize,
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("index", &self.index)
            .field("len", &self.len)
            .finish()
    }
}

impl PooledBuf {
    /// The buffer's capacity.
    pub fn capacity(&self) -> usize {
        self.region.size
    }

    /// Sets the filled length (bytes are whatever the buffer held: zero or old data,
    /// never uninitialised memory).
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.region.size,
            "{len} > buffer capacity {}",
            self.region.size
        );
        self.len = len;
    }

    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    pub(crate) fn pool_id(&self) -> u64 {
        self.region.id
    }

    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// Start of the whole buffer, for the kernel to fill.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.region.iovec(self.index as usize).iov_base.cast()
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let iov = self.region.iovec(self.index as usize);
        // SAFETY: the slice is this buffer's own part of the region (in bounds, `len <=
        // size`), initialised (zeroed at allocation), and no one else can reach it
        // while this `PooledBuf` exists.
        unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), self.len) }
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let iov = self.region.iovec(self.index as usize);
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(iov.iov_base.cast::<u8>(), self.len) }
    }
}

impl PartialEq for PooledBuf {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.region
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.index);
        self.region.returned.notify(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_disjoint_and_come_back() {
        let pool = BufferPool::new(3, 100).unwrap();
        assert_eq!(pool.buffer_size(), PAGE);
        let mut bufs: Vec<_> = (0..3).map(|_| pool.try_take().unwrap()).collect();
        assert!(pool.try_take().is_none(), "the pool is the budget");
        for (i, b) in bufs.iter_mut().enumerate() {
            b.set_len(PAGE);
            b.fill(i as u8 + 1);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|x| *x == i as u8 + 1));
        }
        bufs.pop();
        assert_eq!(pool.available(), 1);
    }

    #[test]
    fn take_waits_for_a_returned_buffer() {
        let pool = BufferPool::new(1, 10).unwrap();
        let held = pool.try_take().unwrap();
        let p2 = pool.clone();
        let waiter = std::thread::spawn(move || futures::executor::block_on(p2.take()).index());
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(held);
        assert_eq!(waiter.join().unwrap(), 0);
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert!(BufferPool::new(0, 10).is_err());
        assert!(BufferPool::new(1, 0).is_err());
        assert!(BufferPool::new(70_000, 10).is_err());
    }
}
