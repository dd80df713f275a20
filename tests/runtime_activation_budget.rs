//! Per-activation budgets: a stage given several bursts (or a time slice) per
//! activation runs that long before its worker moves on, and no longer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipewright::{
    ActivationBudget, Burst, Failures, IterSource, Outbox, Pin, PipelineBuilder, Plan, Runtime,
    Stage,
};

/// Logs its tag once per burst, optionally sleeping per burst, and with 0 items each
/// time its worker turned to it and found its input empty.
struct Logger {
    tag: char,
    log: Arc<Mutex<Vec<(char, usize)>>>,
    per_burst: Duration,
}

impl Stage for Logger {
    type In = u64;
    type Out = ();
    type Error = std::convert::Infallible;

    fn process(&mut self, _: u64, _: &mut Outbox<'_, ()>) -> Result<(), Self::Error> {
        Ok(())
    }

    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, u64>,
        _out: &mut Outbox<'_, ()>,
        _failures: &mut Failures<'_, Self::Error>,
    ) {
        let mut n = 0;
        while burst.pop().is_some() {
            n += 1;
        }
        self.log.lock().unwrap().push((self.tag, n));
        if !self.per_burst.is_zero() {
            std::thread::sleep(self.per_burst);
        }
    }

    fn on_idle(&mut self, _out: &mut Outbox<'_, ()>) -> Option<Duration> {
        self.log.lock().unwrap().push((self.tag, 0));
        None
    }
}

/// Runs two logging sinks `x` and `y` on one worker, each fed by its own fast source
/// on another worker (so both normally have input queued; `y` is slowed so its queue
/// rarely runs dry), and returns the lengths of the runs of consecutive `x` bursts
/// that ended because `y` ran.
fn x_runs(items: u64, x_sleep: Duration, x_budget: Option<ActivationBudget>) -> Vec<usize> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let b = PipelineBuilder::new();
    let logger = |tag, per_burst| Logger {
        tag,
        log: log.clone(),
        per_burst,
    };
    b.source("xs", IterSource(0..items))
        .sink("x", logger('x', x_sleep));
    b.source("ys", IterSource(0..items))
        .sink("y", logger('y', Duration::from_micros(20)));
    let mut plan = Plan::explicit()
        .worker(["xs", "ys"], Pin::Float)
        .worker(["x", "y"], Pin::Float)
        .ring_capacity(4096)
        .burst_all(8);
    if let Some(budget) = x_budget {
        plan = plan.activation("x", budget);
    }
    let report = Runtime::start(b.build().unwrap(), plan)
        .unwrap()
        .join()
        .unwrap();
    assert!(report.completed);
    let log = log.lock().unwrap();
    let seen: usize = log.iter().map(|(_, n)| n).sum();
    assert_eq!(seen as u64, 2 * items, "every item was processed once");
    // A run of `x` bursts ends when the worker turns to `y`, whether `y` found input
    // (its source's worker may have been descheduled) or not. Only runs that ended
    // that way count: the tail after `y` finished is one long run of `x` by necessity.
    let last_y = log.iter().rposition(|(c, _)| *c == 'y').unwrap();
    let mut runs = Vec::new();
    let mut run = 0;
    for &(c, n) in &log[..last_y] {
        if c == 'x' {
            // An `x` turn that found nothing is no burst.
            run += usize::from(n > 0);
        } else if run > 0 {
            runs.push(run);
            run = 0;
        }
    }
    runs
}

#[test]
fn an_item_budget_runs_a_stage_for_several_bursts_and_no_more() {
    let runs = x_runs(64_000, Duration::ZERO, Some(ActivationBudget::items(80)));
    assert!(!runs.is_empty());
    let max = *runs.iter().max().unwrap();
    assert!(
        max <= 10,
        "80 items in bursts of 8 is at most 10 bursts, saw {max}"
    );
    assert!(
        runs.contains(&10),
        "with input waiting, `x` uses its whole budget at least once: {runs:?}"
    );
}

#[test]
fn the_default_is_one_burst_per_activation() {
    let runs = x_runs(64_000, Duration::ZERO, None);
    let ones = runs.iter().filter(|r| **r == 1).count();
    // Longer runs happen only while `y` has nothing queued.
    assert!(
        ones * 2 >= runs.len(),
        "most runs are a single burst without a budget: {runs:?}"
    );
}

#[test]
fn a_time_budget_bounds_the_activation() {
    // Each `x` burst sleeps 1 ms; with 3 ms per activation no run exceeds 3 bursts,
    // although the item budget alone would allow 100.
    let budget = ActivationBudget::items(800).with_time(Duration::from_millis(3));
    let runs = x_runs(2_000, Duration::from_millis(1), Some(budget));
    let max = *runs.iter().max().unwrap();
    assert!(
        max <= 3,
        "a 3 ms slice fits at most 3 bursts of 1 ms, saw {max}: {runs:?}"
    );
}

#[test]
fn zero_budgets_are_rejected_with_a_typed_error() {
    let stages = ["a", "b"];
    for budget in [
        ActivationBudget::items(0),
        ActivationBudget::time(Duration::ZERO),
    ] {
        let err = Plan::fused()
            .activation("a", budget)
            .resolve(&stages)
            .unwrap_err();
        assert!(
            matches!(err, pipewright::PlanError::BadBudget { ref stage, .. } if stage == "a"),
            "{err}"
        );
        assert!(err.to_string().contains("stage `a`"));
    }
    let err = Plan::fused()
        .activation("nope", ActivationBudget::items(4))
        .resolve(&stages)
        .unwrap_err();
    assert_eq!(err, pipewright::PlanError::UnknownStage("nope".into()));
}

#[test]
fn budgets_round_trip_through_plan_files() {
    let plan = Plan::fused().activation(
        "a",
        ActivationBudget::items(256).with_time(Duration::from_micros(50)),
    );
    let text = plan.to_toml();
    assert!(text.contains("[activation.a]"), "{text}");
    assert_eq!(Plan::from_toml(&text).unwrap(), plan);
}
