//! As a tower::Service: a `PipelineService` over a `Tagged` pipeline, next to the same
//! work behind `tower::buffer::Buffer`.

use std::convert::Infallible;
use std::fmt::Debug;
use std::hint::black_box;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use pipewright::{stage, Pin, PipelineBuilder, PipelineService, Plan, Runtime, Tagged};
use tower::{Service, ServiceExt};

use crate::harness::{per_unit, print_snapshot, run_case, second_core, Case, Config, Expected};
use crate::work::{absorb, expand, fold, mix, seal};
use crate::{CAPACITY, IN_FLIGHT};

pub fn run(cfg: &Config, expected: &Expected) {
    if cfg.wants("as-tower-service") {
        run_case(
            cfg,
            Case {
                name: "as-tower-service",
                what: "PipelineService over a Tagged pipeline (4 stages fused on one worker), 256 calls in flight",
                peer: "tower-buffer",
                unit: "ns/req",
                better: "lower",
                n: cfg.service_requests,
            },
            |n| ours_service(cfg, expected, n),
            |n| peer_tower_buffer(expected, n),
        );
    }
}

/// Calls `svc` for seeds `0..n` with up to `IN_FLIGHT` calls outstanding (one service
/// handle, `ready().await` before every call); returns the time taken and the digest sum.
async fn drive<S>(svc: &mut S, n: u64) -> (Duration, u64)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    let mut in_flight = FuturesUnordered::new();
    let (mut next, mut acc) = (0u64, 0u64);
    let start = Instant::now();
    while next < n || !in_flight.is_empty() {
        while next < n && in_flight.len() < IN_FLIGHT {
            let ready = svc.ready().await.expect("service ready");
            in_flight.push(ready.call(black_box(next)));
            next += 1;
        }
        if let Some(response) = in_flight.next().await {
            absorb(&mut acc, response.expect("request answered"));
        }
    }
    (start.elapsed(), acc)
}

/// The callers' runtime on both sides: `block_on` on the bench thread drives the
/// callers, plus one worker thread (where the peer's `Buffer` worker runs; ours leaves
/// it idle and runs the pipeline on its own pinned worker instead).
fn caller_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("tokio runtime")
}

/// The four stages fused on one worker (pinned to the second CPU), fed `Tagged`
/// requests by a `PipelineService`; ns per request.
fn ours_service(cfg: &Config, expected: &Expected, n: u64) -> f64 {
    let b = PipelineBuilder::new();
    let (input, requests) = b.input::<Tagged<u64, u64>>("requests");
    requests
        .then_tagged("expand", stage::map(expand))
        .then_tagged("mix", stage::map(mix))
        .then_tagged("fold", stage::map(fold))
        .then_tagged("seal", stage::map(seal))
        .respond("reply");
    let plan = Plan::explicit().worker(
        ["expand", "mix", "fold", "seal", "reply"],
        Pin::Core(second_core()),
    );
    let running =
        Runtime::start(b.build().expect("valid pipeline"), plan).expect("pipeline starts");
    let mut svc = PipelineService::new(running.input(&input).expect("input open"));
    let rt = caller_runtime();
    let (elapsed, acc) = rt.block_on(drive(&mut svc, n));
    drop(svc);
    let report = running.drain().expect("pipeline drains");
    if cfg.verbose {
        print_snapshot(&report.snapshot);
    }
    assert_eq!(acc, expected.get(n), "ours answered wrongly");
    per_unit(elapsed, n)
}

/// The same four functions in one `tower::service_fn` behind `tower::buffer::Buffer`
/// (bound `CAPACITY`). The work is done in the closure body, i.e. in `call`, which the
/// `Buffer` worker task runs, so, as with ours, the work happens off the callers'
/// thread (a plain `async` block would run on the caller polling the response future).
fn peer_tower_buffer(expected: &Expected, n: u64) -> f64 {
    let rt = caller_runtime();
    let (elapsed, acc) = rt.block_on(async {
        let inner = tower::service_fn(|seed: u64| {
            std::future::ready(Ok::<u64, Infallible>(seal(fold(mix(expand(seed))))))
        });
        let mut svc = tower::buffer::Buffer::new(inner, CAPACITY);
        drive(&mut svc, n).await
    });
    drop(rt);
    assert_eq!(acc, expected.get(n), "tower-buffer answered wrongly");
    per_unit(elapsed, n)
}
