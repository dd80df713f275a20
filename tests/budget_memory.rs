//! The bytes-in-flight budget is a hard bound on item memory: with a stalled sink the
//! source pauses instead of filling queues (item buffers counted by the allocator).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright::layer::ByteBudget;
use pipewright::{stage, IterSource, PipelineBuilder, Plan, Runtime};
use pipewright_testkit::CountingAlloc;

/// Items are 4096-byte buffers; the allocator tracks how many are alive.
const ITEM: usize = 4096;

/// Counts the live item-sized blocks (watching `ITEM`).
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

#[test]
fn a_stalled_sink_pauses_the_source_within_the_budget() {
    ALLOC.watch(ITEM);
    const BUDGET: usize = 64 * ITEM;
    let budget = ByteBudget::new(BUDGET);
    let stalled = Arc::new(AtomicBool::new(true));
    let gate = stalled.clone();
    let b = PipelineBuilder::new();
    // An endless source allocating a fresh buffer per item (created lazily, on pull).
    let items = IterSource((0u64..).map(|i| vec![(i % 251) as u8; ITEM]));
    b.source("make", budget.charge(items, |v: &Vec<u8>| v.len()))
        .then("touch", stage::map(|v: Vec<u8>| v))
        .sink(
            "slow",
            budget.release_after(
                stage::for_each(move |v: Vec<u8>| {
                    while gate.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    std::hint::black_box(v);
                }),
                |v: &Vec<u8>| v.len(),
            ),
        );
    // Big rings: without the budget, thousands of items would queue up.
    let running =
        Runtime::start(b.build().unwrap(), Plan::per_stage().ring_capacity(4096)).unwrap();
    // Until the source has spent the budget and been refused the next item (it holds
    // that one, pulled, and pauses): the deadline only turns a hang into a failure.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(budget.in_flight() == BUDGET && ALLOC.live() > BUDGET / ITEM) {
        assert!(budget.in_flight() <= BUDGET);
        assert!(
            Instant::now() < deadline,
            "the source never filled the budget: {} bytes in flight, {} item buffers alive",
            budget.in_flight(),
            ALLOC.live()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // It stays paused while the sink stays stalled: whatever runs meanwhile, nothing
    // more may be allocated (this wait decides nothing on a working budget).
    std::thread::sleep(Duration::from_millis(300));
    let peak_while_stalled = ALLOC.peak();
    assert!(budget.in_flight() <= BUDGET);
    stalled.store(false, Ordering::Relaxed);
    // Until items flow again (the deadline only turns a hang into a failure).
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.snapshot().stage("slow").unwrap().items_in <= 64 {
        assert!(
            Instant::now() < deadline,
            "the sink resumed but items did not flow"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    running.abort().unwrap();
    // The sink holds one item while stalled; the budget covers everything in flight.
    assert!(
        peak_while_stalled * ITEM <= BUDGET + 2 * ITEM,
        "{peak_while_stalled} item buffers alive at once; the budget allows {}",
        BUDGET / ITEM
    );
    assert!(ALLOC.peak() * ITEM <= BUDGET + 2 * ITEM);
}
