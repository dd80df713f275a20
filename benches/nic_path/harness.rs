//! Harness: configuration from the environment, the runners' common shape and rates,
//! and the runner that rotates ours, the peer and the extras and prints the RESULT line.

use std::time::Duration;

use crate::common::{self, median, Side};
use crate::BURST;

/// What to run and how much of it: the `PIPEWRIGHT_BENCH_*` switches (see the crate
/// docs) and the units per round.
pub struct Config {
    pub quick: bool,
    pub only: Option<Side>,
    pub filter: Option<String>,
    pub rounds: usize,
    /// Packets per round (egress, ingress).
    pub packets: u64,
    /// Super-frames per round (TSO).
    pub superframes: u64,
}

impl Config {
    pub fn from_env() -> Self {
        let quick = common::quick();
        let filter = common::case_filter();
        let only = common::only();
        let (rounds, packets, superframes) = if quick {
            (5, 1_000_000, 640)
        } else {
            (7, 10_000_000, 6_400)
        };
        Config {
            quick,
            only,
            filter,
            rounds,
            packets,
            superframes,
        }
    }

    pub fn wants(&self, case: &str) -> bool {
        common::wants(self.filter.as_deref(), case)
    }
}

pub struct Case<'a> {
    pub name: &'a str,
    pub what: &'a str,
    pub unit: &'a str,
    /// Units per round, and what they are.
    pub n: u64,
    pub n_what: &'a str,
}

/// Runs ours, the peer and the informational extras in rotating order for
/// `cfg.rounds` rounds after a warm-up each; prints the RESULT line (ours vs peer) and
/// an info line per extra.
pub fn run_case(
    cfg: &Config,
    case: Case<'_>,
    ours: Runner<'_>,
    peer: Runner<'_>,
    extras: Vec<(&str, Runner<'_>)>,
) {
    eprintln!(
        "== nic_path/{}: {} | peer etherparse | {} {} x {} rounds{}",
        case.name,
        case.what,
        case.n,
        case.n_what,
        cfg.rounds,
        if cfg.quick { " (quick)" } else { "" }
    );
    let mut sides: Vec<(&str, Runner<'_>)> = Vec::new();
    if cfg.only != Some(Side::Peer) {
        sides.push(("ours", ours));
    }
    if cfg.only != Some(Side::Ours) {
        sides.push(("etherparse", peer));
    }
    if cfg.only.is_none() {
        sides.extend(extras);
    }
    let warm = (case.n / 10).max(BURST as u64);
    for (_, run) in sides.iter_mut() {
        run(warm);
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for round in 0..cfg.rounds {
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            results[i].push((sides[i].1)(case.n));
        }
        let line: Vec<String> = sides
            .iter()
            .zip(&results)
            .map(|((name, _), r)| format!("{name} {:.3}", r[round]))
            .collect();
        eprintln!("   round {}: {} {}", round + 1, line.join(", "), case.unit);
    }
    let medians: Vec<f64> = results.into_iter().map(median).collect();
    if cfg.only.is_some() {
        eprintln!("   median {} {:.3} {}", sides[0].0, medians[0], case.unit);
        return;
    }
    let (o, p) = (medians[0], medians[1]);
    for ((name, _), m) in sides.iter().zip(&medians).skip(2) {
        eprintln!(
            "   info: {name} median {m:.3} {} (ours/{name} {:.3}, {name}/etherparse {:.3})",
            case.unit,
            o / m,
            m / p
        );
    }
    println!(
        "RESULT suite=nic_path case={} ours={o:.3} peer=etherparse:{p:.3} unit={} better=higher ratio={:.3}",
        case.name,
        case.unit,
        o / p
    );
}

// ---------------------------------------------------------------------------------------
// Runners: each takes a unit count (packets, or super-frames for TSO) and returns the
// rate (Mpps or Gbit/s).
// ---------------------------------------------------------------------------------------

pub type Runner<'a> = Box<dyn FnMut(u64) -> f64 + 'a>;

pub fn mpps(elapsed: Duration, packets: u64) -> f64 {
    packets as f64 / elapsed.as_secs_f64() / 1e6
}

pub fn gbps(elapsed: Duration, payload_bytes: u64) -> f64 {
    payload_bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

pub fn bursts_of(n: u64) -> u64 {
    (n / BURST as u64).max(1)
}
