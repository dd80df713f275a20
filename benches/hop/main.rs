//! The `hop` suite: what it costs to move an item through pipewright, next to a named
//! peer doing the same work, measured in one process run.
//!
//! Run with `cargo bench --bench hop`; `PIPEWRIGHT_BENCH_QUICK=1` runs every case with
//! fewer items and rounds (the whole suite in well under a minute on two cores).
//! For profiling (e.g. under `perf record`): `PIPEWRIGHT_BENCH_CASE=<text>` runs only the
//! cases whose name contains `<text>`, `PIPEWRIGHT_BENCH_ONLY=ours|peer` runs one side
//! only (and prints no RESULT line), `PIPEWRIGHT_BENCH_VERBOSE=1` prints our runtime's
//! per-stage snapshot after each run. By default everything runs.
//!
//! Each case prints a header and per-round lines to stderr, and one line to stdout:
//!
//! ```text
//! RESULT suite=hop case=<case> ours=<n> peer=<peer>:<n> unit=<unit> better=<lower|higher> ratio=<ours/peer>
//! ```
//!
//! # Methodology
//!
//! - The work is identical on both sides: a `u64` seed is expanded into a 64-byte
//!   record (`expand`), which three more stages hash and mutate (`mix`, `fold`) and
//!   finally seal into a `u64` digest (`seal`). Every stage runs FNV-1a over the
//!   record's eight little-endian 64-bit lanes (one xor-multiply per lane, about 10 ns),
//!   so the per-item work is real but small: the suite is about the cost of the hops.
//!   Seeds go through `black_box` on the way in, digests on the way out, and every run
//!   checks the wrapping sum of all digests against a reference, so nothing can be
//!   optimised away or silently lost.
//! - For each case, ours and the peer run alternately (the order flips every round, so
//!   neither side always runs on a cold or a warm machine) after one small warm-up run
//!   each; the reported number is the median per side.
//! - Setup is kept out of the timed region on both sides: our workers are started and
//!   left to go idle before the source is let go, the peer's tokio runtime and tasks are
//!   built and spawned before its source is let go, ring threads meet at a barrier.
//!   The clock starts when the source emits its first item and stops when the sink has
//!   seen the last one, so teardown (joining threads, dropping runtimes) is outside too.
//!   The service case times from the first call to the last response, inside
//!   `block_on`, with the pipeline or the `Buffer` already running.
//! - Our workers are pinned (that is how the runtime runs); tokio's workers, the ring
//!   threads and the direct loop float. On a busy two-CPU machine a pinned worker cannot
//!   dodge another process, so the load average is printed at start and end: compare
//!   runs taken under similar load, and look at the per-round lines for outliers.
//! - `fused-4` is reported twice: against the direct loop (every item in registers from
//!   seed to digest) and against `hand-burst-loop`, the same work moved through
//!   `VecDeque`s burst by burst by a simple hand-written loop, without a runtime. The
//!   second is a baseline for buffered designs, so its ratio approximates what the
//!   runtime itself adds. Handing each item from stage to stage in registers does not
//!   beat it here: a chain node that ran the four stages' closures per item, fully
//!   monomorphised (tried 2026-12-07), took 34-36 ns/item where the four fused nodes
//!   took 29-30 and the direct loop 23-25 in the same runs, because per item the
//!   stages' multiply chains string into one long dependency chain, while stage by
//!   stage the CPU overlaps consecutive items. The same chain run burst by burst as
//!   one node (no edges between its stages) measured 30-31: what remains is the
//!   source, the sink and per-burst bookkeeping, not the hops.
//!
//! # Layout
//!
//! `work` holds the four stage functions both sides run, `harness` the configuration
//! and the alternating-rounds runner, `pipeline` our source/sink pipeline; the cases
//! live in `cross_core`, `ring`, `fused` and `service`, each next to its peer.
// A benchmark binary: `pub` marks what its modules share; nothing is exported.
#![allow(unreachable_pub)]

#[path = "../common/mod.rs"]
mod common;
mod cross_core;
mod fused;
mod harness;
mod pipeline;
mod ring;
mod service;
mod work;

use std::time::Instant;

use harness::{Config, Expected};

/// Slots per ring / channel, on both sides (pipewright's default ring capacity).
const CAPACITY: usize = 1024;
/// Burst size of the burst cases.
const BURST: usize = 32;
/// Requests in flight in the service case.
const IN_FLIGHT: usize = 256;

fn main() {
    let cfg = Config::from_env();
    let expected = Expected::default();
    let suite_start = Instant::now();
    // Other processes on a two-CPU machine move these numbers a lot: say how busy it was.
    eprintln!("== hop: loadavg at start {}", common::loadavg());

    cross_core::run(&cfg, &expected);
    ring::run(&cfg);
    fused::run(&cfg, &expected);
    service::run(&cfg, &expected);
    eprintln!(
        "== hop: done in {:.1} s",
        suite_start.elapsed().as_secs_f64()
    );
}
