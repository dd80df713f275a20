//! Park and wake for workers and async stage tasks, without busy-spinning forever.
//!
//! A [`Signal`] belongs to one executor context (a worker's loop or one async stage
//! task). Producers [`notify`](Signal::notify) it after pushing into a ring it reads;
//! consumers notify it after freeing space in a ring it writes to, when it said it was
//! waiting. The state machine uses only read-modify-write operations, which are totally
//! ordered per location, so a notification racing with a park is never lost (see the
//! loom model in `tests/loom_signal.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::sync::{AtomicUsize, AtomicWaker, Ordering};

const IDLE: usize = 0;
const PARKED: usize = 1;
const NOTIFIED: usize = 2;

/// A wake-up flag with an async waker slot.
#[derive(Debug)]
pub struct Signal {
    state: AtomicUsize,
    waker: AtomicWaker,
}

impl Default for Signal {
    fn default() -> Self {
        Self::new()
    }
}

impl Signal {
    /// A signal with no pending notification.
    pub fn new() -> Self {
        Self {
            state: AtomicUsize::new(IDLE),
            waker: AtomicWaker::new(),
        }
    }

    /// Wakes the owner if it is parked, or makes its next park return at once.
    #[inline]
    pub fn notify(&self) {
        if self.state.swap(NOTIFIED, Ordering::AcqRel) == PARKED {
            self.waker.wake();
        }
    }

    /// Polls a park: `Ready` once notified (consuming the notification).
    pub fn poll_park(&self, cx: &mut Context<'_>) -> Poll<()> {
        // loom's `AtomicWaker` takes the waker by value; `register_by_ref` is its
        // equivalent of `futures`' `register(&Waker)`.
        #[cfg(loom)]
        self.waker.register_by_ref(cx.waker());
        #[cfg(not(loom))]
        self.waker.register(cx.waker());
        loop {
            match self.state.load(Ordering::Acquire) {
                NOTIFIED => {
                    // The swap reads the notifier's RMW, so its pushes are visible.
                    self.state.swap(IDLE, Ordering::AcqRel);
                    return Poll::Ready(());
                }
                IDLE => {
                    if self
                        .state
                        .compare_exchange(IDLE, PARKED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Poll::Pending;
                    }
                }
                _ => return Poll::Pending,
            }
        }
    }

    /// Waits until notified.
    pub fn park(&self) -> Park<'_> {
        Park { signal: self }
    }
}

/// The future of [`Signal::park`].
#[derive(Debug)]
pub struct Park<'a> {
    signal: &'a Signal,
}

impl Future for Park<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.signal.poll_park(cx)
    }
}

/// The "a producer is waiting for space" flag of one ring.
///
/// The producer [`arm`](Doorbell::arm)s it after a push came up short and then retries
/// once before parking; the consumer [`take`](Doorbell::take)s it after freeing space
/// and notifies the producer if it was armed. Both are RMWs: whichever comes second
/// in the flag's modification order sees the other's effect.
#[derive(Debug, Default)]
pub struct Doorbell {
    armed: crate::sync::AtomicBool,
}

impl Doorbell {
    /// A disarmed doorbell.
    pub fn new() -> Self {
        Self {
            armed: crate::sync::AtomicBool::new(false),
        }
    }

    /// The producer is about to wait for space.
    #[inline]
    pub fn arm(&self) {
        self.armed.swap(true, Ordering::AcqRel);
    }

    /// The consumer freed space: true if a producer was waiting.
    #[inline]
    pub fn take(&self) -> bool {
        self.armed.swap(false, Ordering::AcqRel)
    }
}

/// Wakes whichever worker currently owns a stage that can move between workers.
///
/// A producer reads the owner with a read-modify-write and the runtime hands a stage
/// over with a swap, so the two are totally ordered: either the producer's read comes
/// first (and the handover, which synchronises with it, carries the pushed item to the
/// new owner's first activation) or it sees the new owner and wakes it. No wake-up is
/// lost in the handover (loom model in `mailbox.rs`, with the shipped mailbox).
#[derive(Debug)]
pub struct Owner {
    worker: AtomicUsize,
    workers: crate::sync::Arc<Vec<crate::sync::Arc<Signal>>>,
}

impl Owner {
    /// A stage owned by `worker`, one of `workers`.
    pub fn new(worker: usize, workers: crate::sync::Arc<Vec<crate::sync::Arc<Signal>>>) -> Self {
        Self {
            worker: AtomicUsize::new(worker),
            workers,
        }
    }

    /// Wakes the current owner.
    #[inline]
    pub fn notify(&self) {
        let w = self.worker.fetch_add(0, Ordering::AcqRel);
        self.workers[w].notify();
    }

    /// The current owner.
    pub fn current(&self) -> usize {
        self.worker.fetch_add(0, Ordering::AcqRel)
    }

    /// Hands the stage to `worker`; returns the previous owner.
    pub fn hand_over(&self, worker: usize) -> usize {
        self.worker.swap(worker, Ordering::AcqRel)
    }
}
