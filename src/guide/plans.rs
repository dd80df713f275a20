//! # Plans and replicas
//!
//! The graph says *what* is computed; a [`Plan`](crate::Plan) says *where*. Each
//! worker is a thread (pinned to a CPU with [`Pin`](crate::Pin)) that runs a set of
//! stages. Stages on the same worker are **fused**: the worker calls one on the other's
//! burst directly. Stages on different workers are joined by a bounded lock-free ring.
//!
//! | plan | layout |
//! |---|---|
//! | [`Plan::fused()`](crate::Plan::fused) | every stage on one worker, no rings |
//! | [`Plan::spread(n)`](crate::Plan::spread) | `n` workers, each a contiguous run of stages |
//! | [`Plan::per_stage()`](crate::Plan::per_stage) | one worker per stage |
//! | [`Plan::explicit()`](crate::Plan::explicit)`.worker([..], pin)...` | you list each worker's stages |
//! | `.adaptive()` on any of them | the [`controller`](crate::controller) may move stages and change bursts and replicas live |
//!
//! ```
//! use pipewright::{stage, IterSource, Pin, PipelineBuilder, Plan, Runtime};
//!
//! let b = PipelineBuilder::new();
//! let total = b
//!     .source("numbers", IterSource(0..1_000u64))
//!     .then("square", stage::map(|x: u64| x * x))
//!     .then("odd", stage::filter(|x: &u64| x % 2 == 1))
//!     .output("odd-squares");
//! // The source alone on one worker, the two stages fused on another.
//! let plan = Plan::explicit()
//!     .worker(["numbers"], Pin::Auto)
//!     .worker(["square", "odd"], Pin::Auto);
//! let mut running = Runtime::start(b.build()?, plan)?;
//! let rx = running.output(&total).unwrap();
//! // The source ends by itself. (An output handle not read while the pipeline runs
//! // holds at most its ring's capacity, 1024 items by default: then the pipeline waits.)
//! let report = running.join()?;
//! assert!(report.completed);
//! assert_eq!(rx.collect().len(), 500);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## A stage on more than one core: replicas
//!
//! A stage gets one core at most — unless it is declared with **replicas**:
//! [`Stream::then_replicated`](crate::Stream::then_replicated) takes the most
//! replicas it may have ([`Replicas::new(n)`](crate::Replicas::new)) and a function
//! that makes each one. The plan places replica `i` (named `name#i`) on its own
//! worker; a split in front spreads the items (round robin, or
//! [`by_key`](crate::Replicas::by_key) for stateful stages, so one key always meets
//! the same replica) and, unless [`unordered`](crate::Replicas::unordered), a bounded
//! reorder stage behind puts the results back in input order.
//!
//! [`Plan::replicas`](crate::Plan::replicas) sets how many replicas take items at
//! start; [`Running::set_replicas`](crate::Running::set_replicas) (or the adaptive
//! controller) changes it while the pipeline runs, without losing or repeating an
//! item. The [`Snapshot`](crate::Snapshot) has a row per replica
//! ([`Snapshot::replicas`](crate::Snapshot::replicas)).
//!
//! ```
//! use pipewright::{stage, PipelineBuilder, Plan, Replicas, Runtime};
//!
//! let b = PipelineBuilder::new();
//! let (input, numbers) = b.input::<u64>("numbers");
//! let out = numbers
//!     .then_replicated("parse", Replicas::new(2), |_replica| stage::map(|x: u64| x * 3))
//!     .output("out");
//! // Two workers, one replica taking items at first.
//! let mut running = Runtime::start(b.build()?, Plan::spread(2).replicas("parse", 1))?;
//! let (mut tx, rx) = (running.input(&input).unwrap(), running.output(&out).unwrap());
//! for x in 0..100 {
//!     tx.send(x)?;
//! }
//! running.set_replicas("parse", 2)?; // from the next burst on, both replicas work
//! for x in 100..200 {
//!     tx.send(x)?;
//! }
//! drop(tx);
//! let report = running.drain()?;
//! assert_eq!(rx.collect(), (0..200).map(|x| x * 3).collect::<Vec<u64>>()); // in order
//! let rows = report.snapshot.replicas("parse");
//! assert_eq!(rows.len(), 2);
//! assert_eq!(rows.iter().map(|r| r.items_in).sum::<u64>(), 200); // each item once
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How the split spreads items: ordered replicas take them in turn; unordered ones
//! (and without a key) each go to the replica with the least work waiting, where a
//! replica on the split's own worker counts a burst more (that worker also runs
//! what feeds the split), and once every replica is two bursts deep the rest waits
//! upstream for whichever drains first. Give a replicated stage items worth
//! spreading: parsing a file, read it with
//! [`sources::LineBlocks`](crate::sources::LineBlocks) and split the lines inside
//! the replicas (the source alone stays serial: keep it cheap).
//!
//! Plans can also come from a TOML file ([`plan_file`](crate::plan_file)), and
//! [`Plan::resolve`](crate::Plan::resolve) checks one against a pipeline's stage names
//! before anything starts.
