//! Loom model of a replica count changed live: the split (the shipped `Spreader`
//! reading the shipped `ReplicaControl`) hands items to replicas over the shipped SPSC
//! rings while a controller retires and re-adds a replica. Every item must be processed
//! exactly once, and the reorder step must see every sequence number: a retired replica
//! finishes what it holds (it stops only when its ring is closed and empty).
//!
//! `a_replica_that_stops_when_retired_loses_items` breaks that rule on purpose (the
//! replica quits as soon as it is no longer active) and the model must catch it.
#![cfg(loom)]

use std::collections::VecDeque;

use loom::sync::{Arc, Mutex};
use loom::thread;
use pipewright_runtime::ring::{spsc, SpscConsumer};
use pipewright_stages::{ReplicaControl, Replicas, Spreader};

const ITEMS: u32 = 3;

fn control(max: usize) -> ReplicaControl {
    // The builder makes the control; a throwaway pipeline gives us the shipped one.
    let b = pipewright_stages::PipelineBuilder::<pipewright_stages::inline::InlineTransport>::new();
    let (_input, s) = b.input::<u32>("in");
    let _ = s
        .then_replicated("work", Replicas::new(max), |_| {
            pipewright_stages::stage::map(|x: u32| x)
        })
        .output("out");
    let pipeline = b.build().unwrap();
    pipeline
        .replica_controls()
        .pop()
        .expect("one replicated stage")
}

/// A replica: pops until its ring is closed and drained (or, broken, until retired).
fn replica(
    index: usize,
    mut rx: SpscConsumer<(u64, u32)>,
    done: Arc<Mutex<Vec<(u64, u32)>>>,
    control: ReplicaControl,
    quit_when_retired: bool,
) {
    let mut got = VecDeque::new();
    loop {
        if rx.pop_burst(&mut got, 2) == 0 {
            if rx.is_finished() || (quit_when_retired && control.active() <= index) {
                break;
            }
            thread::yield_now();
        }
    }
    done.lock().unwrap().extend(got);
}

fn model(quit_when_retired: bool) {
    // Replica 1 spins (yields) on an empty ring: allow the branches that takes.
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(move || {
        let control = control(2);
        let done = Arc::new(Mutex::new(Vec::new()));
        let (mut tx0, mut rx0) = spsc::<(u64, u32)>(4);
        let (mut tx1, rx1) = spsc::<(u64, u32)>(4);
        let second = {
            let (done, control) = (done.clone(), control.clone());
            thread::spawn(move || replica(1, rx1, done, control, quit_when_retired))
        };
        let controller = {
            let control = control.clone();
            thread::spawn(move || {
                control.set_active(1).unwrap();
                thread::yield_now(); // let the others run while replica 1 is retired
                control.set_active(2).unwrap();
            })
        };
        // The split: one item at a time, reading the live count per item.
        let mut spreader = Spreader::new(true);
        for item in 0..ITEMS {
            let (r, seq) = spreader.pick(control.active(), None, |_| false);
            let tx = if r == 0 { &mut tx0 } else { &mut tx1 };
            while tx.push((seq, item)).is_err() {
                thread::yield_now();
            }
            thread::yield_now();
        }
        tx0.close();
        tx1.close();
        controller.join().unwrap();
        // Replica 0 runs on this thread once the split is done.
        let mut first = VecDeque::new();
        rx0.pop_burst(&mut first, 8);
        second.join().unwrap();
        let mut done = done.lock().unwrap().clone();
        done.extend(first);
        done.sort_unstable();
        let expected: Vec<(u64, u32)> = (0..ITEMS).map(|i| (u64::from(i), i)).collect();
        assert_eq!(
            done, expected,
            "every item processed once, every number seen"
        );
    });
}

#[test]
fn replica_count_changes_lose_and_repeat_nothing() {
    model(false);
}

#[test]
#[should_panic(expected = "every item processed once")]
fn a_replica_that_stops_when_retired_loses_items() {
    model(true);
}
