//! Stages that await I/O.

use std::fmt;
use std::future::Future;

use crate::{Burst, ErrorPolicy, Failures, Outbox};

/// A typed pipeline step that awaits: one future per *burst*, never one per item.
///
/// The runtime drives async stages on the tokio current-thread runtime owned by the
/// stage's worker, as one long-lived task; the stage's future may await sockets, files
/// or timers. Items left in the burst when the future completes are offered again.
///
/// An async stage stays on the worker its plan gives it, also under an adaptive plan:
/// its calls in flight are futures of that worker's runtime, and its I/O (io_uring
/// operations, registered buffers, sockets registered with the worker's reactor) is
/// bound to that worker's ring and reactor, so it has no point at which it could be
/// handed over without waiting for every call to finish. A live move is refused with
/// a message that says so (`ApplyError::Pinned`), and the controller only moves sync
/// stages around it. To give an I/O stage more throughput, raise its concurrency
/// (a [`ServiceStage`](crate::ServiceStage) window, more operations in flight) or put
/// it on a worker of its own in the plan.
///
/// ```
/// use pipewright::{AsyncStage, Burst, Failures, Outbox};
///
/// /// Resolves names with some async lookup; here a timer stands in for it.
/// struct Resolve;
///
/// impl AsyncStage for Resolve {
///     type In = String;
///     type Out = (String, usize);
///     type Error = std::convert::Infallible;
///
///     async fn process_burst(
///         &mut self,
///         burst: &mut Burst<'_, String>,
///         out: &mut Outbox<'_, (String, usize)>,
///         _failures: &mut Failures<'_, Self::Error>,
///     ) {
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await; // one await per burst
///         while let Some(name) = burst.pop() {
///             let len = name.len();
///             out.push((name, len));
///         }
///     }
/// }
/// ```
pub trait AsyncStage: Send + 'static {
    /// What the stage consumes.
    type In: Send + 'static;
    /// What the stage emits.
    type Out: Send + 'static;
    /// Why one item failed.
    type Error: fmt::Debug + fmt::Display + Send + 'static;

    /// Processes a burst; per-item failures go to `failures`.
    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Self::In>,
        out: &mut Outbox<'_, Self::Out>,
        failures: &mut Failures<'_, Self::Error>,
    ) -> impl Future<Output = ()>;

    /// How the executor treats failed items and panics of this stage.
    ///
    /// By default [`ErrorPolicy::DropAndCount`]: a failed item is dropped and counted,
    /// the stage carries on.
    fn error_policy(&self) -> ErrorPolicy {
        ErrorPolicy::DropAndCount
    }

    /// Items this stage has taken from its bursts but not yet emitted or failed: calls
    /// still in flight. While it is non-zero the executor keeps the stage's output open
    /// and, when no new input is waiting, drives [`progress`](AsyncStage::progress).
    ///
    /// A stage that finishes everything inside `process_burst` keeps the default, 0.
    fn pending(&self) -> usize {
        0
    }

    /// Emits the results of pending work as it completes; returns once at least one
    /// pending item settled (at once when none is pending).
    ///
    /// The executor races this future against new input and drops it when input
    /// arrives, so it must be cancel-safe: dropped between two awaits, it loses
    /// nothing (results already pushed to `out` stay there, calls not yet complete stay
    /// pending).
    fn progress(
        &mut self,
        _out: &mut Outbox<'_, Self::Out>,
        _failures: &mut Failures<'_, Self::Error>,
    ) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}
