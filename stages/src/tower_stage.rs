//! Lifting a `tower::Service` into an async stage.

use std::fmt;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::CatchUnwind;
use futures::stream::{FuturesOrdered, FuturesUnordered, Stream};
use futures::FutureExt;
use tower_service::Service;

use crate::{AsyncStage, Burst, Failures, Outbox};

/// Calls in flight by default: enough to hide a millisecond of service latency at a
/// few hundred thousand items per second, small enough to bound the reorder memory.
const DEFAULT_WINDOW: usize = 256;

/// An [`AsyncStage`] that calls a `tower::Service` for every item, keeping a sliding
/// window of calls in flight across bursts.
///
/// The stage issues a call for each item as soon as the service is ready and the
/// window has room, and emits results as they complete: it never waits for a whole
/// burst, so one slow call holds up only the results behind it (in
/// [ordered](ServiceStage::new) mode) or nothing at all ([`unordered`](ServiceStage::unordered)).
/// The service's readiness is the concurrency limit (`tower::limit::ConcurrencyLimit`
/// works as expected); [`window`](ServiceStage::window) bounds the calls in flight and
/// with them the reorder memory.
///
/// While the service is not ready the stage keeps driving the calls already in flight,
/// so a service whose readiness waits on its own responses cannot deadlock the stage.
/// Calls that fail, and a service that reports an error from `poll_ready`, fail that
/// item under the stage's error policy. At the end of the input the stage's output
/// stays open until every call in flight has settled.
///
/// ```
/// use pipewright::{stage, PipelineBuilder, Plan, Runtime, ServiceStage};
///
/// let b = PipelineBuilder::new();
/// let (input, numbers) = b.input::<u64>("numbers");
/// let lookup = tower::service_fn(|x: u64| async move {
///     tokio::time::sleep(std::time::Duration::from_millis(1)).await; // a remote call
///     Ok::<_, std::convert::Infallible>(x + 1)
/// });
/// let out = numbers
///     .then_async("lookup", ServiceStage::new(lookup).window(64))
///     .output("out");
/// let mut running = Runtime::start(b.build()?, Plan::fused())?;
/// let (mut tx, rx) = (running.input(&input).unwrap(), running.output(&out).unwrap());
/// for x in 0..200 {
///     tx.send(x)?; // 64 calls overlap: ~4 ms in all, not 200 ms
/// }
/// drop(tx);
/// running.drain()?;
/// assert_eq!(rx.collect(), (1..=200).collect::<Vec<u64>>()); // in order
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ServiceStage<S: Service<Req>, Req> {
    service: S,
    in_flight: InFlight<S::Future>,
    window: usize,
}

/// The calls in flight: completed in order, or as they finish. Each call's panic is
/// caught with it, so that it leaves the set like any completed call (an ordered set
/// would otherwise wait forever for the panicked call's turn) and is raised again
/// when its turn comes, where the node counts it.
enum InFlight<F: Future> {
    Ordered(FuturesOrdered<CatchUnwind<AssertUnwindSafe<F>>>),
    Unordered(FuturesUnordered<CatchUnwind<AssertUnwindSafe<F>>>),
}

