//! Loom models of the SPSC and MPSC rings: FIFO order, no loss or duplication, the
//! close protocol racing with pushes, and dropping a ring that still holds items.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p pipewright-runtime --release --target-dir target/loom --test loom_ring`.
#![cfg(loom)]

use std::collections::VecDeque;

use loom::sync::{Arc, Notify};
use loom::thread;
use pipewright_runtime::ring::{
    mpsc, spsc, MpscConsumer, MpscProducer, PushError, SpscConsumer, SpscProducer,
};

/// Pushes every item with `push_burst`, yielding while the ring is full, then closes.
fn spsc_push_all_burst(mut tx: SpscProducer<u32>, items: impl IntoIterator<Item = u32>) {
    let mut items: VecDeque<u32> = items.into_iter().collect();
    while !items.is_empty() {
        if tx.push_burst(&mut items) == 0 {
            thread::yield_now();
        }
    }
    tx.close();
}

/// Pops with `pop_burst` until the ring reports finished.
fn spsc_pop_all_burst(rx: &mut SpscConsumer<u32>, max: usize) -> VecDeque<u32> {
    let mut got = VecDeque::new();
    loop {
        if rx.pop_burst(&mut got, max) == 0 {
            if rx.is_finished() {
                return got;
            }
            thread::yield_now();
        }
    }
}

/// Pops with `pop_burst` until the ring reports finished.
fn mpsc_pop_all(rx: &mut MpscConsumer<u32>) -> Vec<u32> {
    let mut got = VecDeque::new();
    loop {
        if rx.pop_burst(&mut got, 2) == 0 {
            if rx.is_finished() {
                return got.into();
            }
            thread::yield_now();
        }
    }
}

/// Pushes `items` with `push_burst`, retrying while full. Returns the items that were
/// not taken (non-empty only if the ring was closed) and the error that stopped it.
fn mpsc_push_all(
    tx: &mut MpscProducer<u32>,
    items: impl IntoIterator<Item = u32>,
) -> (VecDeque<u32>, Option<PushError>) {
    let mut items: VecDeque<u32> = items.into_iter().collect();
    while !items.is_empty() {
        let before = items.len();
        match tx.push_burst(&mut items) {
            Ok(n) => assert_eq!(
                items.len(),
                before - n,
                "push_burst reported {n} but took {}",
                before - items.len()
            ),
            Err(PushError::Full) => {
                assert_eq!(items.len(), before, "a Full push must not take items");
                thread::yield_now();
            }
            Err(PushError::Closed) => {
                assert_eq!(items.len(), before, "a Closed push must not take items");
                return (items, Some(PushError::Closed));
            }
        }
    }
    (items, None)
}

/// (a) SPSC, bursts: 4 items through 2 slots (wraps twice), FIFO, nothing lost or doubled.
#[test]
fn spsc_burst_fifo() {
    loom::model(|| {
        let (tx, mut rx) = spsc::<u32>(2);
        assert_eq!(tx.capacity(), 2);
        let producer = thread::spawn(move || spsc_push_all_burst(tx, 0..4));
        let got = spsc_pop_all_burst(&mut rx, 2);
        producer.join().unwrap();
        assert_eq!(got, [0, 1, 2, 3]);
    });
}

/// (a) SPSC, single items: 4 items through 2 slots with `push`/`pop`, producer closes by
/// dropping its handle.
#[test]
fn spsc_single_fifo() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::<u32>(2);
        let producer = thread::spawn(move || {
            for i in 0..4 {
                let mut item = i;
                while let Err(back) = tx.push(item) {
                    item = back;
                    thread::yield_now();
                }
            }
            drop(tx);
        });
        let mut got = Vec::new();
        loop {
            match rx.pop() {
                Some(item) => got.push(item),
                None if rx.is_finished() => break,
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, [0, 1, 2, 3]);
    });
}

