//! # Budgets
//!
//! Every resource a stage uses is bounded, and every bound is set in one place: the
//! builder for what belongs to the graph, the [`Plan`](crate::Plan) for what belongs
//! to the machine. [`Plan::resolve`](crate::Plan::resolve) checks them all against
//! the pipeline before a thread starts.
//!
//! | budget | what it bounds | set with |
//! |---|---|---|
//! | burst | items per stage call (default 32): larger amortises, smaller cuts latency | [`Stream::burst`](crate::graph::Stream::burst), [`Plan::burst`](crate::Plan::burst), [`Plan::burst_all`](crate::Plan::burst_all) |
//! | activation | bursts (and time) a stage may run before its worker turns to the stages fused beside it | [`ActivationBudget`](crate::ActivationBudget), [`Plan::activation`](crate::Plan::activation) |
//! | ring | items queued between two workers (default 1024): the backpressure point | [`Plan::ring_capacity`](crate::Plan::ring_capacity), [`Plan::ring_capacity_for`](crate::Plan::ring_capacity_for) |
//! | calls in flight | an async stage's outstanding calls | [`ServiceStage::window`](crate::ServiceStage::window), the service's readiness |
//! | io_uring | submission entries and registered buffers of an I/O stage | [`UringBudget`](crate::UringBudget), [`Plan::uring`](crate::Plan::uring) |
//! | bytes in flight | memory held by items between a pipeline's entry and exit | [`layer::ByteBudget`](crate::layer::ByteBudget) |
//! | rate | items per second through a stage | [`layer::RateLimitLayer`](crate::layer::RateLimitLayer) |
//!
//! ```
//! use std::time::Duration;
//! use pipewright::{ActivationBudget, Plan, PlanError, UringBudget};
//!
//! let stages = ["read", "parse", "crypto", "write"];
//! let plan = Plan::spread(2)
//!     .burst_all(64)
//!     .burst("parse", 256)
//!     // `crypto` may keep its worker for 16 bursts, but not longer than 50 µs.
//!     .activation("crypto", ActivationBudget::items(16 * 64).with_time(Duration::from_micros(50)))
//!     .ring_capacity(4096)
//!     .uring("read", UringBudget { sq_entries: 64, fixed_buffers: 64 });
//! assert!(plan.resolve(&stages).is_ok());
//!
//! // A budget that cannot work is a typed error before anything runs.
//! let bad = Plan::fused().activation("crypto", ActivationBudget::items(0));
//! assert!(matches!(bad.resolve(&stages), Err(PlanError::BadBudget { .. })));
//! ```
//!
//! Bounded rings make backpressure end to end: when the slowest stage's input ring is
//! full, the stages before it stop, then [`Input::send`](crate::Input::send) blocks
//! (or [`try_send`](crate::Input::try_send) says
//! [`Full`](crate::TrySendError::Full)), and a [`Source`](crate::Source) is simply not
//! pulled. Memory stays bounded whatever the rates.
