use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{Burst, ErrorPolicy, Failures, Outbox, Source, SourceState, Stage};

/// A bytes-in-flight budget shared by the entry and the exit of a pipeline: the source
/// charges each item's size before emitting it and pauses when the budget is spent;
/// the sink releases the size once it is done with the item. Memory held by items
/// in between can never exceed the budget, whatever the rates.
///
/// Items that a stage between the two drops (an error policy, a filter) stay charged:
/// put the release where every item ends, or release in the dropping stage.
///
/// ```
/// use pipewright::layer::ByteBudget;
/// let budget = ByteBudget::new(1 << 20);
/// assert!(budget.try_charge(1000));
/// budget.release(1000);
/// assert_eq!(budget.in_flight(), 0);
/// ```
#[derive(Clone)]
pub struct ByteBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteBudget")
            .field("in_flight", &self.in_flight())
            .field("limit", &self.limit)
            .finish()
    }
}

impl ByteBudget {
    /// A budget of `limit` bytes (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            limit: limit.max(1),
        }
    }

    /// Takes `bytes` from the budget if they fit. An item larger than the whole budget
    /// is admitted alone (when nothing else is in flight), so it cannot block forever.
    pub fn try_charge(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let fits = used + bytes <= self.limit || used == 0;
            if !fits {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Gives `bytes` back.
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes charged and not yet released.
    pub fn in_flight(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Wraps `source` so it charges `weigh(item)` per item and pauses when spent.
    pub fn charge<S, W>(&self, source: S, weigh: W) -> Charged<S, W>
    where
        S: Source,
        W: Fn(&S::Out) -> usize + Send + 'static,
    {
        Charged {
            source,
            weigh,
            budget: self.clone(),
            held: None,
            scratch: std::collections::VecDeque::new(),
            end: None,
        }
    }

    /// Wraps the last `stage` so it releases `weigh(item)` once it has processed it.
    pub fn release_after<S, W>(&self, stage: S, weigh: W) -> Released<S, W>
    where
        S: Stage,
        W: Fn(&S::In) -> usize + Send + 'static,
    {
        Released {
            stage,
            weigh,
            budget: self.clone(),
        }
    }
}

/// A source that charges a [`ByteBudget`]; see [`ByteBudget::charge`].
pub struct Charged<S: Source, W> {
    source: S,
    weigh: W,
    budget: ByteBudget,
    /// An item pulled but not yet admitted (kept, never dropped).
    held: Option<S::Out>,
    scratch: std::collections::VecDeque<S::Out>,
    /// How the inner source ended (exhausted or failed), reported once what was
    /// pulled before it has been admitted.
    end: Option<SourceState>,
}

impl<S: Source, W> fmt::Debug for Charged<S, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charged")
            .field("budget", &self.budget)
            .field("holding", &self.held.is_some())
            .finish()
    }
}

/// How long a paused source waits before looking at the budget again.
const BUDGET_RETRY: Duration = Duration::from_micros(200);

impl<S, W> Source for Charged<S, W>
where
    S: Source,
    W: Fn(&S::Out) -> usize + Send + 'static,
{
    type Out = S::Out;

    fn pull(&mut self, out: &mut Outbox<'_, S::Out>, max: usize) -> SourceState {
        let mut emitted = 0;
        let mut state = SourceState::Ready;
        while emitted < max {
            let item = match self.held.take().or_else(|| self.scratch.pop_front()) {
                Some(item) => item,
                None if self.end.is_some() => break,
                None => {
                    // Pull one item at a time: a pulled item is already memory in flight.
                    state = self.source.pull(&mut Outbox::new(&mut self.scratch), 1);
                    if state.is_end() {
                        self.end = Some(state.clone());
                    }
                    match self.scratch.pop_front() {
                        Some(item) => item,
                        None => break,
                    }
                }
            };
            if !self.budget.try_charge((self.weigh)(&item)) {
                self.held = Some(item);
                return SourceState::Idle(Some(BUDGET_RETRY));
            }
            out.push(item);
            emitted += 1;
        }
        if self.held.is_some() || !self.scratch.is_empty() {
            return SourceState::Ready;
        }
        match &self.end {
            Some(end) => end.clone(),
            None => state,
        }
    }
}

struct ReleaseOnDrop<'a>(&'a ByteBudget, usize);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// A stage that releases a [`ByteBudget`] after each item; see
/// [`ByteBudget::release_after`].
pub struct Released<S, W> {
    stage: S,
    weigh: W,
    budget: ByteBudget,
}

impl<S, W> fmt::Debug for Released<S, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Released")
            .field("budget", &self.budget)
            .finish()
    }
}

impl<S, W> Stage for Released<S, W>
where
    S: Stage,
    W: Fn(&S::In) -> usize + Send + 'static,
{
    type In = S::In;
    type Out = S::Out;
    type Error = S::Error;

    #[inline]
    fn process(&mut self, item: S::In, out: &mut Outbox<'_, S::Out>) -> Result<(), S::Error> {
        // Released however processing ends (success, error or panic): the item is gone.
        let _release = ReleaseOnDrop(&self.budget, (self.weigh)(&item));
        self.stage.process(item, out)
    }
    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, S::In>,
        out: &mut Outbox<'_, S::Out>,
        failures: &mut Failures<'_, S::Error>,
    ) {
        while let Some(item) = burst.pop() {
            if let Err(e) = self.process(item, out) {
                failures.push(e);
            }
        }
    }
    fn flush(&mut self, out: &mut Outbox<'_, S::Out>) -> Result<(), S::Error> {
        self.stage.flush(out)
    }
    fn error_policy(&self) -> ErrorPolicy {
        self.stage.error_policy()
    }
    fn backoff(&self) -> Option<Duration> {
        self.stage.backoff()
    }
    fn on_idle(&mut self, out: &mut Outbox<'_, S::Out>) -> Option<Duration> {
        self.stage.on_idle(out)
    }
}
