//! Stage replicas on real workers: every item exactly once, order restored where asked,
//! keys kept on one replica, and the replica count changed while items flow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pipewright::{
    stage, Input, Outbox, Output, PipelineBuilder, Plan, ReplicaError, Replicas, Report, Running,
    Runtime, Stage,
};

/// Sends `items` while another thread collects the output (the output ring is
/// bounded, so nobody reading it would stop the pipeline), then drains.
fn send_and_collect<T: Send + 'static, U: Send + 'static>(
    running: Running,
    mut tx: Input<T>,
    rx: Output<U>,
    items: impl IntoIterator<Item = T>,
) -> (Vec<U>, Report) {
    let collector = std::thread::spawn(move || rx.collect());
    for item in items {
        assert!(tx.send(item).is_ok(), "the pipeline stopped taking items");
    }
    drop(tx);
    let report = running.drain().unwrap();
    (collector.join().unwrap(), report)
}

/// Enough work per item that two replicas are really busy at once.
fn checksum(x: u64) -> u64 {
    (0..64).fold(x, |h, i| {
        h.rotate_left(5) ^ (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) + i)
    })
}

#[test]
fn ordered_replicas_keep_input_order_and_share_the_work() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_replicated("hash", Replicas::new(2), |_| {
            stage::map(|x: u64| (x, checksum(x)))
        })
        .output("out");
    let pipeline = b.build().unwrap();
    let mut running = Runtime::start(pipeline, Plan::spread(2).ring_capacity(64)).unwrap();
    let (tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let (got, report) = send_and_collect(running, tx, rx, 0..50_000u64);
    assert_eq!(got.len(), 50_000);
    for (i, (x, h)) in got.into_iter().enumerate() {
        assert_eq!((x, h), (i as u64, checksum(i as u64)));
    }
    let replicas = report.snapshot.replicas("hash");
    assert_eq!(replicas.len(), 2);
    // Ordered replicas take turns: each gets exactly half.
    assert_eq!(replicas[0].items_in, 25_000);
    assert_eq!(replicas[1].items_in, 25_000);
}

#[test]
fn a_burst_set_for_a_replicated_stage_applies_to_its_split_and_order_nodes() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_replicated("hash", Replicas::new(2), |_| stage::map(checksum))
        .output("out");
    let plan = Plan::spread(2).burst_all(64).burst("hash", 1);
    let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
    let (tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let (got, report) = send_and_collect(running, tx, rx, 0..1_000u64);
    assert_eq!(got.len(), 1_000);
    let burst = |name: &str| report.snapshot.stage(name).map(|s| s.burst);
    assert_eq!(burst("hash/split"), Some(1), "{}", report.snapshot);
    assert_eq!(burst("hash/order"), Some(1), "{}", report.snapshot);
    assert_eq!(burst("hash#0"), Some(1));
    assert_eq!(burst("hash#1"), Some(1));
}

#[test]
fn spread_plans_put_replicas_on_different_workers() {
    let names = ["src", "p/split", "p#0", "p#1", "p#2", "p/order", "sink"];
    let resolved = Plan::spread(2).resolve_for(&names, 2).unwrap();
    let worker_of = |node: usize| {
        resolved
            .workers
            .iter()
            .position(|w| w.nodes.contains(&node))
            .unwrap()
    };
    assert_ne!(worker_of(2), worker_of(3));
    assert_eq!(
        worker_of(2),
        worker_of(4),
        "three replicas on two workers wrap around"
    );
    // Explicit plans name the replicated stage once per worker that runs a replica.
    let explicit = Plan::explicit()
        .worker(["src", "p"], pipewright::Pin::Auto)
        .worker(["p", "sink"], pipewright::Pin::Auto)
        .resolve_for(&names, 2)
        .unwrap();
    assert_eq!(explicit.workers[0].nodes, vec![0, 1, 2, 4]);
    assert_eq!(explicit.workers[1].nodes, vec![3, 5, 6]);
}

#[test]
fn unordered_replicas_deliver_every_item_once() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_replicated("hash", Replicas::new(3).unordered(), |_| {
            stage::map(|x: u64| (x, checksum(x)))
        })
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let (tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let (got, _) = send_and_collect(running, tx, rx, 0..30_000u64);
    let mut got: Vec<u64> = got.into_iter().map(|(x, _)| x).collect();
    got.sort_unstable();
    assert_eq!(got, (0..30_000).collect::<Vec<_>>());
}

/// Counts items per key, and records which replica saw each key.
struct CountPerKey {
    replica: usize,
    counts: HashMap<u64, u64>,
    seen_by: Arc<Mutex<HashMap<u64, Vec<usize>>>>,
}

