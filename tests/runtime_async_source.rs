//! Async sources: awaited by their worker (not polled), backpressured by a full ring,
//! and never holding up an abort while they wait for traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright::{AsyncSource, Outbox, PipelineBuilder, Plan, Runtime, SourceState};

/// Emits `0..n` in bursts, awaiting a timer every 1000 items like a socket would.
struct Counter {
    next: u64,
    end: u64,
}

impl AsyncSource for Counter {
    type Out = u64;
    async fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
        if self.next == self.end {
            return SourceState::Exhausted;
        }
        if self.next % 1000 == 0 {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        for _ in 0..max {
            if self.next == self.end {
                break;
            }
            out.push(self.next);
            self.next += 1;
        }
        SourceState::Ready
    }
}

/// Waits forever for traffic that never comes.
struct Silent;

impl AsyncSource for Silent {
    type Out = u64;
    async fn pull(&mut self, _out: &mut Outbox<'_, u64>, _max: usize) -> SourceState {
        std::future::pending::<()>().await;
        SourceState::Exhausted
    }
}

#[test]
fn an_async_source_feeds_a_pipeline_in_order_under_backpressure() {
    for plan in [Plan::fused(), Plan::per_stage()] {
        let b = PipelineBuilder::new();
        let sum = Arc::new(AtomicU64::new(0));
        let last = Arc::new(AtomicU64::new(0));
        let (s, l) = (sum.clone(), last.clone());
        b.source_async(
            "counter",
            Counter {
                next: 0,
                end: 200_000,
            },
        )
        .for_each("check", move |x: u64| {
            assert!(x == 0 || x == l.load(Ordering::Relaxed) + 1, "in order");
            l.store(x, Ordering::Relaxed);
            s.fetch_add(x, Ordering::Relaxed);
        });
        // Tiny rings: the source is blocked on a full ring most of the time.
        let report = Runtime::start(b.build().unwrap(), plan.ring_capacity(8).burst_all(4))
            .unwrap()
            .join()
            .unwrap();
        assert!(report.completed);
        assert_eq!(sum.load(Ordering::Relaxed), (0..200_000u64).sum::<u64>());
        assert_eq!(report.snapshot.stage("counter").unwrap().items_out, 200_000);
    }
}

#[test]
fn a_waiting_async_source_does_not_hold_up_shutdown() {
    let b = PipelineBuilder::new();
    b.source_async("silent", Silent)
        .for_each("sink", |_: u64| {});
    let running = Runtime::start(b.build().unwrap(), Plan::per_stage()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let report = running.shutdown(Duration::from_millis(50)).unwrap();
    assert!(!report.completed);
    // A source that ignored the abort would have kept the workers waiting until the
    // runtime's quiesce limit, which counts each such wait.
    assert_eq!(report.quiesce_overruns, 0, "shutdown waited for the source");
}

#[test]
fn an_interval_source_ticks_no_faster_than_its_period() {
    let b = PipelineBuilder::new();
    let ticks = b
        .source_async(
            "tick",
            pipewright::source::interval(Duration::from_millis(20)),
        )
        .output("ticks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let rx = running.output(&ticks).unwrap();
    let got: Vec<Instant> = rx.take(5).collect();
    running.shutdown(Duration::from_millis(100)).unwrap();
    assert_eq!(got.len(), 5);
    // The timer never fires early: from the 1st to the 5th tick at least the 2nd..5th
    // due times passed (60 ms), whatever the scheduling delays.
    assert!(
        got[4] - got[0] >= Duration::from_millis(60),
        "{:?}",
        got[4] - got[0]
    );
}

#[test]
fn finished_resolves_when_a_stage_fails_the_pipeline() {
    use pipewright::{stage, Layer};
    let b = PipelineBuilder::new();
    b.source("n", pipewright::IterSource(0..1_000_000u64))
        .then(
            "picky",
            pipewright::layer::ErrorPolicyLayer::fail_pipeline().layer(stage::try_map(|x: u64| {
                if x == 1000 {
                    Err("no 1000")
                } else {
                    Ok(x)
                }
            })),
        )
        .for_each("sink", |_| {});
    let running = Runtime::start(b.build().unwrap(), Plan::per_stage()).unwrap();
    futures::executor::block_on(running.finished());
    assert!(running.is_finished());
    assert!(matches!(
        running.join(),
        Err(pipewright::RunError::Failed { .. })
    ));
}