/// (b) MPSC: two producers, two items each; every item once, per-producer FIFO.
///
/// With three threads, yield-spinning would let loom explore the unfair schedules where
/// two spinning threads hand the CPU back and forth while the third (the one they wait
/// for) never runs (tokio-rs/loom#53), so here waiting is blocking: the consumer waits on
/// `data` (notified after every push and close), a producer that found the ring full
/// waits on its `space` (notified after every pop). `Notify` keeps a notification
/// that arrives before the wait, and may wake spuriously; both loops re-check.
#[test]
fn mpsc_two_producers_fifo() {
    loom::model(|| {
        let (producers, mut rx) = mpsc::<u32>(2, 2);
        let data = Arc::new(Notify::new());
        let space: Vec<Arc<Notify>> = (0..2).map(|_| Arc::new(Notify::new())).collect();
        let handles: Vec<_> = producers
            .into_iter()
            .enumerate()
            .map(|(p, mut tx)| {
                let base = 10 * p as u32;
                let (data, space) = (data.clone(), space[p].clone());
                thread::spawn(move || {
                    let mut items: VecDeque<u32> = [base, base + 1].into();
                    while !items.is_empty() {
                        match tx.push_burst(&mut items) {
                            Ok(_) => data.notify(),
                            Err(PushError::Full) => space.wait(),
                            Err(PushError::Closed) => {
                                panic!("ring closed while a producer was open")
                            }
                        }
                    }
                    drop(tx);
                    data.notify();
                })
            })
            .collect();
        let mut got = VecDeque::new();
        loop {
            if rx.pop_burst(&mut got, 2) > 0 {
                space.iter().for_each(|s| s.notify());
            } else if rx.is_finished() {
                break;
            } else {
                data.wait();
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        let got: Vec<u32> = got.into();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 10, 11], "got {got:?}");
        for base in [0, 10] {
            let mine: Vec<u32> = got
                .iter()
                .copied()
                .filter(|x| x / 10 == base / 10)
                .collect();
            assert_eq!(mine, [base, base + 1], "per-producer order broken: {got:?}");
        }
    });
}

/// Checks that `items` were split between consumed and handed back, each exactly once.
fn assert_partitioned(
    items: &[u32],
    consumed: &[u32],
    left: &VecDeque<u32>,
    err: Option<PushError>,
) {
    if !left.is_empty() {
        assert_eq!(
            err,
            Some(PushError::Closed),
            "items left over without a Closed error"
        );
    }
    let mut all: Vec<u32> = consumed.iter().chain(left.iter()).copied().collect();
    all.sort_unstable();
    assert_eq!(all, items, "consumed {consumed:?}, handed back {left:?}");
    // What was taken is a FIFO prefix, what was handed back the rest.
    assert_eq!(consumed, &items[..consumed.len()]);
}

/// (c) MPSC: `close_all` from another producer's thread races a 3-item push into 2 slots.
#[test]
fn mpsc_close_all_races_push() {
    loom::model(|| {
        let (mut producers, mut rx) = mpsc::<u32>(2, 2);
        let closer = producers.pop().unwrap();
        let mut tx = producers.pop().unwrap();
        let pusher = thread::spawn(move || mpsc_push_all(&mut tx, [1, 2, 3]));
        let closing = thread::spawn(move || {
            closer.close_all();
            assert!(closer.is_closed());
        });
        let consumed = mpsc_pop_all(&mut rx);
        let (left, err) = pusher.join().unwrap();
        closing.join().unwrap();
        assert_partitioned(&[1, 2, 3], &consumed, &left, err);
    });
}

/// (c) MPSC: the consumer closes (after trying one pop) while a 3-item push into 2 slots
/// runs (and may be waiting for space).
#[test]
fn mpsc_consumer_close_races_push() {
    loom::model(|| {
        let (mut producers, mut rx) = mpsc::<u32>(2, 1);
        let mut tx = producers.pop().unwrap();
        let pusher = thread::spawn(move || {
            let r = mpsc_push_all(&mut tx, [1, 2, 3]);
            // A push after the close is always refused.
            if r.1.is_some() {
                assert_eq!(tx.push(9), Err((9, PushError::Closed)));
            }
            r
        });
        let mut consumed: Vec<u32> = rx.pop().into_iter().collect();
        rx.close();
        consumed.extend(mpsc_pop_all(&mut rx));
        let (left, err) = pusher.join().unwrap();
        assert_partitioned(&[1, 2, 3], &consumed, &left, err);
    });
}

