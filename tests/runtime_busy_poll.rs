//! `Plan::busy_poll`: a worker keeps polling its stages for the window after its last
//! progress instead of parking, and a pipeline with it delivers every item;
//! `Running::set_busy_poll` changes the window while the pipeline runs.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright::{Outbox, PipelineBuilder, Plan, Runtime, Stage};

/// Passes items on; counts how often the worker offered it an idle turn.
struct IdleTurns(Arc<AtomicU64>);

impl Stage for IdleTurns {
    type In = u64;
    type Out = u64;
    type Error = Infallible;

    fn process(&mut self, x: u64, out: &mut Outbox<'_, u64>) -> Result<(), Infallible> {
        out.push(x);
        Ok(())
    }

    fn on_idle(&mut self, _out: &mut Outbox<'_, u64>) -> Option<Duration> {
        self.0.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[test]
fn a_busy_polling_worker_keeps_polling_while_idle_and_delivers_everything() {
    let turns = Arc::new(AtomicU64::new(0));
    let b = PipelineBuilder::new();
    let (input, items) = b.input::<u64>("items");
    let out = items.then("pass", IdleTurns(turns.clone())).output("out");
    // A window far longer than the test: the worker must not park at all.
    let plan = Plan::fused().busy_poll(Duration::from_secs(3600));
    assert!(plan.to_string().contains("busy-poll"), "{plan}");
    let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
    let (mut tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    assert!(tx.send(1).is_ok());
    // Without busy-polling the worker parks after 64 idle passes and the count stops
    // there (`on_idle` asks for no timer); polling, it keeps climbing. The deadline
    // only keeps a broken build from hanging the test run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while turns.load(Ordering::Relaxed) < 100_000 {
        assert!(
            Instant::now() < deadline,
            "the worker stopped polling after {} idle turns",
            turns.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for x in 2..=1000 {
        assert!(tx.send(x).is_ok());
    }
    drop(tx);
    running.drain().unwrap();
    assert_eq!(rx.collect(), (1..=1000).collect::<Vec<_>>());
}

/// Waits (a hang guard, not a measurement) until the idle-turn count passes `above`.
fn wait_for_turns(turns: &AtomicU64, above: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while turns.load(Ordering::Relaxed) <= above {
        assert!(
            Instant::now() < deadline,
            "the worker stopped polling after {} idle turns",
            turns.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The idle-turn count once it has stopped moving (the worker parked): four readings
/// 20 ms apart agree. A worker that keeps polling never settles, and the hang guard
/// fails the test.
fn settled(turns: &AtomicU64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut same) = (turns.load(Ordering::Relaxed), 0);
    while same < 3 {
        std::thread::sleep(Duration::from_millis(20));
        let now = turns.load(Ordering::Relaxed);
        same = if now == last { same + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "{what}: still polling after 60 s"
        );
        last = now;
    }
    last
}

#[test]
fn the_busy_poll_window_changes_while_the_pipeline_runs() {
    let turns = Arc::new(AtomicU64::new(0));
    let b = PipelineBuilder::new();
    let (input, items) = b.input::<u64>("items");
    let out = items.then("pass", IdleTurns(turns.clone())).output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    assert_eq!(running.busy_poll(), Duration::ZERO);
    let (mut tx, mut rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );

    // No window: after an item, the worker spins a few passes and parks, so the count
    // stops moving (it would climb without end if the worker kept polling).
    assert!(tx.send(1).is_ok());
    assert_eq!(rx.next(), Some(1));
    let parked = settled(&turns, "the worker without a window");

    // A window far longer than the test: the next item wakes the worker, and from then
    // on it polls.
    running.set_busy_poll(Duration::from_secs(3600));
    assert_eq!(running.busy_poll(), Duration::from_secs(3600));
    assert!(tx.send(2).is_ok());
    assert_eq!(rx.next(), Some(2));
    wait_for_turns(&turns, parked + 100_000);

    // Back to zero: the worker parks again at its next idle pass.
    running.set_busy_poll(Duration::ZERO);
    assert!(tx.send(3).is_ok());
    assert_eq!(rx.next(), Some(3));
    settled(&turns, "the worker after the window was set to zero");
    drop(tx);
    running.drain().unwrap();
    assert_eq!(rx.collect(), Vec::<u64>::new());
}
