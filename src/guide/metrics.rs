//! # Metrics
//!
//! Every stage is counted, always: items in and out, bursts, drops by reason
//! (`error`, `panic`, `unrouted`, `aborted`, `timeout`), panics, queue depth and a
//! sampled service time per item. Three ways to read them:
//!
//! - [`Running::snapshot`](crate::Running::snapshot) while the pipeline runs, and the
//!   final one in the [`Report`](crate::Report) that `drain`/`join` return: a
//!   [`Snapshot`](crate::Snapshot) with one [`StageSnapshot`](crate::StageSnapshot)
//!   per stage (per replica for replicated stages), printable as a table.
//! - The [`metrics`](https://docs.rs/metrics) facade: the runtime records
//!   `pipewright_stage_items_in_total`, `pipewright_stage_items_out_total`,
//!   `pipewright_stage_dropped_total{reason}`, `pipewright_stage_panics_total`,
//!   `pipewright_stage_burst_size`, `pipewright_stage_service_ns_per_item`, the gauges
//!   `pipewright_stage_queue_depth` and `pipewright_stage_worker` (published by
//!   [`Running::publish_gauges`](crate::Running::publish_gauges)), and the
//!   controller's `pipewright_controller_decisions_total` and
//!   `pipewright_controller_refused_total`, all labelled by `stage`. Install any
//!   `metrics` recorder; with the feature `prometheus`, `pipewright::prometheus::install`
//!   serves them at `/metrics`.
//! - [`layer::MetricsLayer`](crate::layer::MetricsLayer) adds per-layer counters around
//!   one stage (the `pipewright_layer_*` family).
//!
//! ```
//! use pipewright::{stage, IterSource, PipelineBuilder, Plan, Runtime};
//!
//! let b = PipelineBuilder::new();
//! b.source("numbers", IterSource(0..1_000u32))
//!     .then("parse", stage::try_map(|x: u32| if x % 100 == 0 { Err("bad") } else { Ok(x) }))
//!     .then("route", stage::filter(|x: &u32| x % 2 == 1))
//!     .for_each("sink", |_x| {});
//! let running = Runtime::start(b.build()?, Plan::spread(2))?;
//! let report = running.join()?;
//! let parse = report.snapshot.stage("parse").unwrap();
//! assert_eq!((parse.items_in, parse.items_out, parse.dropped_total()), (1_000, 990, 10));
//! assert_eq!(report.snapshot.stage("sink").unwrap().items_in, 500);
//! println!("{}", report.snapshot); // the per-stage table
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With the feature `tracing-spans`, each stage activation is also a `trace`-level
//! `tracing` span (target `pipewright`) with the stage, the burst and its outcome.
