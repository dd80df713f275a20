//! Processing-time windows close on time while no item arrives (the stage's
//! `on_idle` wakes it), on the threaded runtime.

use std::time::Duration;

use pipewright_runtime::{stage, PipelineBuilder, Plan, Runtime};
use pipewright_stages::window::{self, Windowed, Windows};

#[test]
fn a_processing_time_window_closes_on_an_idle_stream() {
    for plan in [Plan::fused(), Plan::spread(2)] {
        let b = PipelineBuilder::new();
        let (input, numbers) = b.input::<u64>("numbers");
        let out = numbers
            .then("plus", stage::map(|x: u64| x + 1))
            .then(
                "per-50ms",
                window::processing_time(Windows::tumbling(50).unwrap(), Duration::from_millis(1))
                    .aggregate(Vec::new, |v: &mut Vec<u64>, x: &u64| v.push(*x)),
            )
            .output("windows");
        let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
        let mut tx = running.input(&input).unwrap();
        let mut rx = running.output(&out).unwrap();
        for i in 0..3 {
            tx.send(i).unwrap();
        }
        // The input stays open and silent: only the window's own timer can close it.
        // (The limit only turns a hang into a failure; it is not a speed threshold.)
        let first: Windowed<Vec<u64>> = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the window closed while the stream was idle")
            .expect("output open");
        let mut seen = first.value.clone();
        assert!(first.end - first.start == 50 && first.items as usize == first.value.len());
        // Items after the first window land in later ones; the end flushes the rest.
        for i in 3..6 {
            tx.send(i).unwrap();
        }
        drop(tx);
        let reader = std::thread::spawn(move || rx.collect());
        let report = running.drain().unwrap();
        for w in reader.join().unwrap() {
            assert!(w.start >= first.end);
            seen.extend(w.value);
        }
        assert!(report.completed);
        assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
    }
}
