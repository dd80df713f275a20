use std::collections::VecDeque;
use std::convert::Infallible;

use tower_layer::Layer;

use crate::{AsyncStage, Burst, ErrorPolicy, Failures, Outbox, Stage};

/// Sets a stage's [`ErrorPolicy`]: drop-and-count or fail-pipeline.
#[derive(Debug, Clone, Copy)]
pub struct ErrorPolicyLayer {
    policy: ErrorPolicy,
}

impl ErrorPolicyLayer {
    /// Failed items are dropped and counted; the pipeline carries on.
    pub fn drop_and_count() -> Self {
        Self {
            policy: ErrorPolicy::DropAndCount,
        }
    }

    /// The first failed item (or panic) stops the pipeline.
    pub fn fail_pipeline() -> Self {
        Self {
            policy: ErrorPolicy::FailPipeline,
        }
    }
}

impl<S> Layer<S> for ErrorPolicyLayer {
    type Service = WithPolicy<S>;
    fn layer(&self, inner: S) -> WithPolicy<S> {
        WithPolicy {
            inner,
            policy: self.policy,
        }
    }
}

/// A stage with its error policy set; see [`ErrorPolicyLayer`].
#[derive(Debug)]
pub struct WithPolicy<S> {
    inner: S,
    policy: ErrorPolicy,
}

impl<S: Stage> Stage for WithPolicy<S> {
    type In = S::In;
    type Out = S::Out;
    type Error = S::Error;

    #[inline]
    fn process(&mut self, item: S::In, out: &mut Outbox<'_, S::Out>) -> Result<(), S::Error> {
        self.inner.process(item, out)
    }
    #[inline]
    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, S::In>,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        self.inner.process_burst(burst, out, failures)
    }
    fn flush(&mut self, out: &mut Outbox<'_, S::Out>) -> Result<(), S::Error> {
        self.inner.flush(out)
    }
    fn error_policy(&self) -> ErrorPolicy {
        self.policy
    }
    fn backoff(&self) -> Option<std::time::Duration> {
        self.inner.backoff()
    }
    fn on_idle(&mut self, out: &mut Outbox<'_, S::Out>) -> Option<std::time::Duration> {
        self.inner.on_idle(out)
    }
}

impl<S: AsyncStage> AsyncStage for WithPolicy<S> {
    type In = S::In;
    type Out = S::Out;
    type Error = S::Error;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, S::In>,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        self.inner.process_burst(burst, out, failures).await
    }
    fn error_policy(&self) -> ErrorPolicy {
        self.policy
    }
    fn pending(&self) -> usize {
        self.inner.pending()
    }
    async fn progress(
        &mut self,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        self.inner.progress(out, failures).await
    }
}

/// Routes a stage's failures to a typed error output instead of dropping them: the
/// wrapped stage emits `Result<Out, Error>`; split it with
/// [`Stream::split_errors`](crate::Stream::split_errors).
///
/// ```
/// use pipewright::{graph::PipelineBuilder, inline::InlineTransport, layer::RouteErrorsLayer, stage, Layer};
///
/// let b = PipelineBuilder::<InlineTransport>::new();
/// let (input, text) = b.input::<&'static str>("text");
/// let parse = RouteErrorsLayer.layer(stage::try_map(|s: &str| s.parse::<u32>()));
/// let (numbers, errors) = text.then("parse", parse).split_errors("split");
/// let (numbers, errors) = (numbers.output("numbers"), errors.output("errors"));
/// let mut run = b.build()?.run_inline();
/// run.send_all(&input, ["1", "x", "3"]);
/// run.finish()?;
/// assert_eq!(run.take_output(&numbers), vec![1, 3]);
/// assert_eq!(run.take_output(&errors).len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteErrorsLayer;

impl<S: Stage> Layer<S> for RouteErrorsLayer {
    type Service = RouteErrors<S>;
    fn layer(&self, inner: S) -> RouteErrors<S> {
        RouteErrors {
            inner,
            scratch: VecDeque::new(),
        }
    }
}

/// See [`RouteErrorsLayer`].
#[derive(Debug)]
pub struct RouteErrors<S: Stage> {
    inner: S,
    scratch: VecDeque<S::Out>,
}

impl<S: Stage> Stage for RouteErrors<S>
where
    S::Error: Send,
{
    type In = S::In;
    type Out = Result<S::Out, S::Error>;
    type Error = Infallible;

    #[inline]
    fn process(&mut self, item: S::In, out: &mut Outbox<'_, Self::Out>) -> Result<(), Infallible> {
        let result = self
            .inner
            .process(item, &mut Outbox::new(&mut self.scratch));
        out.extend(self.scratch.drain(..).map(Ok));
        if let Err(error) = result {
            out.push(Err(error));
        }
        Ok(())
    }
    fn flush(&mut self, out: &mut Outbox<'_, Self::Out>) -> Result<(), Infallible> {
        let result = self.inner.flush(&mut Outbox::new(&mut self.scratch));
        out.extend(self.scratch.drain(..).map(Ok));
        if let Err(error) = result {
            out.push(Err(error));
        }
        Ok(())
    }
    fn backoff(&self) -> Option<std::time::Duration> {
        self.inner.backoff()
    }
    fn on_idle(&mut self, out: &mut Outbox<'_, Self::Out>) -> Option<std::time::Duration> {
        let wait = self.inner.on_idle(&mut Outbox::new(&mut self.scratch));
        out.extend(self.scratch.drain(..).map(Ok));
        wait
    }
}
