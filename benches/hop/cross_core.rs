//! The cross-core cases: the four stages split over two pinned workers, next to tokio
//! tasks joined by bounded mpsc channels, one message per item.

use std::time::Instant;

use pipewright::{Pin, Plan};

use crate::harness::{per_unit, run_case, second_core, Case, Config, Expected};
use crate::pipeline::ours_pipeline;
use crate::work::{absorb, expand, fold, mix, seal, Rec};
use crate::{BURST, CAPACITY};

pub fn run(cfg: &Config, expected: &Expected) {
    let core1 = second_core();
    // Ours: six nodes, five edges; the two fused on each worker are plain buffers and
    // mix -> fold is the one SPSC ring crossing between the pinned workers. The peer
    // sends every item through all five of its channels, on whichever of tokio's two
    // workers the tasks happen to run.
    let crossing = |burst: usize| {
        Plan::explicit()
            .worker(["seeds", "expand", "mix"], Pin::Core(0))
            .worker(["fold", "seal", "sink"], Pin::Core(core1))
            .ring_capacity(CAPACITY)
            .burst_all(burst)
    };
    if cfg.wants("cross-core-burst32") {
        run_case(
            cfg,
            Case {
                name: "cross-core-burst32",
                what: "seeds->expand->mix [cpu0] =ring=> fold->seal->sink [cpu1], burst 32",
                peer: "tokio-mpsc",
                unit: "ns/item",
                better: "lower",
                n: cfg.cross_burst_items,
            },
            |n| ours_pipeline(cfg, expected, n, crossing(BURST)),
            |n| peer_tokio_mpsc(expected, n),
        );
    }
    if cfg.wants("cross-core-single") {
        run_case(
            cfg,
            Case {
                name: "cross-core-single",
                what: "same pipeline and plan, burst 1 for every stage",
                peer: "tokio-mpsc",
                unit: "ns/item",
                better: "lower",
                n: cfg.cross_single_items,
            },
            |n| ours_pipeline(cfg, expected, n, crossing(1)),
            |n| peer_tokio_mpsc(expected, n),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Peer: tokio tasks joined by bounded mpsc channels, one message per item.
// ---------------------------------------------------------------------------------------

/// Six tasks (source, the four stages, sink) on a 2-worker multi-thread runtime,
/// joined by five `tokio::sync::mpsc` channels of `CAPACITY` slots; ns per item.
/// Tokio cannot pin its workers, so they float (the OS spreads them over both CPUs).
fn peer_tokio_mpsc(expected: &Expected, n: u64) -> f64 {
    use tokio::sync::{mpsc, oneshot};

    fn stage_task<I: Send + 'static, O: Send + 'static>(
        rt: &tokio::runtime::Runtime,
        mut rx: mpsc::Receiver<I>,
        tx: mpsc::Sender<O>,
        f: fn(I) -> O,
    ) {
        rt.spawn(async move {
            while let Some(item) = rx.recv().await {
                if tx.send(f(item)).await.is_err() {
                    break;
                }
            }
        });
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (seed_tx, seed_rx) = mpsc::channel::<u64>(CAPACITY);
    let (expand_tx, expand_rx) = mpsc::channel::<Rec>(CAPACITY);
    let (mix_tx, mix_rx) = mpsc::channel::<Rec>(CAPACITY);
    let (fold_tx, fold_rx) = mpsc::channel::<Rec>(CAPACITY);
    let (seal_tx, mut seal_rx) = mpsc::channel::<u64>(CAPACITY);
    let source = rt.spawn(async move {
        go_rx.await.expect("go");
        let start = Instant::now();
        for seed in 0..n {
            seed_tx.send(seed).await.expect("pipeline open");
        }
        start
    });
    stage_task(&rt, seed_rx, expand_tx, expand);
    stage_task(&rt, expand_rx, mix_tx, mix);
    stage_task(&rt, mix_rx, fold_tx, fold);
    stage_task(&rt, fold_rx, seal_tx, seal);
    let sink = rt.spawn(async move {
        let (mut acc, mut count, mut end) = (0u64, 0u64, None);
        while let Some(digest) = seal_rx.recv().await {
            absorb(&mut acc, digest);
            count += 1;
            if count == n {
                end = Some(Instant::now());
            }
        }
        (end, acc)
    });
    go_tx.send(()).expect("source waits");
    let (start, (end, acc)) =
        rt.block_on(async { (source.await.expect("source"), sink.await.expect("sink")) });
    drop(rt);
    assert_eq!(acc, expected.get(n), "tokio-mpsc lost or corrupted items");
    per_unit(end.expect("sink saw every item") - start, n)
}
