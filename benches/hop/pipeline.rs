//! Ours: a source and a sink around the four stages.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pipewright::{stage, Outbox, PipelineBuilder, Plan, Runtime, Source, SourceState, Stage};

use crate::harness::{per_unit, print_snapshot, Config, Expected};
use crate::work::{absorb, expand, fold, mix, seal};

/// Seeds `0..end`, held back until `go` so that worker start-up is not timed; stamps
/// `started` when it emits the first one.
struct GatedSeeds {
    next: u64,
    end: u64,
    go: Arc<AtomicBool>,
    started: Arc<OnceLock<Instant>>,
    begun: bool,
}

impl Source for GatedSeeds {
    type Out = u64;

    fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
        if !self.begun {
            if !self.go.load(Ordering::Acquire) {
                return SourceState::Idle(Some(Duration::from_micros(100)));
            }
            self.begun = true;
            let _ = self.started.set(Instant::now());
        }
        let stop = self.end.min(self.next + max as u64);
        for seed in self.next..stop {
            out.push(seed);
        }
        self.next = stop;
        if stop == self.end {
            SourceState::Exhausted
        } else {
            SourceState::Ready
        }
    }
}

/// Sums digests; stamps the time it saw the `expect`-th one.
struct Sink {
    acc: u64,
    count: u64,
    expect: u64,
    done: Arc<OnceLock<(Instant, u64)>>,
}

impl Stage for Sink {
    type In = u64;
    type Out = ();
    type Error = Infallible;

    #[inline]
    fn process(&mut self, digest: u64, _out: &mut Outbox<'_, ()>) -> Result<(), Infallible> {
        absorb(&mut self.acc, digest);
        self.count += 1;
        if self.count == self.expect {
            let _ = self.done.set((Instant::now(), self.acc));
        }
        Ok(())
    }

    fn flush(&mut self, _out: &mut Outbox<'_, ()>) -> Result<(), Infallible> {
        // Only reached early if items were lost; the check in `ours_pipeline` reports it.
        let _ = self.done.set((Instant::now(), self.acc));
        Ok(())
    }
}

/// Runs seeds -> expand -> mix -> fold -> seal -> sink under `plan`; ns per item.
pub fn ours_pipeline(cfg: &Config, expected: &Expected, n: u64, plan: Plan) -> f64 {
    let go = Arc::new(AtomicBool::new(false));
    let started = Arc::new(OnceLock::new());
    let done = Arc::new(OnceLock::new());
    let b = PipelineBuilder::new();
    b.source(
        "seeds",
        GatedSeeds {
            next: 0,
            end: n,
            go: go.clone(),
            started: started.clone(),
            begun: false,
        },
    )
    .then("expand", stage::map(expand))
    .then("mix", stage::map(mix))
    .then("fold", stage::map(fold))
    .then("seal", stage::map(seal))
    .sink(
        "sink",
        Sink {
            acc: 0,
            count: 0,
            expect: n,
            done: done.clone(),
        },
    );
    let running =
        Runtime::start(b.build().expect("valid pipeline"), plan).expect("pipeline starts");
    // Let the workers come up and go idle before the clock can start.
    std::thread::sleep(Duration::from_millis(5));
    go.store(true, Ordering::Release);
    let report = running.join().expect("pipeline runs");
    assert!(report.completed, "pipeline did not complete");
    if cfg.verbose {
        print_snapshot(&report.snapshot);
    }
    let start = *started.get().expect("source started");
    let (end, acc) = *done.get().expect("sink finished");
    assert_eq!(acc, expected.get(n), "ours lost or corrupted items");
    per_unit(end - start, n)
}
