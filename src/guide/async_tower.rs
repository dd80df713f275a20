//! # Async stages and tower
//!
//! A stage that waits on I/O is an [`AsyncStage`](crate::AsyncStage): one future per
//! burst (never one per item), run as a task on its worker's own single-threaded tokio
//! runtime, added with [`then_async`](crate::graph::Stream::then_async). Most of the
//! time you do not write one: wrap a `tower::Service` in a
//! [`ServiceStage`](crate::ServiceStage). It keeps a sliding window of calls in flight
//! across bursts — up to the service's readiness (so
//! `tower::limit::ConcurrencyLimit` is the concurrency limit) and to
//! [`window`](crate::ServiceStage::window) — and emits results as they complete: in
//! input order with [`new`](crate::ServiceStage::new), as they finish with
//! [`unordered`](crate::ServiceStage::unordered). Latency is overlapped, not paid per
//! item.
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use pipewright::{stage, PipelineBuilder, Plan, Runtime, ServiceStage};
//!
//! // A remote lookup with 1 ms of latency, at most 32 calls at once.
//! let lookup = tower::limit::ConcurrencyLimit::new(
//!     tower::service_fn(|id: u64| async move {
//!         tokio::time::sleep(Duration::from_millis(1)).await;
//!         Ok::<_, Infallible>((id, format!("user-{id}")))
//!     }),
//!     32,
//! );
//! let b = PipelineBuilder::new();
//! let (input, ids) = b.input::<u64>("ids");
//! let names = ids
//!     .then_async("enrich", ServiceStage::new(lookup).window(64))
//!     .then("name", stage::map(|(_, name): (u64, String)| name))
//!     .output("names");
//! let mut running = Runtime::start(b.build()?, Plan::fused())?;
//! let (mut tx, rx) = (running.input(&input).unwrap(), running.output(&names).unwrap());
//! for id in 0..100 {
//!     tx.send(id)?; // 32 calls overlap: a few ms in all, not 100 ms
//! }
//! drop(tx);
//! running.drain()?;
//! let names = rx.collect();
//! assert_eq!(names.len(), 100);
//! assert_eq!(names[7], "user-7"); // in input order
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## A pipeline as a `tower::Service`
//!
//! The other direction: callers anywhere (tokio tasks, a hyper server) call a running
//! pipeline. Its input carries [`Tagged`](crate::Tagged) requests — each with its own
//! completion — through [`then_tagged`](crate::graph::Stream::then_tagged) (a sync
//! stage) and [`then_tagged_async`](crate::graph::Stream::then_tagged_async) (a tower
//! service, many calls in flight), to [`respond`](crate::graph::Stream::respond).
//! [`PipelineService`](crate::PipelineService) is the `tower::Service` in front; a
//! stage's failure reaches its caller as
//! [`RequestError::Stage`](crate::RequestError::Stage) with the typed error inside.
//!
//! ```
//! use std::convert::Infallible;
//! use pipewright::{stage, PipelineBuilder, PipelineService, Plan, Runtime, Tagged};
//! use tower::ServiceExt;
//!
//! let b = PipelineBuilder::new();
//! let (input, requests) = b.input::<Tagged<u64, String>>("requests");
//! let price = tower::service_fn(|cents: u64| async move { Ok::<_, Infallible>(cents * 2) });
//! requests
//!     .then_tagged_async("price", price, 64)
//!     .then_tagged("format", stage::map(|c: u64| format!("{}.{:02}", c / 100, c % 100)))
//!     .respond("reply");
//! let running = Runtime::start(b.build()?, Plan::fused())?;
//! let service = PipelineService::new(running.input(&input).unwrap());
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let answers = rt.block_on(futures::future::try_join_all(
//!     [150u64, 1_999, 5].map(|cents| service.clone().oneshot(cents)),
//! ))?;
//! assert_eq!(answers, ["3.00", "39.98", "0.10"]);
//! drop(service);
//! running.drain()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
