//! Plain (non-loom) tests of the SPSC and MPSC rings, sized to also run under Miri:
//! `MIRIFLAGS="-Zmiri-disable-isolation" cargo +nightly miri test -p pipewright-runtime --test ring_basic`.
//!
//! Payloads are heap-allocated (`Box`, `String`, `Arc`) so that Miri sees any
//! use-after-move, double drop or leak of an item inside the ring.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread;

use pipewright_runtime::ring::{mpsc, spsc, PushError};

/// Items per wrap-around test: many laps natively, a few under Miri.
const LAPS_ITEMS: u32 = if cfg!(miri) { 100 } else { 10_000 };
/// Items per producer thread.
const THREAD_ITEMS: u32 = if cfg!(miri) { 200 } else { 20_000 };

fn boxed(range: std::ops::Range<u32>) -> VecDeque<Box<u32>> {
    range.map(Box::new).collect()
}

fn unboxed(items: &VecDeque<Box<u32>>) -> Vec<u32> {
    items.iter().map(|b| **b).collect()
}

// ---------------------------------------------------------------------------- SPSC

#[test]
fn spsc_capacity_rounds_up_to_a_power_of_two() {
    assert_eq!(spsc::<u8>(0).0.capacity(), 2);
    assert_eq!(spsc::<u8>(1).0.capacity(), 2);
    assert_eq!(spsc::<u8>(3).0.capacity(), 4);
    let (tx, rx) = spsc::<u8>(8);
    assert_eq!((tx.capacity(), rx.capacity()), (8, 8));
}

#[test]
fn spsc_wraps_around_over_many_laps() {
    let (mut tx, mut rx) = spsc::<Box<u32>>(4);
    let mut next_in = 0u32;
    let mut next_out = 0u32;
    let mut out = VecDeque::new();
    // Bursts of 1..=3 items so head and tail cross the end of the slots at every offset.
    while next_out < LAPS_ITEMS {
        let burst = next_in % 3 + 1;
        let mut items = boxed(next_in..(next_in + burst).min(LAPS_ITEMS));
        let pushed = tx.push_burst(&mut items);
        next_in += pushed as u32;
        assert!(tx.len() <= tx.capacity());
        let popped = rx.pop_burst(&mut out, 2);
        for item in out.drain(..) {
            assert_eq!(*item, next_out);
            next_out += 1;
        }
        if pushed == 0 {
            assert!(popped > 0, "a full ring must have something to pop");
        }
    }
    assert!(rx.is_empty() && tx.is_empty());
    assert_eq!(rx.pop(), None);
}

#[test]
fn spsc_single_item_push_pop_wraps() {
    let (mut tx, mut rx) = spsc::<String>(2);
    for i in 0..LAPS_ITEMS {
        tx.push(i.to_string()).unwrap();
        tx.push((i + 1).to_string()).unwrap();
        assert_eq!(tx.push("full".into()), Err("full".into()));
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.pop().as_deref(), Some(i.to_string().as_str()));
        assert_eq!(rx.pop().as_deref(), Some((i + 1).to_string().as_str()));
        assert_eq!(rx.pop(), None);
    }
}

#[test]
fn spsc_bursts_bigger_than_capacity() {
    let (mut tx, mut rx) = spsc::<Box<u32>>(4);
    let mut items = boxed(0..10);
    assert_eq!(tx.push_burst(&mut items), 4);
    assert_eq!(
        unboxed(&items),
        (4..10).collect::<Vec<_>>(),
        "untaken items stay, in order"
    );
    assert_eq!(tx.push_burst(&mut items), 0);
    assert_eq!(items.len(), 6);

    let mut out = VecDeque::new();
    assert_eq!(rx.pop_burst(&mut out, 10), 4);
    assert_eq!(unboxed(&out), [0, 1, 2, 3]);
    assert_eq!(rx.pop_burst(&mut out, 10), 0);

    assert_eq!(tx.push_burst(&mut items), 4);
    assert_eq!(rx.pop_burst(&mut out, 3), 3, "pop_burst honours max");
    assert_eq!(tx.push_burst(&mut items), 2);
    assert!(items.is_empty());
    assert_eq!(rx.pop_burst(&mut out, 100), 3);
    assert_eq!(unboxed(&out), (0..10).collect::<Vec<_>>());
    assert_eq!(
        tx.push_burst(&mut items),
        0,
        "an empty burst pushes nothing"
    );
}

