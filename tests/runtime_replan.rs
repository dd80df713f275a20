//! Live re-planning: stages moved between workers and bursts resized while items flow
//! lose, duplicate and reorder nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pipewright::controller::{Decision, Reason};
use pipewright::{stage, ApplyError, IterSource, PipelineBuilder, Plan, Runtime};

const ITEMS: u64 = 300_000;

fn spin(x: u64) -> u64 {
    (0..20).fold(x, |h, i| std::hint::black_box(h ^ i))
}

#[test]
fn moving_stages_and_bursts_while_running_keeps_every_item_in_order() {
    let b = PipelineBuilder::new();
    let next = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicBool::new(false));
    let (seen, wrong) = (next.clone(), bad.clone());
    b.source("numbers", IterSource(0..ITEMS))
        .then("a", stage::map(|x: u64| (x, spin(x))))
        .then("b", stage::map(|(x, h): (u64, u64)| (x, spin(h))))
        .then("c", stage::map(|(x, h): (u64, u64)| (x, spin(h))))
        .for_each("check", move |(x, _): (u64, u64)| {
            if seen.fetch_add(1, Ordering::Relaxed) != x {
                wrong.store(true, Ordering::Relaxed);
            }
        });
    let running = Runtime::start(
        b.build().unwrap(),
        Plan::spread(2).adaptive().ring_capacity(64),
    )
    .unwrap();
    let stages = ["numbers", "a", "b", "c", "check"];
    let mut moves = 0;
    let mut i = 0usize;
    let mut workers_seen = [false; 2];
    while !running.is_finished() && moves < 400 {
        workers_seen[running.snapshot().stage("b").unwrap().worker] = true;
        let stage = stages[i % stages.len()].to_string();
        let to = (i / stages.len()) % 2;
        running
            .apply(&Decision::Move {
                stage: stage.clone(),
                from: 0,
                to,
                why: Reason::Balance,
            })
            .unwrap();
        running
            .apply(&Decision::Burst {
                stage,
                from: 0,
                to: 1 + (i * 7) % 64,
            })
            .unwrap();
        moves += 1;
        i += 1;
        std::thread::sleep(Duration::from_micros(300));
    }
    let report = running.join().unwrap();
    assert!(report.completed);
    assert!(
        !bad.load(Ordering::Relaxed),
        "an item arrived out of order or twice"
    );
    assert_eq!(next.load(Ordering::Relaxed), ITEMS, "items lost");
    assert!(
        moves > 10,
        "the run ended before stages could be moved ({moves} moves)"
    );
    assert_eq!(workers_seen, [true, true], "stage b ran on both workers");
}

#[test]
fn plan_changes_are_checked() {
    let b = PipelineBuilder::new();
    b.source("numbers", IterSource(0..10u64))
        .for_each("sink", |_| {});
    let running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let mv = Decision::Move {
        stage: "sink".into(),
        from: 0,
        to: 1,
        why: Reason::Balance,
    };
    assert_eq!(running.apply(&mv), Err(ApplyError::NotAdaptive));
    running.join().unwrap();

    let b = PipelineBuilder::new();
    let (_input, numbers) = b.input::<u64>("numbers");
    numbers.for_each("sink", |_| {});
    let running = Runtime::start(b.build().unwrap(), Plan::fused().adaptive()).unwrap();
    let unknown = Decision::Move {
        stage: "nope".into(),
        from: 0,
        to: 0,
        why: Reason::Balance,
    };
    assert_eq!(
        running.apply(&unknown),
        Err(ApplyError::UnknownStage("nope".into()))
    );
    let far = Decision::Move {
        stage: "sink".into(),
        from: 0,
        to: 7,
        why: Reason::Balance,
    };
    assert_eq!(
        running.apply(&far),
        Err(ApplyError::NoSuchWorker {
            worker: 7,
            workers: 1
        })
    );
    let zero = Decision::Burst {
        stage: "sink".into(),
        from: 32,
        to: 0,
    };
    assert_eq!(running.apply(&zero), Err(ApplyError::ZeroBurst));
    running.drain().unwrap();
}

