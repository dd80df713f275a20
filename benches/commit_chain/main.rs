//! The `commit_chain` suite: distributed page transactions on pipewright's storage
//! commit chain (linear two-phase commit over real node processes on loopback) against
//! PostgreSQL's two-phase commit (`postgres-2pc`: three servers driven with `PREPARE
//! TRANSACTION` / `COMMIT PREPARED`), in one run.
//!
//! Run with `cargo bench --bench commit_chain`. `PIPEWRIGHT_BENCH_QUICK=1` runs every
//! case with short windows (under 60 s in all, process and server startup included).
//! `PIPEWRIGHT_BENCH_CASE=<text>` runs only the cases whose name contains `<text>`;
//! `PIPEWRIGHT_BENCH_ONLY=ours|peer` one side only (no RESULT line).
//! `PIPEWRIGHT_COMMIT_CHAIN_CONCURRENCY` sets the number of coordinators (default 8);
//! `PIPEWRIGHT_COMMIT_CHAIN_PG=serial` makes the peer's coordinator visit the servers
//! one after the other instead of in parallel; `PIPEWRIGHT_COMMIT_CHAIN_PG_BIN=DIR`
//! picks the server binaries (default: the newest `/usr/lib/postgresql/*/bin`).
//! Without them the peer's lines are `SKIP` lines and ours still run.
//!
//! # The work, the same on both sides
//!
//! `C` coordinators run transactions back to back; each transaction writes one full
//! 8 KiB page (incompressible bytes) on every node of the chain, and is durable on
//! every node (`fdatasync` of the log / WAL) before the coordinator counts it.
//! Coordinator `t` owns pages `4t..4t+3` on every node, so nothing conflicts.
//!
//! - ours: `pipewright storage node` processes started by `LocalCluster`, one
//!   `StorageClient` (`tower::Service<Transaction>`) per coordinator, tasks on a
//!   one-thread tokio runtime in this process; the answer comes when the decider's
//!   decision is durable.
//! - peer: PostgreSQL servers with their own temporary data directories, `fsync=on`,
//!   `synchronous_commit=on`; one thread and one connection per server per
//!   coordinator; the answer comes when `COMMIT PREPARED` returned on every server.
//!
//! # Cases
//!
//! - `txn-3node-tps`, `txn-3node-p99-ms`: three nodes / servers; `rounds` rounds, each
//!   running both sides in alternating order; the RESULT is the median per side.
//! - `txn-3node-f1-{tps,p99-ms}`: the same with F = 1 (the commit decision durable on
//!   the decider and one acceptor before it takes effect) against the same peer runs.
//! - `txn-per-fdatasync`, `group-commit-tps`: transactions per log `fdatasync`
//!   (averaged over the nodes) and throughput, ours against our own nodes started
//!   with `--linger-us 0` (no group-commit linger: one sync per burst, as before),
//!   in the same rounds (`peer=self-no-linger`).
//! - `decider-down-availability`: the share of transactions that commit while the
//!   decider is killed (on the surviving nodes, over the pages the decider's in-doubt
//!   transactions may hold), F = 1 against F = 0 (`peer=self-f0`: plain two-phase
//!   commit, which blocks them until the decider is back).
//! - `decider-down-availability-pg`: the same F = 1 share against PostgreSQL's
//!   two-phase commit with its coordinator killed (`peer=postgres-2pc-coordinator-killed`):
//!   the coordinator is a process of its own (this binary, started with
//!   `PIPEWRIGHT_COMMIT_CHAIN_PG_COORDINATOR`), killed with `kill -9` after the
//!   warm-up; the transactions it left prepared keep their row locks, and fresh
//!   coordinators write the same pages for an outage as long as ours, each lock wait
//!   failing after 1 s (our client's timeout there).
//! - `chain-length-{2,5}-{tps,p50-ms,p99-ms}`: ours only, chains of 2 and 5 nodes
//!   against a 3-node chain measured in the same rounds (`peer=self-3node`).
// A benchmark binary: `pub` marks what its modules share; nothing is exported.
#![allow(unreachable_pub)]

mod availability;
#[path = "../common/mod.rs"]
mod common;
mod ours;
mod pg;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::Side;
use hdrhistogram::Histogram;
use ours::Ours;
use pipewright_storage::pages::PAGE_SIZE;

const PEER: &str = "postgres-2pc";
const EXE: &str = env!("CARGO_BIN_EXE_pipewright");
/// Pages each coordinator owns on every node.
pub const PAGES_PER_COORDINATOR: usize = 4;

/// One run's figures.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Committed transactions per second.
    pub tps: f64,
    /// Median commit latency, ms.
    pub p50_ms: f64,
    /// 99th-percentile commit latency, ms.
    pub p99_ms: f64,
    /// Transactions per log `fdatasync`, averaged over the nodes (ours only; 0 for
    /// the peer).
    pub txn_per_sync: f64,
}

