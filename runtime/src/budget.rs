//! Per-activation budgets: how much a stage may do each time its worker runs it
//! before the worker moves on to the next stage.
//!
//! By default a stage is activated for one burst and the worker goes round its other
//! stages. A stage that profits from running longer (warm caches, a fused worker with
//! one heavy stage) can be given an item budget of several bursts, and a time budget
//! bounds how long it may keep the worker from the stages fused beside it (the latency
//! those stages see). Budgets are charged per burst, not per item: the worker checks
//! them after each burst, so a budget costs one comparison (and one clock read when a
//! time budget is set) per burst.

use std::time::Duration;

/// Items and time a stage may use per activation before the worker yields to the
/// other stages it runs.
///
/// ```
/// use std::time::Duration;
/// use pipewright::{ActivationBudget, Plan};
///
/// // `crypto` may run up to 512 items (16 bursts of 32) but no longer than 50 µs
/// // each time the worker reaches it.
/// let plan = Plan::fused()
///     .burst("crypto", 32)
///     .activation("crypto", ActivationBudget::items(512).with_time(Duration::from_micros(50)));
/// assert!(plan.resolve(&["parse", "crypto", "sink"]).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationBudget {
    /// Items (charged a whole burst at a time) per activation; `None`: one burst.
    pub items: Option<usize>,
    /// Time per activation; `None`: no time bound.
    pub time: Option<Duration>,
}

impl Default for ActivationBudget {
    /// One burst per activation, the runtime's default.
    fn default() -> Self {
        Self {
            items: None,
            time: None,
        }
    }
}

impl ActivationBudget {
    /// Up to `items` items per activation (in whole bursts).
    pub fn items(items: usize) -> Self {
        Self {
            items: Some(items),
            time: None,
        }
    }

    /// Bursts until `time` has passed (checked after each burst).
    pub fn time(time: Duration) -> Self {
        Self {
            items: None,
            time: Some(time),
        }
    }

    /// Adds a time bound.
    pub fn with_time(mut self, time: Duration) -> Self {
        self.time = Some(time);
        self
    }

    /// True for the default: exactly one burst per activation.
    pub(crate) fn is_single_burst(&self) -> bool {
        self.items.is_none() && self.time.is_none()
    }

    /// Whether the stage may run another burst, having charged `items` so far in an
    /// activation that started `elapsed` ago.
    pub(crate) fn allows_more(&self, items: usize, elapsed: impl FnOnce() -> Duration) -> bool {
        match (self.items, self.time) {
            (None, None) => false,
            (Some(limit), None) => items < limit,
            (limit, Some(time)) => limit.is_none_or(|l| items < l) && elapsed() < time,
        }
    }

    /// Why the budget cannot work, if it cannot.
    pub(crate) fn invalid(&self) -> Option<&'static str> {
        match (self.items, self.time) {
            (Some(0), _) => Some("an item budget of 0"),
            (_, Some(t)) if t.is_zero() => Some("a time budget of 0"),
            _ => None,
        }
    }
}

/// What an I/O stage needs of its worker's io_uring: submission queue entries (the
/// operations it keeps in flight) and fixed-buffer table slots (for a
/// [`BufferPool`](crate::uring::BufferPool) registered with the ring). A worker's ring
/// is sized by the sum over the stages it runs.
///
/// ```
/// use pipewright::{Plan, UringBudget};
///
/// // Up to 64 reads in flight, into 64 registered buffers.
/// let plan = Plan::fused().uring("read", UringBudget { sq_entries: 64, fixed_buffers: 64 });
/// assert!(plan.resolve(&["ranges", "read", "sink"]).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringBudget {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Fixed-buffer table slots.
    pub fixed_buffers: u32,
}

/// The kernel's limit on a ring's entries (`IORING_MAX_ENTRIES`).
pub(crate) const MAX_URING_ENTRIES: u32 = 32_768;
/// The kernel's limit on registered buffers (`IORING_MAX_REG_BUFFERS`).
pub(crate) const MAX_FIXED_BUFFERS: u32 = 16_384;

impl UringBudget {
    /// Why the budget cannot be met, if it cannot.
    pub(crate) fn invalid(&self) -> Option<&'static str> {
        if self.sq_entries == 0 {
            Some("an io_uring budget of 0 submission entries")
        } else if self.sq_entries > MAX_URING_ENTRIES {
            Some("more io_uring entries than the kernel allows (32768)")
        } else if self.fixed_buffers > MAX_FIXED_BUFFERS {
            Some("more fixed buffers than the kernel allows (16384)")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_one_burst() {
        let b = ActivationBudget::default();
        assert!(b.is_single_burst());
        assert!(!b.allows_more(0, || Duration::ZERO));
    }

    #[test]
    fn items_are_charged_per_burst() {
        let b = ActivationBudget::items(100);
        assert!(b.allows_more(96, || Duration::ZERO));
        assert!(!b.allows_more(100, || Duration::ZERO));
        assert!(!b.allows_more(128, || Duration::ZERO));
    }

    #[test]
    fn time_bounds_the_activation() {
        let b = ActivationBudget::items(1000).with_time(Duration::from_micros(10));
        assert!(b.allows_more(10, || Duration::from_micros(9)));
        assert!(!b.allows_more(10, || Duration::from_micros(10)));
        assert!(ActivationBudget::time(Duration::from_millis(1))
            .allows_more(1_000_000, || Duration::ZERO));
    }

    #[test]
    fn zero_budgets_are_invalid() {
        assert!(ActivationBudget::items(0).invalid().is_some());
        assert!(ActivationBudget::time(Duration::ZERO).invalid().is_some());
        assert!(ActivationBudget::items(1).invalid().is_none());
    }
}