#[test]
fn spsc_drop_with_items_inside_drops_each_once() {
    let token = Arc::new(());
    {
        let (mut tx, mut rx) = spsc::<Arc<()>>(4);
        // Move head and tail off zero so the remaining items straddle the wrap point.
        for _ in 0..3 {
            tx.push(token.clone()).unwrap();
            drop(rx.pop().unwrap());
        }
        let mut items: VecDeque<_> = (0..4).map(|_| token.clone()).collect();
        assert_eq!(tx.push_burst(&mut items), 4);
        let popped = rx.pop().unwrap();
        assert_eq!(Arc::strong_count(&token), 5);
        drop(tx);
        assert_eq!(
            Arc::strong_count(&token),
            5,
            "dropping one handle keeps the ring"
        );
        drop(rx);
        assert_eq!(Arc::strong_count(&token), 2, "the ring dropped its 3 items");
        drop(popped);
    }
    assert_eq!(Arc::strong_count(&token), 1);

    // A ring dropped full, and one dropped empty.
    let (mut tx, rx) = spsc::<String>(2);
    tx.push("a".into()).unwrap();
    tx.push("b".into()).unwrap();
    drop((tx, rx));
    drop(spsc::<String>(2));
}

#[test]
fn spsc_close_semantics() {
    let (mut tx, mut rx) = spsc::<u32>(4);
    assert!(!rx.is_finished());
    tx.push(1).unwrap();
    tx.push(2).unwrap();
    tx.close();
    assert!(
        !rx.is_finished(),
        "items pushed before the close are still to be read"
    );
    assert_eq!(rx.pop(), Some(1));
    assert!(!rx.is_finished());
    assert_eq!(rx.pop(), Some(2));
    assert!(rx.is_finished());
    assert_eq!(rx.pop(), None);

    // Dropping the producer closes too.
    let (tx, mut rx) = spsc::<u32>(2);
    assert!(!rx.is_finished());
    drop(tx);
    assert!(rx.is_finished());
    assert_eq!(rx.pop(), None);
}

#[test]
fn spsc_depth_probe_reports_occupancy() {
    let (mut tx, mut rx) = spsc::<u32>(4);
    let depth = rx.depth_probe();
    assert_eq!(depth(), 0);
    assert_eq!(tx.push_burst(&mut (0..3).collect()), 3);
    assert_eq!(depth(), 3);
    rx.pop();
    assert_eq!(depth(), 2);
    drop((tx, rx));
    assert_eq!(depth(), 2, "the probe keeps the ring alive");
}

#[test]
fn spsc_two_threads_fifo() {
    let (mut tx, mut rx) = spsc::<Box<u32>>(4);
    let producer = thread::spawn(move || {
        let mut items = boxed(0..THREAD_ITEMS);
        while !items.is_empty() {
            if tx.push_burst(&mut items) == 0 {
                thread::yield_now();
            }
        }
    });
    let mut out = VecDeque::new();
    let mut expect = 0;
    loop {
        if rx.pop_burst(&mut out, 3) == 0 {
            if rx.is_finished() {
                break;
            }
            thread::yield_now();
        }
        for item in out.drain(..) {
            assert_eq!(*item, expect);
            expect += 1;
        }
    }
    producer.join().unwrap();
    assert_eq!(expect, THREAD_ITEMS);
}

// ---------------------------------------------------------------------------- MPSC

