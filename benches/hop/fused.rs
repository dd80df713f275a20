//! The fused case: all four stages on one worker, next to the direct loop.

use std::time::Instant;

use pipewright::Plan;

use crate::harness::{per_unit, run_case, Case, Config, Expected};
use crate::pipeline::ours_pipeline;
use crate::work::direct_loop;
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
    }
}
