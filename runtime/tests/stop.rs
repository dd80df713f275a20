//! A stop handle ends never-ending sources from another thread; the pipeline drains
//! and every emitted item is accounted for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pipewright_runtime::{
    stage, AsyncSource, Outbox, PipelineBuilder, Plan, Runtime, Source, SourceState,
};

/// Counts up forever; `emitted` counts every item pushed.
struct Forever {
    next: u64,
    emitted: Arc<AtomicU64>,
}

impl Source for Forever {
    type Out = u64;
    fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
        for _ in 0..max {
            out.push(self.next);
            self.next += 1;
        }
        self.emitted.fetch_add(max as u64, Ordering::Relaxed);
        SourceState::Ready
    }
}

/// Emits `first` items, then waits forever for more (reports `Idle(None)`): its worker
/// parks, and only the stop handle's wake-up can end it.
struct ThenSilent {
    left: u64,
    emitted: Arc<AtomicU64>,
}

impl Source for ThenSilent {
    type Out = u64;
    fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
        let n = (max as u64).min(self.left);
        for i in 0..n {
            out.push(i);
        }
        self.left -= n;
        self.emitted.fetch_add(n, Ordering::Relaxed);
        SourceState::Idle(None)
    }
}

/// Pushes items, then awaits a timer before returning: a stop usually lands while a
/// pull is pending with items already pushed, which must be kept.
struct AsyncForever {
    next: u64,
    emitted: Arc<AtomicU64>,
}

impl AsyncSource for AsyncForever {
    type Out = u64;
    async fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
        for _ in 0..max.min(7) {
            out.push(self.next);
            self.next += 1;
            self.emitted.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
        SourceState::Ready
    }
}

/// Waits (without a time limit) until `counter` reaches `at_least`.
fn wait_for(counter: &AtomicU64, at_least: u64) {
    while counter.load(Ordering::Relaxed) < at_least {
        std::thread::sleep(Duration::from_millis(1));
    }
}

enum Kind {
    Sync,
    Silent,
    Async,
}

fn run(kind: Kind, plan: Plan, stop_after: u64) {
    let emitted = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let b = PipelineBuilder::new();
    let stream = match kind {
        Kind::Sync => b.source(
            "numbers",
            Forever {
                next: 0,
                emitted: emitted.clone(),
            },
        ),
        Kind::Silent => b.source(
            "numbers",
            ThenSilent {
                left: stop_after,
                emitted: emitted.clone(),
            },
        ),
        Kind::Async => b.source_async(
            "numbers",
            AsyncForever {
                next: 0,
                emitted: emitted.clone(),
            },
        ),
    };
    let sink_seen = seen.clone();
    let mut expected_next = 0u64;
    stream
        .then("double", stage::map(|x: u64| x * 2))
        .for_each("sink", move |x| {
            // In order, none lost, none twice (the silent source restarts at 0 per pull).
            if !matches!(kind, Kind::Silent) {
                assert_eq!(x, expected_next * 2);
                expected_next += 1;
            }
            sink_seen.fetch_add(1, Ordering::Relaxed);
        });
    let running = Runtime::start(b.build().unwrap(), plan).unwrap();
    let stop = running.stop_handle();
    assert!(!stop.is_stopped());
    let stopper = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            wait_for(&seen, stop_after);
            stop.stop();
            stop.stop(); // idempotent
        })
    };
    let report = running.drain().unwrap();
    stopper.join().unwrap();
    assert!(report.completed);
    assert_eq!(report.abandoned, 0);
    assert!(report.source_errors.is_empty());
    let emitted = emitted.load(Ordering::Relaxed);
    let seen = seen.load(Ordering::Relaxed);
    assert!(seen >= stop_after);
    assert_eq!(seen, emitted, "every emitted item reached the sink");
    let snap = &report.snapshot;
    assert_eq!(snap.stage("numbers").unwrap().items_out, emitted);
    assert_eq!(snap.stage("double").unwrap().items_in, emitted);
    assert_eq!(snap.stage("sink").unwrap().items_in, emitted);
    println!("stopped after {emitted} items");
}

#[test]
fn stop_ends_a_never_ending_sync_source_fused() {
    run(Kind::Sync, Plan::fused(), 50_000);
}

#[test]
fn stop_ends_a_never_ending_sync_source_across_workers() {
    run(Kind::Sync, Plan::spread(2), 50_000);
}

#[test]
fn stop_wakes_a_parked_idle_source() {
    run(Kind::Silent, Plan::spread(2), 1_000);
}

#[test]
fn stop_drops_a_pending_async_pull_and_keeps_its_items() {
    run(Kind::Async, Plan::fused(), 5_000);
}

#[test]
fn stop_ends_an_async_source_on_its_own_worker() {
    run(Kind::Async, Plan::spread(2), 5_000);
}

#[test]
fn stop_after_the_end_is_harmless() {
    let b = PipelineBuilder::new();
    b.source("n", pipewright_runtime::IterSource(0..100u32))
        .for_each("sink", |_| {});
    let running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let stop = running.stop_handle();
    let report = running.join().unwrap();
    stop.stop();
    assert!(stop.is_stopped());
    assert_eq!(report.snapshot.stage("sink").unwrap().items_in, 100);
}
