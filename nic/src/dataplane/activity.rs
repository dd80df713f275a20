//! Bounded busy-polling for sparse traffic.
//!
//! A worker that parks between packets pays a thread wake-up (tens of microseconds on
//! an idle core) for each packet, and a round trip through the data plane needs two:
//! the guest's request wakes the VF side, the peer's reply wakes the underlay side.
//! Every receive source of one data plane shares an [`Activity`]: when one of them
//! receives, all of them poll their queues without parking for the busy-poll window
//! (a parked source is woken by the receiving one, so the reply's worker is already
//! spinning when the reply arrives; the wake happens while the request is still on
//! the wire, off the round trip's path). After the window they park again, so an idle
//! data plane costs no CPU. While traffic is sparse ([`is_sparse`]) each poll also
//! offers the CPU to other threads, since the next hop of a round trip often waits
//! for this one.
//!
//! The decision ("still hot?") is [`Window::hot`], a pure function of two instants
//! read by the caller.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The busy-poll window after the last packet, as a pure decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Nanoseconds to keep polling after the last packet (0: never poll).
    pub(crate) window_ns: u64,
}

impl Window {
    /// Whether a source should keep polling at `now_ns`, the last packet having been
    /// seen at `last_ns` (both on one monotonic clock; a `last_ns` after `now_ns`, as
    /// another thread may record, counts as just now).
    pub(crate) fn hot(self, last_ns: u64, now_ns: u64) -> bool {
        self.window_ns > 0 && now_ns.saturating_sub(last_ns) < self.window_ns
    }

    /// Whether recording a packet at `now_ns` must wake parked sources: only when the
    /// window had closed (a source may have parked), so a busy data plane does not
    /// notify on every burst.
    pub(crate) fn must_wake(self, last_ns: u64, now_ns: u64) -> bool {
        self.window_ns > 0 && now_ns.saturating_sub(last_ns) >= self.window_ns / 2
    }
}

/// A receive of at most this many frames after a quiet gap marks sparse traffic.
const SPARSE_FRAMES: usize = 4;
/// ... and at most this many bytes (a TSO super-frame is one frame but a stream).
const SPARSE_BYTES: usize = 8 << 10;
/// The quiet gap before such a receive (shorter gaps are a stream, not sparse).
const SPARSE_GAP: Duration = Duration::from_micros(30);

/// Whether a receive of `frames` frames of `bytes` bytes at `now_ns`, the previous
/// one at `last_ns` (0: none, or the sources were cold), is sparse traffic: a handful
/// of small frames after a quiet gap.
///
/// While traffic is sparse a polling source offers its CPU to other threads at each
/// poll (`sched_yield`): the threads a round trip needs next (the guest's client, the
/// peer's echo, the kernel work their sends do) are often woken on the polling
/// worker's CPU, and a poller that never left it made them wait for its time slice
/// or its window to end (sparse round trips took about twice the window: 500 us with
/// a 200 us window, 120 us with no polling at all). Under load receives are full
/// bursts, or large frames, or close together, and a poller that yielded would hand
/// its CPU to the threads producing the load (0.55x -> 0.18x the kernel's packet rate
/// when it did). A handful of small frames after the sources went cold (`last_ns` 0:
/// never a packet, or a poller was off its CPU longer than the window) is sparse too:
/// under load a receive after such a gap is a full burst, which is not.
pub(crate) fn is_sparse(frames: usize, bytes: usize, last_ns: u64, now_ns: u64) -> bool {
    frames <= SPARSE_FRAMES
        && bytes <= SPARSE_BYTES
        && (last_ns == 0 || now_ns.saturating_sub(last_ns) >= SPARSE_GAP.as_nanos() as u64)
}

/// The shared receive activity of one data plane; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Activity(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    epoch: Instant,
    last_ns: AtomicU64,
    window_ns: AtomicU64,
    /// The last receive was sparse ([`is_sparse`]).
    sparse: AtomicBool,
    notify: Notify,
}

impl Activity {
    /// Polls for `window` after each packet (zero: never).
    pub(crate) fn new(window: Duration) -> Self {
        Self(Arc::new(Inner {
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            window_ns: AtomicU64::new(window.as_nanos().min(u128::from(u64::MAX)) as u64),
            sparse: AtomicBool::new(false),
            notify: Notify::new(),
        }))
    }

    fn now_ns(&self) -> u64 {
        self.0.epoch.elapsed().as_nanos() as u64
    }

    fn window(&self) -> Window {
        Window {
            window_ns: self.0.window_ns.load(Ordering::Relaxed),
        }
    }

    /// Changes the window (takes effect at each source's next decision).
    pub(crate) fn set_window(&self, window: Duration) {
        let ns = window.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.0.window_ns.store(ns, Ordering::Relaxed);
        self.0.notify.notify_waiters();
    }

    /// The current window.
    pub(crate) fn window_duration(&self) -> Duration {
        Duration::from_nanos(self.window().window_ns)
    }

