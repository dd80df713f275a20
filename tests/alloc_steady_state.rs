//! No allocation per item on the hot path: allocations during a run do not grow with
//! the number of items (counted by a global allocator).

use pipewright_testkit::CountingAlloc;

use pipewright::{stage, IterSource, Pin, PipelineBuilder, Plan, Runtime};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

fn allocations_for(items: u64, plan: Plan) -> u64 {
    let b = PipelineBuilder::new();
    b.source("gen", IterSource(0..items))
        .then(
            "mix",
            stage::map(|x: u64| x.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
        .then("even", stage::filter(|x: &u64| x % 2 == 0))
        .then("fold", stage::map(|x: u64| x >> 7))
        .for_each("sink", |x| {
            std::hint::black_box(x);
        });
    let pipeline = b.build().unwrap();
    let before = ALLOC.allocations();
    let report = Runtime::start(pipeline, plan).unwrap().join().unwrap();
    assert!(report.completed);
    ALLOC.allocations() - before
}

#[test]
fn allocations_do_not_grow_with_items() {
    for plan in [
        Plan::fused(),
        Plan::explicit()
            .worker(["gen", "mix"], Pin::Auto)
            .worker(["even", "fold", "sink"], Pin::Auto),
    ] {
        let small = allocations_for(20_000, plan.clone());
        let large = allocations_for(2_000_000, plan.clone());
        // 1.98M more items; a per-item (or per-burst) allocation would add >= 60k.
        assert!(
            large < small + 2_000,
            "allocations grew with items under {plan}: {small} for 20k items, {large} for 2M"
        );
    }
}
