//! The shedding decider: replay of a recorded trace, the rule's conditions, and
//! properties (bounded closures on a steady overload, convergence without oscillation).

#![allow(clippy::needless_range_loop)]

use std::time::Duration;

use pipewright_balance::{replay_shed, Indicators, ShedConfig, ShedEvent, Shedder, Verdict};
use proptest::prelude::*;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn conns(n: u32) -> Indicators {
    Indicators {
        connections: n,
        in_flight: 0,
        utilisation: 0.0,
        capacity: 1.0,
    }
}

fn load_trace() -> Vec<ShedEvent> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/shed_trace.jsonl"
    ))
    .expect("trace");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect()
}

#[test]
fn recorded_trace_replays_identically() {
    let trace = load_trace();
    let run = || serde_json::to_string(&replay_shed(ShedConfig::default(), &trace)).unwrap();
    let a = run();
    assert_eq!(a, run());
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/shed_decisions.json"
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, &a).unwrap();
    }
    assert_eq!(a, std::fs::read_to_string(golden).unwrap());
    let d = replay_shed(ShedConfig::default(), &trace);
    assert!(d.iter().any(|d| d.verdict == Verdict::Shed));
    assert!(d.iter().any(|d| d.verdict == Verdict::NoPeerCapacity));
}

#[test]
fn hysteresis_then_shed_toward_the_mean() {
    let mut s = Shedder::new(ShedConfig {
        jitter: 0.0,
        burst: 100.0,
        ..Default::default()
    });
    for (i, t) in (0..3).map(|i| (i, ms(i * 500))) {
        s.peer(t, 1, conns(10));
        s.peer(t, 2, conns(10));
        let d = s.tick(t, conns(40));
        let want = if i < 2 {
            Verdict::Warming
        } else {
            Verdict::Shed
        };
        assert_eq!(d.verdict, want, "{d:?}");
        if i == 2 {
            // mean 20: move 20 of 40.
            assert_eq!(d.close, 20);
        }
    }
}

#[test]
fn stale_peers_are_no_capacity() {
    let mut s = Shedder::new(ShedConfig::default());
    s.peer(ms(0), 1, conns(0));
    let mut last = None;
    for t in 0..10 {
        last = Some(s.tick(ms(4_000 + t * 500), conns(50)));
    }
    // Over the (zero) threshold, but never shed into a peer we cannot see.
    let last = last.unwrap();
    assert_eq!((last.verdict, last.close), (Verdict::NoPeerCapacity, 0));
}

#[test]
fn pulsar_low_load_is_not_shed() {
    // apache/pulsar#18215: loads 12/2/1/1 % of utilisation: no node is overloaded.
    let cfg = ShedConfig {
        metric: pipewright_balance::Metric::Utilisation,
        threshold: 0.5,
        ..Default::default()
    };
    let mut s = Shedder::new(cfg);
    let u = |x: f64| Indicators {
        utilisation: x,
        capacity: 1.0,
        ..Default::default()
    };
    for i in 0..20 {
        let t = ms(i * 500);
        s.peer(t, 1, u(0.02));
        s.peer(t, 2, u(0.01));
        s.peer(t, 3, u(0.01));
        assert_eq!(s.tick(t, u(0.12)).verdict, Verdict::Under);
    }
}

#[test]
fn pip364_moved_load_bounded_by_room() {
    // One hot node, one nearly empty node and others at the mean: the hot node moves
    // only its excess over the mean, not the gap to the emptiest node.
    let mut s = Shedder::new(ShedConfig {
        jitter: 0.0,
        burst: 1000.0,
        hits: 1,
        ..Default::default()
    });
    s.peer(ms(0), 1, conns(60));
    s.peer(ms(0), 2, conns(60));
    s.peer(ms(0), 3, conns(0));
    let d = s.tick(ms(0), conns(80));
    // mean 50, excess 30 and room 50: close 30, leaving 50 (not 80 - 0).
    assert_eq!((d.verdict, d.close), (Verdict::Shed, 30));
}

