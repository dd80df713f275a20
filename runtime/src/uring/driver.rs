//! The per-worker io_uring driver. This is the only module with `unsafe` for I/O:
//! the kernel reads and writes memory we hand it, so each operation keeps its buffer
//! alive (and in place) until its completion has been reaped.

// Unsafe here: io_uring submissions hand the kernel memory that must stay alive until reaped.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, IoUring};
use slab::Slab;
use tokio::io::unix::AsyncFd;

use super::buffers::{PooledBuf, Region};

/// Sizing of a worker's io_uring: what the plan gives the worker from its stages'
/// declared [`UringBudget`](crate::UringBudget)s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringConfig {
    /// Submission queue entries.
    pub entries: u32,
    /// Slots of the ring's fixed-buffer table (0: none registered).
    pub fixed_buffers: u32,
}

impl Default for UringConfig {
    fn default() -> Self {
        Self {
            entries: 256,
            fixed_buffers: 0,
        }
    }
}

/// Buffer pools registered with a ring as fixed buffers: slot ranges of its sparse
/// table. Each entry keeps its pool's memory alive as long as the ring may use it.
struct FixedTable {
    capacity: u32,
    next: u32,
    pools: Vec<(u64, u32, Arc<Region>)>,
}

pub(super) enum Slot {
    /// Submitted; the waker of the future awaiting it, once polled.
    Waiting(Option<Waker>),
    /// Completed with this result (negative errno on failure).
    Done(i32),
    /// The awaiting future was dropped: the resource is kept until the completion.
    Orphaned(#[allow(dead_code)] Box<dyn Any>),
    /// A multishot operation: completions (result, flags) not yet taken, the waker of
    /// its consumer, and whether the kernel has posted its last completion.
    Stream {
        queue: std::collections::VecDeque<(i32, u32)>,
        waker: Option<Waker>,
        ended: bool,
    },
    /// A multishot operation whose owner is gone: it was cancelled; its resources
    /// (and provided-buffer group, unregistered at the end) are kept until its last
    /// completion.
    StreamOrphaned(#[allow(dead_code)] Box<dyn Any>, Option<u16>),
}

pub(crate) struct Driver {
    /// Tells this thread's ring from every other (see [`InFlight`](super::InFlight)).
    pub(super) id: u64,
    pub(super) ring: IoUring,
    pub(super) ops: Slab<Slot>,
    pub(super) unsubmitted: bool,
    fixed: FixedTable,
    next_bgid: u16,
}

thread_local! {
    static DRIVER: RefCell<Option<Rc<RefCell<Driver>>>> = const { RefCell::new(None) };
    static CONFIG: Cell<UringConfig> = const {
        Cell::new(UringConfig {
            entries: 256,
            fixed_buffers: 0,
        })
    };
}

/// Sets how the calling thread's ring is sized when it is created (workers call this
/// before their stages run, from the plan).
pub(crate) fn configure(config: UringConfig) {
    CONFIG.with(|c| c.set(config));
}

/// Fixed-buffer slots in use on the calling thread's ring (0 if it has none yet):
/// how many pooled buffers are registered with it.
pub fn fixed_buffers_registered() -> u32 {
    DRIVER.with(|d| d.borrow().as_ref().map_or(0, |d| d.borrow().fixed.next))
}

/// The configuration the calling thread's ring is (or will be) created with.
pub fn current_config() -> UringConfig {
    CONFIG.with(|c| c.get())
}

impl Driver {
    pub(super) fn reap(&mut self) {
        let Driver { ring, ops, .. } = self;
        let mut finished_groups = Vec::new();
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
                Some(Slot::Stream {
                    queue,
                    waker,
                    ended,
                }) => {
                    queue.push_back((cqe.result(), cqe.flags()));
                    if !io_uring::cqueue::more(cqe.flags()) {
                        *ended = true;
                    }
                    if let Some(w) = waker.take() {
                        w.wake();
                    }
                }
                Some(Slot::StreamOrphaned(_, group)) if !io_uring::cqueue::more(cqe.flags()) => {
                    finished_groups.extend(*group);
                    ops.remove(index);
                }
                _ => {}
            }
        }
        for bgid in finished_groups {
            let _ = ring.submitter().unregister_buf_ring(bgid);
        }
    }

    /// A fresh provided-buffer group id on this ring.
    pub(crate) fn next_buffer_group(&mut self) -> u16 {
        let id = self.next_bgid;
        self.next_bgid = self.next_bgid.wrapping_add(1);
        id
    }

