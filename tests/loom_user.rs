//! How a user of pipewright model-checks their own stages with loom.
//!
//! The stages below share state between two copies of a pipeline — a dedup set behind
//! a `Mutex`, a tally in an atomic — through [`pipewright::sync`], which is `std` in a
//! normal build and loom under `--cfg loom`. Each model runs two pipelines with the
//! single-threaded inline executor, one per (loom) thread, and checks what came out:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p pipewright --release --target-dir target/loom --test loom_user
//! ```
//!
//! explores every interleaving of the two pipelines' accesses to the shared state. The
//! `racy_*` variants carry the bugs such code typically has (check-then-insert under
//! two lock acquisitions, a load-then-store "increment"); loom finds the schedule that
//! breaks them, so those tests exist only under loom, where they must fail. In a
//! normal build the correct models run once on real threads.

use std::collections::HashSet;
use std::convert::Infallible;

use pipewright::graph::PipelineBuilder;
use pipewright::inline::InlineTransport;
use pipewright::sync::atomic::{AtomicU64, Ordering};
use pipewright::sync::{model, thread, Arc, Mutex};
use pipewright::{Outbox, Stage};

/// The user's stage: passes a key on only the first time any copy of the pipeline sees
/// it, and counts the keys it passed.
struct Dedup {
    seen: Arc<Mutex<HashSet<u64>>>,
    passed: Arc<AtomicU64>,
    /// The bug: look the key up under one lock, insert it under another.
    racy: bool,
}

impl Stage for Dedup {
    type In = u64;
    type Out = u64;
    type Error = Infallible;

    fn process(&mut self, key: u64, out: &mut Outbox<'_, u64>) -> Result<(), Infallible> {
        let first = if self.racy {
            let known = self.seen.lock().unwrap().contains(&key);
            if !known {
                self.seen.lock().unwrap().insert(key);
            }
            !known
        } else {
            self.seen.lock().unwrap().insert(key)
        };
        if first {
            self.passed.fetch_add(1, Ordering::Relaxed);
            out.push(key);
        }
        Ok(())
    }
}

/// The user's other stage: counts every item into a tally the copies share.
struct Tally {
    total: Arc<AtomicU64>,
    /// The bug: a load and a store instead of one read-modify-write.
    racy: bool,
}

impl Stage for Tally {
    type In = u64;
    type Out = u64;
    type Error = Infallible;

    fn process(&mut self, item: u64, out: &mut Outbox<'_, u64>) -> Result<(), Infallible> {
        if self.racy {
            let now = self.total.load(Ordering::Acquire);
            self.total.store(now + 1, Ordering::Release);
        } else {
            self.total.fetch_add(1, Ordering::AcqRel);
        }
        out.push(item);
        Ok(())
    }
}

/// State the two copies of the pipeline share.
#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<HashSet<u64>>>,
    passed: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

impl Shared {
    fn new() -> Self {
        Self {
            seen: Arc::new(Mutex::new(HashSet::new())),
            passed: Arc::new(AtomicU64::new(0)),
            total: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// One copy of the pipeline, `keys` → tally → dedup → out, run to the end on the
/// calling thread; returns what came out.
fn run_copy(shared: Shared, keys: Vec<u64>, racy_dedup: bool, racy_tally: bool) -> Vec<u64> {
    let builder = PipelineBuilder::<InlineTransport>::new();
    let (input, keys_in) = builder.input::<u64>("keys");
    let fresh = keys_in
        .then(
            "tally",
            Tally {
                total: shared.total,
                racy: racy_tally,
            },
        )
        .then(
            "dedup",
            Dedup {
                seen: shared.seen,
                passed: shared.passed,
                racy: racy_dedup,
            },
        )
        .output("fresh");
    let mut run = builder.build().expect("a valid pipeline").run_inline();
    run.send_all(&input, keys);
    run.finish().expect("the stages cannot fail");
    run.take_output(&fresh)
}

/// Two copies of the pipeline on two threads over overlapping keys: each key comes out
/// exactly once, the dedup's count agrees, and the tally counts every item in.
fn two_copies(racy_dedup: bool, racy_tally: bool) {
    model(move || {
        let shared = Shared::new();
        let other = {
            let shared = shared.clone();
            thread::spawn(move || run_copy(shared, vec![2], racy_dedup, racy_tally))
        };
        let mut out = run_copy(shared.clone(), vec![1, 2], racy_dedup, racy_tally);
        out.extend(other.join().unwrap());
        out.sort_unstable();
        assert_eq!(out, vec![1, 2], "a key came out twice or not at all");
        assert_eq!(shared.passed.load(Ordering::Relaxed), 2);
        assert_eq!(
            shared.total.load(Ordering::Acquire),
            3,
            "the tally lost an item"
        );
    });
}

#[test]
fn shared_dedup_and_tally_are_exact_under_every_interleaving() {
    two_copies(false, false);
}

#[cfg(loom)]
#[test]
#[should_panic(expected = "a key came out twice")]
fn racy_check_then_insert_dedup_is_caught() {
    two_copies(true, false);
}

#[cfg(loom)]
#[test]
#[should_panic(expected = "the tally lost an item")]
fn racy_load_then_store_tally_is_caught() {
    two_copies(false, true);
}
