//! `pipewright demo`: a multi-stage pipeline over synthetic records, with routing, a
//! merge, a fallible parser and per-stage resources, shown live.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pipewright::{stage, Outbox, Pin, PipelineBuilder, Plan, Runtime, Source, SourceState, Stage};

use super::live::{human, LiveView};

#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// How long to run.
    #[arg(long, default_value_t = 5.0, value_parser = crate::cli::parse_seconds)]
    seconds: f64,
    /// Stage placement: `two-workers` (the default: generate+parse+checksum on CPU 0,
    /// the rest on CPU 1), `fused` (one worker) or `per-stage`.
    #[arg(long, default_value = "two-workers")]
    plan: String,
    /// Burst size for every stage.
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// Refresh interval of the live view, in milliseconds.
    #[arg(long, default_value_t = 500)]
    refresh_ms: u64,
    /// Let the adaptive controller move stages between workers and resize bursts
    /// (its decisions are shown under the table).
    #[arg(long)]
    adaptive: bool,
    /// Serve the live per-stage view on this address for `pipewright top --connect`
    /// (e.g. 127.0.0.1:7777).
    #[arg(long)]
    live: Option<std::net::SocketAddr>,
}

/// A raw record as it might arrive from a socket: a header and a 64-byte payload.
#[derive(Debug, Clone, Copy)]
struct RawRecord {
    seq: u64,
    declared_len: u8,
    payload: [u8; 64],
}

#[derive(Debug, Clone, Copy)]
struct Record {
    seq: u64,
    key: u8,
    payload: [u8; 64],
}

#[derive(Debug, Clone, Copy)]
struct Summed {
    key: u8,
    sum: u64,
}

/// Generates records until stopped; one in 1000 is corrupt (a bad length).
struct Generator {
    seq: u64,
    stop: Arc<AtomicBool>,
}

impl Source for Generator {
    type Out = RawRecord;

    fn pull(&mut self, out: &mut Outbox<'_, RawRecord>, max: usize) -> SourceState {
        if self.stop.load(Ordering::Relaxed) {
            return SourceState::Exhausted;
        }
        for _ in 0..max {
            let seq = self.seq;
            self.seq += 1;
            let mut payload = [0u8; 64];
            let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for chunk in payload.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            let declared_len = if seq % 1000 == 999 { 200 } else { 64 };
            out.push(RawRecord {
                seq,
                declared_len,
                payload,
            });
        }
        SourceState::Ready
    }
}

#[derive(Debug, thiserror::Error)]
#[error("record {seq} declares {declared} payload bytes, at most 64 fit")]
struct BadLength {
    seq: u64,
    declared: u8,
}

/// Validates lengths; corrupt records become typed errors (dropped and counted).
struct Parse;

impl Stage for Parse {
    type In = RawRecord;
    type Out = Record;
    type Error = BadLength;