/// Doubles each item after a timer tick: an async stage with calls in flight.
struct Slow;

impl pipewright::AsyncStage for Slow {
    type In = u64;
    type Out = u64;
    type Error = std::convert::Infallible;

    async fn process_burst(
        &mut self,
        burst: &mut pipewright::Burst<'_, u64>,
        out: &mut pipewright::Outbox<'_, u64>,
        _failures: &mut pipewright::Failures<'_, Self::Error>,
    ) {
        tokio::time::sleep(Duration::from_micros(50)).await;
        while let Some(x) = burst.pop() {
            out.push(x * 2);
        }
    }
}

#[test]
fn an_async_stage_stays_on_its_worker_and_a_move_says_why() {
    let b = PipelineBuilder::new();
    let (input, numbers) = b.input::<u64>("numbers");
    let doubled = numbers.then_async("slow", Slow).output("doubled");
    let plan = Plan::spread(2).adaptive();
    let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
    let (mut tx, rx) = (
        running.input(&input).unwrap(),
        running.output(&doubled).unwrap(),
    );
    let collector = std::thread::spawn(move || rx.collect());
    for x in 0..5_000u64 {
        assert!(tx.send(x).is_ok());
        if x == 2_500 {
            // Its calls in flight belong to its worker's runtime (and io_uring ring).
            let mv = Decision::Move {
                stage: "slow".into(),
                from: 1,
                to: 0,
                why: Reason::Balance,
            };
            let refused = running.apply(&mv).unwrap_err();
            assert_eq!(refused, ApplyError::Pinned("slow".into()));
            assert!(
                refused.to_string().contains("set it in the plan"),
                "{refused}"
            );
        }
    }
    drop(tx);
    running.drain().unwrap();
    let got = collector.join().unwrap();
    assert_eq!(got, (0..5_000u64).map(|x| x * 2).collect::<Vec<_>>());
}

/// Two moves of one stage applied back to back (the second reaches a worker the stage
/// has left, or one it is still travelling to): the stage ends where the last move
/// put it, and no item is lost or reordered.
#[test]
fn back_to_back_moves_end_where_the_last_one_put_the_stage() {
    let b = PipelineBuilder::new();
    let next = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicBool::new(false));
    let (seen, wrong) = (next.clone(), bad.clone());
    b.source("numbers", IterSource(0..u64::MAX))
        .then("a", stage::map(|x: u64| (x, spin(x))))
        .for_each("check", move |(x, _): (u64, u64)| {
            if seen.fetch_add(1, Ordering::Relaxed) != x {
                wrong.store(true, Ordering::Relaxed);
            }
        });
    let running = Runtime::start(
        b.build().unwrap(),
        Plan::spread(2).adaptive().ring_capacity(64),
    )
    .unwrap();
    let mv = |to| Decision::Move {
        stage: "a".into(),
        from: 0,
        to,
        why: Reason::Balance,
    };
    for round in 0..50 {
        // Away and straight back: the second move is applied while the first is
        // still on its way.
        let here = running.snapshot().stage("a").unwrap().worker;
        let (first, last) = (1 - here, here);
        running.apply(&mv(first)).unwrap();
        running.apply(&mv(last)).unwrap();
        // Bounded wait for the stage to settle where the last move put it.
        let settled = (0..2000).any(|_| {
            std::thread::sleep(Duration::from_millis(1));
            running.snapshot().stage("a").unwrap().worker == last
        });
        assert!(
            settled,
            "round {round}: stage a did not end on worker {last}"
        );
    }
    running.stop_handle().stop();
    running.join().unwrap();
    assert!(
        !bad.load(Ordering::Relaxed),
        "an item arrived out of order or twice"
    );
}
