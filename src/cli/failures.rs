//! `pipewright failures`: generate a fleet, report on its events, serve ingestion.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use pipewright_failures::{
    detect, generate, ingest_reader, parse_time, run_until_signal, to_json, to_table, unix_now,
    Aggregates, DetectConfig, FleetConfig, ServeOptions, Unit,
};

#[derive(Args, Debug)]
pub(crate) struct FailuresArgs {
    #[command(subcommand)]
    command: FailuresCommand,
}

#[derive(Subcommand, Debug)]
enum FailuresCommand {
    /// Write a generated fleet's events (JSON lines) with planted failure patterns.
    Generate(GenerateArgs),
    /// Read events (a file or `-` for stdin) and print the findings.
    Report(ReportArgs),
    /// Serve HTTP ingestion (POST /v1/events), the report (GET /v1/report, GET /) and
    /// metrics (GET /metrics), durably, until SIGINT/SIGTERM.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// About how many events to write.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write (default stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the planted patterns (the ground truth) as JSON here.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Time of the last events (RFC 3339; default now).
    #[arg(long)]
    end: Option<String>,
    /// Configurations per application type.
    #[arg(long, default_value_t = 240)]
    configs: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Args, Debug, Clone)]
struct DetectArgs {
    /// False discovery rate (Benjamini–Hochberg).
    #[arg(long, default_value_t = 0.05)]
    q: f64,
    /// Smallest rate ratio (cell vs rest of its application type) reported.
    #[arg(long, default_value_t = 1.5)]
    min_ratio: f64,
    /// Smallest exposure of a tested cell (default: where the type's rate predicts 5
    /// failures).
    #[arg(long)]
    min_exposure: Option<f64>,
    /// Exposure unit of the report.
    #[arg(long, value_enum, default_value_t = UnitArg::Hours)]
    unit: UnitArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum UnitArg {
    Hours,
    Launches,
}

impl DetectArgs {
    fn config(&self) -> DetectConfig {
        DetectConfig {
            q: self.q,
            min_ratio: self.min_ratio,
            min_exposure: self.min_exposure,
            unit: match self.unit {
                UnitArg::Hours => Unit::Hours,
                UnitArg::Launches => Unit::Launches,
            },
            ..DetectConfig::default()
        }
    }
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The events: a file of JSON lines, or `-` for stdin.
    #[arg(long)]
    input: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// The clock that event times are checked against (RFC 3339; default now).
    #[arg(long)]
    now: Option<String>,
    #[command(flatten)]
    detect: DetectArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Data directory (event log and checkpoints).
    #[arg(long)]
    data: PathBuf,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Checkpoint the aggregates after this many events.
    #[arg(long, default_value_t = 200_000)]
    checkpoint_every: u64,
    #[command(flatten)]
    detect: DetectArgs,
}

pub(crate) fn run(args: FailuresArgs) -> anyhow::Result<()> {
    match args.command {
        FailuresCommand::Generate(a) => run_generate(a),
        FailuresCommand::Report(a) => run_report(a),
        FailuresCommand::Serve(a) => run_serve(a),
    }
}

fn time_arg(t: &Option<String>) -> anyhow::Result<i64> {
    match t {
        Some(s) => parse_time(s).map_err(|e| anyhow::anyhow!("{e}")),
        None => Ok(unix_now()),
    }
}

fn run_generate(a: GenerateArgs) -> anyhow::Result<()> {
    let mut cfg = FleetConfig::new(a.seed, a.events, time_arg(&a.end)?);
    cfg.configs_per_app = a.configs;
    let summary = match &a.out {
        Some(p) => {
            let mut w = BufWriter::with_capacity(
                1 << 20,
                File::create(p).with_context(|| format!("creating {}", p.display()))?,
            );
            let s = generate(&cfg, &mut w)?;
            w.flush()?;
            s
        }
        None => {
            let mut w = BufWriter::with_capacity(1 << 20, io::stdout().lock());
            let s = generate(&cfg, &mut w)?;
            w.flush()?;
            s
        }
    };
    if let Some(t) = &a.truth {
        std::fs::write(t, summary.to_json()).with_context(|| format!("writing {}", t.display()))?;
    }
    eprintln!(
        "generated {} events ({} failures) over {} ticks; planted:",
        summary.events, summary.failures, summary.ticks
    );
    for p in &summary.planted {
        let c: Vec<String> = p
            .combination
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!(
            "  {:<6} {:<40} x{} ({})",
            p.app_type,
            c.join(","),
            p.factor,
            p.label
        );
    }
    Ok(())
}

fn run_report(a: ReportArgs) -> anyhow::Result<()> {
    let now = time_arg(&a.now)?;
    let aggs = if a.input == "-" {
        ingest_reader(io::stdin().lock(), Aggregates::default(), now)?
    } else {
        let f = File::open(&a.input).with_context(|| format!("opening {}", a.input))?;
        ingest_reader(
            BufReader::with_capacity(1 << 20, f),
            Aggregates::default(),
            now,
        )?
    };
    let report = detect(&aggs, &a.detect.config());
    let text = match a.format {
        Format::Table => to_table(&report),
        Format::Json => to_json(&report),
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn run_serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut opts = ServeOptions::new(a.data, a.listen);
    opts.checkpoint_every = a.checkpoint_every;
    opts.detect = a.detect.config();
    run_until_signal(opts, |server| {
        let r = server.recovered();
        println!(
            "listening on http://{} (recovered {} checkpointed events, {} replayed from {} log records, {} torn bytes cut)",
            server.local_addr(),
            r.checkpointed,
            r.events,
            r.records,
            r.truncated
        );
        let _ = io::stdout().flush();
    })?;
    Ok(())
}