    pub(crate) fn submitter(&self) -> io_uring::Submitter<'_> {
        self.ring.submitter()
    }

    /// The fixed-buffer index of `buf` on this ring, registering its pool on first use
    /// if the table has room; `None`: use a plain (unregistered) operation.
    pub(super) fn fixed_index(&mut self, buf: &PooledBuf) -> Option<u16> {
        let id = buf.pool_id();
        if let Some((_, base, _)) = self.fixed.pools.iter().find(|(p, _, _)| *p == id) {
            return u16::try_from(base + buf.index()).ok();
        }
        let region = buf.region();
        let count = region.count as u32;
        if self.fixed.capacity - self.fixed.next < count {
            return None;
        }
        let iovecs: Vec<libc::iovec> = (0..region.count).map(|i| region.iovec(i)).collect();
        // SAFETY: the iovecs describe `region`'s allocation, which the table keeps alive
        // (an `Arc` in `fixed.pools`) for as long as the ring exists.
        let registered = unsafe {
            self.ring
                .submitter()
                .register_buffers_update(self.fixed.next, &iovecs, None)
        };
        if let Err(error) = registered {
            tracing::debug!(target: "pipewright", %error, "fixed buffers not registered; using plain reads");
            self.fixed.capacity = self.fixed.next;
            return None;
        }
        let base = self.fixed.next;
        self.fixed.next += count;
        self.fixed.pools.push((id, base, region.clone()));
        u16::try_from(base + buf.index()).ok()
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
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
        let live: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Stream { ended: false, .. }))
            .map(|(i, _)| i as u64)
            .collect();
        for index in live {
            self.push_cancel(index);
        }
        let _ = self.ring.submit();
        while self
            .ops
            .iter()
            .any(|(_, s)| !matches!(s, Slot::Done(_) | Slot::Stream { ended: true, .. }))
        {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap();
        }
    }
}

impl Driver {
    /// Queues a cancellation of the operation with user data `target` (its own
    /// completion is ignored: it carries no slot).
    fn push_cancel(&mut self, target: u64) {
        let entry = opcode::AsyncCancel::new(target).build().user_data(u64::MAX);
        loop {
            // SAFETY: a cancel refers to no memory.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.unsubmitted = true;
                return;
            }
            if self.ring.submit().is_err() {
                return;
            }
            self.reap();
        }
    }
}

/// A multishot operation in flight: a stream of completions.
pub(crate) struct StreamOp {
    driver: Rc<RefCell<Driver>>,
    index: usize,
    /// Kept alive (with the buffer group) until the kernel's last completion.
    keep: Option<(Box<dyn Any>, Option<u16>)>,
}

impl StreamOp {
    /// Starts a multishot `entry`, whose memory lives in `keep` (and in the provided
    /// buffer group `group`, if any).
    ///
    /// # Safety
    /// Every pointer in `entry` must point into heap memory owned by `keep` (or the
    /// group's buffers, which `keep` must own too), stable while `keep` is alive.
    pub(crate) unsafe fn start(
        entry: squeue::Entry,
        keep: Box<dyn Any>,
        group: Option<u16>,
    ) -> io::Result<Self> {
        let driver = current()?;
        let index = {
            let mut d = driver.borrow_mut();
            let index = d.ops.insert(Slot::Stream {
                queue: Default::default(),
                waker: None,
                ended: false,
            });
            let entry = entry.user_data(index as u64);
            loop {
                // SAFETY: the caller guarantees the entry's memory lives in `keep`,
                // which this op (or its orphaned slot) holds until the last completion.
                if unsafe { d.ring.submission().push(&entry) }.is_ok() {
                    break;
                }
                if let Err(e) = d.ring.submit() {
                    d.ops.remove(index);
                    return Err(e);
                }
                d.reap();
            }
            d.unsubmitted = true;
            index
        };
        Ok(Self {
            driver,
            index,
            keep: Some((keep, group)),
        })
    }

    /// Whether the kernel has posted its last completion.
    pub(crate) fn ended(&self) -> bool {
        matches!(
            self.driver.borrow().ops.get(self.index),
            Some(Slot::Stream { ended: true, .. })
        )
    }

    /// Moves completions that have arrived into `out` without waiting (and without
    /// registering a waker); false once the operation has ended (re-arm it then).
    pub(crate) fn take_completions(&mut self, out: &mut Vec<(i32, u32)>) -> bool {
        let mut d = self.driver.borrow_mut();
        if let Err(error) = d.flush() {
            tracing::warn!(target: "pipewright", %error, "io_uring submit failed");
        }
        d.reap();
        let Slot::Stream { queue, ended, .. } = &mut d.ops[self.index] else {
            unreachable!("a stream op's slot stays a stream while the op lives")
        };
        out.extend(queue.drain(..));
        !*ended || !out.is_empty()
    }

