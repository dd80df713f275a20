//! Error policies and panics inside stages, on real workers.

use pipewright::layer::{ErrorPolicyLayer, RouteErrorsLayer};
use pipewright::{stage, Layer, PipelineBuilder, Plan, RunError, Runtime};

fn explode_on_hundreds(x: u64) -> u64 {
    if x % 100 == 0 {
        panic!("bad item {x}");
    }
    x
}

#[test]
fn panicking_stage_drops_and_counts_by_default() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then("fragile", stage::map(explode_on_hundreds))
        .then("after", stage::map(|x: u64| x))
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let rx = running.output(&out).unwrap();
    let mut tx = running.input(&input).unwrap();
    for i in 1..=1000 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let report = running.drain().unwrap();
    let got = rx.collect();
    assert_eq!(
        got,
        (1..=1000).filter(|x| x % 100 != 0).collect::<Vec<_>>(),
        "order kept, panicking items dropped"
    );
    let fragile = report.snapshot.stage("fragile").unwrap().clone();
    assert_eq!(fragile.panics, 10);
    assert_eq!(
        fragile
            .dropped
            .iter()
            .find(|(r, _)| *r == "panic")
            .unwrap()
            .1,
        10
    );
}

#[test]
fn panicking_stage_fails_the_pipeline_under_fail_policy() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    numbers
        .then(
            "fragile",
            ErrorPolicyLayer::fail_pipeline().layer(stage::map(explode_on_hundreds)),
        )
        .for_each("sink", |_| {});
    let running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let mut tx = running.input(&input).unwrap();
    for i in 1..=150 {
        if tx.send(i).is_err() {
            break;
        }
    }
    drop(tx);
    match running.drain() {
        Err(RunError::Failed(failure)) => {
            assert_eq!(failure.stage, "fragile");
            assert!(failure.message.contains("bad item 100"), "{failure}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn stage_errors_are_counted_routed_or_fatal() {
    // Drop and count (default).
    let b = PipelineBuilder::new();
    let (input, text) = b.input::<&'static str>("text");
    let out = text
        .then("parse", stage::try_map(|s: &str| s.parse::<u32>()))
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let rx = running.output(&out).unwrap();
    let mut tx = running.input(&input).unwrap();
    for s in ["1", "x", "3", "", "5"] {
        tx.send(s).unwrap();
    }
    drop(tx);
    let report = running.drain().unwrap();
    assert_eq!(rx.collect(), vec![1, 3, 5]);
    assert_eq!(report.snapshot.stage("parse").unwrap().dropped_total(), 2);

    // Routed to a typed error output.
    let b = PipelineBuilder::new();
    let (input, text) = b.input::<&'static str>("text");
    let (ok, err) = text
        .then(
            "parse",
            RouteErrorsLayer.layer(stage::try_map(|s: &str| s.parse::<u32>())),
        )
        .split_errors("split");
    let (ok, err) = (
        ok.output("ok"),
        err.then(
            "describe",
            stage::map(|e: std::num::ParseIntError| e.to_string()),
        )
        .output("err"),
    );
    let mut running = Runtime::start(b.build().unwrap(), Plan::per_stage()).unwrap();
    let (ok_rx, err_rx) = (running.output(&ok).unwrap(), running.output(&err).unwrap());
    let mut tx = running.input(&input).unwrap();
    for s in ["1", "x", "3"] {
        tx.send(s).unwrap();
    }
    drop(tx);
    running.drain().unwrap();
    assert_eq!(ok_rx.collect(), vec![1, 3]);
    assert_eq!(
        err_rx.collect(),
        vec!["invalid digit found in string".to_string()]
    );

    // Fatal.
    let b = PipelineBuilder::new();
    let (input, text) = b.input::<&'static str>("text");
    text.then(
        "parse",
        ErrorPolicyLayer::fail_pipeline().layer(stage::try_map(|s: &str| s.parse::<u32>())),
    )
    .for_each("sink", |_| {});
    let running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let mut tx = running.input(&input).unwrap();
    let _ = tx.send("1");
    let _ = tx.send("nope");
    drop(tx);
    assert!(matches!(running.drain(), Err(RunError::Failed(f)) if f.stage == "parse"));
}

/// A stage whose `flush` panics (no item in hand): the panic is counted, no item is
/// counted as dropped, and everything processed before is delivered.
#[test]
fn a_panic_in_flush_counts_a_panic_and_drops_no_item() {
    struct BadFlush;
    impl pipewright::Stage for BadFlush {
        type In = u64;
        type Out = u64;
        type Error = std::convert::Infallible;
        fn process(
            &mut self,
            x: u64,
            out: &mut pipewright::Outbox<'_, u64>,
        ) -> Result<(), Self::Error> {
            out.push(x);
            Ok(())
        }
        fn flush(&mut self, _out: &mut pipewright::Outbox<'_, u64>) -> Result<(), Self::Error> {
            panic!("flush went wrong");
        }
    }
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers.then("bad-flush", BadFlush).output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let rx = running.output(&out).unwrap();
    let mut tx = running.input(&input).unwrap();
    for i in 0..100 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let report = running.drain().unwrap();
    assert_eq!(rx.collect(), (0..100).collect::<Vec<_>>());
    let stage = report.snapshot.stage("bad-flush").unwrap();
    assert_eq!(stage.panics, 1);
    assert_eq!(stage.dropped_total(), 0);
}
