//! A `tower::Service` run on tagged requests as an async stage, calls in flight.

use std::convert::Infallible;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, Stream};
use tower_service::Service;

use crate::tagged::Ticket;
use crate::tower_stage::poll_ready_caught;
use crate::{AsyncStage, Burst, Failures, Outbox, RequestError, StageError, Tagged};

/// One call on behalf of one request: resolves to the request with the call's result.
#[pin_project::pin_project]
pub(crate) struct TaggedCall<F, R> {
    #[pin]
    call: F,
    ticket: Option<Ticket<R>>,
    stage: Arc<str>,
}

impl<F, U, E, R> Future for TaggedCall<F, R>
where
    F: Future<Output = Result<U, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    type Output = Tagged<U, R>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.call.poll(cx));
        let ticket = this.ticket.take().expect("polled after completion");
        Poll::Ready(Tagged::from_parts(
            ticket,
            result.map_err(|e| failed(this.stage, e)),
        ))
    }
}

fn failed<E: std::error::Error + Send + Sync + 'static>(stage: &str, error: E) -> RequestError {
    RequestError::Stage {
        stage: stage.to_string(),
        message: error.to_string(),
        error: Some(StageError::new(error)),
    }
}

/// See [`Stream::then_tagged_async`](crate::Stream::then_tagged_async).
pub(crate) struct TaggedService<S: Service<T>, T, R> {
    stage: Arc<str>,
    service: S,
    in_flight: FuturesUnordered<TaggedCall<S::Future, R>>,
    window: usize,
}

impl<S: Service<T>, T, R> fmt::Debug for TaggedService<S, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaggedService")
            .field("stage", &self.stage)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

impl<S: Service<T>, T, R> TaggedService<S, T, R> {
    pub(crate) fn new(stage: &str, service: S, window: usize) -> Self {
        Self {
            stage: stage.into(),
            service,
            in_flight: FuturesUnordered::new(),
            window: window.max(1),
        }
    }
}

enum Step<U, R, E> {
    Ready(Result<(), E>),
    Done(Tagged<U, R>),
    /// `poll_ready` panicked (see [`poll_ready_caught`]).
    Panicked(Box<dyn std::any::Any + Send>),
}

impl<S, T, R> AsyncStage for TaggedService<S, T, R>
where
    S: Service<T> + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    type In = Tagged<T, R>;
    type Out = Tagged<S::Response, R>;
    type Error = Infallible;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Tagged<T, R>>,
        out: &mut Outbox<'_, Tagged<S::Response, R>>,
        _failures: &mut Failures<'_, Infallible>,
    ) {
        while let Some(next) = burst.peek() {
            if next.value().is_err() {
                // Already failed upstream: pass it on to be answered.
                let (ticket, value) = burst.pop().expect("peeked").into_parts();
                let value = value.map(|_| unreachable!("checked to be an error"));
                out.push(Tagged::from_parts(ticket, value));
                continue;
            }
            let window = self.window;
            let step = poll_fn(|cx| {
                if let Poll::Ready(Some(done)) = Pin::new(&mut self.in_flight).poll_next(cx) {
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
                Step::Done(done) => out.push(done),
                Step::Panicked(payload) => {
                    // The item it was getting ready for is the one the panic costs
                    // (its ticket, dropped, answers its caller).
                    drop(burst.pop());
                    std::panic::resume_unwind(payload);
                }
                Step::Ready(ready) => {
                    let (ticket, value) = burst.pop().expect("peeked").into_parts();
                    let value = value.expect("checked to be a value");
                    match ready {
                        Ok(()) => self.in_flight.push(TaggedCall {
                            call: self.service.call(value),
                            ticket: Some(ticket),
                            stage: self.stage.clone(),
                        }),
                        Err(error) => {
                            out.push(Tagged::from_parts(ticket, Err(failed(&self.stage, error))))
                        }
                    }
                }
            }
        }
    }

    fn pending(&self) -> usize {
        self.in_flight.len()
    }

    async fn progress(
        &mut self,
        out: &mut Outbox<'_, Tagged<S::Response, R>>,
        _failures: &mut Failures<'_, Infallible>,
    ) {
        poll_fn(|cx| {
            let mut settled = 0;
            while let Poll::Ready(Some(done)) = Pin::new(&mut self.in_flight).poll_next(cx) {
                out.push(done);
                settled += 1;
            }
            if settled > 0 || self.in_flight.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
