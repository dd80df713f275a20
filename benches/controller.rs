//! Suite `controller`: does moving stages between workers pay off when the bottleneck
//! moves, and what does the controller itself cost?
//!
//! `shifting-bottleneck`: source → s1 → s2 → s3 → s4 → sink on 2 pinned workers; the
//! per-item cost of one stage is tripled, and the heavy stage moves s1 → s3 → s2 across
//! three phases. Ours is the adaptive plan (the [`Controller`] driven every 50 ms),
//! compared with `static-even` (the fixed plan it starts from: source, s1, s2 | s3,
//! s4, sink) and with `best-static` (for each phase, the best of all fixed placements
//! of s1..s4, found by trying them offline). Unit: items/s, higher is better.
//!
//! `controller-overhead`: CPU time spent in `control_step` (snapshot, observation,
//! decisions) as a share of the CPU time of the two workers, against a 1% budget.
//!
//! `PIPEWRIGHT_BENCH_QUICK=1` shortens every phase; the cases stay the same.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright::controller::{Controller, ControllerConfig};
use pipewright::{stage, Outbox, Pin, PipelineBuilder, Plan, Runtime, Source, SourceState};

const STAGES: [&str; 4] = ["s1", "s2", "s3", "s4"];
const LIGHT: u32 = 150;
const HEAVY: u32 = 3 * LIGHT;
/// Which stage is heavy in each phase.
const PHASES: [usize; 3] = [0, 2, 1];
const INTERVAL: Duration = Duration::from_millis(50);

fn quick() -> bool {
    std::env::var_os("PIPEWRIGHT_BENCH_QUICK").is_some()
}

/// Real work whose cost is set per item: a chain of dependent multiplies.
#[inline(never)]
fn work(mut x: u64, units: u32) -> u64 {
    for _ in 0..units {
        x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(5));
    }
    x
}

struct Endless {
    next: u64,
    stop: Arc<AtomicBool>,
}

impl Source for Endless {
    type Out = u64;
    fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
        if self.stop.load(Ordering::Relaxed) {
            return SourceState::Exhausted;
        }
        for _ in 0..max {
            out.push(self.next);
            self.next += 1;
        }
        SourceState::Ready
    }
}

/// Placement of s1..s4: bit i set = stage i on worker 1 (source on 0, sink on 1).
fn plan_for(mask: u8, adaptive: bool) -> Plan {
    let mut w0 = vec!["source"];
    let mut w1 = vec![];
    for (i, s) in STAGES.into_iter().enumerate() {
        if mask & (1 << i) == 0 {
            w0.push(s)
        } else {
            w1.push(s)
        }
    }
    w1.push("sink");
    let plan = Plan::explicit()
        .worker(w0, Pin::Core(0))
        .worker(w1, Pin::Core(1 % pipewright::available_cpus()));
    if adaptive {
        plan.adaptive()
    } else {
        plan
    }
}

const STATIC_EVEN: u8 = 0b1100;

struct Outcome {
    items: u64,
    elapsed: Duration,
    control_cpu: Duration,
    moves: usize,
}

