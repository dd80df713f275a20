//! The fused case: all four stages on one worker, next to the direct loop.

use std::time::Instant;

use pipewright::Plan;

use crate::harness::{per_unit, run_case, Case, Config, Expected};
use crate::pipeline::ours_pipeline;
use crate::work::{direct_loop, hand_burst_loop};
use crate::BURST;

pub fn run(cfg: &Config, expected: &Expected) {
    if cfg.wants("fused-4") {
        run_case(
            cfg,
            Case {
                name: "fused-4",
                what: "seeds->expand->mix->fold->seal->sink fused on one worker, burst 32",
                peer: "direct-loop",
                unit: "ns/item",
                better: "lower",
                n: cfg.fused_items,
            },
            |n| ours_pipeline(cfg, expected, n, Plan::fused().burst_all(BURST)),
            |n| {
                let start = Instant::now();
                let acc = direct_loop(n);
                let elapsed = start.elapsed();
                assert_eq!(acc, expected.get(n), "direct loop disagrees with itself");
                per_unit(elapsed, n)
            },
        );
        // The same run against a simple hand-written buffered loop (see
        // `hand_burst_loop`): the ratio approximates the runtime's own cost.
        run_case(
            cfg,
            Case {
                name: "fused-4",
                what: "the same, against the same work moved burst by burst through queues by hand",
                peer: "hand-burst-loop",
                unit: "ns/item",
                better: "lower",
                n: cfg.fused_items,
            },
            |n| ours_pipeline(cfg, expected, n, Plan::fused().burst_all(BURST)),
            |n| {
                let start = Instant::now();
                let acc = hand_burst_loop(n, BURST);
                let elapsed = start.elapsed();
                assert_eq!(acc, expected.get(n), "the hand-written loop disagrees");
                per_unit(elapsed, n)
            },
        );
    }
}
