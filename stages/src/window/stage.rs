//! The window stage: stamps items, folds them into their windows, emits closed ones.

use std::fmt;
use std::time::{Duration, Instant};

use super::engine::{Table, Windowed, Windows};
use crate::{Outbox, Stage};

/// Where an item sits on a window stage's axis, and how far the stream has
/// certainly advanced (the watermark): windows ending at or before it close.
pub trait Clock<T>: Send + 'static {
    /// The item's position on the axis (its timestamp, or its index).
    fn stamp(&mut self, item: &T) -> u64;
    /// The watermark after the last stamped item: no later item is expected before it.
    fn watermark(&self) -> u64;
    /// For clocks that advance by themselves (processing time): the watermark now,
    /// with no item. `None` (the default): only items advance it.
    fn idle_watermark(&mut self) -> Option<u64> {
        None
    }
    /// For clocks that advance by themselves: how long until the axis reaches `at`.
    fn wait_until(&self, _at: u64) -> Option<Duration> {
        None
    }
}

/// Count windows: the n-th item (from 0) is at position n.
#[derive(Debug, Default, Clone, Copy)]
pub struct ByCount {
    next: u64,
}

impl<T> Clock<T> for ByCount {
    fn stamp(&mut self, _: &T) -> u64 {
        self.next += 1;
        self.next - 1
    }
    fn watermark(&self) -> u64 {
        self.next
    }
}

/// Event time: the item's own timestamp; items may arrive up to `bound` units out of
/// order (the watermark trails the largest timestamp seen by `bound`).
pub struct ByEventTime<F> {
    timestamp: F,
    bound: u64,
    max_seen: Option<u64>,
}

impl<F> fmt::Debug for ByEventTime<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByEventTime")
            .field("bound", &self.bound)
            .field("max_seen", &self.max_seen)
            .finish()
    }
}

impl<T, F: FnMut(&T) -> u64 + Send + 'static> Clock<T> for ByEventTime<F> {
    fn stamp(&mut self, item: &T) -> u64 {
        let t = (self.timestamp)(item);
        self.max_seen = Some(self.max_seen.map_or(t, |m| m.max(t)));
        t
    }
    fn watermark(&self) -> u64 {
        self.max_seen.map_or(0, |m| m.saturating_sub(self.bound))
    }
}

/// Processing time: when the item reached the stage, in `unit`s since the stage
/// was made.
#[derive(Debug, Clone, Copy)]
pub struct ByProcessingTime {
    origin: Instant,
    unit: Duration,
    last: u64,
}

impl ByProcessingTime {
    fn now(&mut self) -> u64 {
        let units = self.origin.elapsed().as_nanos() / self.unit.as_nanos().max(1);
        self.last = self.last.max(u64::try_from(units).unwrap_or(u64::MAX));
        self.last
    }
}

impl<T> Clock<T> for ByProcessingTime {
    fn stamp(&mut self, _: &T) -> u64 {
        self.now()
    }
    fn watermark(&self) -> u64 {
        self.last
    }
    fn idle_watermark(&mut self) -> Option<u64> {
        Some(self.now())
    }
    fn wait_until(&self, at: u64) -> Option<Duration> {
        let units = at.saturating_sub(self.last);
        let nanos = u128::from(units) * self.unit.as_nanos().max(1);
        // Past the unit boundary, not on it: the window must have ended when woken.
        Some(
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
                + Duration::from_micros(100),
        )
    }
}

/// An item that arrived after every window it belongs to had closed (event time,
/// later than the out-of-orderness bound allows). It is the window stage's error:
/// dropped and counted (`pipewright_stage_dropped_total{reason="error"}`) under the
/// default error policy, or sent to a side output with
/// [`RouteErrorsLayer`](crate::layer::RouteErrorsLayer) and `split_errors`.
pub struct Late<T> {
    /// The item, untouched.
    pub item: T,
    /// Its timestamp.
    pub timestamp: u64,
    /// The watermark it arrived behind.
    pub watermark: u64,
}

impl<T> fmt::Debug for Late<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Late")
            .field("timestamp", &self.timestamp)
            .field("watermark", &self.watermark)
            .finish()
    }
}

impl<T> fmt::Display for Late<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "item at {} arrived after its windows closed (watermark {}): raise the window's out-of-orderness bound to keep such items",
            self.timestamp, self.watermark
        )
    }
}

impl<T> std::error::Error for Late<T> {}

/// What a window stage is before its aggregate is given; see [`aggregate`](Spec::aggregate).
#[derive(Debug, Clone)]
pub struct Spec<C> {
    windows: Windows,
    clock: C,
}

impl<C> Spec<C> {
    pub(super) fn new(windows: Windows, clock: C) -> Self {
        Self { windows, clock }
    }

    /// The aggregate of each window: `init` makes an empty one, `fold` adds an item
    /// (by reference: with sliding windows one item is folded into several windows).
    pub fn aggregate<T, A, I, F>(self, init: I, fold: F) -> Window<T, A, C, I, F>
    where
        T: Send + 'static,
        A: Send + 'static,
        C: Clock<T>,
        I: Fn() -> A + Send + 'static,
        F: FnMut(&mut A, &T) + Send + 'static,
    {
        Window {
            table: Table::new(self.windows),
            clock: self.clock,
            init,
            fold,
            _t: std::marker::PhantomData,
        }
    }
}

pub(super) fn event_time<F>(timestamp: F, bound: u64) -> ByEventTime<F> {
    ByEventTime {
        timestamp,
        bound,
        max_seen: None,
    }
}

pub(super) fn processing_time(unit: Duration) -> ByProcessingTime {
    ByProcessingTime {
        origin: Instant::now(),
        unit,
        last: 0,
    }
}

/// A window stage: `T -> Windowed<A>`; see the [module docs](super).
pub struct Window<T, A, C, I, F> {
    table: Table<A>,
    clock: C,
    init: I,
    fold: F,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T, A, C: fmt::Debug, I, F> fmt::Debug for Window<T, A, C, I, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Window")
            .field("clock", &self.clock)
            .field("watermark", &self.table.watermark())
            .finish()
    }
}

impl<T, A, C, I, F> Stage for Window<T, A, C, I, F>
where
    T: Send + 'static,
    A: Send + 'static,
    C: Clock<T>,
    I: Fn() -> A + Send + 'static,
    F: FnMut(&mut A, &T) + Send + 'static,
{
    type In = T;
    type Out = Windowed<A>;
    type Error = Late<T>;

    fn process(&mut self, item: T, out: &mut Outbox<'_, Windowed<A>>) -> Result<(), Late<T>> {
        let Self {
            table,
            clock,
            init,
            fold,
            ..
        } = self;
        let t = clock.stamp(&item);
        if !table.insert(t, |a| fold(a, &item), &*init) {
            return Err(Late {
                item,
                timestamp: t,
                watermark: table.watermark(),
            });
        }
        table.advance(clock.watermark(), |w| out.push(w));
        Ok(())
    }

    fn flush(&mut self, out: &mut Outbox<'_, Windowed<A>>) -> Result<(), Late<T>> {
        self.table.flush(|w| out.push(w));
        Ok(())
    }

    /// Processing-time windows close on time while no item arrives.
    fn on_idle(&mut self, out: &mut Outbox<'_, Windowed<A>>) -> Option<Duration> {
        let now = self.clock.idle_watermark()?;
        self.table.advance(now, |w| out.push(w));
        let end = self.table.first_end()?;
        self.clock.wait_until(end)
    }
}