impl Measured {
    /// From `committed` transactions in `secs` and their latencies in µs.
    pub fn from(committed: u64, secs: f64, latency_us: &Histogram<u64>) -> Self {
        let q = |q| latency_us.value_at_quantile(q) as f64 / 1000.0;
        Self {
            tps: committed as f64 / secs.max(1e-9),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            txn_per_sync: 0.0,
        }
    }
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} tps, p50 {:.2} ms, p99 {:.2} ms",
            self.tps, self.p50_ms, self.p99_ms
        )?;
        if self.txn_per_sync > 0.0 {
            write!(f, ", {:.2} txn/fdatasync", self.txn_per_sync)?;
        }
        Ok(())
    }
}

/// `len` incompressible bytes (xorshift), different for every `seed`.
pub fn payload(seed: usize, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (seed as u64 + 1).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A free TCP port on loopback.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The run's temporary directory: removed on drop (also after a panic) and by the
/// Ctrl-C handler.
struct Scratch(PathBuf);

static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);

impl Scratch {
    fn new() -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("pipewright-commit-chain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        *SCRATCH.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.clone());
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Config {
    rounds: usize,
    chain_rounds: usize,
    warmup: Duration,
    window: Duration,
    concurrency: usize,
    filter: Option<String>,
    only: Option<Side>,
}

impl Config {
    fn from_env() -> Self {
        let quick = common::quick();
        let concurrency = std::env::var("PIPEWRIGHT_COMMIT_CHAIN_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(8);
        Self {
            rounds: if quick { 2 } else { 3 },
            chain_rounds: if quick { 1 } else { 3 },
            warmup: Duration::from_millis(if quick { 500 } else { 2000 }),
            window: Duration::from_millis(if quick { 3000 } else { 10_000 }),
            concurrency,
            filter: common::case_filter(),
            only: common::only(),
        }
    }

    fn wants(&self, case: &str) -> bool {
        common::wants(self.filter.as_deref(), case)
    }

    fn runs(&self, side: Side) -> bool {
        self.only.is_none_or(|o| o == side)
    }
}

fn result(case: &str, ours: f64, peer: &str, theirs: f64, unit: &str, better: &str) {
    let digits = if unit == "tps" { 1 } else { 2 };
    if !theirs.is_finite() || theirs <= 0.0 {
        println!("SKIP suite=commit_chain case={case} ours={ours:.digits$} unit={unit} peer={peer}: no figure for the peer");
        return;
    }
    println!(
        "RESULT suite=commit_chain case={case} ours={ours:.digits$} peer={peer}:{theirs:.digits$} unit={unit} better={better} ratio={:.3}",
        ours / theirs
    );
}

fn medians(runs: &[Measured]) -> Measured {
    let m = |f: fn(&Measured) -> f64| common::median(runs.iter().map(f).collect());
    Measured {
        tps: m(|r| r.tps),
        p50_ms: m(|r| r.p50_ms),
        p99_ms: m(|r| r.p99_ms),
        txn_per_sync: m(|r| r.txn_per_sync),
    }
}

fn main() {
    if let Ok(spec) = std::env::var(pg::COORDINATOR_ENV) {
        // The peer's coordinator process of `decider-down-availability`.
        if let Err(e) = pg::coordinator_process(&spec) {
            eprintln!("commit_chain: coordinator process: {e}");
            std::process::exit(1);
        }
        return;
    }
    let _ = ctrlc::set_handler(|| {
        pg::stop_all();
        if let Some(dir) = SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
    if let Err(e) = run() {
        eprintln!("commit_chain: failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cfg = Config::from_env();
    let started = Instant::now();
    let scratch = Scratch::new()?;
    let rt = pipewright_storage::io_runtime(1)?;
    eprintln!(
        "commit_chain: {} mode, {} rounds, {} coordinators, {} B pages, load average {}, scratch {}",
        if common::quick() { "quick" } else { "full" },
        cfg.rounds,
        cfg.concurrency,
        PAGE_SIZE,
        common::loadavg(),
        scratch.0.display()
    );
    let mut three = None;
    // The PostgreSQL servers of `txn-3node`, kept for `decider-down-availability-pg`.
    let mut pg_servers = None;
    if cfg.wants("txn-3node-tps") || cfg.wants("txn-3node-p99-ms") {
        three = txn_3node(&cfg, &scratch, &rt, started, &mut pg_servers)?;
    }
    if cfg.wants("chain-length") && cfg.runs(Side::Ours) {
        chain_length(&cfg, &scratch, &rt, three.take())?;
    }
    if let Some(three) = three {
        three.stop();
    }
    if cfg.wants("decider-down-availability") && cfg.runs(Side::Ours) {
        availability::decider_down(&cfg, &scratch, &rt, pg_servers.take())?;
    }
    eprintln!(
        "commit_chain: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn start_ours(scratch: &Scratch, nodes: u32) -> Result<Ours> {
    start_ours_with(scratch, nodes, "", &[])
}

/// `nodes` node processes with extra `storage node` arguments.
fn start_ours_with(scratch: &Scratch, nodes: u32, tag: &str, extra: &[&str]) -> Result<Ours> {
    let t0 = Instant::now();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let ours = Ours::start(
        Path::new(EXE),
        &scratch.path(&format!("ours-{nodes}{tag}")),
        nodes,
        &extra,
    )?;
    eprintln!(
        "commit_chain: {nodes} node processes up in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(ours)
}

/// `txn-3node-*`; returns the 3-node cluster for `chain-length`.
fn txn_3node(
    cfg: &Config,
    scratch: &Scratch,
    rt: &tokio::runtime::Runtime,
    started: Instant,
    keep_peer: &mut Option<pg::Peer>,
) -> Result<Option<Ours>> {
    let mut ours = if cfg.runs(Side::Ours) {
        Some(start_ours(scratch, 3)?)
    } else {
        None
    };
    let mut skip = None;
    let peer = if !cfg.runs(Side::Peer) {
        None
    } else if let Some(bin) = pg::binaries() {
        let t0 = Instant::now();
        match pg::Peer::start(&bin, &scratch.path("pg"), 3, cfg.concurrency, PAGE_SIZE) {
            Ok(p) => {
                eprintln!(
                    "commit_chain: 3 PostgreSQL servers ({}) up in {:.2} s; coordinator drives each phase {}",
                    bin.display(),
                    t0.elapsed().as_secs_f64(),
                    p.mode()
                );
                Some(p)
            }
            Err(e) => {
                skip = Some(format!("PostgreSQL servers did not start: {}", e.trim()));
                None
            }
        }
    } else {
        skip = Some(
            "no PostgreSQL server binaries (Debian package postgresql, /usr/lib/postgresql/*/bin)"
                .into(),
        );
        None
    };
    // The same work with F = 1 (on the same cluster), and on a cluster whose group
    // commit never lingers (`--linger-us 0`: the sync-per-burst log of before).
    let extras = cfg.runs(Side::Ours)
        && (cfg.wants("txn-3node-f1")
            || cfg.wants("txn-per-fdatasync")
            || cfg.wants("group-commit"));
    let mut no_linger = if extras {
        Some(start_ours_with(
            scratch,
            3,
            "-no-linger",
            &["--linger-us", "0"],
        )?)
    } else {
        None
    };
    let (mut o_f1, mut o_nl) = (Vec::new(), Vec::new());
    let (mut o, mut p) = (Vec::new(), Vec::new());
    for r in 0..cfg.rounds {
        if let (true, Some(ours), Some(nl)) = (extras, ours.as_mut(), no_linger.as_mut()) {
            let (first, second) = if r % 2 == 0 { (0, 1) } else { (1, 0) };
            for k in [first, second] {
                let (m, what) = if k == 0 {
                    (
                        ours.run_f(rt, cfg.concurrency, cfg.warmup, cfg.window, 1)?,
                        "ours F=1",
                    )
                } else {
                    (
                        nl.run(rt, cfg.concurrency, cfg.warmup, cfg.window)?,
                        "ours without linger",
                    )
                };
                eprintln!(
                    "commit_chain: txn-3node round {}/{} {what}: {m} ({:.0} s elapsed)",
                    r + 1,
                    cfg.rounds,
                    started.elapsed().as_secs_f64()
                );
                if k == 0 {
                    o_f1.push(m)
                } else {
                    o_nl.push(m)
                }
            }
        }
        let order = if r % 2 == 0 {
            [Side::Ours, Side::Peer]
        } else {
            [Side::Peer, Side::Ours]
        };
        for side in order {
            let m = match (side, ours.as_mut(), peer.as_ref()) {
                (Side::Ours, Some(ours), _) => {
                    ours.run(rt, cfg.concurrency, cfg.warmup, cfg.window)?
                }
                (Side::Peer, _, Some(peer)) => peer
                    .run(cfg.concurrency, cfg.warmup, cfg.window, PAGE_SIZE)
                    .map_err(anyhow::Error::msg)
                    .context(PEER)?,
                _ => continue,
            };
            let name = if side == Side::Ours { "ours" } else { PEER };
            eprintln!(
                "commit_chain: txn-3node round {}/{} {name}: {m} ({:.0} s elapsed)",
                r + 1,
                cfg.rounds,
                started.elapsed().as_secs_f64()
            );
            if side == Side::Ours {
                o.push(m)
            } else {
                p.push(m)
            }
        }
    }
    *keep_peer = peer;
    if let Some(nl) = no_linger.take() {
        nl.stop();
    }
    if cfg.only.is_some() {
        return Ok(ours);
    }
    let om = medians(&o);
    eprintln!("commit_chain: txn-3node medians: ours {om}");
    if extras {
        let nl = medians(&o_nl);
        eprintln!("commit_chain: txn-3node medians: ours without linger {nl}");
        if cfg.wants("txn-per-fdatasync") {
            result(
                "txn-per-fdatasync",
                om.txn_per_sync,
                "self-no-linger",
                nl.txn_per_sync,
                "txn/fdatasync",
                "higher",
            );
        }
        if cfg.wants("group-commit-tps") {
            result(
                "group-commit-tps",
                om.tps,
                "self-no-linger",
                nl.tps,
                "tps",
                "higher",
            );
        }
    }
    if let Some(why) = skip {
        // Ours is still reported, on the SKIP line (no ratio without the peer).
        for (case, ours, unit) in [
            ("txn-3node-tps", format!("{:.1}", om.tps), "tps"),
            ("txn-3node-p99-ms", format!("{:.2}", om.p99_ms), "ms"),
        ] {
            if cfg.wants(case) {
                println!("SKIP suite=commit_chain case={case} ours={ours} unit={unit} peer={PEER}: {why}");
            }
        }
    } else {
        let pm = medians(&p);
        eprintln!("commit_chain: txn-3node medians: {PEER} {pm}");
        if cfg.wants("txn-3node-tps") {
            result("txn-3node-tps", om.tps, PEER, pm.tps, "tps", "higher");
        }
        if cfg.wants("txn-3node-p99-ms") {
            result(
                "txn-3node-p99-ms",
                om.p99_ms,
                PEER,
                pm.p99_ms,
                "ms",
                "lower",
            );
        }
        if extras {
            let f1 = medians(&o_f1);
            eprintln!("commit_chain: txn-3node medians: ours F=1 {f1}");
            if cfg.wants("txn-3node-f1-tps") {
                result("txn-3node-f1-tps", f1.tps, PEER, pm.tps, "tps", "higher");
            }
            if cfg.wants("txn-3node-f1-p99-ms") {
                result(
                    "txn-3node-f1-p99-ms",
                    f1.p99_ms,
                    PEER,
                    pm.p99_ms,
                    "ms",
                    "lower",
                );
            }
        }
    }
    Ok(ours)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// `chain-length-*`: chains of 2, 3 and 5 nodes in rotating order each round.
fn chain_length(
    cfg: &Config,
    scratch: &Scratch,
    rt: &tokio::runtime::Runtime,
    three: Option<Ours>,
) -> Result<()> {
    let mut clusters = Vec::new();
    for n in [2u32, 3, 5] {
        let c = match (n, three.as_ref()) {
            (3, Some(_)) => None,
            _ => Some(start_ours(scratch, n)?),
        };
        clusters.push((n, c));
    }
    let mut three = three;
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); 3];
    for r in 0..cfg.chain_rounds {
        for k in 0..3 {
            let i = (k + r) % 3;
            let n = clusters[i].0;
            let cluster = match clusters[i].1.as_mut() {
                Some(c) => c,
                None => three.as_mut().expect("the 3-node cluster"),
            };
            let m = cluster.run(rt, cfg.concurrency, cfg.warmup, cfg.window)?;
            eprintln!(
                "commit_chain: chain-length round {}/{} {n} nodes: {m}",
                r + 1,
                cfg.chain_rounds
            );
            runs[i].push(m);
        }
    }
    for (_, c) in clusters {
        if let Some(c) = c {
            c.stop();
        }
    }
    if let Some(t) = three {
        t.stop();
    }
    let med: Vec<Measured> = runs.iter().map(|r| medians(r)).collect();
    for (i, n) in [2, 3, 5].iter().enumerate() {
        eprintln!("commit_chain: chain-length {n} nodes, medians: {}", med[i]);
    }
    if cfg.only.is_some() {
        return Ok(());
    }
    let base = med[1];
    let peer = "self-3node";
    for (i, n) in [(0, 2), (2, 5)] {
        let m = med[i];
        result(
            &format!("chain-length-{n}-tps"),
            m.tps,
            peer,
            base.tps,
            "tps",
            "higher",
        );
        result(
            &format!("chain-length-{n}-p50-ms"),
            m.p50_ms,
            peer,
            base.p50_ms,
            "ms",
            "lower",
        );
        result(
            &format!("chain-length-{n}-p99-ms"),
            m.p99_ms,
            peer,
            base.p99_ms,
            "ms",
            "lower",
        );
    }
    Ok(())
}
