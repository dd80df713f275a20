//! Tower-style layers that wrap a stage to add behaviour.
//!
//! Every layer follows one scheme: `FooLayer` implements [`Layer`](crate::Layer) and
//! produces `Foo<S>`, which is a [`Stage`](crate::Stage) and, where it makes sense, an
//! [`AsyncStage`](crate::AsyncStage).
//!
//! ```
//! use pipewright::layer::{ErrorPolicyLayer, MetricsLayer, RateLimitLayer};
//! use pipewright::{stage, Layer};
//!
//! let parse = stage::try_map(|s: String| s.parse::<u64>());
//! let parse = ErrorPolicyLayer::drop_and_count().layer(parse);
//! let parse = MetricsLayer::new("parse").layer(parse);
//! let parse = RateLimitLayer::per_second(10_000.0, 64).layer(parse);
//! # let _ = parse;
//! ```

mod budget;
mod error_policy;
mod metrics;
mod rate_limit;
mod timeout;

pub use budget::{ByteBudget, Charged, Released};
pub use error_policy::{ErrorPolicyLayer, RouteErrors, RouteErrorsLayer, WithPolicy};
pub use metrics::{Metrics, MetricsLayer};
pub use rate_limit::{RateLimit, RateLimitLayer, TokenBucket};
pub use timeout::{Timeout, TimeoutError, TimeoutLayer};
