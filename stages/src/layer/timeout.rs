use std::time::Duration;

use tower_layer::Layer;

use crate::{AsyncStage, Burst, ErrorPolicy, Failures, Outbox};

/// Bounds how long an async stage may take over one burst. Items still in the burst
/// when time runs out fail with [`TimeoutError::Elapsed`] (counted by the error
/// policy); the stage is polled again with the next burst.
///
/// Needs a tokio timer, which the pipewright runtime's workers provide.
///
/// When time runs out, the inner stage's `process_burst` future is dropped: an item it
/// had taken from the burst and not yet emitted or failed goes with it, counted
/// nowhere. Wrap stages whose burst futures are cancel-safe (they take an item only
/// when it is done, or keep items in flight elsewhere, as a [`ServiceStage`] does); to
/// bound each call of a `ServiceStage`, put tower's `Timeout` on its service instead,
/// which fails each late call on its own.
///
/// [`ServiceStage`]: crate::ServiceStage
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// At most `limit` per burst.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limit: self.limit,
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Debug)]
pub struct Timeout<S> {
    inner: S,
    limit: Duration,
}

/// A failure of a stage wrapped in [`Timeout`].
#[derive(Debug, thiserror::Error)]
pub enum TimeoutError<E> {
    /// The inner stage failed the item.
    #[error(transparent)]
    Inner(E),
    /// The burst's time ran out before the item was processed.
    #[error("timed out after {0:?}")]
    Elapsed(Duration),
}

impl<S: AsyncStage> AsyncStage for Timeout<S> {
    type In = S::In;
    type Out = S::Out;
    type Error = TimeoutError<S::Error>;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, S::In>,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, Self::Error>,
    ) {
        let mut inner_failures = Vec::new();
        let finished = tokio::time::timeout(
            self.limit,
            self.inner
                .process_burst(burst, out, &mut Failures::new(&mut inner_failures)),
        )
        .await;
        for error in inner_failures {
            failures.push(TimeoutError::Inner(error));
        }
        if finished.is_err() {
            for _ in burst.drain() {
                failures.push(TimeoutError::Elapsed(self.limit));
            }
        }
    }
    fn error_policy(&self) -> ErrorPolicy {
        self.inner.error_policy()
    }
    fn pending(&self) -> usize {
        self.inner.pending()
    }
    async fn progress(
        &mut self,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, Self::Error>,
    ) {
        // Calls in flight are bounded by the inner stage (a tower `Timeout` on the
        // service bounds each call); this only maps their failures.
        let mut inner_failures = Vec::new();
        self.inner
            .progress(out, &mut Failures::new(&mut inner_failures))
            .await;
        for error in inner_failures {
            failures.push(TimeoutError::Inner(error));
        }
    }
}
