//! tower interop both ways, async stages and their layers, on real workers.

use std::convert::Infallible;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use pipewright::layer::{RateLimitLayer, TimeoutLayer};
use pipewright::{
    stage, AsyncStage, Burst, Failures, Layer, Outbox, PipelineBuilder, PipelineService, Plan,
    RequestError, Runtime, ServiceStage, Tagged,
};
use tower::{Service, ServiceExt};

#[test]
fn pipeline_serves_concurrent_tower_calls_each_with_its_own_answer() {
    let b = PipelineBuilder::new();
    let (input, requests) = b.input::<Tagged<u64, String>>("requests");
    requests
        .then_tagged("square", stage::map(|x: u64| x * x))
        .then_tagged(
            "reject-49",
            stage::try_map(|x: u64| if x == 49 { Err("no 49s") } else { Ok(x) }),
        )
        .then_tagged("render", stage::map(|x: u64| format!("<{x}>")))
        .respond("reply");
    let running = Runtime::start(b.build().unwrap(), Plan::per_stage().ring_capacity(8)).unwrap();
    let service = PipelineService::new(running.input(&input).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results: Vec<(u64, Result<String, RequestError>)> = rt.block_on(async {
        let calls = FuturesUnordered::new();
        for i in 0..2000u64 {
            let mut svc = service.clone();
            calls.push(async move { (i, svc.ready().await.unwrap().call(i).await) });
        }
        calls.collect().await
    });
    assert_eq!(results.len(), 2000);
    for (i, result) in results {
        if i == 7 {
            assert!(
                matches!(result, Err(RequestError::Stage { ref stage, .. }) if stage == "reject-49"),
                "{result:?}"
            );
        } else {
            assert_eq!(result.unwrap(), format!("<{}>", i * i));
        }
    }
    drop(service);
    running.drain().unwrap();
}

#[test]
fn a_tower_service_runs_as_an_async_stage() {
    let counter = tower::service_fn(|x: u64| async move {
        tokio::time::sleep(Duration::from_micros(10)).await;
        if x == 13 {
            Err::<u64, String>("unlucky".to_string())
        } else {
            Ok(x * 10)
        }
    });
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_async("svc", ServiceStage::new(counter))
        .then("plus", stage::map(|x: u64| x + 1))
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let rx = running.output(&out).unwrap();
    let mut tx = running.input(&input).unwrap();
    for i in 0..100 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let report = running.drain().unwrap();
    let want: Vec<u64> = (0..100).filter(|x| *x != 13).map(|x| x * 10 + 1).collect();
    assert_eq!(rx.collect(), want, "in order, failed call dropped");
    assert_eq!(report.snapshot.stage("svc").unwrap().dropped_total(), 1);
}

/// Sleeps per burst; items 0..3 in a burst take long enough to trip the timeout.
struct Sleepy;

impl AsyncStage for Sleepy {
    type In = u64;
    type Out = u64;
    type Error = Infallible;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, u64>,
        out: &mut Outbox<'_, u64>,
        _f: &mut Failures<'_, Infallible>,
    ) {
        while let Some(x) = burst.peek().copied() {
            if x >= 1_000 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            burst.pop();
            out.push(x);
        }
    }
}

#[test]
fn timeout_layer_fails_the_rest_of_a_stuck_burst() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_async(
            "sleepy",
            TimeoutLayer::new(Duration::from_millis(20)).layer(Sleepy),
        )
        .burst(4)
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let rx = running.output(&out).unwrap();
    let mut tx = running.input(&input).unwrap();
    for x in [1, 2, 1_000, 3] {
        tx.send(x).unwrap();
    }
    drop(tx);
    let report = running.drain().unwrap();
    let got = rx.collect();
    assert_eq!(got, vec![1, 2]);
    assert_eq!(
        report.snapshot.stage("sleepy").unwrap().dropped_total(),
        2,
        "the stuck item and the one behind it"
    );
}

#[test]
fn rate_limited_stage_delivers_everything() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then(
            "limited",
            RateLimitLayer::per_second(20_000.0, 16).layer(stage::map(|x: u64| x)),
        )
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let rx = running.output(&out).unwrap();
    let mut tx = running.input(&input).unwrap();
    for i in 0..500 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let report = running.drain().unwrap();
    assert_eq!(rx.collect(), (0..500).collect::<Vec<_>>());
    assert_eq!(report.snapshot.stage("limited").unwrap().dropped_total(), 0);
}
