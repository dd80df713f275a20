//! The adaptive controller moving stages between workers as the bottleneck moves.
//!
//! Four stages on two workers; every two seconds a different stage becomes three
//! times as expensive. Every 50 ms the controller looks at what each stage did and
//! moves stages so both workers stay busy; every half second this prints where each
//! stage runs, its rate, and the decisions taken.
//!
//! `cargo run --release --example adaptive`

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright::controller::{Controller, ControllerConfig};
use pipewright::{stage, IterSource, Pin, PipelineBuilder, Plan, Runtime};

fn work(mut x: u64, units: u32) -> u64 {
    for _ in 0..units {
        x = black_box(x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(5));
    }
    x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let names = ["s1", "s2", "s3", "s4"];
    let costs: Arc<[AtomicU32; 4]> = Arc::new(std::array::from_fn(|_| AtomicU32::new(150)));
    let b = PipelineBuilder::new();
    let mut stream = b.source("source", IterSource(0u64..));
    for (i, name) in names.iter().enumerate() {
        let costs = costs.clone();
        stream = stream.then(
            name,
            stage::map(move |x: u64| work(x, costs[i].load(Ordering::Relaxed))),
        );
    }
    stream.for_each("sink", |x| {
        black_box(x);
    });
    let cpus = pipewright::available_cpus();
    let plan = Plan::explicit()
        .worker(["source", "s1", "s2"], Pin::Core(0))
        .worker(["s3", "s4", "sink"], Pin::Core(1 % cpus))
        .adaptive();
    let running = Runtime::start(b.build()?, plan)?;
    let mut controller = Controller::new(ControllerConfig {
        imbalance: 0.2,
        patience: 2,
        cooldown: 3,
        ..Default::default()
    });
    let interval = Duration::from_millis(50);
    let mut previous = running.snapshot();
    let mut last_print = (Instant::now(), running.snapshot());
    let start = Instant::now();
    for (phase, heavy) in [0usize, 2, 1].into_iter().enumerate() {
        for (i, c) in costs.iter().enumerate() {
            c.store(if i == heavy { 450 } else { 150 }, Ordering::Relaxed);
        }
        println!("\n== phase {}: {} is heavy", phase + 1, names[heavy]);
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            std::thread::sleep(interval);
            for decision in running.control_step(&mut controller, &mut previous, interval) {
                println!(
                    "   t={:>4.1}s  decision: {decision}",
                    start.elapsed().as_secs_f64()
                );
            }
            if last_print.0.elapsed() >= Duration::from_millis(500) {
                let now = running.snapshot();
                let dt = last_print.0.elapsed().as_secs_f64();
                let row: Vec<String> = now
                    .stages
                    .iter()
                    .filter(|s| names.contains(&s.name.as_str()))
                    .map(|s| {
                        let before = last_print.1.stage(&s.name).map_or(0, |p| p.items_in);
                        format!(
                            "{}@w{} {:.2}M/s",
                            s.name,
                            s.worker,
                            (s.items_in - before) as f64 / dt / 1e6
                        )
                    })
                    .collect();
                println!(
                    "   t={:>4.1}s  {}",
                    start.elapsed().as_secs_f64(),
                    row.join("  ")
                );
                last_print = (Instant::now(), now);
            }
        }
    }
    let report = running.abort()?;
    println!(
        "\n{} controller decisions; final table:\n{}",
        controller.decisions(),
        report.snapshot
    );
    Ok(())
}