    /// Moves completions that have arrived into `out`; waits for at least one unless
    /// the operation has ended. Returns false once it has ended and nothing is left
    /// (re-arm it then).
    pub(crate) fn poll_completions(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<(i32, u32)>,
    ) -> Poll<bool> {
        let mut d = self.driver.borrow_mut();
        if let Err(error) = d.flush() {
            tracing::warn!(target: "pipewright", %error, "io_uring submit failed");
        }
        d.reap();
        let Slot::Stream {
            queue,
            waker,
            ended,
        } = &mut d.ops[self.index]
        else {
            unreachable!("a stream op's slot stays a stream while the op lives")
        };
        if !queue.is_empty() {
            out.extend(queue.drain(..));
            return Poll::Ready(true);
        }
        if *ended {
            return Poll::Ready(false);
        }
        *waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for StreamOp {
    fn drop(&mut self) {
        let mut d = self.driver.borrow_mut();
        let (keep, group) = self.keep.take().expect("kept until drop");
        match &d.ops[self.index] {
            // Ended: the kernel is done with it; its owner decides about the group.
            Slot::Stream { ended: true, .. } => {
                d.ops.remove(self.index);
            }
            _ => {
                d.ops[self.index] = Slot::StreamOrphaned(keep, group);
                let index = self.index as u64;
                d.push_cancel(index);
                let _ = d.flush();
            }
        }
    }
}

/// The calling thread's driver if it has one (never creates it).
pub(super) fn existing() -> Option<Rc<RefCell<Driver>>> {
    DRIVER.with(|d| d.borrow().clone())
}

/// The current worker's driver (created on first use), for modules that register
/// resources with it.
pub(crate) fn driver() -> io::Result<Rc<RefCell<Driver>>> {
    current()
}

/// The current worker's driver, created (with its reaping task) on first use. Must be
/// called from a task running on a tokio `LocalSet`, as pipewright's workers are.
pub(super) fn current() -> io::Result<Rc<RefCell<Driver>>> {
    if let Some(d) = DRIVER.with(|d| d.borrow().clone()) {
        return Ok(d);
    }
    let config = current_config();
    let ring = IoUring::new(config.entries.max(1))?;
    let mut fixed = FixedTable {
        capacity: 0,
        next: 0,
        pools: Vec::new(),
    };
    if config.fixed_buffers > 0 {
        match ring
            .submitter()
            .register_buffers_sparse(config.fixed_buffers)
        {
            Ok(()) => fixed.capacity = config.fixed_buffers,
            Err(error) => {
                tracing::warn!(target: "pipewright", %error, slots = config.fixed_buffers, "cannot register a fixed-buffer table; reads use unregistered buffers")
            }
        }
    }
    // SAFETY: eventfd(2) with valid flags; the result is checked before use and owned
    // from then on.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid file descriptor that nothing else owns.
    let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
    ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let driver = Rc::new(RefCell::new(Driver {
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ring,
        ops: Slab::new(),
        unsubmitted: false,
        fixed,
        next_bgid: 0,
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
pub(crate) struct Op<T: 'static> {
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
    /// On failure the resource comes back with the error (nothing was queued).
    pub(crate) unsafe fn new(entry: squeue::Entry, resource: T) -> Result<Self, (io::Error, T)> {
        let driver = match current() {
            Ok(d) => d,
            Err(e) => return Err((e, resource)),
        };
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
                if let Err(e) = d.ring.submit() {
                    d.ops.remove(index);
                    return Err((e, resource));
                }
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
        let result = poll_slot(&mut this.driver.borrow_mut(), this.index, cx);
        result.map(|r| (r, this.resource.take().expect("polled after completion")))
    }
}

/// Submits what is queued, reaps, and takes the one-shot operation `index`'s result
/// if it completed (freeing its slot), or registers `cx`'s waker.
pub(super) fn poll_slot(
    d: &mut Driver,
    index: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<u32>> {
    // Operations queued together go to the kernel in one submission.
    if let Err(e) = d.flush() {
        tracing::warn!(target: "pipewright", error = %e, "io_uring submit failed");
    }
    d.reap();
    match &mut d.ops[index] {
        Slot::Done(result) => {
            let result = *result;
            d.ops.remove(index);
            Poll::Ready(if result < 0 {
                Err(io::Error::from_raw_os_error(-result))
            } else {
                Ok(result as u32)
            })
        }
        Slot::Waiting(waker) => {
            *waker = Some(cx.waker().clone());
            Poll::Pending
        }
        Slot::Orphaned(_) | Slot::Stream { .. } | Slot::StreamOrphaned(..) => {
            unreachable!("a one-shot op's slot is Waiting or Done while its owner lives")
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
