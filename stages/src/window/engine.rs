//! Window assignment and the open-window table: pure, deterministic, no clock.

use std::collections::BTreeMap;

/// Which windows an item falls in: windows of `size` starting every `step` (both in
/// the unit of the timestamps, or items for count windows), aligned to 0. Tumbling
/// windows have `step == size`; sliding windows overlap (`step < size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    size: u64,
    step: u64,
}

/// Why a window description was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A window must span at least one unit.
    #[error("window size 0: use a size of at least 1")]
    ZeroSize,
    /// A sliding window must advance by at least one unit and at most its size (a
    /// larger step would leave items in no window).
    #[error("window step {step} for size {size}: use a step from 1 to the size")]
    BadStep {
        /// The size.
        size: u64,
        /// The step.
        step: u64,
    },
}

impl Windows {
    /// Non-overlapping windows `[k*size, (k+1)*size)`.
    pub fn tumbling(size: u64) -> Result<Self, WindowError> {
        Self::sliding(size, size)
    }

    /// Windows `[k*step, k*step + size)`: every item falls in `size / step` of them
    /// (fewer near 0, where windows would start before 0).
    pub fn sliding(size: u64, step: u64) -> Result<Self, WindowError> {
        if size == 0 {
            return Err(WindowError::ZeroSize);
        }
        if step == 0 || step > size {
            return Err(WindowError::BadStep { size, step });
        }
        Ok(Self { size, step })
    }

    /// The window size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The distance between window starts.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Starts of the windows containing `t`, latest first.
    pub fn starts_of(&self, t: u64) -> impl Iterator<Item = u64> {
        let (size, step) = (self.size, self.step);
        let last = t - t % step;
        (0..)
            .map(move |k: u64| k.checked_mul(step).and_then(|d| last.checked_sub(d)))
            .take_while(move |start| start.is_some_and(|s| s.saturating_add(size) > t))
            .map(|start| start.expect("checked by take_while"))
    }
}

/// A closed window and its aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windowed<A> {
    /// First unit of the window (inclusive).
    pub start: u64,
    /// End of the window (exclusive).
    pub end: u64,
    /// How many items were folded into it.
    pub items: u64,
    /// The aggregate.
    pub value: A,
}

/// Open windows by start, their aggregates, and the watermark that closes them.
#[derive(Debug)]
pub(crate) struct Table<A> {
    windows: Windows,
    open: BTreeMap<u64, (u64, A)>,
    /// Every window ending at or before it is closed.
    watermark: u64,
}

impl<A> Table<A> {
    pub(crate) fn new(windows: Windows) -> Self {
        Self {
            windows,
            open: BTreeMap::new(),
            watermark: 0,
        }
    }

    pub(crate) fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The end of the earliest open window.
    pub(crate) fn first_end(&self) -> Option<u64> {
        self.open
            .first_key_value()
            .map(|(start, _)| start.saturating_add(self.windows.size))
    }

    /// Folds an item at `t` into each of its windows that is still open; false when
    /// every one of them has closed (the item is late).
    pub(crate) fn insert(
        &mut self,
        t: u64,
        mut fold: impl FnMut(&mut A),
        init: impl Fn() -> A,
    ) -> bool {
        let mut accepted = false;
        for start in self.windows.starts_of(t) {
            if start.saturating_add(self.windows.size) <= self.watermark {
                continue;
            }
            let (items, value) = self.open.entry(start).or_insert_with(|| (0, init()));
            *items += 1;
            fold(value);
            accepted = true;
        }
        accepted
    }

    /// Raises the watermark (never lowers it) and emits every window it closes, in
    /// order of their ends.
    pub(crate) fn advance(&mut self, watermark: u64, mut emit: impl FnMut(Windowed<A>)) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        let size = self.windows.size;
        while let Some(entry) = self.open.first_entry() {
            if entry.key().saturating_add(size) > watermark {
                break;
            }
            let (start, (items, value)) = entry.remove_entry();
            emit(Windowed {
                start,
                end: start.saturating_add(size),
                items,
                value,
            });
        }
    }

    /// Emits every open window (the stream ended), in order.
    pub(crate) fn flush(&mut self, mut emit: impl FnMut(Windowed<A>)) {
        let size = self.windows.size;
        for (start, (items, value)) in std::mem::take(&mut self.open) {
            emit(Windowed {
                start,
                end: start.saturating_add(size),
                items,
                value,
            });
        }
    }
}
