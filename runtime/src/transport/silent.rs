//! The buffer of a *silent* edge: between sync stages fused on one worker, in a plan
//! that is not adaptive (nothing ever moves a stage), so both ends stay with that
//! worker for the pipeline's whole life.
//!
//! Such an edge is only ever touched by one thread at a time: the thread that builds
//! the pipeline (creating and binding the ends), then the worker (its loop runs the
//! producer and the consumer in turn; its abort and drop paths too), ordered with each
//! other by the worker thread's spawn and join. So its buffer needs no lock; the lock
//! of a fused edge cost two locked instructions per burst on each side, about 2 ns per
//! item in the `hop` bench's fused case. Other threads (the stats view, the controller's
//! probes) only read the edge's depth, mirrored in an atomic after each change (a
//! relaxed read: it may lag the worker by a burst, as any reading of a running edge).
//! Debug builds check the invariant: an access that overlaps another panics.

// Unsafe here: a buffer without a lock, shared by the two ends of one silent edge.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::LocalQueue;

/// A [`LocalQueue`] shared by the ends of one silent edge, without a lock.
pub(crate) struct SilentQueue<T> {
    queue: UnsafeCell<LocalQueue<T>>,
    /// `queue.items.len()` as of the last change, for other threads.
    depth: AtomicUsize,
    /// Set while an access runs (debug builds): overlapping accesses panic.
    #[cfg(debug_assertions)]
    in_use: std::sync::atomic::AtomicBool,
}

// SAFETY: `SilentQueue::new`'s contract: every handle on the queue is used by one
// thread at a time, with a happens-before edge (a thread spawn or join) between
// threads; the atomic depth is the only part other threads read. `T: Send` because
// items move between the threads that own the queue in turn.
unsafe impl<T: Send> Sync for SilentQueue<T> {}

impl<T> SilentQueue<T> {
    /// A queue for an edge with `producers` producers.
    ///
    /// # Safety
    ///
    /// Every access ([`with`](Self::with)) through every handle (clone of the `Arc`
    /// this goes into) must happen on one thread at a time, with a happens-before edge
    /// between the accesses of different threads (e.g. the spawn or the join of the
    /// thread that takes the handles over), and never nested (no access from inside
    /// another's closure): the ends of a silent edge, which the runtime hands to one
    /// worker for good.
    pub(crate) unsafe fn new(producers: usize) -> Self {
        Self {
            queue: UnsafeCell::new(LocalQueue {
                items: Default::default(),
                open_producers: producers,
            }),
            depth: AtomicUsize::new(0),
            #[cfg(debug_assertions)]
            in_use: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Runs `f` on the queue (it cannot reach the queue again: no `&self` inside).
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut LocalQueue<T>) -> R) -> R {
        #[cfg(debug_assertions)]
        assert!(
            !self.in_use.swap(true, Ordering::Acquire),
            "a silent edge was used by two accesses at once"
        );
        // SAFETY: by `new`'s contract no other access runs at the same time, nested
        // or unordered with this one, so `f` gets the only reference for its duration.
        let queue = unsafe { &mut *self.queue.get() };
        let result = f(queue);
        self.depth.store(queue.items.len(), Ordering::Relaxed);
        #[cfg(debug_assertions)]
        self.in_use.store(false, Ordering::Release);
        result
    }

    /// The items waiting, as of the last change (any thread).
    #[inline]
    pub(crate) fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::SilentQueue;

    #[test]
    fn items_pass_in_order_and_the_depth_follows() {
        // SAFETY: used by this thread only.
        let q = Arc::new(unsafe { SilentQueue::<String>::new(1) });
        let mut burst: VecDeque<String> = (0..5).map(|i| i.to_string()).collect();
        q.with(|lq| lq.push_from(&mut burst, 8));
        assert!(burst.is_empty());
        assert_eq!(q.depth(), 5);
        let mut got = VecDeque::new();
        assert_eq!(q.with(|lq| lq.pull_into(&mut got, 3)), 3);
        assert_eq!(q.depth(), 2);
        assert_eq!(q.with(|lq| lq.pull_into(&mut got, 8)), 2);
        assert_eq!(Vec::from(got), ["0", "1", "2", "3", "4"]);
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn a_full_queue_takes_what_fits() {
        // SAFETY: used by this thread only.
        let q = unsafe { SilentQueue::<u32>::new(1) };
        let mut burst: VecDeque<u32> = (0..10).collect();
        q.with(|lq| lq.push_from(&mut burst, 4));
        assert_eq!(q.depth(), 4);
        assert_eq!(Vec::from(burst), [4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn both_ends_move_to_another_thread_together() {
        // SAFETY: built here, then used only by the spawned thread, then here again
        // after the join.
        let q = Arc::new(unsafe { SilentQueue::<Box<u64>>::new(1) });
        let (producer, consumer) = (q.clone(), q.clone());
        std::thread::spawn(move || {
            let mut burst: VecDeque<Box<u64>> = (0..4).map(Box::new).collect();
            producer.with(|lq| lq.push_from(&mut burst, 16));
            let mut got = VecDeque::new();
            consumer.with(|lq| lq.pull_into(&mut got, 2));
            assert_eq!(*got[1], 1);
        })
        .join()
        .unwrap();
        assert_eq!(q.depth(), 2);
        let left = q.with(|lq| lq.items.drain(..).map(|b| *b).collect::<Vec<_>>());
        assert_eq!(left, [2, 3]);
    }
}
