use std::time::{Duration, Instant};

use tower_layer::Layer;

use crate::{AsyncStage, Burst, ErrorPolicy, Failures, Outbox, Stage};

/// A token bucket: `rate` tokens per second, holding at most `capacity`.
///
/// Charged per burst: a stage takes as many items as there are whole tokens.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` must be positive; `capacity` at least 1.
    pub fn new(rate: f64, capacity: u32) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            rate: rate.max(f64::MIN_POSITIVE),
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes up to `want` whole tokens now; returns how many were taken.
    pub fn take(&mut self, want: usize, now: Instant) -> usize {
        self.refill(now);
        let granted = (self.tokens.floor() as usize).min(want);
        self.tokens -= granted as f64;
        granted
    }

    /// Time until `n` tokens are available (zero if they are now).
    pub fn wait_for(&self, n: usize) -> Duration {
        let missing = (n as f64).min(self.capacity) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate)
        }
    }
}

/// Limits a stage to a rate of items per second. Items over the rate stay in the burst
/// (backpressure upstream), never dropped.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    rate: f64,
    capacity: u32,
}

impl RateLimitLayer {
    /// `rate` items per second, with bursts of up to `capacity` items.
    pub fn per_second(rate: f64, capacity: u32) -> Self {
        Self { rate, capacity }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: TokenBucket::new(self.rate, self.capacity),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug)]
pub struct RateLimit<S> {
    inner: S,
    bucket: TokenBucket,
}

impl<S: Stage> Stage for RateLimit<S> {
    type In = S::In;
    type Out = S::Out;
    type Error = S::Error;

    fn process(&mut self, item: S::In, out: &mut Outbox<'_, S::Out>) -> Result<(), S::Error> {
        self.inner.process(item, out)
    }

    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, S::In>,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        let granted = self.bucket.take(burst.len(), Instant::now());
        for _ in 0..granted {
            let Some(item) = burst.pop() else { break };
            if let Err(error) = self.inner.process(item, out) {
                failures.push(error);
            }
        }
    }
    fn flush(&mut self, out: &mut Outbox<'_, S::Out>) -> Result<(), S::Error> {
        self.inner.flush(out)
    }
    fn error_policy(&self) -> ErrorPolicy {
        self.inner.error_policy()
    }
    fn backoff(&self) -> Option<Duration> {
        Some(self.bucket.wait_for(1).max(Duration::from_micros(50)))
    }
    fn on_idle(&mut self, out: &mut Outbox<'_, S::Out>) -> Option<Duration> {
        self.inner.on_idle(out)
    }
}

impl<S: AsyncStage> AsyncStage for RateLimit<S> {
    type In = S::In;
    type Out = S::Out;
    type Error = S::Error;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, S::In>,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        let want = burst.len();
        let mut granted = 0;
        while granted < want {
            let now = Instant::now();
            granted += self.bucket.take(want - granted, now);
            if granted < want {
                tokio::time::sleep(self.bucket.wait_for(1)).await;
            }
        }
        self.inner.process_burst(burst, out, failures).await
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
        self.inner.progress(out, failures).await
    }
}
