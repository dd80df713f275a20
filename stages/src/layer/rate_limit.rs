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
    /// A full bucket. `capacity` is at least 1.
    ///
    /// # Panics
    ///
    /// If `rate` is not a positive, finite number (a programming error, reported where
    /// the bucket is made rather than later on a worker).
    pub fn new(rate: f64, capacity: u32) -> Self {
        assert!(
            rate.is_finite() && rate > 0.0,
            "a token bucket's rate must be a positive, finite number of tokens per second, not {rate}"
        );
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
            // A tiny rate's wait does not fit a `Duration`: as long as it can be.
            Duration::try_from_secs_f64(missing / self.rate).unwrap_or(Duration::MAX)
        }
    }
}

/// Limits a stage to a rate of items per second. Items over the rate stay in the burst
/// (backpressure upstream), never dropped.
///
/// The limit is taken per burst (`process_burst`): apply it outermost. Wrappers that
/// hand their inner stage one item at a time (`RouteErrorsLayer`, `release_after`,
/// tagged stages, ordered replicas) call the inner stage's `process`, which a rate
/// limit inside them does not meter.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    rate: f64,
    capacity: u32,
}

impl RateLimitLayer {
    /// `rate` items per second, with bursts of up to `capacity` items.
    ///
    /// ```
    /// use pipewright_stages::layer::RateLimitLayer;
    /// let limit = RateLimitLayer::per_second(1000.0, 32);
    /// # let _ = limit;
    /// ```
    ///
    /// # Panics
    ///
    /// If `rate` is not a positive, finite number (so that a rate of 0 or NaN from a
    /// configuration file fails where the pipeline is built, with this message, not
    /// on a worker once the bucket runs dry).
    pub fn per_second(rate: f64, capacity: u32) -> Self {
        assert!(
            rate.is_finite() && rate > 0.0,
            "RateLimitLayer::per_second: the rate must be a positive, finite number of items per second, not {rate}"
        );
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
        // Looked at again at least every second (a very low rate's wait could be
        // longer than a worker's clock can add).
        Some(
            self.bucket
                .wait_for(1)
                .clamp(Duration::from_micros(50), Duration::from_secs(1)),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_rate_waits_as_long_as_a_duration_can_and_backs_off_at_most_a_second() {
        let mut bucket = TokenBucket::new(1e-300, 1);
        assert_eq!(bucket.take(5, Instant::now()), 1);
        assert_eq!(bucket.wait_for(1), Duration::MAX);
        let mut limited = RateLimitLayer::per_second(1e-300, 1).layer(crate::stage::map(|x: u8| x));
        assert_eq!(limited.bucket.take(1, Instant::now()), 1);
        assert_eq!(limited.backoff(), Some(Duration::from_secs(1)));
    }

    #[test]
    #[should_panic(expected = "positive, finite number of items per second, not 0")]
    fn a_zero_rate_is_refused_where_the_layer_is_made() {
        let _ = RateLimitLayer::per_second(0.0, 8);
    }

    #[test]
    #[should_panic(expected = "not NaN")]
    fn a_nan_rate_is_refused_where_the_layer_is_made() {
        let _ = RateLimitLayer::per_second(f64::NAN, 8);
    }
}
