//! The per-worker io_uring driver. This is the only module with `unsafe` for I/O:
//! the kernel reads and writes memory we hand it, so each operation keeps its buffer
//! alive (and in place) until its completion has been reaped.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;
use tokio::io::unix::AsyncFd;

/// Sizing of a worker's io_uring.
#[derive(Debug, Clone, Copy)]
pub struct UringConfig {
    /// Submission queue entries.
    pub entries: u32,
}

impl Default for UringConfig {
    fn default() -> Self {
        Self { entries: 256 }
    }
}

enum Slot {
    /// Submitted; the waker of the future awaiting it, once polled.
    Waiting(Option<Waker>),
    /// Completed with this result (negative errno on failure).
    Done(i32),
    /// The awaiting future was dropped: the resource is kept until the completion.
    Orphaned(#[allow(dead_code)] Box<dyn Any>),
}

pub(crate) struct Driver {
    ring: IoUring,
    ops: Slab<Slot>,
    unsubmitted: bool,
}

thread_local! {
    static DRIVER: RefCell<Option<Rc<RefCell<Driver>>>> = const { RefCell::new(None) };
}

impl Driver {
    fn reap(&mut self) {
        let Driver { ring, ops, .. } = self;
        for cqe in ring.completion() {
            let index = cqe.user_data() as usize;
            match ops.get_mut(index) {
                Some(Slot::Waiting(waker)) => {
                    let waker = waker.take();
                    ops[index] = Slot::Done(cqe.result());
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                Some(Slot::Orphaned(_)) => {
                    ops.remove(index);
                }
                _ => {}
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.unsubmitted {
            self.ring.submit()?;
            self.unsubmitted = false;
        }
        Ok(())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The kernel may still be using buffers of operations in flight: wait for every
        // completion before the buffers (and the ring) go away.
        let _ = self.flush();
        while self.ops.iter().any(|(_, s)| !matches!(s, Slot::Done(_))) {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap();
        }
    }
}

/// The current worker's driver, created (with its reaping task) on first use. Must be
/// called from a task running on a tokio `LocalSet`, as pipewright's workers are.
fn current() -> io::Result<Rc<RefCell<Driver>>> {
    if let Some(d) = DRIVER.with(|d| d.borrow().clone()) {
        return Ok(d);
    }
    let ring = IoUring::new(UringConfig::default().entries)?;
    // SAFETY: eventfd(2) with valid flags; the result is checked before use and owned
    // from then on.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid file descriptor that nothing else owns.
    let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
    ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
    let driver = Rc::new(RefCell::new(Driver {
        ring,
        ops: Slab::new(),
        unsubmitted: false,
    }));
    // SAFETY: `eventfd` is an open descriptor owned by the `OwnedFd` the AsyncFd takes
    // ownership of; it stays open, and the same, until the AsyncFd is dropped.
    let notifications =
        unsafe { AsyncFd::register(eventfd) }.map_err(|e| io::Error::other(e.to_string()))?;
    let reaper = Rc::downgrade(&driver);
    tokio::task::spawn_local(async move {
        loop {
            let Ok(mut ready) = notifications.readable().await else {
                return;
            };
            let mut count = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer from our own non-blocking
            // eventfd; the result is only used to clear readiness.
            let n = unsafe { libc::read(notifications.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
            if n < 0 {
                ready.clear_ready();
            }
            match reaper.upgrade() {
                Some(d) => d.borrow_mut().reap(),
                None => return,
            }
        }
    });
    DRIVER.with(|d| *d.borrow_mut() = Some(driver.clone()));
    Ok(driver)
}

/// An operation in flight; resolves to its result and gives the resource back.
struct Op<T: 'static> {
    driver: Rc<RefCell<Driver>>,
    index: usize,
    resource: Option<T>,
}

impl<T: 'static> Op<T> {
    /// Queues `entry`, which refers to memory owned by `resource`.
    ///
    /// # Safety
    /// Every pointer in `entry` must point into heap memory owned by `resource` that
    /// stays valid and in place while `resource` is alive (moving `resource` must not
    /// move that memory: a `Vec`'s buffer, not an inline array).
    unsafe fn new(entry: squeue::Entry, resource: T) -> io::Result<Self> {
        let driver = current()?;
        let index = {
            let mut d = driver.borrow_mut();
            let index = d.ops.insert(Slot::Waiting(None));
            let entry = entry.user_data(index as u64);
            loop {
                let pushed = {
                    let mut sq = d.ring.submission();
                    // SAFETY: the caller guarantees the entry's memory lives in
                    // `resource`, which this `Op` (or its orphaned slot) keeps until
                    // the completion has been reaped.
                    unsafe { sq.push(&entry) }.is_ok()
                };
                if pushed {
                    break;
                }
                // Queue full: hand what is queued to the kernel and make room.
                d.ring.submit()?;
                d.reap();
            }
            d.unsubmitted = true;
            index
        };
        Ok(Self {
            driver,
            index,
            resource: Some(resource),
        })
    }
}

impl<T: Unpin + 'static> Future for Op<T> {
    type Output = (io::Result<u32>, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut d = this.driver.borrow_mut();
        // Operations queued together go to the kernel in one submission.
        if let Err(e) = d.flush() {
            drop(d);
            return Poll::Ready((
                Err(e),
                this.resource.take().expect("polled after completion"),
            ));
        }
        d.reap();
        match &mut d.ops[this.index] {
            Slot::Done(result) => {
                let result = *result;
                d.ops.remove(this.index);
                drop(d);
                let r = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(result as u32)
                };
                Poll::Ready((r, this.resource.take().expect("polled after completion")))
            }
            Slot::Waiting(waker) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Slot::Orphaned(_) => unreachable!("an op is orphaned only when its future is dropped"),
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        if let Some(resource) = self.resource.take() {
            let mut d = self.driver.borrow_mut();
            match d.ops.get(self.index) {
                Some(Slot::Done(_)) => {
                    d.ops.remove(self.index);
                }
                Some(Slot::Waiting(_)) => d.ops[self.index] = Slot::Orphaned(Box::new(resource)),
                _ => {}
            }
        }
    }
}

/// Writes `buf[start..]` at `offset` of `fd`; returns bytes written and the buffer.
pub async fn write_at(
    fd: RawFd,
    buf: Vec<u8>,
    start: usize,
    offset: u64,
) -> (io::Result<usize>, Vec<u8>) {
    let start = start.min(buf.len());
    let len = (buf.len() - start).min(u32::MAX as usize) as u32;
    let entry = opcode::Write::new(types::Fd(fd), buf[start..].as_ptr(), len)
        .offset(offset)
        .build();
    // SAFETY: the entry points into `buf`'s heap buffer, which the op owns until done.
    match unsafe { Op::new(entry, buf) } {
        Ok(op) => {
            let (r, buf) = op.await;
            (r.map(|n| n as usize), buf)
        }
        Err(e) => (Err(e), Vec::new()),
    }
}

/// Reads up to `len` bytes at `offset` of `fd` into `buf` (replacing its contents).
pub async fn read_at(
    fd: RawFd,
    mut buf: Vec<u8>,
    len: usize,
    offset: u64,
) -> (io::Result<usize>, Vec<u8>) {
    buf.clear();
    buf.reserve(len);
    let len32 = len.min(u32::MAX as usize) as u32;
    let entry = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), len32)
        .offset(offset)
        .build();
    // SAFETY: the entry points into `buf`'s heap buffer (capacity >= len), owned by
    // the op until done.
    match unsafe { Op::new(entry, buf) } {
        Ok(op) => {
            let (r, mut buf) = op.await;
            if let Ok(n) = r {
                // SAFETY: the kernel initialised the first `n <= len <= capacity` bytes.
                unsafe { buf.set_len(n as usize) };
            }
            (r.map(|n| n as usize), buf)
        }
        Err(e) => (Err(e), Vec::new()),
    }
}

/// `fdatasync(2)` through the ring.
pub async fn fdatasync(fd: RawFd) -> io::Result<()> {
    let entry = opcode::Fsync::new(types::Fd(fd))
        .flags(types::FsyncFlags::DATASYNC)
        .build();
    // SAFETY: the entry refers to no memory.
    let op = unsafe { Op::new(entry, ()) }?;
    op.await.0.map(|_| ())
}
