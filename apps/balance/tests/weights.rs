//! The weight engine: replay of recorded traces and properties.

use std::time::Duration;

use pipewright_balance::{
    replay, ConsumerReport, Event, ProducerId, ProducerReport, TimedEvent, WeightConfig, Weights,
};
use proptest::prelude::*;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn cfg() -> WeightConfig {
    WeightConfig {
        blackout: ms(2_000),
        weight_expiry: ms(30_000),
        dead_after: ms(3_000),
        ..WeightConfig::default()
    }
}

fn load_trace(name: &str) -> Vec<TimedEvent> {
    let text = std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("trace file");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("trace line"))
        .collect()
}

fn decisions_text(d: &[(Duration, Vec<ProducerId>)]) -> String {
    d.iter()
        .map(|(at, p)| {
            format!(
                "{} {:?}\n",
                at.as_millis(),
                p.iter().map(|p| p.0).collect::<Vec<_>>()
            )
        })
        .collect()
}

/// A scripted trace (`weights_trace.jsonl`: five producers, one degrading at 20 s, one
/// silent from 30 s, one joining at 45 s; three consumers' reports; selections every
/// 250 ms) replays to byte-identical decisions, run after run, and to the decisions
/// recorded with it (`UPDATE_GOLDEN=1` rewrites them after a deliberate
/// change of the formula).
#[test]
fn recorded_trace_replays_identically() {
    let trace = load_trace("weights_trace.jsonl");
    assert!(trace.len() > 100, "the trace has {} events", trace.len());
    let a = decisions_text(&replay(cfg(), &trace));
    let b = decisions_text(&replay(cfg(), &trace));
    assert_eq!(a, b);
    let golden = format!(
        "{}/tests/data/weights_decisions.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &a).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden decisions");
    assert_eq!(a, want, "decisions differ from the recorded ones");
}

/// In the recorded trace producer 3 degrades (its consumers see 20x latency) at 20 s
/// and producer 4 stops reporting at 30 s: 3's share drops, 4 gets nothing once dead.
#[test]
fn recorded_trace_degraded_and_dead_producers() {
    let trace = load_trace("weights_trace.jsonl");
    let d = replay(cfg(), &trace);
    let share = |from: u64, to: u64, p: u64| {
        let (mut n, mut hit) = (0usize, 0usize);
        for (at, picks) in &d {
            let t = at.as_millis() as u64;
            if t >= from && t < to {
                n += picks.len();
                hit += picks.iter().filter(|x| x.0 == p).count();
            }
        }
        hit as f64 / n.max(1) as f64
    };
    let before = share(10_000, 20_000, 3);
    let after = share(25_000, 40_000, 3);
    assert!(
        after < before / 2.0,
        "producer 3 share {before:.3} -> {after:.3}"
    );
    assert_eq!(
        share(33_001, 60_000, 4),
        0.0,
        "dead producer 4 still leased"
    );
}

#[test]
fn blackout_gives_the_mean_then_the_report() {
    let mut w = Weights::new(cfg());
    let r = |rps, util| ProducerReport {
        utilisation: util,
        rps,
        ..Default::default()
    };
    for t in (0..=5_000).step_by(500) {
        w.producer_report(ms(t), ProducerId(1), r(100.0, 0.5));
        w.producer_report(ms(t), ProducerId(2), r(100.0, 0.5));
    }
    // A new, idle-looking producer: a very high report is not used during blackout.
    w.producer_report(ms(5_000), ProducerId(3), r(1000.0, 0.01));
    let v = w.view(ms(5_500));
    assert!(v[2].blackout);
    assert_eq!(v[2].weight, v[0].weight);
    w.producer_report(ms(7_100), ProducerId(1), r(100.0, 0.5));
    w.producer_report(ms(7_100), ProducerId(2), r(100.0, 0.5));
    w.producer_report(ms(7_100), ProducerId(3), r(1000.0, 0.01));
    let v = w.view(ms(7_200));
    assert!(!v[2].blackout);
    assert!(v[2].weight > 100.0 * v[0].weight);
}

