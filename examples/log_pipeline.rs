//! The log pipeline a newcomer builds: file source (`sources::FileLines`, lines with
//! byte offsets, bad UTF-8 as a typed error) → parse (typed errors, replicated over two
//! workers) → enrich through an async tower service with a concurrency limit (calls
//! overlap, results flow as they complete) → route by status class → per-minute
//! event-time windows (`stage::window`, a 10-minute out-of-orderness bound) → summary.
//! Ctrl-C or SIGTERM stops the file source; what was read drains and is counted.
//!
//! `cargo run --release --example log_pipeline [LINES]` generates an access log of
//! LINES lines (default 200 000, 1% malformed) in a temporary directory and runs it.

// The bench's `Aggregate` and `read_lines` are not used here: windows replace them.
#[allow(dead_code)]
#[path = "../benches/pipeline/logs.rs"]
mod logs;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use logs::{class, parse, Entry, Summary};
use pipewright::sources::{BadLine, FileLines, Line};
use pipewright::stage::window::{self, Windowed, Windows};
use pipewright::{stage, Pin, PipelineBuilder, Plan, Replicas, Runtime, ServiceStage};

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
        .source("lines", FileLines::open(&path)?)
        .then(
            "utf8",
            stage::try_map(|l: Result<Line, BadLine>| l.map(|l| l.text)),
        )
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
        .then(
            "per-minute",
            window::event_time(Windows::tumbling(1)?, 10, |(_, e): &(usize, Entry)| {
                e.minute
            })
            .aggregate(Summary::default, |s, (class, e): &(usize, Entry)| {
                s.add(*class, e)
            }),
        )
        .output("summary");
    let plan = Plan::explicit()
        .worker(["lines", "utf8", "parse"], Pin::Auto)
        .worker(["parse", "enrich", "route", "per-minute"], Pin::Auto)
        .ring_capacity(4096);
    let start = Instant::now();
    let mut running = Runtime::start(b.build()?, plan)?;
    let rx = running.output(&summary).expect("output");
    // Ctrl-C / SIGTERM: stop reading; everything read so far drains and is counted.
    let stop = running.stop_handle();
    ctrlc::set_handler(move || stop.stop())?;
    let reader = std::thread::spawn(move || rx.collect());
    let report = running.drain()?;
    let minutes: Vec<Windowed<Summary>> = reader.join().expect("reader");
    let read = report.snapshot.stage("lines").expect("source").items_out;
    let late = report
        .snapshot
        .stage("per-minute")
        .expect("window")
        .dropped_total();
    let (cells, parsed) = minutes.iter().fold((0, 0), |(c, p), w| {
        let (cells, parsed, _, _) = w.value.digest();
        (c + cells, p + parsed)
    });
    let malformed: u64 = report
        .snapshot
        .replicas("parse")
        .iter()
        .map(|r| r.dropped_total())
        .sum();
    println!(
        "{read} of {lines} lines in {:.2} s: {parsed} parsed, {malformed} malformed, {late} late, {cells} minute/class cells in {} one-minute windows",
        start.elapsed().as_secs_f64(),
        minutes.len()
    );
    for r in report.snapshot.replicas("parse") {
        println!("  {:<8} {:>9} lines", r.name, r.items_in);
    }
    let utf8 = report.snapshot.stage("utf8").expect("utf8").dropped_total();
    assert_eq!(
        parsed + malformed + late + utf8,
        read,
        "every line read accounted for"
    );
    if !report.source_errors.is_empty() {
        println!("source errors: {:?}", report.source_errors);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
