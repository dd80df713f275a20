//! tower interop both ways, async stages and their layers, on real workers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
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
    let (running, input) = square_reject_render();
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
        check_answer(i, result);
    }
    drop(service);
    running.drain().unwrap();
}

#[test]
fn queued_answers_arrive_once_per_request_with_the_callers_ids() {
    let (running, input) = square_reject_render();
    let mut service = PipelineService::new(running.input(&input).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const N: u64 = 20_000;
    let mut got = rt.block_on(async {
        let mut answers = pipewright::Answers::new();
        let mut got = Vec::new();
        for i in 0..N {
            // Ids are the caller's: here the request's value shifted, to show they
            // are not positions.
            service.send_queued(&answers, i + 1_000, i).await.unwrap();
            while let Some(answer) = answers.try_recv() {
                got.push(answer);
            }
        }
        while got.len() < N as usize {
            answers.recv_many(&mut got, 256).await;
        }
        assert_eq!(answers.try_recv(), None, "no answer twice");
        got
    });
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got.len(), N as usize);
    for (k, (id, result)) in got.into_iter().enumerate() {
        let i = k as u64;
        assert_eq!(id, i + 1_000);
        check_answer(i, result);
    }
    drop(service);
    running.drain().unwrap();
}

/// A running pipeline that doubles tagged requests, and a service over it.
fn doubling_service() -> (pipewright::Running, PipelineService<u64, u64>) {
    let b = PipelineBuilder::new();
    let (input, requests) = b.input::<Tagged<u64, u64>>("requests");
    requests
        .then_tagged("double", stage::map(|x: u64| 2 * x))
        .respond("reply");
    let running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let service = PipelineService::new(running.input(&input).unwrap());
    (running, service)
}

#[test]
fn a_queued_request_to_a_closed_pipeline_is_refused_and_never_answered() {
    let (running, mut service) = doubling_service();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut answers = pipewright::Answers::new();
    rt.block_on(service.send_queued(&answers, 1, 21)).unwrap();
    assert_eq!(rt.block_on(answers.recv()), (1, Ok(42)));
    running.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(
        rt.block_on(service.send_queued(&answers, 2, 5)),
        Err(RequestError::Closed)
    );
    assert_eq!(
        answers.try_recv(),
        None,
        "a refused request is not also answered"
    );
}

#[test]
fn a_reader_task_tags_with_a_tagger_while_a_writer_task_owns_the_answers() {
    let (running, mut service) = doubling_service();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut answers = pipewright::Answers::new();
    let tagger = answers.tagger();
    const N: u64 = 1_000;
    let reader = rt.spawn(async move {
        for id in 0..N {
            service.send_queued(&tagger, id, id).await.unwrap();
        }
    });
    let writer = rt.spawn(async move {
        let mut got = Vec::new();
        while got.len() < N as usize {
            answers.recv_many(&mut got, 64).await;
        }
        got
    });
    rt.block_on(reader).unwrap();
    let mut got = rt.block_on(writer).unwrap();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got.len(), N as usize);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, (id, answer))| *id == i as u64 && *answer == Ok(2 * i as u64)));
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
    // One send of all four, so the worker takes them as one burst (not as many bursts
    // as it happened to wake up for).
    tx.send_burst(&mut VecDeque::from([1, 2, 1_000, 3]))
        .unwrap();
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

/// A service whose calls complete only once `n` of them are in flight at the same time:
/// a stage that waits for each burst before taking the next never gets there.
fn needs_in_flight(
    n: usize,
) -> impl Service<
    u64,
    Response = u64,
    Error = Infallible,
    Future = impl Future<Output = Result<u64, Infallible>> + Send,
> + Clone
       + Send {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    tower::service_fn(move |x: u64| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            Ok::<_, Infallible>(x * 10)
        }
    })
}

#[test]
fn service_stage_keeps_calls_in_flight_across_bursts() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_async("calls", ServiceStage::new(needs_in_flight(16)).window(64))
        .burst(4)
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let (mut tx, mut rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    for x in 0..16 {
        tx.send(x).unwrap();
    }
    // Bursts of 4 can only complete once all 16 calls overlap; the timeout only turns
    // the old behaviour (a deadlock) into a failure instead of a hang.
    let mut got = Vec::new();
    while got.len() < 16 {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(x)) => got.push(x),
            other => panic!("calls did not overlap across bursts: {other:?} after {got:?}"),
        }
    }
    assert_eq!(got, (0..16).map(|x| x * 10).collect::<Vec<_>>(), "in order");
    drop(tx);
    running.drain().unwrap();
}

#[test]
fn unordered_service_stage_is_not_held_up_by_a_slow_call() {
    // Item 0 completes only after every other item has reached the output.
    let (release, released) = tokio::sync::watch::channel(false);
    let service = tower::service_fn(move |x: u64| {
        let mut released = released.clone();
        async move {
            if x == 0 {
                released.wait_for(|r| *r).await.unwrap();
            }
            Ok::<_, Infallible>(x)
        }
    });
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_async("calls", ServiceStage::unordered(service).window(8))
        .burst(2)
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let (mut tx, mut rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    for x in 0..100 {
        tx.send(x).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 99 {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(x)) => got.push(x),
            other => panic!("a slow call held up the others: {other:?} after {got:?}"),
        }
    }
    assert!(!got.contains(&0));
    release.send(true).unwrap();
    drop(tx);
    let report = running.drain().unwrap();
    got.extend(rx.collect());
    got.sort_unstable();
    assert_eq!(got, (0..100).collect::<Vec<_>>(), "every item exactly once");
    let calls = report.snapshot.stage("calls").unwrap();
    assert_eq!((calls.items_in, calls.items_out), (100, 100));
}