#[test]
fn mpsc_wraps_around_over_many_laps() {
    let (mut producers, mut rx) = mpsc::<Box<u32>>(4, 1);
    let mut tx = producers.pop().unwrap();
    assert_eq!((tx.capacity(), rx.capacity()), (4, 4));
    let mut next_in = 0u32;
    let mut next_out = 0u32;
    let mut out = VecDeque::new();
    while next_out < LAPS_ITEMS {
        let burst = next_in % 3 + 1;
        let mut items = boxed(next_in..(next_in + burst).min(LAPS_ITEMS));
        let before = items.len();
        match tx.push_burst(&mut items) {
            Ok(n) => {
                assert_eq!(before - items.len(), n);
                next_in += n as u32;
            }
            Err(e) => {
                assert_eq!(e, PushError::Full);
                assert_eq!(items.len(), before);
            }
        }
        rx.pop_burst(&mut out, 2);
        for item in out.drain(..) {
            assert_eq!(*item, next_out);
            next_out += 1;
        }
    }
    assert!(rx.is_empty() && tx.is_empty());
    assert_eq!(rx.pop(), None);
}

#[test]
fn mpsc_bursts_bigger_than_capacity() {
    let (mut producers, mut rx) = mpsc::<Box<u32>>(4, 1);
    let mut tx = producers.pop().unwrap();
    let mut items = boxed(0..10);
    assert_eq!(tx.push_burst(&mut items), Ok(4));
    assert_eq!(unboxed(&items), (4..10).collect::<Vec<_>>());
    assert_eq!(tx.push_burst(&mut items), Err(PushError::Full));
    assert_eq!(items.len(), 6, "a Full push keeps every item");
    assert_eq!(tx.len(), 4);
    assert_eq!(rx.len(), 4);

    let mut out = VecDeque::new();
    assert_eq!(rx.pop_burst(&mut out, 10), 4);
    assert_eq!(tx.push_burst(&mut items), Ok(4));
    assert_eq!(rx.pop_burst(&mut out, 3), 3);
    assert_eq!(tx.push_burst(&mut items), Ok(2));
    assert_eq!(rx.pop_burst(&mut out, 100), 3);
    assert_eq!(unboxed(&out), (0..10).collect::<Vec<_>>());
    assert_eq!(
        tx.push_burst(&mut items),
        Ok(0),
        "an empty burst pushes nothing"
    );

    match tx.push(Box::new(99)) {
        Ok(()) => assert_eq!(rx.pop().as_deref(), Some(&99)),
        Err((item, e)) => panic!("push of {item} failed: {e:?}"),
    }
}

#[test]
fn mpsc_drop_with_items_inside_drops_each_once() {
    let token = Arc::new(());
    {
        let (mut producers, mut rx) = mpsc::<Arc<()>>(4, 2);
        let mut b = producers.pop().unwrap();
        let mut a = producers.pop().unwrap();
        for _ in 0..3 {
            a.push(token.clone()).unwrap();
            drop(rx.pop().unwrap());
        }
        let mut items: VecDeque<_> = (0..2).map(|_| token.clone()).collect();
        assert_eq!(a.push_burst(&mut items), Ok(2));
        let mut items: VecDeque<_> = (0..3).map(|_| token.clone()).collect();
        assert_eq!(b.push_burst(&mut items), Ok(2));
        assert_eq!(items.len(), 1);
        drop(items);
        let popped = rx.pop().unwrap();
        assert_eq!(Arc::strong_count(&token), 5);
        drop(a);
        drop(rx);
        assert_eq!(
            Arc::strong_count(&token),
            5,
            "producer b still holds the ring"
        );
        drop(b);
        assert_eq!(Arc::strong_count(&token), 2, "the ring dropped its 3 items");
        drop(popped);
    }
    assert_eq!(Arc::strong_count(&token), 1);

    let (mut producers, rx) = mpsc::<String>(2, 1);
    producers[0].push("a".into()).unwrap();
    producers[0].push("b".into()).unwrap();
    drop((producers, rx));
}

