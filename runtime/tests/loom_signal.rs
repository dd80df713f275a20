//! Loom models of the park/wake protocol: a consumer that parks on its [`Signal`] when
//! its ring is empty, and a producer that parks on its own `Signal` behind a
//! [`Doorbell`] when the ring is full. A lost wake-up leaves a thread parked forever,
//! which loom reports as a deadlock.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p pipewright-runtime --release --target-dir target/loom --test loom_signal`.
#![cfg(loom)]

use std::collections::VecDeque;

use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;
use pipewright_runtime::ring::{mpsc, spsc, PushError};
use pipewright_runtime::signal::{Doorbell, Signal};

/// Producer: push, notify; at the end close, notify. Consumer: pop; when nothing came
/// and the ring is not finished, park. Must always end with every item, in order.
#[test]
fn spsc_consumer_park_no_lost_wakeup() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::<u32>(2);
        let signal = Arc::new(Signal::new());
        let notifier = signal.clone();
        let producer = thread::spawn(move || {
            for i in 0..2 {
                tx.push(i).expect("2 items fit in 2 slots");
                notifier.notify();
            }
            tx.close();
            notifier.notify();
        });
        let mut got = Vec::new();
        loop {
            match rx.pop() {
                Some(item) => got.push(item),
                None if rx.is_finished() => break,
                None => block_on(signal.park()),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, [0, 1]);
    });
}

/// As above with two producers of an MPSC ring notifying the same consumer signal.
#[test]
fn mpsc_consumer_park_no_lost_wakeup() {
    loom::model(|| {
        let (producers, mut rx) = mpsc::<u32>(2, 2);
        let signal = Arc::new(Signal::new());
        let handles: Vec<_> = producers
            .into_iter()
            .enumerate()
            .map(|(p, mut tx)| {
                let notifier = signal.clone();
                thread::spawn(move || {
                    tx.push(p as u32).expect("2 items fit in 2 slots");
                    notifier.notify();
                    drop(tx);
                    notifier.notify();
                })
            })
            .collect();
        let mut got = Vec::new();
        loop {
            match rx.pop() {
                Some(item) => got.push(item),
                None if rx.is_finished() => break,
                None => block_on(signal.park()),
            }
        }
        for h in handles {
            h.join().unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, [0, 1]);
    });
}

/// Both directions: 3 items through 2 slots. The producer, finding the ring full, arms
/// the doorbell, retries once, and parks on its own signal if still full; the consumer
/// takes the doorbell after every pop and notifies the producer if it was armed. The
/// consumer parks on its signal when the ring is empty, as above.
#[test]
fn spsc_doorbell_no_lost_wakeup() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::<u32>(2);
        let consumer_signal = Arc::new(Signal::new());
        let producer_signal = Arc::new(Signal::new());
        let doorbell = Arc::new(Doorbell::new());
        let producer = {
            let (consumer_signal, producer_signal, doorbell) = (
                consumer_signal.clone(),
                producer_signal.clone(),
                doorbell.clone(),
            );
            thread::spawn(move || {
                for i in 0..3 {
                    let mut item = i;
                    loop {
                        match tx.push(item) {
                            Ok(()) => break,
                            Err(back) => item = back,
                        }
                        doorbell.arm();
                        match tx.push(item) {
                            Ok(()) => break,
                            Err(back) => item = back,
                        }
                        block_on(producer_signal.park());
                    }
                    consumer_signal.notify();
                }
                tx.close();
                consumer_signal.notify();
            })
        };
        let mut got = Vec::new();
        loop {
            match rx.pop() {
                Some(item) => {
                    got.push(item);
                    if doorbell.take() {
                        producer_signal.notify();
                    }
                }
                None if rx.is_finished() => break,
                None => block_on(consumer_signal.park()),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, [0, 1, 2]);
    });
}

/// The doorbell protocol with `push_burst`/`pop_burst` on the MPSC ring (one producer):
/// a 3-item burst into 2 slots, the rest pushed after the doorbell rang.
#[test]
fn mpsc_doorbell_burst_no_lost_wakeup() {
    loom::model(|| {
        let (mut producers, mut rx) = mpsc::<u32>(2, 1);
        let mut tx = producers.pop().unwrap();
        let consumer_signal = Arc::new(Signal::new());
        let producer_signal = Arc::new(Signal::new());
        let doorbell = Arc::new(Doorbell::new());
        let producer = {
            let (consumer_signal, producer_signal, doorbell) = (
                consumer_signal.clone(),
                producer_signal.clone(),
                doorbell.clone(),
            );
            thread::spawn(move || {
                let mut items: VecDeque<u32> = (0..3).collect();
                while !items.is_empty() {
                    // Whatever a push took must be announced before this thread parks.
                    match tx.push_burst(&mut items) {
                        Ok(_) => {
                            consumer_signal.notify();
                            continue;
                        }
                        Err(PushError::Full) => {}
                        Err(PushError::Closed) => unreachable!("only this producer closes"),
                    }
                    doorbell.arm();
                    match tx.push_burst(&mut items) {
                        Ok(_) => consumer_signal.notify(),
                        Err(PushError::Full) => block_on(producer_signal.park()),
                        Err(PushError::Closed) => unreachable!("only this producer closes"),
                    }
                }
                drop(tx);
                consumer_signal.notify();
            })
        };
        let mut got = VecDeque::new();
        loop {
            if rx.pop_burst(&mut got, 2) > 0 {
                if doorbell.take() {
                    producer_signal.notify();
                }
            } else if rx.is_finished() {
                break;
            } else {
                block_on(consumer_signal.park());
            }
        }
        producer.join().unwrap();
        assert_eq!(got, [0, 1, 2]);
    });
}
