//! The `pipeline` suite: a realistic user pipeline — the log pipeline a newcomer built
//! (file source → parse with typed errors → [enrich through an async tower service] →
//! route by status class → per-minute aggregation → summary) — on pipewright with 2
//! workers and a replicated parse stage, next to a plain single-threaded loop and to
//! a tokio reader (blocking pool) and aggregating task joined by an mpsc channel
//! carrying one batch per block of lines.
//!
//! Every contender reads the file the same way: 64 KiB blocks cut after their last
//! `\n`, lines split and decoded without an allocation per line (pipewright's
//! `LineBlocks` source; a plain function for the others). Reading lines as one
//! `String` each measured the allocator more than the pipelines.
//!
//! Cases (RESULT lines, `lines/s`, higher is better):
//! - `logs-2w`: ours vs `plain-loop` and vs `tokio-mpsc-batched`.
//! - `logs-enrich-2w`: ours with an async enrich stage (a `tower` service with 500 µs of
//!   latency per call behind a concurrency limit) vs `plain-loop` *without* enrich: the
//!   enrich latency must be overlapped, not paid.
//!
//! Every run checks its summary against the plain loop's, so no contender can skip
//! work or lose a line. `PIPEWRIGHT_BENCH_QUICK=1` uses 300k lines and 3 rounds.
//!
//! Allocator: every contender runs in this process with mimalloc. Each log line is a
//! `String` allocated by the reading thread and freed by whichever thread parses it;
//! with glibc's malloc that pattern (any cross-thread pipeline's, tokio's included)
//! serialises on the reading thread's arena lock — a profile of `logs-2w` showed 38%
//! of the reading worker in `_int_malloc` and the other worker in `free` and futex
//! waits — and a user who moves heap items between threads picks an allocator built
//! for it. The plain loop, single-threaded, gains little from it.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../common/mod.rs"]
mod common;
mod logs;

use std::convert::Infallible;
use std::path::Path;
use std::time::{Duration, Instant};

use logs::{class, parse, Aggregate, Entry, ParseError, Summary};
use pipewright::sources::LineBlocks;
use pipewright::{stage, Pin, PipelineBuilder, Plan, Replicas, Runtime, ServiceStage};

fn plain_loop(path: &Path) -> Summary {
    let mut summary = Summary::default();
    logs::for_each_parsed(path, |parsed| match parsed {
        Ok(e) => summary.add(class(&e), &e),
        Err(_) => summary.malformed += 1,
    });
    summary
}

fn tokio_batched(path: &Path) -> Summary {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let path = path.to_path_buf();
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Result<Entry, ParseError>>>(16);
        // Reading is blocking file I/O: a blocking-pool thread reads and parses, one
        // batch per block of lines (about 500), and sends it to the aggregating task.
        let reader = tokio::task::spawn_blocking(move || {
            logs::for_each_block(&path, |block| {
                let batch = logs::lines(&block).map(|l| l.and_then(parse)).collect();
                tx.blocking_send(batch).unwrap();
            });
        });
        let aggregator = tokio::spawn(async move {
            let mut summary = Summary::default();
            while let Some(batch) = rx.recv().await {
                for parsed in batch {
                    match parsed {
                        Ok(e) => summary.add(class(&e), &e),
                        Err(_) => summary.malformed += 1,
                    }
                }
            }
            summary
        });
        reader.await.unwrap();
        aggregator.await.unwrap()
    })
}

