//! Lifting a `tower::Service` into an async stage.

use std::fmt;
use std::future::poll_fn;
use std::task::Poll;

use futures::stream::{FuturesOrdered, StreamExt};
use tower_service::Service;

use crate::{AsyncStage, Burst, Failures, Outbox};

/// An [`AsyncStage`] that calls a `tower::Service` for every item.
///
/// Up to a burst of calls are in flight at once and complete in order. While the
/// service is not ready the stage keeps driving the calls already in flight, so a
/// service whose readiness waits on its own responses (a concurrency limit) cannot
/// deadlock the stage. Calls that fail, and a service that reports an error from
/// `poll_ready`, fail that item under the stage's error policy.
///
/// The service's own futures are whatever it returns (tower services often box them);
/// the stage itself adds one reusable in-flight set, not a task per item.
///
/// ```
/// use pipewright_stages::ServiceStage;
/// let lifted = ServiceStage::new(tower::service_fn(|x: u64| async move {
///     Ok::<_, std::convert::Infallible>(x + 1)
/// }));
/// # let _ = lifted;
/// ```
pub struct ServiceStage<S: Service<Req>, Req> {
    service: S,
    in_flight: FuturesOrdered<S::Future>,
}

impl<S: Service<Req>, Req> fmt::Debug for ServiceStage<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceStage")
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

impl<S: Service<Req>, Req> ServiceStage<S, Req> {
    /// Lifts `service`.
    pub fn new(service: S) -> Self {
        Self {
            service,
            in_flight: FuturesOrdered::new(),
        }
    }
}

enum Step<R, E> {
    Ready(Result<(), E>),
    Done(Result<R, E>),
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

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Req>,
        out: &mut Outbox<'_, S::Response>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        while !burst.is_empty() {
            let step = poll_fn(|cx| {
                if let Poll::Ready(ready) = self.service.poll_ready(cx) {
                    return Poll::Ready(Step::Ready(ready));
                }
                match self.in_flight.poll_next_unpin(cx) {
                    Poll::Ready(Some(done)) => Poll::Ready(Step::Done(done)),
                    _ => Poll::Pending,
                }
            })
            .await;
            match step {
                Step::Ready(Ok(())) => {
                    let request = burst.pop().expect("burst checked non-empty");
                    self.in_flight.push_back(self.service.call(request));
                }
                Step::Ready(Err(error)) => {
                    burst.pop();
                    failures.push(error);
                }
                Step::Done(Ok(response)) => out.push(response),
                Step::Done(Err(error)) => failures.push(error),
            }
        }
        while let Some(done) = self.in_flight.next().await {
            match done {
                Ok(response) => out.push(response),
                Err(error) => failures.push(error),
            }
        }
    }
}
