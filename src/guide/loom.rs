//! # Testing with loom
//!
//! [loom](https://docs.rs/loom) runs a test under every interleaving of its threads'
//! accesses to shared state (within bounds) and reports the schedule that breaks an
//! assertion. pipewright's rings and wake-ups are checked this way, and your stages
//! can be too:
//!
//! 1. Write the state your stages share — a dedup set, a counter, a cache — with the
//!    types of [`pipewright::sync`](crate::sync): `std`'s in a normal build, loom's
//!    under `RUSTFLAGS="--cfg loom"`. The same stage code runs at full speed in the
//!    runtime and is model-checked in the test.
//! 2. In the test, run the pipelines that share it with the single-threaded
//!    [`inline`](crate::inline) executor, one per [`sync::thread`](crate::sync::thread),
//!    inside [`sync::model`](crate::sync::model) (which is `loom::model` under loom and
//!    a single run on real threads otherwise).
//! 3. Run it with its own target dir (loom rebuilds every dependency):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test --release --target-dir target/loom --test my_loom_test
//! ```
//!
//! Under `--cfg loom` the facade builds the stages, the inline executor and `sync`
//! (the threaded runtime is left out); a panic in a stage is not caught by the
//! executor there, so loom reports it with its schedule. Loom's types only work
//! inside `model`: keep a loom build for loom tests.
//!
//! ```
//! use std::collections::HashSet;
//! use std::convert::Infallible;
//! use pipewright::sync::{atomic::{AtomicU64, Ordering}, model, thread, Arc, Mutex};
//! use pipewright::{graph::PipelineBuilder, inline::InlineTransport, Outbox, Stage};
//!
//! /// Passes a key on only the first time any copy of the pipeline sees it.
//! struct Dedup { seen: Arc<Mutex<HashSet<u64>>>, passed: Arc<AtomicU64> }
//!
//! impl Stage for Dedup {
//!     type In = u64;
//!     type Out = u64;
//!     type Error = Infallible;
//!
//!     fn process(&mut self, key: u64, out: &mut Outbox<'_, u64>) -> Result<(), Infallible> {
//!         // One lock for the check and the insert. Looking up under one lock and
//!         // inserting under another lets both copies pass the same key: loom finds
//!         // that schedule.
//!         if self.seen.lock().unwrap().insert(key) {
//!             self.passed.fetch_add(1, Ordering::Relaxed);
//!             out.push(key);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn run_copy(seen: Arc<Mutex<HashSet<u64>>>, passed: Arc<AtomicU64>, keys: Vec<u64>) -> Vec<u64> {
//!     let b = PipelineBuilder::<InlineTransport>::new();
//!     let (input, keys_in) = b.input::<u64>("keys");
//!     let fresh = keys_in.then("dedup", Dedup { seen, passed }).output("fresh");
//!     let mut run = b.build().unwrap().run_inline();
//!     run.send_all(&input, keys);
//!     run.finish().unwrap();
//!     run.take_output(&fresh)
//! }
//!
//! model(|| {
//!     let seen = Arc::new(Mutex::new(HashSet::new()));
//!     let passed = Arc::new(AtomicU64::new(0));
//!     let other = {
//!         let (seen, passed) = (seen.clone(), passed.clone());
//!         thread::spawn(move || run_copy(seen, passed, vec![2]))
//!     };
//!     let mut out = run_copy(seen, passed.clone(), vec![1, 2]);
//!     out.extend(other.join().unwrap());
//!     out.sort_unstable();
//!     assert_eq!(out, [1, 2]); // each key exactly once, under every interleaving
//!     assert_eq!(passed.load(Ordering::Relaxed), 2);
//! });
//! ```
//!
//! The workspace's `tests/loom_user.rs` is this model with a shared tally as well,
//! and the two broken variants (check-then-insert under two locks, a load-then-store
//! increment) as `#[should_panic]` tests that loom must fail; CI runs it.
