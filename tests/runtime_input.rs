//! `Input::send_async` is cancel-safe: a send dropped while it waits for room sends
//! nothing, then or later.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use pipewright::{stage, PipelineBuilder, Plan, Runtime};

/// Opens the gate when dropped, so that a failing assertion does not leave the worker
/// blocked in the stage (and the test hanging in `Running`'s drop).
struct Gate(Arc<AtomicBool>);

impl Drop for Gate {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[test]
fn a_cancelled_send_async_is_never_sent() {
    let gate = Gate(Arc::new(AtomicBool::new(false)));
    let open = gate.0.clone();
    let entered = Arc::new(AtomicBool::new(false));
    let holding = entered.clone();
    let b = PipelineBuilder::new();
    let (input, items) = b.input::<u64>("items");
    // Holds its first item until the gate opens, so the input ring fills up.
    let out = items
        .then(
            "gate",
            stage::map(move |x: u64| {
                holding.store(true, Ordering::Release);
                while !open.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                x
            }),
        )
        .burst(1)
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused().ring_capacity(4)).unwrap();
    let (mut tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );

    // The stage takes item 0 and holds it (the worker takes nothing more until the
    // gate opens); the deadline only turns a hang into a failure.
    tx.send(0).unwrap();
    let mut sent = vec![0];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !entered.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "the stage never took item 0");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Fill the input ring behind it.
    for x in 1.. {
        match tx.try_send(x) {
            Ok(()) => sent.push(x),
            Err(_) => break,
        }
        assert!(x < 1_000_000, "the input never filled up");
    }
    // A send that must wait for room, polled once and dropped: cancelled.
    {
        let mut cancelled = Box::pin(tx.send_async(999_999));
        assert!(
            cancelled.as_mut().now_or_never().is_none(),
            "the full input took it"
        );
    }

    // The output is read while the pipeline drains (its ring is small too).
    let collector = std::thread::spawn(move || rx.collect());
    drop(gate);
    futures::executor::block_on(tx.send_async(7)).unwrap();
    sent.push(7);
    drop(tx);
    running.drain().unwrap();
    let got = collector.join().expect("collector");
    assert_eq!(got, sent, "the cancelled item was sent, or one was lost");
}

/// Ids of another pipeline whose input and output carry other item types give `None`,
/// never a panic, and leave this pipeline's handles in place.
#[test]
fn ids_of_another_pipeline_give_none_and_take_nothing() {
    let b = pipewright::PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then("double", pipewright::stage::map(|x: u64| x * 2))
        .output("out");
    let other = pipewright::PipelineBuilder::new();
    let (other_input, words) = other.input::<String>("words");
    let other_out = words.output("same");
    drop(other);
    let mut running =
        pipewright::Runtime::start(b.build().unwrap(), pipewright::Plan::fused()).unwrap();
    assert!(running.input(&other_input).is_none());
    assert!(running.output(&other_out).is_none());
    let mut tx = running.input(&input).unwrap();
    let rx = running.output(&out).expect("still there");
    tx.send(21).unwrap();
    drop(tx);
    running.drain().unwrap();
    assert_eq!(rx.collect(), vec![42]);
}
