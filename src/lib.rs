//! **pipewright**: composable, typed, staged pipelines that give each stage its own
//! resources — cores, rings, burst budgets — in the spirit of SEDA and VPP, composing
//! with the tower ecosystem in both directions.
//!
//! New here? The [`guide`] walks through a first pipeline, plans and replicas, async
//! stages and tower, windows, budgets, metrics and testing with loom.
//!
//! Depend on this crate and compose pipelines in code:
//!
//! ```
//! use pipewright::{stage, PipelineBuilder, Plan, Runtime};
//!
//! let b = PipelineBuilder::new();
//! let (input, lines) = b.input::<String>("lines");
//! let lengths = lines
//!     .then("trim", stage::map(|s: String| s.trim().to_string()))
//!     .then("non-empty", stage::filter(|s: &String| !s.is_empty()))
//!     .then("length", stage::map(|s: String| s.len()))
//!     .output("lengths");
//! let mut running = Runtime::start(b.build()?, Plan::spread(2))?;
//! let mut tx = running.input(&input).unwrap();
//! let rx = running.output(&lengths).unwrap();
//! for line in [" a ", "", "pipe"] {
//!     tx.send(line.to_string())?;
//! }
//! drop(tx);
//! running.drain()?;
//! assert_eq!(rx.collect(), vec![1, 4]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! - `runtime` (default): the threaded runtime — pinned workers, rings, [`Plan`]s, the
//!   live [`Runtime`], the tower service adapter, the [`sync`] facade — and
//!   [`PipelineBuilder`], the graph builder over the runtime's rings.
//! - `stages` (always on, needs no flag): [`Stage`], layers, sources, the generic
//!   graph builder and the [`inline`] executor.
//! - `cli`: the `pipewright` command-line tool (the binary requires it) and its
//!   dependencies (clap, anyhow, ctrlc): `cargo run --features cli -- demo`; each
//!   system's feature below adds its subcommand.
//! - `prometheus`: the Prometheus exporter for the runtime's metrics.
//! - `tracing-spans`: a `trace`-level `tracing` span per stage activation (target
//!   `pipewright`); zero cost when off.
//! - `nic`: the software NIC packet path, `pipewright::nic` (`pipewright nic`).
//! - `storage`: the storage commit chain, `pipewright::storage` (`pipewright storage`).
//! - `storage-faults`: `storage` with its fault injection (crash points, lossy links),
//!   for the fault tests.
//! - `failures`: failure-pattern analytics, `pipewright::failures` (`pipewright failures`).
//! - `balance`: the lease balancer, `pipewright::balance` (`pipewright balance`).
//! - `memshare`: VM memory sharing on KVM, `pipewright::memshare` (`pipewright memshare`).
//! - `cache`: the cache gateway, `pipewright::cache` (`pipewright cache`).
//!
//! Under `RUSTFLAGS="--cfg loom"` the facade builds for loom tests: the stages, the
//! [`inline`] executor and [`sync`] with loom's types (see the guide's loom page,
//! `guide::loom`).
//!
//! # Without default features
//!
//! `default-features = false` leaves what needs no threads and no I/O: the [`Stage`]
//! trait and the [`stage`] constructors, [`layer`]s, sources, the transport-generic
//! graph builder [`graph::PipelineBuilder`] and the single-threaded [`inline`]
//! executor that runs a built pipeline on the calling thread:
//!
//! ```
//! use pipewright::{graph::PipelineBuilder, inline::InlineTransport, stage};
//!
//! let builder = PipelineBuilder::<InlineTransport>::new();
//! let (input, numbers) = builder.input::<u32>("numbers");
//! let evens = numbers
//!     .then("square", stage::map(|x: u32| x * x))
//!     .then("evens", stage::filter(|x: &u32| x % 2 == 0))
//!     .output("even-squares");
//! let mut run = builder.build()?.run_inline();
//! run.send_all(&input, 1..=6);
//! run.finish()?;
//! assert_eq!(run.take_output(&evens), vec![4, 16, 36]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub use pipewright_stages::{
    exec, inline, layer, source, stage, Answer, AnswerTagger, Answers, AsyncSource, AsyncStage,
    BuildError, Burst, ErrorPolicy, Failures, InputId, IterSource, Layer, Outbox, OutputId,
    Pipeline, ReplicaControl, ReplicaError, Replicas, Reply, RequestError, ServiceStage, Source,
    SourceState, Spreader, Stage, StageError, StageFailure, Tagged, TaggedStage, Ticket,
};

/// The pipeline graph builder, generic over the transport that carries items between
/// stages (always available): with [`inline::InlineTransport`] a built pipeline runs
/// on the calling thread. With the feature `runtime`, [`PipelineBuilder`] is this
/// builder over the runtime's rings, [`RingTransport`].
///
/// [`PipelineBuilder`]: crate::PipelineBuilder
/// [`RingTransport`]: crate::graph::RingTransport
pub mod graph {
    pub use pipewright_stages::{PipelineBuilder, Stream};

    /// The runtime's [`Transport`](crate::exec::Transport): bounded lock-free rings
    /// between workers, direct calls between stages fused on one worker.
    #[cfg(all(feature = "runtime", not(loom)))]
    pub use pipewright_runtime::RingTransport;
}