/// A closed-loop model: `n` nodes, clients start on node 0, closed clients reconnect
/// to the least-loaded node (the worst case for over-unloading: everything moved goes
/// to one place). Returns (closures, ticks until max/mean <= 1.2, direction changes).
fn simulate(cfg: ShedConfig, start: &[u32], ticks: u64) -> (u64, Option<u64>, u64) {
    let n = start.len();
    let mut load = start.to_vec();
    let mut shed: Vec<Shedder> = (0..n)
        .map(|i| {
            Shedder::new(ShedConfig {
                seed: cfg.seed + i as u64,
                ..cfg
            })
        })
        .collect();
    let (mut closures, mut converged, mut flips) = (0u64, None, 0u64);
    let mut last_dir = vec![0i8; n];
    for tick in 0..ticks {
        let t = ms(tick * 250);
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    shed[i].peer(t, j as u64, conns(load[j]));
                }
            }
        }
        let before = load.clone();
        for i in 0..n {
            let d = shed[i].tick(t, conns(load[i]));
            for _ in 0..d.close {
                load[i] -= 1;
                let j = (0..n).filter(|&j| j != i).min_by_key(|&j| load[j]).unwrap();
                load[j] += 1;
                closures += 1;
            }
        }
        for i in 0..n {
            let dir = (load[i] as i64 - before[i] as i64).signum() as i8;
            if dir != 0 && last_dir[i] != 0 && dir != last_dir[i] {
                flips += 1;
            }
            if dir != 0 {
                last_dir[i] = dir;
            }
        }
        let mean = load.iter().sum::<u32>() as f64 / n as f64;
        let max = *load.iter().max().unwrap() as f64;
        if converged.is_none() && max <= 1.2 * mean {
            converged = Some(tick);
        }
    }
    (closures, converged, flips)
}

proptest! {
    /// A steady overload is shed a bounded number of times: closures stay within
    /// twice the minimum moves needed to reach the mean, and no node both sheds and
    /// later receives back in alternation more than a few times.
    #[test]
    fn steady_overload_bounded_closures(
        clients in 20u32..400, nodes in 2usize..6, seed in any::<u64>(), hits in 1u32..4
    ) {
        let cfg = ShedConfig { seed, hits, ..Default::default() };
        let mut start = vec![0; nodes];
        start[0] = clients;
        let (closures, converged, flips) = simulate(cfg, &start, 400);
        let mean = clients as f64 / nodes as f64;
        let needed = (clients as f64 - mean).ceil() as u64;
        prop_assert!(closures <= 2 * needed + nodes as u64, "closures {closures} needed {needed}");
        prop_assert!(flips <= 2 * nodes as u64, "flips {flips}");
        if clients as usize >= 20 * nodes {
            prop_assert!(converged.is_some(), "did not converge: closures {closures}");
        }
    }

    /// Without fresh peers nothing is ever shed, whatever the local load.
    #[test]
    fn never_shed_without_fresh_peers(loads in proptest::collection::vec(0u32..1000, 1..100)) {
        let mut s = Shedder::new(ShedConfig::default());
        s.peer(ms(0), 7, conns(0));
        for (i, l) in loads.iter().enumerate() {
            let d = s.tick(ms(10_000 + i as u64 * 250), conns(*l));
            prop_assert_eq!(d.close, 0);
        }
    }

    /// The rate cap holds over any window: closures in [t, t+1s) <= burst + max_rate.
    #[test]
    fn rate_cap_holds(loads in proptest::collection::vec(0u32..500, 10..200), seed in any::<u64>()) {
        let cfg = ShedConfig { seed, hits: 1, ..Default::default() };
        let mut s = Shedder::new(cfg);
        let mut closes = Vec::new();
        for (i, l) in loads.iter().enumerate() {
            let t = ms(i as u64 * 100);
            s.peer(t, 1, conns(0));
            closes.push((i as u64 * 100, s.tick(t, conns(*l)).close));
        }
        for (start, _) in &closes {
            let sum: u32 = closes.iter().filter(|(t, _)| t >= start && *t < start + 1000).map(|c| c.1).sum();
            prop_assert!(f64::from(sum) <= cfg.burst + cfg.max_rate + 1e-9, "{sum}");
        }
    }
}

/// A few connections over several nodes cannot be split evenly: a node one
/// connection above the mean must not hand that connection back and forth (CI
/// found 414 closures for 21 clients over 5 nodes before shedding rounded down).
#[test]
fn one_connection_over_the_mean_is_not_ping_ponged() {
    let cfg = ShedConfig {
        seed: 0,
        hits: 1,
        ..Default::default()
    };
    let (closures, converged, flips) = simulate(cfg, &[21, 0, 0, 0, 0], 400);
    assert!(closures <= 2 * 17 + 5, "closures {closures}");
    assert!(flips <= 10, "flips {flips}");
    assert!(converged.is_some());
}