#[test]
fn error_penalty_and_consumer_failures_lower_the_weight() {
    let mut w = Weights::new(WeightConfig {
        blackout: Duration::ZERO,
        ..cfg()
    });
    let ok = ProducerReport {
        utilisation: 0.5,
        rps: 100.0,
        ..Default::default()
    };
    let failing = ProducerReport {
        error_rate: 50.0,
        ..ok
    };
    w.producer_report(ms(0), ProducerId(1), ok);
    w.producer_report(ms(0), ProducerId(2), failing);
    w.producer_report(ms(0), ProducerId(3), ok);
    // A58: 100 / (0.5 + 0.5 * 1.0) = 100 vs 200.
    assert_eq!(w.weight(ms(1), ProducerId(1)), 200.0);
    assert_eq!(w.weight(ms(1), ProducerId(2)), 100.0);
    let bad = ConsumerReport {
        requests: 10,
        mean_latency_us: 1000.0,
        errors: 5,
        timeouts: 0,
    };
    let good = ConsumerReport { errors: 0, ..bad };
    w.consumer_report(ms(1), ProducerId(1), good);
    w.consumer_report(ms(1), ProducerId(3), bad);
    assert!(w.weight(ms(2), ProducerId(3)) < w.weight(ms(2), ProducerId(1)) / 4.0);
    // Fading: long after the last consumer report, 3 is back near 1's weight.
    w.producer_report(ms(100_000), ProducerId(1), ok);
    w.producer_report(ms(100_000), ProducerId(3), ok);
    let (a, b) = (
        w.weight(ms(100_000), ProducerId(1)),
        w.weight(ms(100_000), ProducerId(3)),
    );
    assert!(b > a * 0.9, "{a} vs {b}");
}

#[test]
fn simultaneous_requests_do_not_herd() {
    let mut w = Weights::new(WeightConfig {
        blackout: Duration::ZERO,
        ..cfg()
    });
    for p in 1..=10 {
        let heavy = if p == 1 { 4.0 } else { 1.0 };
        w.producer_report(
            ms(0),
            ProducerId(p),
            ProducerReport {
                utilisation: 0.5,
                rps: 100.0 * heavy,
                ..Default::default()
            },
        );
    }
    // 130 consumers at the same instant: the heaviest (4/13 of the weight) gets about
    // its share, not everything; every producer gets some.
    let mut counts = [0usize; 11];
    for _ in 0..130 {
        for p in w.select(ms(1), 1, &[]) {
            counts[p.0 as usize] += 1;
        }
    }
    assert!((30..=50).contains(&counts[1]), "{counts:?}");
    assert!(counts[2..].iter().all(|&c| c >= 5), "{counts:?}");
}

fn arb_report() -> impl Strategy<Value = ProducerReport> {
    (
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), 0.0..2.0f64],
        0u32..100,
        prop_oneof![Just(f64::NAN), Just(0.0), Just(1e300), 0.0..1e4f64],
        prop_oneof![Just(f64::NEG_INFINITY), 0.0..1e3f64],
        any::<bool>(),
    )
        .prop_map(|(u, q, r, e, s)| ProducerReport {
            utilisation: u,
            queue_depth: q,
            rps: r,
            error_rate: e,
            shedding: s,
            service_us: r * 3.0,
        })
}

fn arb_consumer() -> impl Strategy<Value = ConsumerReport> {
    (
        0u32..1000,
        prop_oneof![Just(f64::NAN), Just(1e308), 0.0..1e6f64],
        0u32..100,
        0u32..100,
    )
        .prop_map(|(requests, l, errors, timeouts)| ConsumerReport {
            requests,
            mean_latency_us: l,
            errors,
            timeouts,
        })
}

fn arb_event() -> impl Strategy<Value = Event> {
    let id = (0u64..6).prop_map(ProducerId);
    prop_oneof![
        id.clone().prop_map(Event::Add),
        id.clone().prop_map(Event::Remove),
        (id.clone(), arb_report()).prop_map(|(i, r)| Event::Producer(i, r)),
        (id.clone(), arb_consumer()).prop_map(|(i, r)| Event::Consumer(i, r)),
        (1usize..4, proptest::collection::vec(id.clone(), 0..2))
            .prop_map(|(count, avoid)| Event::Select { count, avoid }),
        id.prop_map(Event::Release),
    ]
}

