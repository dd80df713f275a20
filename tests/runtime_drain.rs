//! Drain, shutdown and backpressure under load, on real worker threads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pipewright::{stage, IterSource, Pin, PipelineBuilder, Plan, Runtime, TrySendError};

const SENDERS: u64 = 3;
const PER_SENDER: u64 = 40_000;

/// parse -> route by parity -> (two branches) -> merge -> tag, fed by three threads.
fn run_mixed(plan: Plan) {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let [even, odd] = numbers
        .then("double", stage::map(|x: u64| x * 2))
        .route("parity", |x: &u64| ((x / 2) % 2) as usize);
    let even = even.then("even", stage::map(|x: u64| x / 2));
    let odd = odd.then("odd", stage::map(|x: u64| x / 2));
    let out = even
        .merge(odd)
        .then("tag", stage::map(|x: u64| x + 1))
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), plan.ring_capacity(64)).unwrap();
    let rx = running.output(&out).unwrap();
    let collector = std::thread::spawn(move || rx.collect());
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let mut tx = running.input(&input).unwrap();
            std::thread::spawn(move || {
                for i in 0..PER_SENDER {
                    tx.send(s * PER_SENDER + i).unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let report = running.drain().unwrap();
    let mut got = collector.join().unwrap();
    assert!(report.completed, "{report:?}");
    assert_eq!(report.abandoned, 0);
    got.sort_unstable();
    let want: Vec<u64> = (1..=SENDERS * PER_SENDER).collect();
    assert_eq!(got.len(), want.len(), "lost or duplicated items");
    assert_eq!(got, want);
    let snap = report.snapshot;
    assert_eq!(snap.stage("double").unwrap().items_in, SENDERS * PER_SENDER);
    assert_eq!(snap.stage("tag").unwrap().items_out, SENDERS * PER_SENDER);
}

#[test]
fn drain_loses_and_duplicates_nothing_fused() {
    run_mixed(Plan::fused());
}

#[test]
fn drain_loses_and_duplicates_nothing_spread() {
    run_mixed(Plan::spread(2));
}

#[test]
fn drain_loses_and_duplicates_nothing_per_stage() {
    // Six workers on two CPUs: exercises parking and wake-ups hard.
    run_mixed(Plan::per_stage());
}

#[test]
fn drain_with_tiny_rings_and_bursts() {
    run_mixed(
        Plan::explicit()
            .worker(["double", "parity"], Pin::Auto)
            .worker(["even", "odd", "tag"], Pin::Auto)
            .burst_all(1)
            .ring_capacity(2),
    );
}

#[test]
fn shutdown_deadline_accounts_for_every_accepted_item() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then("fast", stage::map(|x: u64| x))
        .then(
            "slow",
            stage::map(|x: u64| {
                std::thread::sleep(Duration::from_micros(20));
                x
            }),
        )
        .output("out");
    let mut running =
        Runtime::start(b.build().unwrap(), Plan::per_stage().ring_capacity(256)).unwrap();
    let mut rx = running.output(&out).unwrap();
    let mut tx = running.input(&input).unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = accepted.clone();
    let sender = std::thread::spawn(move || {
        let mut next = 0u64;
        loop {
            match tx.try_send(next) {
                Ok(()) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                    next += 1;
                }
                Err(TrySendError::Full(_)) => std::thread::yield_now(),
                Err(TrySendError::Closed(_)) => return,
            }
        }
    });
    // Let the rings fill up, then stop with a deadline far too short to finish.
    while accepted.load(Ordering::Relaxed) < 300 {
        std::thread::yield_now();
    }
    let report = running.shutdown(Duration::from_millis(5)).unwrap();
    sender.join().unwrap();
    let mut received = 0u64;
    while rx.try_recv().is_some() {
        received += 1;
    }
    assert!(rx.is_finished());
    let accepted = accepted.load(Ordering::Relaxed);
    assert_eq!(
        accepted,
        received + report.abandoned,
        "every accepted item is either delivered or counted as abandoned: {report:?}"
    );
}

#[test]
fn backpressure_bounds_items_in_flight() {
    const RING: usize = 16;
    const BURST: usize = 8;
    let b = PipelineBuilder::new();
    let seen = Arc::new(AtomicU64::new(0));
    let sink_seen = seen.clone();
    b.source("firehose", IterSource(0..u64::MAX))
        .then("a", stage::map(|x: u64| x ^ 0x5a))
        .then("b", stage::map(|x: u64| x.rotate_left(3)))
        .for_each("slow-sink", move |_x| {
            sink_seen.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(50));
        });
    let running = Runtime::start(
        b.build().unwrap(),
        Plan::per_stage().ring_capacity(RING).burst_all(BURST),
    )
    .unwrap();
    // Edges: 3 rings of RING; each stage holds at most one input burst and one output burst.
    let bound = (3 * RING + 4 * 2 * BURST) as u64;
    let mut max_in_flight = 0;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(2));
        let snap = running.snapshot();
        let produced = snap.stage("firehose").unwrap().items_out;
        let consumed = snap.stage("slow-sink").unwrap().items_in;
        max_in_flight = max_in_flight.max(produced.saturating_sub(consumed));
    }
    assert!(seen.load(Ordering::Relaxed) > 0, "the sink made progress");
    assert!(
        max_in_flight <= bound,
        "{max_in_flight} items in flight exceeds the bound {bound}"
    );
    let report = running.abort().unwrap();
    assert!(!report.completed);
}

#[test]
fn send_after_drain_hands_the_item_back() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    numbers.for_each("sink", |_| {});
    let running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let mut tx = running.input(&input).unwrap();
    tx.send(1).unwrap();
    running.drain().unwrap();
    match tx.try_send(7) {
        Err(TrySendError::Closed(7)) => {}
        other => panic!("expected Closed(7), got {other:?}"),
    }
    assert!(tx.send(8).is_err());
    let mut burst: VecDeque<u64> = (0..3).collect();
    assert!(tx.send_burst(&mut burst).is_err());
    assert_eq!(burst.len(), 3, "unsent items stay with the caller");
}

#[test]
fn source_pipeline_joins_when_exhausted() {
    let b = PipelineBuilder::new();
    let sum = Arc::new(AtomicU64::new(0));
    let s = sum.clone();
    b.source("numbers", IterSource(1..=100_000u64))
        .then("id", stage::map(|x: u64| x))
        .for_each("sum", move |x| {
            s.fetch_add(x, Ordering::Relaxed);
        });
    let report = Runtime::start(b.build().unwrap(), Plan::spread(2))
        .unwrap()
        .join()
        .unwrap();
    assert!(report.completed);
    assert_eq!(sum.load(Ordering::Relaxed), 100_000 * 100_001 / 2);
}