    fn process(&mut self, raw: RawRecord, out: &mut Outbox<'_, Record>) -> Result<(), BadLength> {
        if usize::from(raw.declared_len) > raw.payload.len() {
            return Err(BadLength {
                seq: raw.seq,
                declared: raw.declared_len,
            });
        }
        out.push(Record {
            seq: raw.seq,
            key: raw.payload[0] % 4,
            payload: raw.payload,
        });
        Ok(())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let hot_total = Arc::new(AtomicU64::new(0));
    let totals = Arc::new([(); 4].map(|_| AtomicU64::new(0)));

    let b = PipelineBuilder::new();
    let raw = b.source(
        "generate",
        Generator {
            seq: 0,
            stop: stop.clone(),
        },
    );
    let records = raw.then("parse", Parse);
    let summed = records.then(
        "checksum",
        stage::map(|r: Record| Summed {
            key: r.key,
            sum: fnv1a(&r.payload) ^ r.seq,
        }),
    );
    let [hot, cold] = summed.route("by-key", |s: &Summed| usize::from(s.key != 0));
    let hot_seen = hot_total.clone();
    let hot = hot.then(
        "hot",
        stage::map(move |s: Summed| {
            hot_seen.fetch_add(1, Ordering::Relaxed);
            Summed {
                key: s.key,
                sum: s.sum.rotate_left(7),
            }
        }),
    );
    let cold = cold.then(
        "cold",
        stage::map(|s: Summed| Summed {
            key: s.key,
            sum: s.sum.wrapping_mul(31),
        }),
    );
    let sink_totals = totals.clone();
    hot.merge(cold).for_each("aggregate", move |s: Summed| {
        sink_totals[usize::from(s.key)].fetch_add(1, Ordering::Relaxed);
        std::hint::black_box(s.sum);
    });
    let pipeline = b.build().context("building the demo pipeline")?;

    let plan = match args.plan.as_str() {
        "fused" => Plan::fused(),
        "per-stage" => Plan::per_stage(),
        "two-workers" => Plan::explicit()
            .worker(["generate", "parse", "checksum"], Pin::Auto)
            .worker(["by-key", "hot", "cold", "aggregate"], Pin::Auto),
        other => anyhow::bail!("unknown plan `{other}`: use two-workers, fused or per-stage"),
    }
    .burst_all(args.burst);
    let plan = if args.adaptive { plan.adaptive() } else { plan };
    let mut controller = args
        .adaptive
        .then(|| pipewright::controller::Controller::new(Default::default()));

    println!(
        "pipewright demo: generate -> parse -> checksum -> by-key -> (hot | cold) -> aggregate"
    );
    println!(
        "running for {:.1}s on {} CPUs; ctrl-c to stop early\n",
        args.seconds,
        pipewright::available_cpus()
    );
    let running = Runtime::start(pipeline, plan).context("starting the demo pipeline")?;
    let _live = match args.live {
        Some(addr) => {
            let server = pipewright::live::serve(running.watch(), addr)
                .with_context(|| format!("serving the live view on {addr}"))?;
            println!(
                "live view on {}: pipewright top --connect {}",
                server.local_addr(),
                server.local_addr()
            );
            Some(server)
        }
        None => None,
    };
    let started = Instant::now();
    let mut view = LiveView::new();
    let limit = Duration::from_secs_f64(args.seconds.max(0.1));
    view.run_until(
        &running,
        Duration::from_millis(args.refresh_ms.max(50)),
        controller.as_mut(),
        || started.elapsed() < limit,
    );
    stop.store(true, Ordering::Relaxed);
    let report = running.join().context("running the demo pipeline")?;
    view.frame_final(&report);

    let secs = report.elapsed.as_secs_f64();
    let generated = report
        .snapshot
        .stage("generate")
        .map(|s| s.items_out)
        .unwrap_or(0);
    let delivered: u64 = totals.iter().map(|t| t.load(Ordering::Relaxed)).sum();
    let rejected = report
        .snapshot
        .stage("parse")
        .map(|s| s.dropped_total())
        .unwrap_or(0);
    println!("\nsummary");
    println!(
        "  generated  {generated:>12}  ({}/s)",
        human(generated as f64 / secs)
    );
    println!("  rejected   {rejected:>12}  (corrupt records, typed error `BadLength`, counted at `parse`)");
    println!(
        "  delivered  {delivered:>12}  (hot {} / cold {})",
        hot_total.load(Ordering::Relaxed),
        delivered - hot_total.load(Ordering::Relaxed)
    );
    println!(
        "  accounted  {}",
        if generated == delivered + rejected {
            "yes: generated = delivered + rejected"
        } else {
            "NO: items unaccounted for"
        }
    );
    anyhow::ensure!(
        generated == delivered + rejected,
        "the demo lost items: {generated} generated, {delivered} delivered, {rejected} rejected"
    );
    Ok(())
}

impl LiveView {
    /// Prints the final per-stage table.
    pub(crate) fn frame_final(&mut self, report: &pipewright::Report) {
        println!(
            "\nfinal per-stage totals ({:.2}s):\n{}",
            report.elapsed.as_secs_f64(),
            report.snapshot
        );
    }
}
