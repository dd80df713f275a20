//! The abort barrier: every worker loop and async task stops producing before any of
//! them discards what it holds, so the discarded counts are final.
//!
//! An abort raises the flag; each participant, at its next check, stops producing and
//! [`arrive`](AbortBarrier::arrive)s; whoever discards waits until
//! [`all_arrived`](AbortBarrier::all_arrived). The `Release` on arrive and the
//! `Acquire` on the count are what make a participant's last writes (the items it
//! pushed into an edge) visible to the one that then counts and drops them.

use crate::sync::{AtomicBool, AtomicUsize, Ordering};

/// Shared by all participants of one running pipeline.
#[derive(Debug)]
#[cfg_attr(loom, allow(dead_code))] // the workers that use it are not built under loom
pub(crate) struct AbortBarrier {
    aborted: AtomicBool,
    arrived: AtomicUsize,
    participants: usize,
}

#[cfg_attr(loom, allow(dead_code))]
impl AbortBarrier {
    /// A barrier for `participants` worker loops and async tasks.
    pub(crate) fn new(participants: usize) -> Self {
        Self {
            aborted: AtomicBool::new(false),
            arrived: AtomicUsize::new(0),
            participants,
        }
    }

    /// Asks every participant to stop producing.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
    }

    /// True once an abort was asked for.
    pub(crate) fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// This participant will never produce again (it stopped, or it finished).
    pub(crate) fn arrive(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
    }

    /// True once every participant has arrived: nothing produces any more.
    pub(crate) fn all_arrived(&self) -> bool {
        self.arrived.load(Ordering::Acquire) >= self.participants
    }
}

/// The shipped barrier under loom: once `all_arrived`, what every participant wrote
/// before arriving is visible and nobody writes again. Arriving with `Relaxed` (or
/// checking with `Relaxed`) fails this model with a causality violation on the
/// participants' cells.
#[cfg(all(test, loom))]
#[allow(unsafe_code)] // the model's cells: loom checks every access
mod loom_model {
    use super::*;
    use crate::sync::{Arc, UnsafeCell};

    #[test]
    fn after_all_arrived_every_write_is_visible_and_final() {
        loom::model(|| {
            let barrier = Arc::new(AbortBarrier::new(2));
            let held: Arc<[UnsafeCell<u32>; 2]> =
                Arc::new([UnsafeCell::new(0), UnsafeCell::new(0)]);
            let participants: Vec<_> = (0..2)
                .map(|i| {
                    let (barrier, held) = (barrier.clone(), held.clone());
                    loom::thread::spawn(move || {
                        // Produce until asked to stop (bounded for the model).
                        for _ in 0..2 {
                            if barrier.aborted() {
                                break;
                            }
                            // SAFETY: only this participant writes its cell before it
                            // arrives; the discarder reads it only after all arrived.
                            held[i].with_mut(|p| unsafe { *p += 1 });
                        }
                        barrier.arrive();
                    })
                })
                .collect();
            barrier.abort();
            while !barrier.all_arrived() {
                loom::thread::yield_now();
            }
            // The discarder counts what they hold: loom flags any unsynchronised read.
            // SAFETY: every participant has arrived, so none writes its cell again.
            let total: u32 = held.iter().map(|c| c.with(|p| unsafe { *p })).sum();
            assert!(total <= 4);
            for p in participants {
                p.join().unwrap();
            }
            // SAFETY: the participants have been joined.
            let after: u32 = held.iter().map(|c| c.with(|p| unsafe { *p })).sum();
            assert_eq!(total, after, "nothing was produced after all arrived");
        });
    }
}
