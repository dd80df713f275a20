//! The report says how long the run took (not when it was collected), and the
//! snapshot's input column follows live moves.

use std::time::{Duration, Instant};

use pipewright_runtime::controller::{Decision, Reason};
use pipewright_runtime::{stage, IterSource, PipelineBuilder, Plan, Runtime};

#[test]
fn elapsed_ends_when_the_pipeline_finished_not_when_drain_returned() {
    let b = PipelineBuilder::new();
    b.source("n", IterSource(0..10_000u64))
        .then("double", stage::map(|x: u64| x * 2))
        .for_each("sink", |_| {});
    let before_start = Instant::now();
    let running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    while !running.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let seen_finished = before_start.elapsed();
    // Collect the report well after the end: the wait must not count.
    std::thread::sleep(Duration::from_millis(100));
    let report = running.drain().unwrap();
    assert!(report.completed);
    assert!(
        report.elapsed <= seen_finished,
        "elapsed {:?} includes time after the run ended (it was over by {:?})",
        report.elapsed,
        seen_finished
    );
    assert!(report.elapsed > Duration::ZERO);
}

#[test]
fn the_input_column_follows_a_live_move() {
    let b = PipelineBuilder::new();
    // A source that never ends by itself: the run lasts until the stop.
    b.source("n", IterSource(0u64..))
        .then("a", stage::map(|x: u64| x + 1))
        .then("b", stage::map(|x: u64| x * 3))
        .for_each("sink", |_| {});
    let running = Runtime::start(
        b.build().unwrap(),
        Plan::explicit()
            .worker(["n", "a", "b", "sink"], pipewright_runtime::Pin::Auto)
            .worker(Vec::<&str>::new(), pipewright_runtime::Pin::Auto)
            .adaptive(),
    )
    .unwrap();
    let before = running.snapshot();
    assert_eq!(before.stage("b").unwrap().input_kind, "fused");
    assert_eq!(before.stage("sink").unwrap().input_kind, "fused");
    running
        .apply(&Decision::Move {
            stage: "b".into(),
            from: 0,
            to: 1,
            why: Reason::Balance,
        })
        .unwrap();
    // The move completes when worker 0 next reads its mailbox.
    let mut after = running.snapshot();
    while after.stage("b").unwrap().worker != 1 {
        std::thread::sleep(Duration::from_millis(1));
        after = running.snapshot();
    }
    assert_eq!(after.stage("b").unwrap().input_kind, "shared");
    assert_eq!(after.stage("sink").unwrap().input_kind, "shared");
    assert_eq!(after.stage("a").unwrap().input_kind, "fused");
    running
        .apply(&Decision::Move {
            stage: "b".into(),
            from: 1,
            to: 0,
            why: Reason::Balance,
        })
        .unwrap();
    let mut back = running.snapshot();
    while back.stage("b").unwrap().worker != 0 {
        std::thread::sleep(Duration::from_millis(1));
        back = running.snapshot();
    }
    assert_eq!(back.stage("b").unwrap().input_kind, "fused");
    running.stop_handle().stop();
    let report = running.drain().unwrap();
    assert!(report.completed);
    let snap = &report.snapshot;
    assert_eq!(
        snap.stage("n").unwrap().items_out,
        snap.stage("sink").unwrap().items_in
    );
}
