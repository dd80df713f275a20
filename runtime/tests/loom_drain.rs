//! Loom models of drain and shutdown: producers push and then close (SPSC `close`,
//! MPSC producer drop, or a third party's `close_all`), and the consumer takes
//! `is_finished()` as "drained". It must never report finished before it has received
//! every item that a push reported as accepted.
//!
//! Producers here never wait for space (they push a fixed number of bursts and accept
//! what the ring took), so the consumer is the only thread that spins.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p pipewright-runtime --release --target-dir target/loom --test loom_drain`.
#![cfg(loom)]

use std::collections::VecDeque;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use pipewright_runtime::ring::{mpsc, spsc, MpscConsumer, MpscProducer, PushError};

/// Pops until `is_finished()`; at that moment every item counted in `accepted` (by
/// producers that have all closed) must already be in hand.
fn mpsc_drain(rx: &mut MpscConsumer<u32>, accepted: &[Arc<AtomicUsize>]) -> Vec<u32> {
    let mut got = VecDeque::new();
    loop {
        if rx.pop_burst(&mut got, 2) == 0 {
            if rx.is_finished() {
                let total: usize = accepted.iter().map(|a| a.load(Ordering::Acquire)).sum();
                assert!(
                    got.len() >= total,
                    "finished with {} items but {total} were accepted",
                    got.len()
                );
                return got.into();
            }
            thread::yield_now();
        }
    }
}

/// Pushes `items` in at most `bursts` `push_burst` calls without waiting, adding what
/// each took to `accepted`. Returns what is left and the last error.
fn mpsc_push_bursts(
    tx: &mut MpscProducer<u32>,
    items: impl IntoIterator<Item = u32>,
    bursts: usize,
    accepted: &AtomicUsize,
) -> (VecDeque<u32>, Option<PushError>) {
    let mut items: VecDeque<u32> = items.into_iter().collect();
    let mut last = None;
    for _ in 0..bursts {
        if items.is_empty() {
            break;
        }
        match tx.push_burst(&mut items) {
            Ok(n) => {
                accepted.fetch_add(n, Ordering::Release);
                last = None;
            }
            Err(e) => last = Some(e),
        }
    }
    (items, last)
}

/// SPSC: two `push_burst` calls of a 3-item buffer into 2 slots (the second takes 0 or
/// 1 item, depending on the consumer), then `close`. When the consumer sees finished it
/// holds exactly the accepted items, in order.
#[test]
fn spsc_finished_only_after_every_accepted_item() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::<u32>(2);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let producer = thread::spawn(move || {
            let mut items: VecDeque<u32> = (0..3).collect();
            for _ in 0..2 {
                let n = tx.push_burst(&mut items);
                counted.fetch_add(n, Ordering::Release);
            }
            tx.close();
            items
        });
        let mut got = VecDeque::new();
        loop {
            if rx.pop_burst(&mut got, 2) == 0 {
                if rx.is_finished() {
                    // The close's Release/Acquire makes every count before it visible.
                    assert_eq!(
                        got.len(),
                        accepted.load(Ordering::Acquire),
                        "finished early: {got:?}"
                    );
                    break;
                }
                thread::yield_now();
            }
        }
        let left = producer.join().unwrap();
        let n = accepted.load(Ordering::Relaxed);
        assert!(n >= 2, "the first burst into an empty ring takes 2");
        let got: Vec<u32> = got.into();
        assert_eq!(got, (0..n as u32).collect::<Vec<_>>());
        assert_eq!(left, (n as u32..3).collect::<VecDeque<_>>());
    });
}

/// MPSC: two producers each push one 2-item burst (taking 0, 1 or 2 items depending on
/// the other), then drop their handle; the last drop closes the ring.
#[test]
fn mpsc_finished_only_after_every_accepted_item() {
    loom::model(|| {
        let (producers, mut rx) = mpsc::<u32>(2, 2);
        let accepted: Vec<Arc<AtomicUsize>> =
            (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let handles: Vec<_> = producers
            .into_iter()
            .enumerate()
            .map(|(p, mut tx)| {
                let counted = accepted[p].clone();
                let base = 10 * p as u32;
                thread::spawn(move || {
                    let (_, err) = mpsc_push_bursts(&mut tx, [base, base + 1], 1, &counted);
                    assert_ne!(
                        err,
                        Some(PushError::Closed),
                        "closed while this producer was open"
                    );
                    drop(tx);
                })
            })
            .collect();
        let got = mpsc_drain(&mut rx, &accepted);
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            got.len(),
            accepted
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .sum::<usize>()
        );
        for (p, a) in accepted.iter().enumerate() {
            let base = 10 * p as u32;
            let mine: Vec<u32> = got.iter().copied().filter(|x| x / 10 == p as u32).collect();
            let n = a.load(Ordering::Relaxed) as u32;
            assert_eq!(mine, (base..base + n).collect::<Vec<_>>(), "got {got:?}");
        }
    });
}

/// MPSC drain: a third thread closes the ring (with `close_all` on another producer
/// handle, or with the consumer's `closer()`) while a producer pushes two bursts of a
/// 3-item buffer. Whatever was accepted before the close is received before finished;
/// everything else is refused with `Closed` or `Full` and stays with the producer.
fn drain_races_push(use_closer: bool) {
    loom::model(move || {
        let (mut producers, mut rx) = mpsc::<u32>(2, 2);
        let drain_handle = producers.pop().unwrap();
        let mut tx = producers.pop().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let producer = thread::spawn(move || {
            let r = mpsc_push_bursts(&mut tx, [1, 2, 3], 2, &counted);
            // Once a push saw the close, every later one does too.
            if r.1 == Some(PushError::Closed) {
                assert_eq!(tx.push(9), Err((9, PushError::Closed)));
            }
            r
        });
        let drain = if use_closer {
            let close = rx.closer();
            drop(drain_handle);
            thread::spawn(close)
        } else {
            thread::spawn(move || {
                drain_handle.close_all();
                drop(drain_handle);
            })
        };
        let got = mpsc_drain(&mut rx, std::slice::from_ref(&accepted));
        let (left, _) = producer.join().unwrap();
        drain.join().unwrap();
        let n = accepted.load(Ordering::Relaxed);
        // Nothing accepted was lost: all of it arrived before `is_finished`.
        assert_eq!(got.len(), n, "accepted {n}, received {got:?}");
        assert_eq!(got, (1..=n as u32).collect::<Vec<_>>());
        assert_eq!(left, (n as u32 + 1..=3).collect::<VecDeque<_>>());
    });
}

#[test]
fn mpsc_close_all_races_push() {
    drain_races_push(false);
}

#[test]
fn mpsc_closer_races_push() {
    drain_races_push(true);
}