    /// A source received `frames` frames of `bytes` bytes: every source polls for the
    /// window. (The order of two sources' stores may interleave: `sparse` is a hint
    /// that the next receive sets again.)
    pub(crate) fn saw_packets(&self, frames: usize, bytes: usize) {
        let now = self.now_ns().max(1);
        let last = self.0.last_ns.swap(now, Ordering::Relaxed);
        self.0
            .sparse
            .store(is_sparse(frames, bytes, last, now), Ordering::Relaxed);
        // Never seen a packet (0): sources may be parked.
        if last == 0 || self.window().must_wake(last, now) {
            self.0.notify.notify_waiters();
        }
    }

    /// A polling source was off its CPU longer than the window between two polls (the
    /// machine is oversubscribed): polling then only takes CPU from the threads that
    /// produce the traffic, and a spinner the scheduler penalises answers later than
    /// a parked thread. Every source parks until the next packet.
    pub(crate) fn descheduled(&self) {
        // 0: as before any packet (cold; the next packet wakes every source).
        self.0.last_ns.store(0, Ordering::Relaxed);
    }

    /// One busy-poll pause: lets the worker's other stages and tasks run (other
    /// threads too while traffic is sparse, see [`is_sparse`]), and closes the window
    /// if this thread was off its CPU for longer than it.
    pub(crate) async fn pause(&self) {
        let before = Instant::now();
        tokio::task::yield_now().await;
        if self.0.sparse.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        // Off the CPU for longer than the window, whether descheduled or yielding to
        // a thread that then ran that long: the CPU is contended, and polling on
        // would only take it from the threads that make the traffic.
        if before.elapsed() > self.window_duration() {
            self.descheduled();
        }
    }

    /// Whether sources should poll instead of parking.
    pub(crate) fn hot(&self) -> bool {
        let last = self.0.last_ns.load(Ordering::Relaxed);
        last != 0 && self.window().hot(last, self.now_ns())
    }

    /// Resolves when another source received something (or the window changed).
    pub(crate) async fn woken(&self) {
        loop {
            let notified = self.0.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.hot() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_handful_of_small_frames_after_a_quiet_gap_is_sparse_and_nothing_else_is() {
        let gap = SPARSE_GAP.as_nanos() as u64;
        // A ping after 2 ms of silence.
        assert!(is_sparse(1, 106, 1_000, 1_000 + 2_000_000));
        assert!(is_sparse(SPARSE_FRAMES, SPARSE_BYTES, 1_000, 1_000 + gap));
        // A stream: frames close together, even one at a time.
        assert!(!is_sparse(1, 106, 1_000, 1_000 + gap - 1));
        // A full burst after a long gap (a worker descheduled under load).
        assert!(!is_sparse(SPARSE_FRAMES + 1, 106, 1_000, 1_000 + 5_000_000));
        // One TSO super-frame at a time: a bulk stream, however far apart.
        assert!(!is_sparse(1, 64 << 10, 1_000, 1_000 + 100_000));
        // Cold sources (the first packet, or after a descheduled poller): a ping is
        // sparse, a full burst is not.
        assert!(is_sparse(1, 106, 0, 5_000_000));
        assert!(!is_sparse(SPARSE_FRAMES + 1, 106, 0, 5_000_000));
        // Another thread's clock read after ours.
        assert!(!is_sparse(1, 106, 2_000, 1_000));
    }

    proptest! {
        #[test]
        fn hot_exactly_within_the_window(window in 0u64..10_000_000, last in 0u64..1 << 40, gap in 0u64..20_000_000) {
            let w = Window { window_ns: window };
            let now = last + gap;
            prop_assert_eq!(w.hot(last, now), window > 0 && gap < window);
            // A packet recorded by another thread after this one read the clock.
            prop_assert_eq!(w.hot(now, last), window > 0);
            // A wake is needed whenever sources may have stopped polling.
            if window > 0 && !w.hot(last, now) {
                prop_assert!(w.must_wake(last, now));
            }
            if window == 0 {
                prop_assert!(!w.must_wake(last, now));
            }
        }
    }

    #[test]
    fn activity_turns_hot_on_packets_and_cold_with_zero_window() {
        let a = Activity::new(Duration::from_secs(3600));
        assert!(!a.hot(), "cold before any packet");
        a.saw_packets(1, 64);
        assert!(a.hot());
        a.set_window(Duration::ZERO);
        assert!(!a.hot());
        assert_eq!(a.window_duration(), Duration::ZERO);
        a.set_window(Duration::from_secs(3600));
        a.saw_packets(1, 64);
        assert!(a.hot());
        a.descheduled();
        assert!(!a.hot(), "cold until the next packet");
        a.saw_packets(1, 64);
        assert!(a.hot());
    }

    #[test]
    fn a_parked_source_is_woken_by_another_sources_packets() {
        let a = Activity::new(Duration::from_secs(3600));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let waiter = a.clone();
            let parked = tokio::spawn(async move { waiter.woken().await });
            tokio::task::yield_now().await;
            a.saw_packets(1, 64);
            parked.await.unwrap();
        });
    }
}
