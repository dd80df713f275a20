//! The log pipeline a newcomer builds: file source → parse (typed errors, replicated
//! over two workers) → enrich through an async tower service with a concurrency limit
//! (calls overlap, results flow as they complete) → route by status class →
//! per-minute aggregation → summary.
//!
//! `cargo run --release --example log_pipeline [LINES]` generates an access log of
//! LINES lines (default 200 000, 1% malformed) in a temporary directory and runs it.

#[path = "../benches/pipeline/logs.rs"]
mod logs;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use logs::{class, parse, Aggregate, Entry};
use pipewright::{stage, IterSource, Pin, PipelineBuilder, Plan, Replicas, Runtime, ServiceStage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lines: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("pipewright-log-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("access.log");
    logs::generate(&path, lines)?;

    let b = PipelineBuilder::new();
    let summary = b
        .source("lines", IterSource(logs::read_lines(&path)))
        // Stateless and CPU-bound: one replica per worker, output order not needed.
        .then_replicated("parse", Replicas::new(2).unordered(), |_| {
            stage::try_map(|line: String| parse(&line))
        })
        // A remote lookup with 200 µs of latency: thousands of calls in flight.
        .then_async(
            "enrich",
            ServiceStage::unordered(tower::limit::ConcurrencyLimit::new(
                tower::service_fn(|e: Entry| async move {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    Ok::<_, Infallible>(e)
                }),
                4096,
            ))
            .window(4096),
        )
        .then("route", stage::map(|e: Entry| (class(&e), e)))
        .then("aggregate", Aggregate::default())
        .output("summary");
    let plan = Plan::explicit()
        .worker(["lines", "parse"], Pin::Auto)
        .worker(["parse", "enrich", "route", "aggregate"], Pin::Auto)
        .ring_capacity(4096);
    let start = Instant::now();
    let mut running = Runtime::start(b.build()?, plan)?;
    let rx = running.output(&summary).expect("output");
    let report = running.drain()?;
    let summary = rx.collect().pop().expect("one summary");
    let malformed: u64 = report
        .snapshot
        .replicas("parse")
        .iter()
        .map(|r| r.dropped_total())
        .sum();
    let (cells, parsed, _, _) = summary.digest();
    println!(
        "{lines} lines in {:.2} s: {parsed} parsed, {malformed} malformed, {cells} minute/class cells",
        start.elapsed().as_secs_f64()
    );
    for r in report.snapshot.replicas("parse") {
        println!("  {:<8} {:>9} lines", r.name, r.items_in);
    }
    assert_eq!(parsed + malformed, lines as u64, "every line accounted for");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
