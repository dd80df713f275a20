//! The runtime of [pipewright]: runs pipelines built with `pipewright-stages` on
//! pinned worker threads joined by lock-free rings.
//!
//! - [`Plan`]: which stages share a worker (fused: called directly on each other's
//!   bursts) and which are joined by a ring, on which CPUs, with which ring and burst
//!   sizes.
//! - [`Runtime::start`] → [`Running`]: [`Input`]/[`Output`] handles, [`Running::drain`]
//!   (every accepted item processed), [`Running::shutdown`] with a deadline,
//!   [`Running::snapshot`] of per-stage counters.
//! - [`ring`]: the bounded SPSC and MPSC rings, loom-checked.
//! - [`PipelineService`]: a running pipeline as a `tower::Service`.
//! - [`sync`]: `std`'s or loom's synchronization types, for model-checking the
//!   runtime's rings and your own stages' shared state under `--cfg loom`.
//!
//! ```
//! use pipewright::{stage, Plan, PipelineBuilder, Runtime};
//!
//! let b = PipelineBuilder::new();
//! let numbers = b.source("numbers", pipewright::IterSource(0..10_000u64));
//! let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
//! let sum = total.clone();
//! numbers
//!     .then("double", stage::map(|x: u64| x * 2))
//!     .for_each("sum", move |x| { sum.fetch_add(x, std::sync::atomic::Ordering::Relaxed); });
//! let report = Runtime::start(b.build()?, Plan::spread(2))?.join()?;
//! assert!(report.completed);
//! assert_eq!(total.load(std::sync::atomic::Ordering::Relaxed), 2 * (0..10_000u64).sum::<u64>());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Logging and tracing
//!
//! The runtime logs through [`tracing`](https://docs.rs/tracing), target
//! `pipewright`: `info` when a pipeline starts, a stop is requested, replicas change;
//! `warn` for a source that failed, a refused re-planning decision, a shutdown deadline;
//! `error` for a panic or a failed pipeline. Install any subscriber (e.g.
//! `tracing_subscriber::fmt().with_env_filter("pipewright=info").init()`) to see them.
//! With the feature `tracing-spans`, every sync stage activation runs in a
//! `trace`-level span `activation` (fields `stage`, `burst`, `outcome`: `progress`,
//! `idle`, `blocked`, `throttled`, `finished` or `failed`) and every async stage task in
//! a span `task` (field `stage`), entered on each poll; events your stages log nest
//! inside them. Without the feature no span is created: it costs nothing.
//!
//! [pipewright]: https://docs.rs/pipewright
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    rust_2018_idioms
)]

pub mod sync;

pub mod ring;
pub mod signal;

#[cfg(not(loom))]
pub mod allocator;
mod barrier;
#[cfg(not(loom))]
mod budget;
#[cfg(not(loom))]
mod control;
#[cfg(not(loom))]
pub mod controller;
#[cfg(not(loom))]
mod handles;
#[cfg(not(loom))]
mod link;
#[cfg(not(loom))]
pub mod live;
#[cfg(not(loom))]
mod local;
mod mailbox;
#[cfg(not(loom))]
mod outcome;
#[cfg(not(loom))]
mod plan;
#[cfg(not(loom))]
pub mod plan_file;
#[cfg(all(not(loom), feature = "prometheus"))]
pub mod prometheus;
#[cfg(not(loom))]
pub mod readiness;
#[cfg(not(loom))]
mod replan;
#[cfg(not(loom))]
mod running;
#[cfg(not(loom))]
mod service;
#[cfg(not(loom))]
pub mod sources;
#[cfg(not(loom))]
mod start;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod stop;
#[cfg(all(not(loom), feature = "tracing-spans"))]
mod traced;
#[cfg(not(loom))]
mod transport;
#[cfg(not(loom))]
pub mod uring;
#[cfg(not(loom))]
mod watch;
#[cfg(not(loom))]
mod worker;

#[cfg(not(loom))]
pub use budget::{ActivationBudget, UringBudget};
#[cfg(not(loom))]
pub use handles::{Input, Output, SendError, TrySendError};
#[cfg(not(loom))]
pub use local::{WorkerLocal, WrongThread};
#[cfg(not(loom))]
pub use plan::{
    available_cpus, Pin, Plan, PlanError, ResolvedPlan, ResolvedWorker, WorkerSpec,
    DEFAULT_RING_CAPACITY,
};
#[cfg(not(loom))]
pub use replan::{ApplyError, ControlStep};
#[cfg(not(loom))]
pub use running::{Report, RunError, Running, RuntimePipeline, StartError};
#[cfg(not(loom))]
pub use service::{PipelineService, ResponseFuture, TryCallError};
#[cfg(not(loom))]
pub use start::Runtime;
#[cfg(not(loom))]
pub use stats::{Snapshot, StageSnapshot};
#[cfg(not(loom))]
pub use stop::StopHandle;
#[cfg(not(loom))]
pub use transport::{EdgeHandle, EdgeKind, RingReceiver, RingSender, RingTransport};
#[cfg(not(loom))]
pub use watch::Watch;

#[cfg(not(loom))]
pub use pipewright_stages::{
    layer, stage, Answer, AnswerTagger, Answers, AsyncSource, AsyncStage, BuildError, Burst,
    ErrorPolicy, Failures, InputId, IterSource, Layer, Outbox, OutputId, ReplicaControl,
    ReplicaError, Replicas, RequestError, ServiceStage, Source, SourceState, Spreader, Stage,
    StageFailure, Tagged,
};

/// The pipeline builder for this runtime: [`pipewright_stages::PipelineBuilder`] with
/// the runtime's [`RingTransport`]; its methods (`new`, `input`, `source`, `merge`,
/// `build`) are documented there. Users of the facade know it as
/// `pipewright::PipelineBuilder`.
#[cfg(not(loom))]
pub type PipelineBuilder = pipewright_stages::PipelineBuilder<RingTransport>;

/// A typed stream of a [`PipelineBuilder`]: [`pipewright_stages::Stream`] with the
/// runtime's [`RingTransport`]; its methods (`then`, `then_replicated`, `route`,
/// `output`, ...) are documented there.
#[cfg(not(loom))]
pub type Stream<'b, T> = pipewright_stages::Stream<'b, T, RingTransport>;
