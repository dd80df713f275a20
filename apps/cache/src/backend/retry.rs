//! The backends' retry decision: sans-I/O (the caller supplies the attempt number, the
//! failure's kind and the jitter draw; nothing here reads a clock or sleeps).

use std::time::Duration;

use super::BackendErrorKind;

/// Bounded retries with capped exponential backoff and "equal jitter": after the
/// `n`-th failed attempt the wait is `d/2 + jitter·d/2` with
/// `d = min(max_backoff, base_backoff · 2^(n-1))`, doubled (within the cap) when the
/// store throttled us. Not-found and auth failures are not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included); at least 1.
    pub max_attempts: u32,
    /// The wait after the first failure (before jitter).
    pub base_backoff: Duration,
    /// The largest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 50 ms doubling to at most 2 s.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before trying again after attempt `attempt` (1-based) failed
    /// with `kind`, given a `jitter` draw in `[0, 1)`; `None`: give up.
    pub fn next_delay(
        &self,
        attempt: u32,
        kind: BackendErrorKind,
        jitter: f64,
    ) -> Option<Duration> {
        if !kind.retryable() || attempt >= self.max_attempts.max(1) {
            return None;
        }
        let shift = (attempt.saturating_sub(1)).min(30);
        let mut d = self.base_backoff.saturating_mul(1 << shift);
        if kind == BackendErrorKind::Throttled {
            d = d.saturating_mul(2);
        }
        let d = d.min(self.max_backoff);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Some(d / 2 + d.mul_f64(jitter / 2.0))
    }

    /// The longest an operation can take under this policy when each attempt is cut
    /// at `timeout`: all attempts plus all waits.
    pub fn worst_case(&self, timeout: Duration) -> Duration {
        let attempts = self.max_attempts.max(1);
        let mut total = timeout.saturating_mul(attempts);
        for n in 1..attempts {
            total += self
                .next_delay(n, BackendErrorKind::Throttled, 1.0)
                .unwrap_or_default();
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KINDS: [BackendErrorKind; 6] = [
        BackendErrorKind::NotFound,
        BackendErrorKind::Auth,
        BackendErrorKind::Timeout,
        BackendErrorKind::Throttled,
        BackendErrorKind::Unavailable,
        BackendErrorKind::Other,
    ];

    proptest! {
        #[test]
        fn bounded_and_capped(
            max_attempts in 0u32..10,
            base_ms in 0u64..5_000,
            max_ms in 0u64..60_000,
            attempt in 0u32..40,
            k in 0usize..6,
            jitter in proptest::num::f64::ANY,
        ) {
            let p = RetryPolicy {
                max_attempts,
                base_backoff: Duration::from_millis(base_ms),
                max_backoff: Duration::from_millis(max_ms),
            };
            let kind = KINDS[k];
            match p.next_delay(attempt, kind, jitter) {
                Some(d) => {
                    prop_assert!(kind.retryable());
                    prop_assert!(attempt < max_attempts.max(1));
                    prop_assert!(d <= p.max_backoff);
                }
                None => prop_assert!(!kind.retryable() || attempt >= max_attempts.max(1)),
            }
            // The attempts are bounded: some attempt number always gives up.
            prop_assert!(p.next_delay(max_attempts.max(1), kind, jitter).is_none());
        }

        #[test]
        fn waits_grow_with_attempts(attempt in 1u32..20, jitter in 0.0f64..1.0) {
            let p = RetryPolicy { max_attempts: 30, ..RetryPolicy::default() };
            let a = p.next_delay(attempt, BackendErrorKind::Timeout, jitter).unwrap();
            let b = p.next_delay(attempt + 1, BackendErrorKind::Timeout, jitter).unwrap();
            prop_assert!(b >= a);
            let t = p.next_delay(attempt, BackendErrorKind::Throttled, jitter).unwrap();
            prop_assert!(t >= a, "throttling never waits less");
        }
    }

    #[test]
    fn never_retries_not_found_or_auth() {
        let p = RetryPolicy::default();
        assert_eq!(p.next_delay(1, BackendErrorKind::NotFound, 0.5), None);
        assert_eq!(p.next_delay(1, BackendErrorKind::Auth, 0.5), None);
        assert_eq!(
            p.next_delay(1, BackendErrorKind::Timeout, 0.0),
            Some(Duration::from_millis(25))
        );
        assert_eq!(
            p.next_delay(2, BackendErrorKind::Unavailable, 1.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(p.next_delay(4, BackendErrorKind::Timeout, 0.0), None);
        assert!(p.worst_case(Duration::from_secs(1)) < Duration::from_secs(6));
    }
}
