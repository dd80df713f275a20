//! Panics in a tower service driven as an async stage: each costs exactly one item,
//! counted under the stage's name, and the rest of the run goes on.

use std::convert::Infallible;
use std::time::Duration;

use pipewright::{PipelineBuilder, Plan, Runtime, ServiceStage};

/// Items `0..n` through `stage` (as stage "calls", on one worker): what came out,
/// sorted, and how many items the stage counted dropped.
fn serve<S>(stage: ServiceStage<S, u64>, n: u64) -> (Vec<u64>, u64)
where
    S: tower::Service<u64, Response = u64, Error = Infallible> + Send + 'static,
    S::Future: Send,
{
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers.then_async("calls", stage).output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let (mut tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let collector = std::thread::spawn(move || rx.collect());
    for x in 0..n {
        tx.send(x).unwrap();
    }
    drop(tx);
    let report = running.drain().unwrap();
    let mut got: Vec<u64> = collector.join().unwrap();
    got.sort_unstable();
    (got, report.snapshot.stage("calls").unwrap().dropped_total())
}

/// A call that panics while it completes (polled in the stage's `progress`, after its
/// burst was taken) costs that item, counted as a panic under the stage's name; the
/// rest is delivered and the run ends.
#[test]
fn a_call_that_panics_while_in_flight_is_counted_and_the_run_ends() {
    let service = tower::service_fn(|x: u64| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(x % 10 != 3, "a multiple of ten plus three");
        Ok::<u64, Infallible>(x)
    });
    let (got, dropped) = serve(ServiceStage::new(service).window(32), 200);
    let expected: Vec<u64> = (0..200).filter(|x| x % 10 != 3).collect();
    assert_eq!(got, expected);
    assert_eq!(dropped, 20);
}

/// A service whose fifth readiness check panics.
struct PanicsOnFifthReady {
    polls: u32,
}

impl tower::Service<u64> for PanicsOnFifthReady {
    type Response = u64;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u64, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.polls += 1;
        assert!(self.polls != 5, "the fifth readiness check");
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u64) -> Self::Future {
        std::future::ready(Ok(x))
    }
}

/// A `poll_ready` that panics costs the item it was getting ready for, counted once:
/// every item is either delivered or counted dropped, never both (it used to count
/// one item lost and then serve it).
#[test]
fn a_readiness_check_that_panics_costs_exactly_its_item() {
    let (got, dropped) = serve(ServiceStage::new(PanicsOnFifthReady { polls: 0 }), 50);
    assert_eq!(dropped, 1);
    assert_eq!(got.len() as u64 + dropped, 50, "delivered {got:?}");
    // The fifth check was for the fifth item.
    assert!(!got.contains(&4), "{got:?}");
}