proptest! {
    /// Whatever is reported, weights are finite and non-negative; selections are
    /// distinct, avoid what they must, and never name a dead, shedding or
    /// blacked-out-and-unknown producer.
    #[test]
    fn weights_finite_and_selection_sound(
        steps in proptest::collection::vec((0u64..2_000, arb_event()), 1..200)
    ) {
        let c = cfg();
        let mut w = Weights::new(c);
        let mut now = Duration::ZERO;
        for (dt, event) in steps {
            now += ms(dt);
            let ev = TimedEvent { at: now, event: event.clone() };
            let view_before = w.view(now);
            let picks = w.apply(&ev);
            for v in w.view(now) {
                prop_assert!(v.weight.is_finite() && v.weight >= 0.0, "{v:?}");
            }
            if let (Some(picks), Event::Select { count, avoid }) = (picks, &event) {
                prop_assert!(picks.len() <= *count);
                let mut sorted = picks.clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), picks.len());
                for p in &picks {
                    prop_assert!(!avoid.contains(p));
                    let v = view_before.iter().find(|v| v.producer == *p).unwrap();
                    prop_assert!(!v.dead && !v.shedding && v.weight > 0.0, "{v:?}");
                }
            }
        }
    }

    /// A producer that stops reporting gets no lease once `dead_after` has passed,
    /// however the others report and however many ask.
    #[test]
    fn dead_producer_gets_no_lease(
        alive in 1u64..6, silent_after in 0u64..5_000, asks in 1usize..50, seed in any::<u64>()
    ) {
        let c = WeightConfig { seed, ..cfg() };
        let mut w = Weights::new(c);
        let r = ProducerReport { utilisation: 0.3, rps: 50.0, ..Default::default() };
        let dead = ProducerId(99);
        let mut t = 0;
        while t <= silent_after {
            w.producer_report(ms(t), dead, r);
            t += 500;
        }
        let end = silent_after + c.dead_after.as_millis() as u64 + 1;
        let mut t = 0;
        while t <= end + 5_000 {
            for p in 0..alive {
                w.producer_report(ms(t), ProducerId(p), r);
            }
            if t > end {
                for _ in 0..asks / 10 + 1 {
                    let picks = w.select(ms(t), 3, &[]);
                    prop_assert!(!picks.contains(&dead));
                    prop_assert!(!picks.is_empty());
                }
            }
            t += 500;
        }
    }

    /// During its blackout a producer's own report does not move its weight off the
    /// mean of the others.
    #[test]
    fn blackout_honoured(util in 0.001f64..1.0, rps in 0.1f64..1e5, others in 1u64..5) {
        let c = cfg();
        let mut w = Weights::new(c);
        let base = ProducerReport { utilisation: 0.5, rps: 100.0, ..Default::default() };
        for t in (0..=3_000).step_by(500) {
            for p in 0..others {
                w.producer_report(ms(t), ProducerId(p), base);
            }
        }
        w.producer_report(ms(3_000), ProducerId(50), ProducerReport { utilisation: util, rps, ..base });
        let v = w.view(ms(3_000) + c.blackout - ms(1));
        let new = v.iter().find(|v| v.producer == ProducerId(50)).unwrap();
        prop_assert!(new.blackout);
        prop_assert_eq!(new.weight, v[0].weight);
    }
}

/// A trace recorded by a live agent (`pipewright balance agent --trace`: four producer
/// processes, one slowed 20x mid-run, one failing 20 % of requests, one killed with
/// kill -9; six consumers) replays to exactly the selections the live agent made.
#[test]
fn live_agent_trace_replays_to_its_live_decisions() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/");
    let text = std::fs::read_to_string(format!("{dir}agent_trace.jsonl")).unwrap();
    let mut lines = text.lines();
    let config: WeightConfig = serde_json::from_str(lines.next().unwrap()).unwrap();
    let trace: Vec<TimedEvent> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let live: String =
        std::fs::read_to_string(format!("{dir}agent_trace.decisions.jsonl")).unwrap();
    let replayed: String = replay(config, &trace)
        .iter()
        .map(|d| serde_json::to_string(d).unwrap() + "\n")
        .collect();
    assert!(live.lines().count() > 10);
    assert_eq!(replayed, live);
}