#[test]
fn mpsc_two_producer_threads() {
    let (producers, mut rx) = mpsc::<(usize, Box<u32>)>(4, 2);
    let handles: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(p, mut tx)| {
            thread::spawn(move || {
                let mut items: VecDeque<_> = (0..THREAD_ITEMS).map(|i| (p, Box::new(i))).collect();
                while !items.is_empty() {
                    match tx.push_burst(&mut items) {
                        Ok(_) => {}
                        Err(PushError::Full) => thread::yield_now(),
                        Err(PushError::Closed) => panic!("closed while producer {p} was open"),
                    }
                }
            })
        })
        .collect();
    let mut next = [0u32; 2];
    let mut out = VecDeque::new();
    loop {
        if rx.pop_burst(&mut out, 3) == 0 {
            if rx.is_finished() {
                break;
            }
            thread::yield_now();
        }
        for (p, item) in out.drain(..) {
            assert_eq!(*item, next[p], "producer {p}'s items out of order");
            next[p] += 1;
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(next, [THREAD_ITEMS; 2]);
}

#[test]
fn mpsc_closes_when_the_last_producer_closes() {
    let (mut producers, mut rx) = mpsc::<u32>(4, 2);
    let mut b = producers.pop().unwrap();
    let mut a = producers.pop().unwrap();
    a.push(1).unwrap();
    a.close();
    a.close(); // idempotent: must not count as b's close
    assert!(!b.is_closed() && !rx.is_finished());
    b.push(2).unwrap();
    drop(b);
    assert!(a.is_closed());
    assert_eq!(a.push(3), Err((3, PushError::Closed)));
    assert!(
        !rx.is_finished(),
        "items pushed before the close are still to be read"
    );
    assert_eq!(rx.pop(), Some(1));
    assert_eq!(rx.pop(), Some(2));
    assert!(rx.is_finished());
    assert_eq!(rx.pop(), None);

    // A ring made with no producers is closed and finished from the start.
    let (none, rx) = mpsc::<u32>(2, 0);
    assert!(none.is_empty());
    assert!(rx.is_finished());
}

#[test]
fn mpsc_close_all_and_consumer_close_hand_items_back() {
    let (mut producers, mut rx) = mpsc::<String>(4, 2);
    let mut b = producers.pop().unwrap();
    let a = producers.pop().unwrap();
    b.push("kept".into()).unwrap();
    a.close_all();
    assert!(b.is_closed());
    let mut items: VecDeque<String> = ["x".to_string(), "y".to_string()].into();
    assert_eq!(b.push_burst(&mut items), Err(PushError::Closed));
    assert_eq!(
        items,
        ["x", "y"],
        "a Closed push keeps every item, in order"
    );
    assert!(!rx.is_finished());
    assert_eq!(rx.pop().as_deref(), Some("kept"));
    assert!(rx.is_finished());
    assert!(a.try_clone().is_none(), "no new producers on a closed ring");

    let (mut producers, rx) = mpsc::<u32>(2, 1);
    rx.close();
    assert_eq!(producers[0].push(1), Err((1, PushError::Closed)));
    assert!(rx.is_finished());

    let (mut producers, rx) = mpsc::<u32>(2, 1);
    let closer = rx.closer();
    thread::spawn(closer).join().unwrap();
    assert_eq!(producers[0].push(1), Err((1, PushError::Closed)));
    assert!(rx.is_finished());
}

#[test]
fn mpsc_try_clone_counts_as_a_producer() {
    let (mut producers, mut rx) = mpsc::<u32>(4, 1);
    let mut a = producers.pop().unwrap();
    let mut c = a.try_clone().expect("open ring");
    a.push(1).unwrap();
    drop(a);
    assert!(!c.is_closed(), "the clone keeps the ring open");
    c.push(2).unwrap();
    let depth = rx.depth_probe();
    assert_eq!(depth(), 2);
    drop(c);
    assert!(!rx.is_finished());
    let mut out = VecDeque::new();
    assert_eq!(rx.pop_burst(&mut out, 8), 2);
    assert_eq!(out, [1, 2]);
    assert!(rx.is_finished());
    assert_eq!(depth(), 0);
}
