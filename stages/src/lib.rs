//! Typed stages, layers and the pipeline builder of [pipewright].
//!
//! This crate is pipewright's `tower-service`: small, safe and free of threads and I/O.
//! It says *what* a pipeline computes; `pipewright-runtime` says *where* it runs.
//!
//! - [`Stage`]: a synchronous step `In -> Out` that processes a [`Burst`] per activation
//!   and emits zero or more outputs per input into an [`Outbox`].
//! - [`AsyncStage`]: the same for stages that await I/O: one future per burst, never one
//!   per item.
//! - [`Source`]: where items come from when they do not arrive from outside; a source
//!   that cannot go on ends with [`SourceState::Failed`].
//! - [`window`]: tumbling and sliding windows by count, event time or processing time.
//! - [`layer`]: tower-style layers (metrics, rate limit, timeout, error policy).
//! - [`PipelineBuilder`] and [`Stream`]: typed composition checked by the compiler, with
//!   routers, splits and merges; [`Pipeline`] is the validated result.
//! - [`ServiceStage`] lifts a `tower::Service` into a stage; [`Tagged`] carries a
//!   request's completion through a pipeline so a whole pipeline can serve as a service.
//! - [`inline`]: a deterministic single-threaded executor for tests and examples.
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
//!
//! [pipewright]: https://docs.rs/pipewright
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod async_stage;
mod burst;
mod error;
pub mod exec;
mod graph;
pub mod inline;
pub mod layer;
mod node;
mod replica;
pub mod source;
pub mod stage;
mod stop;
mod tagged;
mod tagged_service;
mod tower_stage;
pub mod window;

pub use async_stage::AsyncStage;
pub use burst::{Burst, Failures, Outbox};
pub use error::{BuildError, ErrorPolicy, RequestError, StageError, StageFailure};
pub use graph::{InputId, OutputId, Pipeline, PipelineBuilder, Stream};
pub use replica::{
    parse_replica_name, replica_name, ReplicaControl, ReplicaError, Replicas, Spreader,
};
pub use source::{AsyncSource, IterSource, Source, SourceState};
pub use stage::Stage;
pub use tagged::{Answer, AnswerTagger, Answers, Reply, Tagged, TaggedStage, Ticket};
pub use tower_stage::ServiceStage;

/// Re-exported so users name one `Layer` trait for stage and service layers alike.
pub use tower_layer::Layer;