/// (d) SPSC: the consumer drops its end after one pop attempt while the producer pushes
/// 2 counted items and drops its end; every item is dropped exactly once.
#[test]
fn spsc_drop_with_items_inside() {
    loom::model(|| {
        let token = Arc::new(());
        let (mut tx, mut rx) = spsc::<Arc<()>>(2);
        let t = token.clone();
        let producer = thread::spawn(move || {
            let mut items: VecDeque<Arc<()>> = (0..2).map(|_| t.clone()).collect();
            let n = tx.push_burst(&mut items);
            assert_eq!(n, 2, "an empty 2-slot ring takes 2 items");
            drop(tx);
        });
        let popped = rx.pop();
        drop(rx);
        producer.join().unwrap();
        // `token` itself, plus the popped item if any; the ring dropped the rest.
        assert_eq!(Arc::strong_count(&token), 1 + usize::from(popped.is_some()));
        drop(popped);
        assert_eq!(Arc::strong_count(&token), 1);
    });
}

/// (d) MPSC: as above, with the ring wrapped once (1 popped, 1 pushed again) and the
/// consumer dropped first.
#[test]
fn mpsc_drop_with_items_inside() {
    loom::model(|| {
        let token = Arc::new(());
        let (mut producers, mut rx) = mpsc::<Arc<()>>(2, 1);
        let mut tx = producers.pop().unwrap();
        let mut first: VecDeque<Arc<()>> = (0..2).map(|_| token.clone()).collect();
        assert_eq!(tx.push_burst(&mut first), Ok(2));
        let t = token.clone();
        let producer = thread::spawn(move || {
            // Succeeds only if the consumer has popped by now; else `t` comes back.
            let _ = tx.push(t);
            drop(tx);
        });
        let popped = rx.pop();
        assert!(popped.is_some());
        drop(rx);
        producer.join().unwrap();
        drop(popped);
        assert_eq!(Arc::strong_count(&token), 1);
    });
}

/// Regression model: a producer whose `tail` load returns another producer's fresh
/// claim must not pair it with a stale `head` (the claimer saw a newer one). With
/// Relaxed loads of `tail`, `tail - head` could exceed the capacity, `free` wrapped
/// around, and the CAS claimed slots still holding unread items (loom reports the
/// overwrite as concurrent writes to a slot's `UnsafeCell`).
#[test]
fn mpsc_fresh_tail_never_meets_stale_head() {
    loom::model(|| {
        let (mut producers, mut rx) = mpsc::<u32>(2, 2);
        let mut b = producers.pop().unwrap();
        let mut a = producers.pop().unwrap();
        assert_eq!(a.push_burst(&mut VecDeque::from([0, 1])), Ok(2));
        // Pops both items, then `a` claims position 2 (having seen head = 2), unless
        // `b` took both free slots first.
        let consumer_then_a = thread::spawn(move || {
            let mut got = VecDeque::new();
            assert_eq!(rx.pop_burst(&mut got, 2), 2);
            let pushed_a = a.push(2).is_ok();
            drop(a);
            (rx, got, pushed_a)
        });
        // Pushes 2 items once, taking what fits.
        let pusher_b = thread::spawn(move || {
            let mut items = VecDeque::from([10, 11]);
            let _ = b.push_burst(&mut items);
            drop(b);
            items
        });
        let (mut rx, mut got, pushed_a) = consumer_then_a.join().unwrap();
        let left_b = pusher_b.join().unwrap();
        while rx.pop_burst(&mut got, 2) > 0 {}
        assert!(rx.is_finished());
        let got: Vec<u32> = got.into();
        let mine_a: Vec<u32> = got.iter().copied().filter(|x| *x < 10).collect();
        let mine_b: Vec<u32> = got.iter().copied().filter(|x| *x >= 10).collect();
        assert_eq!(
            mine_a,
            [0, 1, 2][..2 + usize::from(pushed_a)],
            "got {got:?}"
        );
        assert_eq!(mine_b, [10, 11][..2 - left_b.len()], "got {got:?}");
        assert!(got.len() <= 4, "more items than two laps of slots: {got:?}");
    });
}
