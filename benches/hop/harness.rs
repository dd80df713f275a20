//! Harness: configuration from the environment, reference digests, and the runner that
//! alternates ours and the peer and prints the RESULT line.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use pipewright::available_cpus;

use crate::common::{self, median, Side};
use crate::work::direct_loop;

/// What to run and how much of it: the `PIPEWRIGHT_BENCH_*` switches (see the crate
/// docs) and the units per round of each case.
pub struct Config {
    pub quick: bool,
    pub only: Option<Side>,
    pub verbose: bool,
    pub filter: Option<String>,
    pub rounds: usize,
    pub cross_burst_items: u64,
    pub cross_single_items: u64,
    pub ring_items: u64,
    pub fused_items: u64,
    pub service_requests: u64,
}

impl Config {
    pub fn from_env() -> Self {
        let quick = common::quick();
        let filter = common::case_filter();
        let verbose = common::flag("PIPEWRIGHT_BENCH_VERBOSE");
        let only = common::only();
        if quick {
            Config {
                quick,
                only,
                verbose,
                filter,
                rounds: 5,
                cross_burst_items: 1_000_000,
                cross_single_items: 300_000,
                ring_items: 5_000_000,
                fused_items: 2_000_000,
                service_requests: 300_000,
            }
        } else {
            Config {
                quick,
                only,
                verbose,
                filter,
                rounds: 5,
                cross_burst_items: 5_000_000,
                cross_single_items: 2_000_000,
                ring_items: 50_000_000,
                fused_items: 5_000_000,
                service_requests: 2_000_000,
            }
        }
    }

    pub fn wants(&self, case: &str) -> bool {
        common::wants(self.filter.as_deref(), case)
    }
}

/// Reference digest sums (by the direct loop), computed once per item count.
#[derive(Default)]
pub struct Expected(Mutex<HashMap<u64, u64>>);

impl Expected {
    pub fn get(&self, n: u64) -> u64 {
        *self
            .0
            .lock()
            .unwrap()
            .entry(n)
            .or_insert_with(|| direct_loop(n))
    }
}

pub struct Case<'a> {
    pub name: &'a str,
    pub what: &'a str,
    pub peer: &'a str,
    pub unit: &'a str,
    pub better: &'a str,
    /// Units (items or requests) per round.
    pub n: u64,
}

/// Runs both sides alternately for `rounds` rounds after a warm-up, prints the result.
pub fn run_case(
    cfg: &Config,
    case: Case<'_>,
    mut ours: impl FnMut(u64) -> f64,
    mut peer: impl FnMut(u64) -> f64,
) {
    eprintln!(
        "== hop/{}: {} | peer {} | {} x {} rounds{}",
        case.name,
        case.what,
        case.peer,
        case.n,
        cfg.rounds,
        if cfg.quick { " (quick)" } else { "" }
    );
    // With PIPEWRIGHT_BENCH_ONLY one side is skipped (NaN) and no RESULT line is printed.
    let (run_ours, run_peer) = (cfg.only != Some(Side::Peer), cfg.only != Some(Side::Ours));
    let mut ours = |n| if run_ours { ours(n) } else { f64::NAN };
    let mut peer = |n| if run_peer { peer(n) } else { f64::NAN };
    let warm = (case.n / 10).max(1000);
    ours(warm);
    peer(warm);
    let (mut o, mut p) = (Vec::new(), Vec::new());
    for round in 0..cfg.rounds {
        let (a, b) = if round % 2 == 0 {
            let a = ours(case.n);
            (a, peer(case.n))
        } else {
            let b = peer(case.n);
            (ours(case.n), b)
        };
        eprintln!(
            "   round {}: ours {a:.3} {u}, {} {b:.3} {u}",
            round + 1,
            case.peer,
            u = case.unit
        );
        o.push(a);
        p.push(b);
    }
    if cfg.only.is_some() {
        return;
    }
    let (o, p) = (median(o), median(p));
    println!(
        "RESULT suite=hop case={} ours={o:.3} peer={}:{p:.3} unit={} better={} ratio={:.3}",
        case.name,
        case.peer,
        case.unit,
        case.better,
        o / p
    );
}

pub fn per_unit(elapsed: Duration, n: u64) -> f64 {
    elapsed.as_nanos() as f64 / n as f64
}

/// The second CPU, or the first on a one-CPU machine.
pub fn second_core() -> usize {
    usize::from(available_cpus() > 1)
}

/// The runtime's per-stage table, plus how full the bursts were (items per activation
/// that did work).
pub fn print_snapshot(snapshot: &pipewright::Snapshot) {
    eprint!("{snapshot}");
    let fill: Vec<String> = snapshot
        .stages
        .iter()
        .map(|s| {
            format!(
                "{} {:.1}",
                s.name,
                s.items_in.max(s.items_out) as f64 / s.bursts.max(1) as f64
            )
        })
        .collect();
    eprintln!("items per burst: {}", fill.join(", "));
}
