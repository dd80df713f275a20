//! Operations submitted now and awaited later, from a stage's state.
//!
//! The futures of [`write_at`](super::write_at) and friends hold the worker's ring
//! (an `Rc`), so a stage cannot keep them across bursts: a stage is `Send`. An
//! [`InFlight`] holds only the ring's id, the slot's index and the operation's
//! resource, so it is `Send` and can live in a stage between `process_burst` and
//! `progress` (see [`AsyncStage::pending`](pipewright_stages::AsyncStage::pending)).
//! It is awaited on the worker thread that submitted it; async stages stay on their
//! worker, so that is where they await it.

// Unsafe here: a submission hands the kernel memory owned by the operation's resource.
#![allow(unsafe_code)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use io_uring::{opcode, squeue, types};

use super::buffers::PooledBuf;
use super::driver::{current, existing, poll_slot, Slot};

/// An io_uring operation in flight on the calling worker's ring, awaitable later.
///
/// Await it (`(&mut in_flight).await` is cancel-safe: a dropped wait loses nothing)
/// to get the result and the resource back. Dropped before completion, it leaves
/// the resource to the ring until the kernel is done with it, like the awaited
/// operations. It must be awaited on the thread that submitted it; awaiting it on
/// another thread is a bug and panics (a pipewright async stage never moves between
/// workers while it has work in flight).
#[derive(Debug)]
pub struct InFlight<T: 'static> {
    driver: u64,
    index: usize,
    resource: Option<T>,
}

impl<T: 'static> InFlight<T> {
    /// Whether the kernel has completed it (its wait would not block).
    pub fn is_complete(&self) -> bool {
        let Some(driver) = existing() else {
            return false;
        };
        let mut d = driver.borrow_mut();
        if d.id != self.driver || self.resource.is_none() {
            return false;
        }
        let _ = d.flush();
        d.reap();
        matches!(d.ops.get(self.index), Some(Slot::Done(_)))
    }
}

impl<T: Unpin + 'static> Future for InFlight<T> {
    type Output = (io::Result<u32>, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        assert!(
            this.resource.is_some(),
            "an InFlight was awaited after it completed"
        );
        let driver = existing().filter(|d| d.borrow().id == this.driver).expect(
            "an InFlight io_uring operation must be awaited on the worker that submitted it",
        );
        let result = poll_slot(&mut driver.borrow_mut(), this.index, cx);
        result.map(|r| (r, this.resource.take().expect("checked above")))
    }
}

impl<T: 'static> Drop for InFlight<T> {
    fn drop(&mut self) {
        let Some(resource) = self.resource.take() else {
            return;
        };
        match existing().filter(|d| d.borrow().id == self.driver) {
            Some(driver) => {
                let mut d = driver.borrow_mut();
                match d.ops.get(self.index) {
                    Some(Slot::Done(_)) => {
                        d.ops.remove(self.index);
                    }
                    Some(Slot::Waiting(_)) => {
                        d.ops[self.index] = Slot::Orphaned(Box::new(resource));
                    }
                    _ => {}
                }
            }
            // Dropped off its worker: the kernel may still use the memory, and only
            // its ring could tell. Leak it rather than free it under the kernel.
            None => std::mem::forget(resource),
        }
    }
}

/// Queues `entries` in one submission with fresh slots, keeping an IO_LINK chain
/// whole (the kernel ends a chain at the end of a submission).
///
/// # Safety
/// Every pointer in the entries must point into heap memory owned by the resources
/// that are handed to the returned slots, stable while those resources live.
unsafe fn push_together(entries: &[squeue::Entry]) -> io::Result<(u64, Vec<usize>)> {
    let driver = current()?;
    let mut d = driver.borrow_mut();
    let needed = entries.len();
    if d.ring.submission().capacity() < needed {
        return Err(io::Error::other(
            "the worker's io_uring has fewer submission entries than one linked operation needs: give the stage a larger UringBudget",
        ));
    }
    let room = |d: &mut super::driver::Driver| {
        let sq = d.ring.submission();
        sq.capacity() - sq.len()
    };
    while room(&mut d) < needed {
        d.ring.submit()?;
        d.unsubmitted = false;
        d.reap();
    }
    let mut indices = Vec::with_capacity(needed);
    for entry in entries {
        let index = d.ops.insert(Slot::Waiting(None));
        indices.push(index);
        let entry = entry.clone().user_data(index as u64);
        // SAFETY: room for every entry was made above; the caller guarantees the
        // entries' memory lives in resources the slots keep until completion.
        let pushed = unsafe { d.ring.submission().push(&entry) }.is_ok();
        debug_assert!(pushed, "room was made for every entry");
    }
    d.unsubmitted = true;
    Ok((d.id, indices))
}

/// A write and the `fdatasync` linked after it, in flight.
#[derive(Debug)]
pub struct WriteThenSync {
    /// The write: its byte count and the buffer.
    pub write: InFlight<Vec<u8>>,
    /// The sync (`ECANCELED` when the write failed or was short).
    pub sync: InFlight<()>,
}