// Under `--cfg loom` the runtime builds only its model-checked parts (rings, signals,
// the `sync` facade): users' loom tests run pipelines with the `inline` executor.
#[cfg(all(feature = "runtime", not(loom)))]
pub use pipewright_runtime::{
    available_cpus, controller, live, plan_file, ring, signal, uring, ActivationBudget, ApplyError,
    ControlStep, EdgeKind, Input, Output, Pin, PipelineService, Plan, PlanError, Report,
    ResponseFuture, RunError, Running, Runtime, RuntimePipeline, SendError, Snapshot,
    StageSnapshot, StartError, TryCallError, TrySendError, UringBudget, Watch, WorkerLocal,
    WrongThread,
};

/// The pipeline builder of the threaded runtime: [`graph::PipelineBuilder`] over the
/// runtime's rings ([`graph::RingTransport`]). Its methods, documented there:
///
/// - [`new`](graph::PipelineBuilder::new): an empty builder;
///   [`default_burst`](graph::PipelineBuilder::default_burst) for the stages added next.
/// - [`input`](graph::PipelineBuilder::input): an input you send into from outside
///   ([`Running::input`]); [`source`](graph::PipelineBuilder::source) and
///   [`source_async`](graph::PipelineBuilder::source_async): a [`Source`] or
///   [`AsyncSource`] the runtime drives. Each returns a [`Stream`].
/// - [`merge`](graph::PipelineBuilder::merge): one stream from several.
/// - [`build`](graph::PipelineBuilder::build): the validated [`Pipeline`] (or a
///   [`BuildError`]) for [`Runtime::start`].
///
/// ```
/// use pipewright::{stage, PipelineBuilder, Plan, Runtime};
///
/// let b = PipelineBuilder::new();
/// let (input, numbers) = b.input::<u64>("numbers");
/// let doubled = numbers.then("double", stage::map(|x: u64| 2 * x)).output("doubled");
/// let mut running = Runtime::start(b.build()?, Plan::fused())?;
/// let mut tx = running.input(&input).unwrap();
/// let rx = running.output(&doubled).unwrap();
/// tx.send(21)?;
/// drop(tx);
/// running.drain()?;
/// assert_eq!(rx.collect(), vec![42]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(all(feature = "runtime", not(loom)))]
pub type PipelineBuilder = graph::PipelineBuilder<graph::RingTransport>;

/// A typed stream of items of type `T` in a [`PipelineBuilder`]:
/// [`graph::Stream`] over the runtime's rings. Its methods, documented there:
///
/// - Stages: [`then`](graph::Stream::then) (a [`Stage`]),
///   [`then_async`](graph::Stream::then_async) (an [`AsyncStage`], e.g. a
///   [`ServiceStage`] over a tower service),
///   [`then_replicated`](graph::Stream::then_replicated) (a stage with
///   [`Replicas`] a [`Plan`] spreads over workers), [`burst`](graph::Stream::burst).
/// - Shape: [`route`](graph::Stream::route) (one typed output per index),
///   [`merge`](graph::Stream::merge), [`split_errors`](graph::Stream::split_errors)
///   (a stream of `Result`s into its values and its errors).
/// - Ends: [`output`](graph::Stream::output) (read with [`Running::output`]),
///   [`for_each`](graph::Stream::for_each), [`sink`](graph::Stream::sink),
///   [`sink_async`](graph::Stream::sink_async).
/// - Requests ([`Tagged`] items, for [`PipelineService`]):
///   [`then_tagged`](graph::Stream::then_tagged),
///   [`then_tagged_async`](graph::Stream::then_tagged_async),
///   [`respond`](graph::Stream::respond).
#[cfg(all(feature = "runtime", not(loom)))]
pub type Stream<'b, T> = graph::Stream<'b, T, graph::RingTransport>;

#[cfg(all(feature = "runtime", loom))]
pub use pipewright_runtime::{ring, signal};

#[cfg(feature = "runtime")]
pub use pipewright_runtime::sync;

#[cfg(all(feature = "runtime", not(loom)))]
pub mod guide;

/// Building blocks: ready-made file, TCP and UDP sources.
#[cfg(all(feature = "runtime", not(loom)))]
pub use pipewright_runtime::sources;
/// Building blocks: stopping sources (see [`Running::stop_handle`]).
#[cfg(all(feature = "runtime", not(loom)))]
pub use pipewright_runtime::StopHandle;

#[cfg(all(feature = "prometheus", not(loom)))]
pub use pipewright_runtime::prometheus;

/// The software NIC: wire formats, stateless tunnels, VF rule tables, offloads and the
/// egress/ingress packet pipelines (feature `nic`).
#[cfg(feature = "nic")]
pub use pipewright_nic as nic;

/// The storage commit chain: node processes, client, bank workload (feature
/// `storage`).
#[cfg(feature = "storage")]
pub use pipewright_storage as storage;

/// Failure-pattern analytics: ingest, exact tests with FDR control, suggestions
/// (feature `failures`).
#[cfg(feature = "failures")]
pub use pipewright_failures as failures;

/// The lease balancer and connection rebalancing (feature `balance`).
#[cfg(feature = "balance")]
pub use pipewright_balance as balance;
/// The cache gateway: chunk cache with instance ids, NBD gateway, trace replay (feature
/// `cache`).
#[cfg(feature = "cache")]
pub use pipewright_cache as cache;
/// VM memory sharing on KVM: trust groups, per-group content stores, VM processes that
/// map image memory copy-on-write from them (feature `memshare`).
#[cfg(feature = "memshare")]
pub use pipewright_memshare as memshare;
