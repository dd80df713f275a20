//! A short guide to pipewright, one page per topic; every example on these pages is a
//! doc test that runs in CI.
//!
//! 1. [First pipeline](first_pipeline): stages, streams, a plan, running and draining,
//!    failures, testing a graph on the calling thread.
//! 2. [Plans and replicas](plans): which stages share a worker; giving one stage
//!    several cores with [`Stream::then_replicated`](crate::Stream::then_replicated),
//!    [`Replicas`](crate::Replicas) and [`Plan::replicas`](crate::Plan::replicas).
//! 3. [Async stages and tower](async_tower): [`ServiceStage`](crate::ServiceStage),
//!    [`then_tagged_async`](crate::graph::Stream::then_tagged_async) and a pipeline
//!    served as a `tower::Service` ([`PipelineService`](crate::PipelineService)).
//! 4. [Windows](windows): tumbling and sliding aggregation by count and by time, and
//!    `flush()` for your own.
//! 5. [Budgets](budgets): bursts, activation budgets, ring sizes, io_uring budgets,
//!    bytes in flight.
//! 6. [Metrics](metrics): snapshots, the report, the `metrics` facade, Prometheus.
//! 7. [Testing with loom](loom): model-checking your stages' shared state.

pub mod async_tower;
pub mod budgets;
pub mod first_pipeline;
pub mod loom;
pub mod metrics;
pub mod plans;
pub mod windows;