/// Starts writing `buf[start..]` at `offset` of `fd` and, linked after it (so only
/// once the write has fully succeeded), an `fdatasync` of `fd`: one submission. The
/// sync completes with `ECANCELED` when the write failed or was short.
///
/// This is the group-commit step a log keeps in flight while its next batch gathers.
pub fn write_then_sync(
    fd: std::os::fd::RawFd,
    buf: Vec<u8>,
    start: usize,
    offset: u64,
) -> Result<WriteThenSync, (io::Error, Vec<u8>)> {
    let start = start.min(buf.len());
    let len = (buf.len() - start).min(u32::MAX as usize) as u32;
    let write = opcode::Write::new(types::Fd(fd), buf[start..].as_ptr(), len)
        .offset(offset)
        .build()
        .flags(squeue::Flags::IO_LINK);
    let sync = opcode::Fsync::new(types::Fd(fd))
        .flags(types::FsyncFlags::DATASYNC)
        .build();
    // SAFETY: the write points into `buf`'s heap buffer, which its InFlight owns
    // (and hands to the ring if dropped early); the sync refers to no memory.
    match unsafe { push_together(&[write, sync]) } {
        Ok((driver, indices)) => Ok(WriteThenSync {
            write: InFlight {
                driver,
                index: indices[0],
                resource: Some(buf),
            },
            sync: InFlight {
                driver,
                index: indices[1],
                resource: Some(()),
            },
        }),
        Err(e) => Err((e, buf)),
    }
}

/// Pushes one entry whose memory `resource` owns.
///
/// # Safety
/// As for [`push_together`].
unsafe fn start<T: 'static>(
    entry: squeue::Entry,
    resource: T,
) -> Result<InFlight<T>, (io::Error, T)> {
    // SAFETY: forwarded from the caller.
    match unsafe { push_together(std::slice::from_ref(&entry)) } {
        Ok((driver, indices)) => Ok(InFlight {
            driver,
            index: indices[0],
            resource: Some(resource),
        }),
        Err(e) => Err((e, resource)),
    }
}

/// Starts reading up to `len` bytes at `offset` of `fd` into `buf`, which is
/// zero-filled to `len` first; truncate it to the completion's byte count.
pub fn start_read(
    fd: std::os::fd::RawFd,
    mut buf: Vec<u8>,
    len: usize,
    offset: u64,
) -> Result<InFlight<Vec<u8>>, (io::Error, Vec<u8>)> {
    buf.clear();
    buf.resize(len, 0);
    let len32 = len.min(u32::MAX as usize) as u32;
    let entry = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), len32)
        .offset(offset)
        .build();
    // SAFETY: the entry points into `buf`'s heap buffer (length >= len32), owned by
    // the InFlight (or the ring, if dropped early) until the completion.
    unsafe { start(entry, buf) }
}

/// Starts reading up to `len` bytes (at most the buffer's capacity) at `offset` of
/// `fd` into a pooled buffer, as a fixed-buffer read when the worker's ring has the
/// pool registered; set the buffer's length to the completion's byte count.
pub fn start_read_pooled(
    fd: std::os::fd::RawFd,
    mut buf: PooledBuf,
    len: usize,
    offset: u64,
) -> Result<InFlight<PooledBuf>, (io::Error, PooledBuf)> {
    let len32 = len.min(buf.capacity()).min(u32::MAX as usize) as u32;
    let fixed = match current() {
        Ok(d) => d.borrow_mut().fixed_index(&buf),
        Err(e) => return Err((e, buf)),
    };
    let ptr = buf.as_mut_ptr();
    let entry = match fixed {
        Some(index) => opcode::ReadFixed::new(types::Fd(fd), ptr, len32, index)
            .offset(offset)
            .build(),
        None => opcode::Read::new(types::Fd(fd), ptr, len32)
            .offset(offset)
            .build(),
    };
    // SAFETY: the entry points into `buf`'s part of its pool's region (`len32` <=
    // capacity); the InFlight owns `buf`, so that memory stays ours until done.
    unsafe { start(entry, buf) }
}

/// Reads `len` bytes at `offset` of `fd` into `buf` at once, but only if every one of
/// them is in the page cache (`preadv2` with `RWF_NOWAIT`: never waits for storage).
/// Returns false, with `buf`'s contents unspecified, when any byte would need storage
/// (or the file ends first): read the range through the ring then.
///
/// Why: a read the page cache can serve is a plain memory copy, and doing it in the
/// syscall is about 1.5x faster here than the same copy done by io_uring into a
/// (registered) buffer, and needs no completion round trip.
pub(crate) fn read_if_cached(
    fd: std::os::fd::RawFd,
    buf: &mut PooledBuf,
    len: usize,
    offset: u64,
) -> bool {
    let len = len.min(buf.capacity());
    buf.set_len(len);
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return false;
    };
    // SAFETY: `iov` describes the first `len` bytes of `buf`'s own part of its pool's
    // region (`len` <= capacity), which we hold exclusively through `&mut buf` for the
    // duration of this synchronous call.
    let n = unsafe { libc::preadv2(fd, &iov, 1, offset, libc::RWF_NOWAIT) };
    n >= 0 && n as usize == len
}

/// Starts writing the pooled buffer's bytes (its length) at `offset` of `fd`, as a
/// fixed-buffer write when the worker's ring has the pool registered.
pub fn start_write_pooled(
    fd: std::os::fd::RawFd,
    buf: PooledBuf,
    offset: u64,
) -> Result<InFlight<PooledBuf>, (io::Error, PooledBuf)> {
    let len32 = buf.len().min(u32::MAX as usize) as u32;
    let fixed = match current() {
        Ok(d) => d.borrow_mut().fixed_index(&buf),
        Err(e) => return Err((e, buf)),
    };
    let ptr = buf.as_ptr();
    let entry = match fixed {
        Some(index) => opcode::WriteFixed::new(types::Fd(fd), ptr, len32, index)
            .offset(offset)
            .build(),
        None => opcode::Write::new(types::Fd(fd), ptr, len32)
            .offset(offset)
            .build(),
    };
    // SAFETY: the entry points into the first `len32` (initialised) bytes of `buf`'s
    // part of its pool's region; the InFlight owns `buf`, so that memory is not reused
    // or freed until the completion.
    unsafe { start(entry, buf) }
}