impl Stage for CountPerKey {
    type In = (u64, u64);
    type Out = (u64, u64);
    type Error = std::convert::Infallible;

    fn process(
        &mut self,
        (key, _): (u64, u64),
        out: &mut Outbox<'_, (u64, u64)>,
    ) -> Result<(), Self::Error> {
        let count = self.counts.entry(key).or_insert(0);
        if *count == 0 {
            self.seen_by
                .lock()
                .unwrap()
                .entry(key)
                .or_default()
                .push(self.replica);
        }
        *count += 1;
        out.push((key, *count));
        Ok(())
    }
}

#[test]
fn keyed_replicas_keep_each_key_on_one_replica() {
    let seen_by = Arc::new(Mutex::new(HashMap::new()));
    let b = PipelineBuilder::new();
    let (input, events) = b.input::<(u64, u64)>("events");
    let seen = seen_by.clone();
    let out = events
        .then_replicated(
            "count",
            Replicas::new(2)
                .unordered()
                .by_key(|(key, _): &(u64, u64)| *key),
            move |replica| CountPerKey {
                replica,
                counts: HashMap::new(),
                seen_by: seen.clone(),
            },
        )
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    assert!(matches!(
        running.set_replicas("count", 1),
        Err(ReplicaError::Keyed { .. })
    ));
    let (tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let (got, _) = send_and_collect(running, tx, rx, (0..20_000u64).map(|i| (i % 97, i)));
    // Per key the running counts arrive as 1, 2, 3, ...: one replica, in order.
    let mut last: HashMap<u64, u64> = HashMap::new();
    for (key, count) in got {
        let prev = last.insert(key, count).unwrap_or(0);
        assert_eq!(count, prev + 1, "key {key}");
    }
    let seen_by = seen_by.lock().unwrap();
    assert_eq!(seen_by.len(), 97);
    assert!(seen_by.values().all(|r| r.len() == 1));
    let on_first = seen_by.values().filter(|r| r[0] == 0).count();
    assert!(
        on_first > 0 && on_first < 97,
        "keys spread over both replicas"
    );
}

/// A key function that panics on a malformed record costs that record, counted as a
/// panic of the split, not the worker: every other record is delivered, keyed.
#[test]
fn a_key_function_that_panics_costs_its_item_not_the_worker() {
    let b = PipelineBuilder::new();
    let (input, lines) = b.input::<String>("lines");
    let out = lines
        .then_replicated(
            "parse",
            Replicas::new(2)
                .unordered()
                .by_key(|l: &String| l.split(',').nth(1).expect("a key field").to_owned()),
            |_| stage::map(|l: String| l.len()),
        )
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let (tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let lines = (0..300u64).map(|i| {
        if i % 3 == 1 {
            format!("malformed{i}")
        } else {
            format!("x,{}", i % 7)
        }
    });
    let (got, report) = send_and_collect(running, tx, rx, lines);
    assert_eq!(got.len(), 200);
    let split = report.snapshot.stage("parse/split").unwrap();
    assert_eq!(split.dropped_total(), 100);
}

#[test]
fn replicas_are_added_and_removed_live_without_losing_or_repeating_an_item() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_replicated("hash", Replicas::new(2), |_| stage::map(|x: u64| x * 3))
        .output("out");
    let mut running =
        Runtime::start(b.build().unwrap(), Plan::spread(2).replicas("hash", 1)).unwrap();
    assert_eq!(running.replicas("hash").unwrap().active(), 1);
    let (mut tx, mut rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let mut expect = 0u64;
    let mut replica1_items = Vec::new();
    for (round, active) in [1, 2, 1, 2, 2, 1].into_iter().enumerate() {
        running.set_replicas("hash", active).unwrap();
        // A round fits in the output ring, so this thread can send it all, then read.
        let base = round as u64 * 500;
        for x in base..base + 500 {
            tx.send(x).unwrap();
        }
        for _ in 0..500 {
            let got = rx.recv().expect("every item comes out");
            assert_eq!(got, expect * 3, "in order, once");
            expect += 1;
        }
        replica1_items.push(running.snapshot().stage("hash#1").unwrap().items_in);
    }
    drop(tx);
    running.drain().unwrap();
    // Rounds with one replica gave the second one nothing new.
    assert_eq!(replica1_items[0], 0);
    assert_eq!(replica1_items[1], 250);
    assert_eq!(replica1_items[2], 250);
    assert_eq!(replica1_items[5], replica1_items[4]);
    assert!(matches!(
        running_errors(),
        ReplicaError::OutOfRange { max: 2, .. }
    ));
}

fn running_errors() -> ReplicaError {
    let b = PipelineBuilder::new();
    let (_input, numbers) = b.input::<u64>("numbers");
    let _ = numbers
        .then_replicated("hash", Replicas::new(2), |_| stage::map(|x: u64| x))
        .output("out");
    let running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    assert!(matches!(
        running.set_replicas("nope", 1),
        Err(ReplicaError::NotReplicated { .. })
    ));
    let error = running.set_replicas("hash", 3).unwrap_err();
    running.abort().unwrap();
    error
}

#[test]
fn an_ordered_replica_that_fails_or_panics_on_items_does_not_stall_the_order() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_replicated("picky", Replicas::new(2), |_| {
            stage::try_map(|x: u64| {
                if x % 100 == 7 {
                    panic!("seven");
                }
                if x % 10 == 3 {
                    Err("ends in three")
                } else {
                    Ok(x)
                }
            })
        })
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let (tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let (got, report) = send_and_collect(running, tx, rx, 0..2_000u64);
    let expected: Vec<u64> = (0..2_000).filter(|x| x % 10 != 3 && x % 100 != 7).collect();
    assert_eq!(got, expected);
    let dropped: u64 = report
        .snapshot
        .replicas("picky")
        .iter()
        .map(|r| r.dropped_total())
        .sum();
    assert_eq!(dropped, 200 + 20);
}

/// A stage with a timer: after the items it processed, when its input is empty, it
/// emits a mark for the last one.
struct MarkWhenIdle {
    last: Option<u64>,
}

#[derive(Debug, PartialEq)]
enum Marked {
    Item(u64),
    Mark(u64),
}

impl Stage for MarkWhenIdle {
    type In = u64;
    type Out = Marked;
    type Error = std::convert::Infallible;

    fn process(&mut self, x: u64, out: &mut Outbox<'_, Marked>) -> Result<(), Self::Error> {
        self.last = Some(x);
        out.push(Marked::Item(x));
        Ok(())
    }

    fn on_idle(&mut self, out: &mut Outbox<'_, Marked>) -> Option<std::time::Duration> {
        if let Some(x) = self.last.take() {
            out.push(Marked::Mark(x));
        }
        Some(std::time::Duration::from_millis(1))
    }
}

#[test]
fn ordered_replicas_run_their_timers_and_place_timer_outputs_after_their_input() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_replicated("marks", Replicas::new(2), |_| MarkWhenIdle { last: None })
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let (mut tx, mut rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    // One item at a time: each replica's input is empty after it, so its timer runs
    // and the mark follows the item (the replicas take turns).
    let next = |rx: &mut Output<Marked>| {
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("no output within 30 s: a replica's timer never ran")
            .expect("the output ended early")
    };
    for x in 0..20u64 {
        assert!(tx.send(x).is_ok());
        assert_eq!(next(&mut rx), Marked::Item(x));
        assert_eq!(next(&mut rx), Marked::Mark(x));
    }
    drop(tx);
    running.drain().unwrap();
}

/// The controller sees replicated stages and its replica decisions are applied live
/// (under any plan: the count lives in the split) or refused with the reason.
#[test]
fn controller_replica_decisions_are_applied_or_refused_with_the_reason() {
    use pipewright::controller::Decision;
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let out = numbers
        .then_replicated("hash", Replicas::new(2), |_| stage::map(|x: u64| x * 3))
        .output("out");
    let mut running =
        Runtime::start(b.build().unwrap(), Plan::spread(2).replicas("hash", 1)).unwrap();
    let now = running.snapshot();
    let seen = running.observe(&now, &now, std::time::Duration::from_millis(100));
    assert_eq!(seen.replicated.len(), 1);
    assert_eq!((seen.replicated[0].active, seen.replicated[0].max), (1, 2));
    let grow = Decision::Replicas {
        stage: "hash".into(),
        from: 1,
        to: 2,
    };
    running.apply(&grow).unwrap();
    assert_eq!(running.replicas("hash").unwrap().active(), 2);
    let too_many = Decision::Replicas {
        stage: "hash".into(),
        from: 2,
        to: 3,
    };
    let refused = running.apply(&too_many).unwrap_err();
    assert!(
        refused.to_string().contains("choose between 1 and 2"),
        "{refused}"
    );
    let (tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let (got, _) = send_and_collect(running, tx, rx, 0..1000u64);
    assert_eq!(got, (0..1000).map(|x| x * 3).collect::<Vec<_>>());
}

/// An async stage that records which replica saw which key, and answers after a yield
/// (as a stage awaiting I/O would).
struct AsyncTally {
    replica: usize,
    seen_by: Arc<Mutex<HashMap<u64, Vec<usize>>>>,
}

impl pipewright::AsyncStage for AsyncTally {
    type In = (u64, u64);
    type Out = u64;
    type Error = std::convert::Infallible;

    async fn process_burst(
        &mut self,
        burst: &mut pipewright::Burst<'_, (u64, u64)>,
        out: &mut Outbox<'_, u64>,
        _failures: &mut pipewright::Failures<'_, Self::Error>,
    ) {
        tokio::task::yield_now().await;
        let mut seen = self.seen_by.lock().unwrap();
        for (key, value) in burst.drain() {
            let replicas = seen.entry(key).or_default();
            if !replicas.contains(&self.replica) {
                replicas.push(self.replica);
            }
            out.push(value);
        }
    }
}

#[test]
fn async_replicas_deliver_every_item_once_and_keep_a_key_on_one_replica() {
    let seen_by = Arc::new(Mutex::new(HashMap::new()));
    let b = PipelineBuilder::new();
    let (input, events) = b.input::<(u64, u64)>("events");
    let seen = seen_by.clone();
    let out = events
        .then_async_replicated(
            "lookup",
            Replicas::new(2)
                .unordered()
                .by_key(|(key, _): &(u64, u64)| *key),
            move |replica| AsyncTally {
                replica,
                seen_by: seen.clone(),
            },
        )
        .output("out");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let (tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&out).unwrap(),
    );
    let (mut got, report) = send_and_collect(running, tx, rx, (0..10_000u64).map(|i| (i % 31, i)));
    got.sort_unstable();
    assert_eq!(
        got,
        (0..10_000).collect::<Vec<_>>(),
        "every item exactly once"
    );
    let seen_by = seen_by.lock().unwrap();
    assert_eq!(seen_by.len(), 31);
    assert!(
        seen_by.values().all(|r| r.len() == 1),
        "a key stays on one replica"
    );
    let on_first = seen_by.values().filter(|r| r[0] == 0).count();
    assert!(
        on_first > 0 && on_first < 31,
        "keys spread over both replicas"
    );
    let workers: std::collections::HashSet<usize> = report
        .snapshot
        .stages
        .iter()
        .filter(|s| s.name.starts_with("lookup#"))
        .map(|s| s.worker)
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "the plan put the two replicas on two workers"
    );
}

#[test]
fn async_replicas_refuse_to_promise_input_order() {
    let b = PipelineBuilder::new();
    let (_input, events) = b.input::<(u64, u64)>("events");
    let seen_by = Arc::new(Mutex::new(HashMap::new()));
    events.sink_async_replicated("lookup", Replicas::new(2), move |replica| AsyncTally {
        replica,
        seen_by: seen_by.clone(),
    });
    let error = b.build().unwrap_err();
    assert_eq!(
        error,
        pipewright::BuildError::OrderedAsyncReplicas("lookup".into())
    );
    assert!(error.to_string().contains(".unordered()"));
}

/// An async stage that waits on a timer per burst, as one waiting on a disk or a peer.
struct SlowAsync;

impl pipewright::AsyncStage for SlowAsync {
    type In = u64;
    type Out = u64;
    type Error = std::convert::Infallible;

    async fn process_burst(
        &mut self,
        burst: &mut pipewright::Burst<'_, u64>,
        out: &mut Outbox<'_, u64>,
        _failures: &mut pipewright::Failures<'_, Self::Error>,
    ) {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        out.extend(burst.drain());
    }
}

/// Unordered, unkeyed async replicas whose work waits longer than a worker spins: the
/// split must not hold items back for a replica on its own worker as if that replica
/// ran in its loop (an async replica is a task, which the loop does not run, and
/// nothing would wake the split again).
#[test]
fn slow_unordered_async_replicas_drain_on_every_plan() {
    for plan in [Plan::spread(2), Plan::fused()] {
        let name = plan.to_string();
        let b = PipelineBuilder::new().default_burst(4);
        let (input, items) = b.input::<u64>("items");
        let out = items
            .then_async_replicated("slow", Replicas::new(2).unordered(), |_| SlowAsync)
            .output("out");
        let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
        let (tx, rx) = (
            running.input(&input).unwrap(),
            running.output(&out).unwrap(),
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(send_and_collect(running, tx, rx, 0..2_000u64));
        });
        // A hang guard, not a timing check: the run takes well under a second.
        let (mut got, _) = done_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{name}: the pipeline stopped with items inside"));
        got.sort_unstable();
        assert_eq!(got, (0..2_000).collect::<Vec<_>>(), "{name}");
    }
}
