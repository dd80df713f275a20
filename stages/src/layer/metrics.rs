use metrics::{counter, histogram, Counter, Histogram};
use tower_layer::Layer;

use crate::{AsyncStage, Burst, ErrorPolicy, Failures, Outbox, Stage};

/// Counts a stage's items in, items out and failures, and records its burst sizes,
/// through the `metrics` facade under a name of the user's choosing.
///
/// The runtime already keeps per-stage counters; this layer is for counting a part of a
/// stage tree under its own label, or for stages run by another executor. Handles are
/// resolved once when the layer is applied, so the cost is a few atomic adds per burst.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    name: String,
}

impl MetricsLayer {
    /// Records under the label `layer = name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        let label = self.name.clone();
        Metrics {
            inner,
            items_in: counter!("pipewright_layer_items_in_total", "layer" => label.clone()),
            items_out: counter!("pipewright_layer_items_out_total", "layer" => label.clone()),
            failures: counter!("pipewright_layer_failures_total", "layer" => label.clone()),
            burst: histogram!("pipewright_layer_burst_size", "layer" => label),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug)]
pub struct Metrics<S> {
    inner: S,
    items_in: Counter,
    items_out: Counter,
    failures: Counter,
    burst: Histogram,
}

impl<S> Metrics<S> {
    #[inline]
    fn record(&self, taken: usize, emitted: usize, failed: usize) {
        self.items_in.increment(taken as u64);
        self.items_out.increment(emitted as u64);
        if failed > 0 {
            self.failures.increment(failed as u64);
        }
        self.burst.record(taken as f64);
    }
}

impl<S: Stage> Stage for Metrics<S> {
    type In = S::In;
    type Out = S::Out;
    type Error = S::Error;

    #[inline]
    fn process(&mut self, item: S::In, out: &mut Outbox<'_, S::Out>) -> Result<(), S::Error> {
        let before = out.len();
        let result = self.inner.process(item, out);
        self.record(1, out.len() - before, usize::from(result.is_err()));
        result
    }
    #[inline]
    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, S::In>,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        let (b0, o0, f0) = (burst.len(), out.len(), failures.len());
        self.inner.process_burst(burst, out, failures);
        self.record(b0 - burst.len(), out.len() - o0, failures.len() - f0);
    }
    fn flush(&mut self, out: &mut Outbox<'_, S::Out>) -> Result<(), S::Error> {
        self.inner.flush(out)
    }
    fn error_policy(&self) -> ErrorPolicy {
        self.inner.error_policy()
    }
    fn backoff(&self) -> Option<std::time::Duration> {
        self.inner.backoff()
    }
    fn on_idle(&mut self, out: &mut Outbox<'_, S::Out>) -> Option<std::time::Duration> {
        self.inner.on_idle(out)
    }
}

impl<S: AsyncStage> AsyncStage for Metrics<S> {
    type In = S::In;
    type Out = S::Out;
    type Error = S::Error;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, S::In>,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        let (b0, o0, f0) = (burst.len(), out.len(), failures.len());
        self.inner.process_burst(burst, out, failures).await;
        self.record(b0 - burst.len(), out.len() - o0, failures.len() - f0);
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
        failures: &mut Failures<'_, S::Error>,
    ) {
        let (o0, f0) = (out.len(), failures.len());
        self.inner.progress(out, failures).await;
        self.record(0, out.len() - o0, failures.len() - f0);
    }
}
