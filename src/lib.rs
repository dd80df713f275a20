//! **pipewright**: composable, typed, staged pipelines that give each stage its own
//! resources — cores, rings, burst budgets — in the spirit of SEDA and VPP, composing
//! with the tower ecosystem in both directions.
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
//!   live [`Runtime`], the tower service adapter — and [`PipelineBuilder`], the graph
//!   builder over the runtime's rings.
//! - `nic` (default): the software NIC packet path, [`nic`].
//! - `storage` (default): the storage commit chain, [`storage`], and `pipewright
//!   storage` in the CLI; `storage-faults` adds its fault injection for the fault tests.
//! - `prometheus`: the Prometheus exporter for the runtime's metrics.
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
    exec, inline, layer, source, stage, AsyncSource, AsyncStage, BuildError, Burst, ErrorPolicy,
    Failures, InputId, IterSource, Layer, Outbox, OutputId, Pipeline, ReplicaControl, ReplicaError,
    Replicas, Reply, RequestError, ServiceStage, Source, SourceState, Spreader, Stage, StageError,
    StageFailure, Tagged, TaggedStage, Ticket,
};

/// The pipeline graph builder, generic over the transport that carries items between
/// stages (always available): with [`inline::InlineTransport`] a built pipeline runs
/// on the calling thread. With the feature `runtime`, [`PipelineBuilder`] is this
/// builder over the runtime's rings.
pub mod graph {
    pub use pipewright_stages::{PipelineBuilder, Stream};
}

#[cfg(feature = "runtime")]
pub use pipewright_runtime::{
    available_cpus, controller, plan_file, ring, signal, uring, ActivationBudget, ApplyError,
    ControlStep, EdgeKind, Input, Output, Pin, PipelineBuilder, PipelineService, Plan, PlanError,
    Report, RunError, Running, Runtime, RuntimePipeline, SendError, Snapshot, StageSnapshot,
    StartError, Stream, TrySendError, UringBudget,
};

/// Building blocks: ready-made file, TCP and UDP sources.
#[cfg(feature = "runtime")]
pub use pipewright_runtime::sources;
/// Building blocks: stopping sources (see [`Running::stop_handle`]).
#[cfg(feature = "runtime")]
pub use pipewright_runtime::StopHandle;

#[cfg(feature = "prometheus")]
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