impl<F: Future> InFlight<F> {
    fn len(&self) -> usize {
        match self {
            InFlight::Ordered(f) => f.len(),
            InFlight::Unordered(f) => f.len(),
        }
    }
    fn push(&mut self, future: F) {
        let future = AssertUnwindSafe(future).catch_unwind();
        match self {
            InFlight::Ordered(f) => f.push_back(future),
            InFlight::Unordered(f) => f.push(future),
        }
    }
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let done = match self {
            InFlight::Ordered(f) => Pin::new(f).poll_next(cx),
            InFlight::Unordered(f) => Pin::new(f).poll_next(cx),
        };
        done.map(|call| {
            call.map(|outcome| outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ServiceStage<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceStage")
            .field("in_flight", &self.in_flight.len())
            .field("window", &self.window)
            .field("ordered", &matches!(self.in_flight, InFlight::Ordered(_)))
            .finish()
    }
}

impl<S: Service<Req>, Req> ServiceStage<S, Req> {
    /// Lifts `service`; results leave in the order the items arrived.
    pub fn new(service: S) -> Self {
        Self {
            service,
            in_flight: InFlight::Ordered(FuturesOrdered::new()),
            window: DEFAULT_WINDOW,
        }
    }

    /// Lifts `service`; results leave as their calls complete (no head-of-line
    /// blocking behind a slow call; order across items is not kept).
    pub fn unordered(service: S) -> Self {
        Self {
            service,
            in_flight: InFlight::Unordered(FuturesUnordered::new()),
            window: DEFAULT_WINDOW,
        }
    }

    /// At most `calls` in flight (default 256; at least 1).
    pub fn window(mut self, calls: usize) -> Self {
        self.window = calls.max(1);
        self
    }
}

enum Step<R, E> {
    Ready(Result<(), E>),
    Done(Result<R, E>),
    /// `poll_ready` panicked (its payload).
    Panicked(Box<dyn std::any::Any + Send>),
}

/// Polls `service` for readiness; `Err` with the payload if `poll_ready` panicked. The
/// caller then drops the item it was getting ready for and resumes the panic, so the
/// panic costs that item (counted as one lost, as the node counts a burst's panic)
/// rather than one that is still in the burst and served later.
pub(crate) fn poll_ready_caught<S: Service<Req>, Req>(
    service: &mut S,
    cx: &mut Context<'_>,
) -> std::thread::Result<Poll<Result<(), S::Error>>> {
    crate::node::catch_unwind(AssertUnwindSafe(|| service.poll_ready(cx)))
}

fn settle<R, E>(done: Result<R, E>, out: &mut Outbox<'_, R>, failures: &mut Failures<'_, E>) {
    match done {
        Ok(response) => out.push(response),
        Err(error) => failures.push(error),
    }
}

impl<S, Req> AsyncStage for ServiceStage<S, Req>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: fmt::Debug + fmt::Display + Send + 'static,
    Req: Send + 'static,
{
    type In = Req;
    type Out = S::Response;
    type Error = S::Error;

    /// Issues a call per item while the service is ready and the window has room,
    /// emitting whatever completes meanwhile; returns when the burst is issued.
    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Req>,
        out: &mut Outbox<'_, S::Response>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        while !burst.is_empty() {
            let window = self.window;
            let step = poll_fn(|cx| {
                // Completed calls first: they free window slots and readiness.
                if let Poll::Ready(Some(done)) = self.in_flight.poll_next(cx) {
                    return Poll::Ready(Step::Done(done));
                }
                if self.in_flight.len() < window {
                    match poll_ready_caught(&mut self.service, cx) {
                        Ok(Poll::Ready(ready)) => return Poll::Ready(Step::Ready(ready)),
                        Ok(Poll::Pending) => {}
                        Err(payload) => return Poll::Ready(Step::Panicked(payload)),
                    }
                }
                Poll::Pending
            })
            .await;
            match step {
                Step::Panicked(payload) => {
                    drop(burst.pop());
                    std::panic::resume_unwind(payload);
                }
                Step::Ready(Ok(())) => {
                    let request = burst.pop().expect("burst checked non-empty");
                    let call = self.service.call(request);
                    self.in_flight.push(call);
                }
                Step::Ready(Err(error)) => {
                    burst.pop();
                    failures.push(error);
                }
                Step::Done(done) => settle(done, out, failures),
            }
        }
    }

    fn pending(&self) -> usize {
        self.in_flight.len()
    }

    /// Waits for the next call to complete, then emits every result ready by then.
    async fn progress(
        &mut self,
        out: &mut Outbox<'_, S::Response>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        poll_fn(|cx| {
            let mut settled = 0;
            while let Poll::Ready(Some(done)) = self.in_flight.poll_next(cx) {
                settle(done, out, failures);
                settled += 1;
            }
            if settled > 0 || self.in_flight.len() == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
