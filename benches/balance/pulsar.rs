//! The shedding rule on apache/pulsar#18215's load shapes (simulated, sans-I/O).

use std::time::Duration;

use pipewright::balance::{Indicators, Metric, ShedConfig, Shedder, Verdict};

use crate::rebalance::Rule;
use crate::result;

/// A fluid model of the shedding rule on fixed utilisation shapes: every closure moves
/// `unit` of load to the least-loaded node (the worst case for over-unloading).
pub(crate) fn simulate(cfg: ShedConfig, start: &[f64], unit: f64, ticks: u64) -> (u64, f64) {
    let n = start.len();
    let mut load = start.to_vec();
    let mut sh: Vec<Shedder> = (0..n)
        .map(|i| {
            Shedder::new(ShedConfig {
                seed: i as u64,
                ..cfg
            })
        })
        .collect();
    let ind = |u: f64| Indicators {
        connections: (u / unit).round() as u32,
        utilisation: u,
        capacity: 1.0,
        in_flight: 0,
    };
    let mut closures = 0;
    for t in 0..ticks {
        let now = Duration::from_millis(t * 500);
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    sh[i].peer(now, j as u64, ind(load[j]));
                }
            }
        }
        for i in 0..n {
            let d = sh[i].tick(now, ind(load[i]));
            if d.verdict == Verdict::Shed {
                for _ in 0..d.close {
                    if load[i] < unit {
                        break;
                    }
                    load[i] -= unit;
                    let j = (0..n).min_by(|&a, &b| load[a].total_cmp(&load[b])).unwrap();
                    load[j] += unit;
                    closures += 1;
                }
            }
        }
    }
    let mean = load.iter().sum::<f64>() / n as f64;
    let max = load.iter().cloned().fold(0.0, f64::max);
    (closures, max / mean)
}

pub(crate) fn pulsar_cases() {
    let util = |r: Rule| {
        let mut c = r.config(100, 4).unwrap();
        c.metric = Metric::Utilisation;
        if matches!(r, Rule::ThresholdOnly) {
            c.threshold = 0.1;
        }
        if matches!(r, Rule::Ours) {
            // Operators' floor: not overloaded below 50 % utilisation.
            c.threshold = 0.5;
        }
        c
    };
    // apache/pulsar#18215: 12/2/1/1 % — nothing is overloaded; shedding is churn.
    let low = [0.12, 0.02, 0.01, 0.01];
    let (ours, _) = simulate(util(Rule::Ours), &low, 0.005, 200);
    for r in [Rule::ThresholdOnly, Rule::RatioToAverage] {
        let (peer, _) = simulate(util(r), &low, 0.005, 200);
        result(
            "pulsar-low-load-closures",
            ours as f64,
            r.name(),
            peer as f64,
            "closures",
            "lower",
        );
    }
    // Five loaded nodes and an empty one (#18215, PIP-364): the moved load must not
    // all land on the empty node and overload it: max/mean after 100 decisions.
    let shape = [0.8, 0.8, 0.8, 0.8, 0.8, 0.0];
    let (_, ours) = simulate(util(Rule::Ours), &shape, 0.01, 100);
    for r in [Rule::ThresholdOnly, Rule::RatioToAverage] {
        let (_, peer) = simulate(util(r), &shape, 0.01, 100);
        result(
            "pulsar-one-empty-max-over-mean",
            ours,
            r.name(),
            peer,
            "ratio",
            "lower",
        );
    }
}
