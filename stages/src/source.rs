//! Where items come from when they are not sent in from outside.

use std::time::Duration;

use crate::{Outbox, StageError};

/// What a [`Source`] reports after a pull.
///
/// A source that cannot go on (a read failed, a socket closed under it) returns
/// [`Failed`](SourceState::Failed): the items it emitted before are kept and flow on,
/// the source is ended, the rest of the pipeline drains, and the error is counted
/// (`pipewright_source_errors_total`) and reported with the source's name in the
/// run's report (`Report::source_errors`).
///
/// ```
/// use pipewright::{Outbox, Source, SourceState};
///
/// /// Reads numbers from a reader, one per line; a bad read ends the source.
/// struct Numbers<R>(std::io::Lines<R>);
///
/// impl<R: std::io::BufRead + Send + 'static> Source for Numbers<R> {
///     type Out = String;
///     fn pull(&mut self, out: &mut Outbox<'_, String>, max: usize) -> SourceState {
///         for _ in 0..max {
///             match self.0.next() {
///                 Some(Ok(line)) => out.push(line),
///                 Some(Err(error)) => return SourceState::failed(error),
///                 None => return SourceState::Exhausted,
///             }
///         }
///         SourceState::Ready
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// It produced items (or may have more right away).
    Ready,
    /// Nothing now; try again after the given time, or when woken if `None`.
    Idle(Option<Duration>),
    /// It will never produce again; its output is closed once drained.
    Exhausted,
    /// It failed and will never produce again: the error is counted and reported, the
    /// items emitted so far (including by this pull) flow on, its output is closed.
    Failed(StageError),
}

impl SourceState {
    /// [`SourceState::Failed`] with `error`.
    pub fn failed<E: std::error::Error + Send + Sync + 'static>(error: E) -> Self {
        Self::Failed(StageError::new(error))
    }

    /// True for [`Exhausted`](SourceState::Exhausted) and
    /// [`Failed`](SourceState::Failed): the source will not be pulled again.
    pub fn is_end(&self) -> bool {
        matches!(self, Self::Exhausted | Self::Failed(_))
    }
}

/// A producer of items driven by a worker: a generator, a file reader, a socket.
///
/// ```
/// use pipewright::{Outbox, Source, SourceState};
///
/// struct Count(u64, u64);
///
/// impl Source for Count {
///     type Out = u64;
///     fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
///         for _ in 0..max {
///             if self.0 == self.1 {
///                 return SourceState::Exhausted;
///             }
///             out.push(self.0);
///             self.0 += 1;
///         }
///         SourceState::Ready
///     }
/// }
/// ```
pub trait Source: Send + 'static {
    /// What the source emits.
    type Out: Send + 'static;

    /// Emits up to `max` items.
    fn pull(&mut self, out: &mut Outbox<'_, Self::Out>, max: usize) -> SourceState;
}

/// A producer that awaits: a socket, a port, a timer. Driven by its worker as one
/// long-lived task; `pull` should await until it has at least one item (or the source
/// has ended) rather than return empty-handed. An abort, or a stop (the runtime's
/// `StopHandle`), drops a pending `pull` at the await it is parked in, so a source
/// waiting for traffic never holds up shutdown: keep state that must survive in
/// `self` and await only cancel-safe operations (`recv`, `accept`, `read_buf` into a
/// buffer you own), never ones that lose data when dropped midway. On a stop, the
/// items the dropped pull had already pushed into `out` are kept and flow on.
///
/// ```
/// use pipewright::{AsyncSource, Outbox, SourceState};
///
/// /// Ticks every millisecond, ten times.
/// struct Ticks(u32);
///
/// impl AsyncSource for Ticks {
///     type Out = u32;
///     async fn pull(&mut self, out: &mut Outbox<'_, u32>, _max: usize) -> SourceState {
///         if self.0 == 10 {
///             return SourceState::Exhausted;
///         }
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///         self.0 += 1;
///         out.push(self.0);
///         SourceState::Ready
///     }
/// }
/// ```
pub trait AsyncSource: Send + 'static {
    /// What the source emits.
    type Out: Send + 'static;

    /// Emits up to `max` items, awaiting the first.
    fn pull(
        &mut self,
        out: &mut Outbox<'_, Self::Out>,
        max: usize,
    ) -> impl std::future::Future<Output = SourceState>;
}

/// A source over any iterator.
#[derive(Debug)]
pub struct IterSource<I>(pub I);

impl<I> Source for IterSource<I>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    type Out = I::Item;

    fn pull(&mut self, out: &mut Outbox<'_, I::Item>, max: usize) -> SourceState {
        for _ in 0..max {
            match self.0.next() {
                Some(item) => out.push(item),
                None => return SourceState::Exhausted,
            }
        }
        SourceState::Ready
    }
}

/// A source that emits the time every `period` (a timer for ticks, retries,
/// periodic flushes): see [`interval`].
#[derive(Debug)]
pub struct Interval {
    period: std::time::Duration,
    next: Option<tokio::time::Instant>,
}

/// Emits [`std::time::Instant::now`] every `period` (at least 1 ms), forever; missed
/// ticks are skipped, not bunched up. Runs as an [`AsyncSource`] on its worker's
/// timer.
///
/// ```
/// use std::time::Duration;
/// use pipewright::source::interval;
/// let ticks = interval(Duration::from_millis(200)); // b.source_async("tick", ticks)
/// # let _ = ticks;
/// ```
pub fn interval(period: std::time::Duration) -> Interval {
    Interval {
        period: period.max(std::time::Duration::from_millis(1)),
        next: None,
    }
}

impl AsyncSource for Interval {
    type Out = std::time::Instant;

    async fn pull(&mut self, out: &mut Outbox<'_, std::time::Instant>, _max: usize) -> SourceState {
        let now = tokio::time::Instant::now();
        let next = *self.next.get_or_insert(now + self.period);
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        // Skip missed ticks: the next one is a whole period after the latest due time.
        let mut due = next + self.period;
        while due <= now {
            due += self.period;
        }
        self.next = Some(due);
        out.push(std::time::Instant::now());
        SourceState::Ready
    }
}
