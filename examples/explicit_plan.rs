//! The same four stages under two plans: fused on one worker (direct calls, no rings)
//! and split over two pinned workers (one SPSC ring crossing). Prints each plan's
//! per-stage table so the placement and costs are visible.
//!
//! `cargo run --release --example explicit_plan`

use pipewright::{stage, IterSource, Pin, PipelineBuilder, Plan, Runtime};

fn checksum(x: u64) -> u64 {
    (0..16).fold(x, |h, i| (h ^ i).wrapping_mul(0x100_0000_01b3))
}

fn run(plan: Plan) -> Result<(), Box<dyn std::error::Error>> {
    let b = PipelineBuilder::new();
    b.source("numbers", IterSource(0..2_000_000u64))
        .then("hash-1", stage::map(checksum))
        .then("hash-2", stage::map(checksum))
        .then("hash-3", stage::map(checksum))
        .for_each("sink", |x| {
            std::hint::black_box(x);
        });
    println!("plan: {plan}");
    let report = Runtime::start(b.build()?, plan)?.join()?;
    println!(
        "{:.1} M items/s\n{}",
        2.0 / report.elapsed.as_secs_f64(),
        report.snapshot
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(Plan::fused())?;
    let cpus = pipewright::available_cpus();
    run(Plan::explicit()
        .worker(["numbers", "hash-1"], Pin::Core(0))
        .worker(["hash-2", "hash-3", "sink"], Pin::Core(1 % cpus))
        .ring_capacity(2048)
        .burst_all(64))
}