/// Ours: parse replicated over both workers; `enrich` adds an async tower stage.
fn ours(path: &Path, enrich: bool) -> Summary {
    let b = PipelineBuilder::new();
    let blocks = b.source("lines", LineBlocks::open(path).expect("log file"));
    let parsed =
        blocks.then_replicated("parse", Replicas::new(2).unordered(), |_| logs::ParseBlock);
    let parsed = if enrich {
        let lookup = tower::service_fn(|e: Entry| async move {
            // A remote lookup (geo, account) with half a millisecond of latency.
            tokio::time::sleep(Duration::from_micros(500)).await;
            Ok::<_, Infallible>(e)
        });
        let limited = tower::limit::ConcurrencyLimit::new(lookup, 8192);
        parsed.then_async("enrich", ServiceStage::unordered(limited).window(8192))
    } else {
        parsed
    };
    let summary = parsed
        .then("route", stage::map(|e: Entry| (class(&e), e)))
        .then("aggregate", Aggregate::default())
        .output("summary");
    let plan = if enrich {
        Plan::explicit()
            .worker(["lines", "parse"], Pin::Auto)
            .worker(["parse", "enrich", "route", "aggregate"], Pin::Auto)
            .ring_capacity(4096)
    } else {
        Plan::spread(2)
    };
    // A block of lines is a large item: the parse stage takes one at a time, so that
    // its split hands blocks to whichever replica has the least waiting.
    let plan = plan.burst_all(64).burst("parse", 1);
    let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
    let rx = running.output(&summary).unwrap();
    let report = running.drain().unwrap();
    let mut result = rx.collect().pop().expect("one summary");
    result.malformed = report
        .snapshot
        .replicas("parse")
        .iter()
        .map(|r| r.dropped_total())
        .sum();
    result
}

fn rate(lines: usize, f: impl FnOnce() -> Summary, expected: &Summary) -> f64 {
    let start = Instant::now();
    let got = f();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        got.digest(),
        expected.digest(),
        "a contender lost or changed lines"
    );
    lines as f64 / secs
}

fn main() {
    let quick = common::quick();
    let (lines, rounds) = if quick { (300_000, 3) } else { (2_000_000, 7) };
    let filter = common::case_filter();
    // PIPEWRIGHT_BENCH_ONLY=ours|peer (profiling): one side only, no RESULT lines.
    let only = common::only();
    let runs = |side: common::Side| only.is_none_or(|o| o == side);
    eprintln!(
        "== pipeline: {lines} lines, {rounds} rounds, loadavg {}",
        common::loadavg()
    );
    let dir =
        std::env::temp_dir().join(format!("pipewright-bench-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    logs::generate(&path, lines).unwrap();
    let expected = plain_loop(&path);
    eprintln!(
        "   {} minute/class cells, {} malformed lines",
        expected.minutes.len(),
        expected.malformed
    );

    if common::wants(filter.as_deref(), "logs-2w") {
        let (mut o, mut l, mut t) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut run = |which: usize| match which {
                0 if runs(common::Side::Ours) => {
                    o.push(rate(lines, || ours(&path, false), &expected))
                }
                1 if runs(common::Side::Peer) => {
                    l.push(rate(lines, || plain_loop(&path), &expected))
                }
                2 if runs(common::Side::Peer) => {
                    t.push(rate(lines, || tokio_batched(&path), &expected))
                }
                _ => {}
            };
            // Rotate the order so no side always runs first.
            for k in 0..3 {
                run((round + k) % 3);
            }
            eprintln!(
                "   round {round}: ours {:.0?}  plain-loop {:.0?}  tokio-mpsc-batched {:.0?} lines/s",
                o.last(),
                l.last(),
                t.last()
            );
        }
        if only.is_some() {
            return;
        }
        let (o, l, t) = (common::median(o), common::median(l), common::median(t));
        println!("RESULT suite=pipeline case=logs-2w ours={o:.0} peer=plain-loop:{l:.0} unit=lines/s better=higher ratio={:.3}", o / l);
        println!("RESULT suite=pipeline case=logs-2w ours={o:.0} peer=tokio-mpsc-batched:{t:.0} unit=lines/s better=higher ratio={:.3}", o / t);
    }
    if common::wants(filter.as_deref(), "logs-enrich-2w") {
        let (mut o, mut l) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                o.push(rate(lines, || ours(&path, true), &expected));
                l.push(rate(lines, || plain_loop(&path), &expected));
            } else {
                l.push(rate(lines, || plain_loop(&path), &expected));
                o.push(rate(lines, || ours(&path, true), &expected));
            }
            eprintln!(
                "   round {round}: ours+enrich {:.0}  plain-loop (no enrich) {:.0} lines/s",
                o.last().unwrap(),
                l.last().unwrap()
            );
        }
        let (o, l) = (common::median(o), common::median(l));
        println!("RESULT suite=pipeline case=logs-enrich-2w ours={o:.0} peer=plain-loop:{l:.0} unit=lines/s better=higher ratio={:.3}", o / l);
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("== pipeline: loadavg at end {}", common::loadavg());
}