/// Runs the pipeline through `phases` (heavy stage index, duration).
fn run(mask: u8, adaptive: bool, phases: &[(usize, Duration)]) -> Outcome {
    let costs: Arc<[AtomicU32; 4]> = Arc::new(std::array::from_fn(|_| AtomicU32::new(LIGHT)));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let b = PipelineBuilder::new();
    let mut stream = b.source(
        "source",
        Endless {
            next: 0,
            stop: stop.clone(),
        },
    );
    for (i, name) in STAGES.iter().enumerate() {
        let costs = costs.clone();
        stream = stream.then(
            name,
            stage::map(move |x: u64| work(x, costs[i].load(Ordering::Relaxed))),
        );
    }
    let counted = done.clone();
    stream.for_each("sink", move |x| {
        black_box(x);
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let running = Runtime::start(
        b.build().expect("valid pipeline"),
        plan_for(mask, adaptive).ring_capacity(1024),
    )
    .expect("plan fits");
    let mut controller = Controller::new(ControllerConfig {
        imbalance: 0.2,
        patience: 2,
        cooldown: 3,
        ..ControllerConfig::default()
    });
    let mut previous = running.snapshot();
    let (mut control_cpu, mut moves) = (Duration::ZERO, 0);
    // Let the pipeline fill before counting.
    std::thread::sleep(Duration::from_millis(100));
    let start_items = done.load(Ordering::Relaxed);
    let start = Instant::now();
    for &(heavy, length) in phases {
        for (i, c) in costs.iter().enumerate() {
            c.store(if i == heavy { HEAVY } else { LIGHT }, Ordering::Relaxed);
        }
        let phase_end = Instant::now() + length;
        while Instant::now() < phase_end {
            std::thread::sleep(INTERVAL);
            if adaptive {
                let t = Instant::now();
                let decisions = running.control_step(&mut controller, &mut previous, INTERVAL);
                control_cpu += t.elapsed();
                moves += decisions
                    .iter()
                    .filter(|d| matches!(d, pipewright::controller::Decision::Move { .. }))
                    .count();
            }
        }
    }
    let elapsed = start.elapsed();
    let items = done.load(Ordering::Relaxed) - start_items;
    stop.store(true, Ordering::Relaxed);
    running.join().expect("clean run");
    Outcome {
        items,
        elapsed,
        control_cpu,
        moves,
    }
}

fn rate(o: &Outcome) -> f64 {
    o.items as f64 / o.elapsed.as_secs_f64()
}

fn result(case: &str, ours: f64, peer: &str, theirs: f64, unit: &str, better: &str) {
    println!(
        "RESULT suite=controller case={case} ours={ours:.1} peer={peer}:{theirs:.1} unit={unit} better={better} ratio={:.3}",
        ours / theirs
    );
}

fn main() {
    let (phase, probe, rounds) = if quick() {
        (Duration::from_millis(1500), Duration::from_millis(300), 1)
    } else {
        (Duration::from_secs(4), Duration::from_millis(800), 2)
    };
    let phases: Vec<(usize, Duration)> = PHASES.iter().map(|h| (*h, phase)).collect();
    eprintln!(
        "== controller: shifting-bottleneck ({} phases of {phase:?}, {rounds} rounds)",
        phases.len()
    );

    // best-static: for each phase, the best fixed placement (trying all 8 with s1 on worker 0).
    let mut best_items = 0.0;
    for &(heavy, length) in &phases {
        let best = (0u8..16)
            .filter(|m| m & 1 == 0)
            .map(|mask| rate(&run(mask, false, &[(heavy, probe)])))
            .fold(0.0, f64::max);
        eprintln!(
            "   best fixed placement with s{} heavy: {best:.0} items/s",
            heavy + 1
        );
        best_items += best * length.as_secs_f64();
    }
    let best_static = best_items / phases.iter().map(|(_, d)| d.as_secs_f64()).sum::<f64>();

    let (mut adaptive, mut even) = (Vec::new(), Vec::new());
    let mut overhead = Vec::new();
    for round in 0..rounds {
        let a = run(STATIC_EVEN, true, &phases);
        let s = run(STATIC_EVEN, false, &phases);
        eprintln!(
            "   round {round}: adaptive {:.0}/s ({} moves), static-even {:.0}/s",
            rate(&a),
            a.moves,
            rate(&s)
        );
        // Two workers busy for the whole run: the CPU the pipeline had.
        overhead.push(100.0 * a.control_cpu.as_secs_f64() / (2.0 * a.elapsed.as_secs_f64()));
        adaptive.push(rate(&a));
        even.push(rate(&s));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, s, o) = (
        median(&mut adaptive),
        median(&mut even),
        median(&mut overhead),
    );
    result(
        "shifting-bottleneck",
        a,
        "static-even",
        s,
        "items/s",
        "higher",
    );
    result(
        "shifting-bottleneck",
        a,
        "best-static",
        best_static,
        "items/s",
        "higher",
    );
    println!(
        "RESULT suite=controller case=controller-overhead ours={o:.4} peer=budget:1.0 unit=percent-cpu better=lower ratio={:.4}",
        o / 1.0
    );
}
