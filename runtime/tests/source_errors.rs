//! A source that fails ends with its error counted and reported by name; the rest of
//! the pipeline drains and what the source emitted before is kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pipewright_runtime::{
    stage, AsyncSource, IterSource, Outbox, PipelineBuilder, Plan, Runtime, Source, SourceState,
};

/// Why the flaky source stopped.
#[derive(Debug, thiserror::Error)]
#[error("device went away after {0} readings: reconnect it and restart the pipeline")]
struct DeviceGone(u64);

/// Emits `good` items, then fails.
struct Flaky {
    good: u64,
    sent: u64,
}

impl Source for Flaky {
    type Out = u64;
    fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
        for _ in 0..max {
            if self.sent == self.good {
                return SourceState::failed(DeviceGone(self.sent));
            }
            out.push(self.sent);
            self.sent += 1;
        }
        SourceState::Ready
    }
}

impl AsyncSource for Flaky {
    type Out = u64;
    async fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
        tokio::task::yield_now().await;
        Source::pull(self, out, max)
    }
}

fn run(plan: Plan, asynchronous: bool) {
    let b = PipelineBuilder::new();
    let flaky = Flaky {
        good: 1_037,
        sent: 0,
    };
    let bad = if asynchronous {
        b.source_async("flaky", flaky)
    } else {
        b.source("flaky", flaky)
    };
    let good = b.source("steady", IterSource(0..5_000u64));
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    b.merge([bad, good])
        .then("plus-one", stage::map(|x: u64| x + 1))
        .for_each("sink", move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
    let report = Runtime::start(b.build().unwrap(), plan)
        .unwrap()
        .join()
        .unwrap();
    assert!(report.completed, "the rest of the pipeline drained");
    assert_eq!(seen.load(Ordering::Relaxed), 1_037 + 5_000);
    assert_eq!(report.source_errors.len(), 1);
    let failure = &report.source_errors[0];
    assert_eq!(failure.stage, "flaky");
    assert_eq!(
        failure.message,
        "device went away after 1037 readings: reconnect it and restart the pipeline"
    );
    assert!(failure.to_string().contains("`flaky`"));
    let flaky = report.snapshot.stage("flaky").unwrap();
    assert_eq!(flaky.items_out, 1_037);
    assert_eq!(
        flaky.source_error.as_deref(),
        Some(failure.message.as_str())
    );
    assert_eq!(report.snapshot.stage("steady").unwrap().source_error, None);
}

#[test]
fn a_failed_sync_source_is_reported_and_the_rest_drains() {
    run(Plan::fused(), false);
}

#[test]
fn a_failed_sync_source_on_another_worker() {
    run(Plan::spread(2), false);
}

#[test]
fn a_failed_async_source_is_reported_and_the_rest_drains() {
    run(Plan::spread(2), true);
}