#[test]
fn failed_calls_in_flight_are_counted_once_and_the_rest_delivered() {
    let service = tower::service_fn(|x: u64| async move {
        tokio::time::sleep(Duration::from_micros(50 * (x % 7))).await;
        if x % 10 == 3 {
            Err("multiple of ten plus three")
        } else {
            Ok(x)
        }
    });
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_async("calls", ServiceStage::new(service).window(32))
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let (mut tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    for x in 0..1000 {
        tx.send(x).unwrap();
    }
    drop(tx);
    let report = running.drain().unwrap();
    let expected: Vec<u64> = (0..1000).filter(|x| x % 10 != 3).collect();
    assert_eq!(rx.collect(), expected);
    assert_eq!(report.snapshot.stage("calls").unwrap().dropped_total(), 100);
}

/// The typed error of the lookup service in the tagged async test.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("no account {0}")]
struct NoAccount(u64);

#[test]
fn an_async_tagged_stage_answers_each_caller_with_its_typed_error() {
    let b = PipelineBuilder::new();
    let (input, requests) = b.input::<Tagged<u64, String>>("requests");
    let lookup = tower::service_fn(|id: u64| async move {
        tokio::time::sleep(Duration::from_micros(100 * (id % 5))).await;
        if id % 4 == 0 {
            Err(NoAccount(id))
        } else {
            Ok(format!("account-{id}"))
        }
    });
    requests
        .then_tagged_async("lookup", lookup, 64)
        .then_tagged("shout", stage::map(|s: String| s.to_uppercase()))
        .respond("reply");
    let running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let service = PipelineService::new(running.input(&input).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results: Vec<(u64, Result<String, RequestError>)> = rt.block_on(async {
        let calls = FuturesUnordered::new();
        for i in 0..500u64 {
            let mut svc = service.clone();
            calls.push(async move { (i, svc.ready().await.unwrap().call(i).await) });
        }
        calls.collect().await
    });
    assert_eq!(results.len(), 500);
    for (i, result) in results {
        if i % 4 == 0 {
            let Err(RequestError::Stage {
                stage,
                error: Some(error),
                ..
            }) = result
            else {
                panic!("request {i}: {result:?}");
            };
            assert_eq!(stage, "lookup");
            assert_eq!(error.downcast_ref::<NoAccount>(), Some(&NoAccount(i)));
        } else {
            assert_eq!(result.unwrap(), format!("ACCOUNT-{i}"));
        }
    }
    drop(service);
    running.drain().unwrap();
}

/// `try_call` sheds load instead of waiting: with the only stage held shut, requests
/// are taken until the input is full, then handed back as `Busy`; once the stage
/// opens, every request that was taken is answered, and a closed pipeline says so.
#[test]
fn try_call_answers_busy_when_the_input_is_full_and_serves_what_it_took() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let gate = Arc::new(AtomicBool::new(false));
    let open = gate.clone();
    let b = PipelineBuilder::new();
    let (input, requests) = b.input::<Tagged<u64, u64>>("requests");
    requests
        .then_tagged(
            "held",
            stage::map(move |x: u64| {
                while !open.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                x + 1
            }),
        )
        .respond("reply");
    let running = Runtime::start(b.build().unwrap(), Plan::per_stage().ring_capacity(8)).unwrap();
    let mut service = PipelineService::new(running.input(&input).unwrap());
    let (mut taken, mut busy) = (Vec::new(), 0u64);
    // Bounded: the input ring, the stage's burst and its output hold a few dozen.
    for i in 0..10_000u64 {
        match service.try_call(i) {
            Ok(answer) => taken.push((i, answer)),
            Err(pipewright::TryCallError::Busy(request)) => {
                assert_eq!(request, i, "the request comes back");
                busy += 1;
                if busy == 100 {
                    break;
                }
            }
            Err(pipewright::TryCallError::Closed(_)) => panic!("the pipeline is running"),
        }
    }
    assert_eq!(busy, 100, "a held pipeline fills up");
    assert!(
        !taken.is_empty() && taken.len() < 1000,
        "{} taken",
        taken.len()
    );
    gate.store(true, Ordering::Release);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (i, answer) in taken {
        assert_eq!(rt.block_on(answer), Ok(i + 1));
    }
    let mut closing = service.clone();
    drop(service);
    running.drain().unwrap();
    assert!(matches!(
        closing.try_call(7),
        Err(pipewright::TryCallError::Closed(7))
    ));
}

/// square -> reject-49 -> render, a worker per stage, with a small input ring (so that
/// many sends wait for room).
fn square_reject_render() -> (
    pipewright::Running,
    pipewright::InputId<Tagged<u64, String>>,
) {
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
    (running, input)
}

/// The answer square_reject_render gives request `i`.
fn check_answer(i: u64, result: Result<String, RequestError>) {
    if i == 7 {
        assert!(
            matches!(result, Err(RequestError::Stage { ref stage, .. }) if stage == "reject-49"),
            "{result:?}"
        );
    } else {
        assert_eq!(result.unwrap(), format!("<{}>", i * i));
    }
}
