//! The fused case: all four stages on one worker, next to the direct loop and next to
//! the same work moved through queues by a simple hand-written loop.

use std::time::Instant;

use pipewright::Plan;

use crate::harness::{per_unit, run_case, Case, Config, Expected};
use crate::pipeline::ours_pipeline;
use crate::work::{direct_loop, hand_burst_loop};
use crate::BURST;

/// A peer: its name, what the case runs, and the work (digest sum of seeds `0..n`).
type Peer = (&'static str, &'static str, fn(u64) -> u64);

pub fn run(cfg: &Config, expected: &Expected) {
    if !cfg.wants("fused-4") {
        return;
    }
    // Against the direct loop, then against `hand_burst_loop` (a simple hand-written
    // buffered loop: that ratio approximates the runtime's own cost).
    let peers: [Peer; 2] = [
        (
            "direct-loop",
            "seeds->expand->mix->fold->seal->sink fused on one worker, burst 32",
            direct_loop,
        ),
        (
            "hand-burst-loop",
            "the same, against the same work moved burst by burst through queues by hand",
            |n| hand_burst_loop(n, BURST),
        ),
    ];
    for (peer, what, work) in peers {
        run_case(
            cfg,
            Case {
                name: "fused-4",
                what,
                peer,
                unit: "ns/item",
                better: "lower",
                n: cfg.fused_items,
            },
            |n| ours_pipeline(cfg, expected, n, Plan::fused().burst_all(BURST)),
            |n| {
                let start = Instant::now();
                let acc = work(n);
                let elapsed = start.elapsed();
                assert_eq!(acc, expected.get(n), "{peer} disagrees with the reference");
                per_unit(elapsed, n)
            },
        );
    }
}
