//! The three views a stage gets on one activation: its input burst, its outbox and its
//! failure list. All three borrow buffers that the executor reuses across activations,
//! so a steady-state burst allocates nothing.

use std::collections::VecDeque;

/// The items given to a stage for one activation, in arrival order.
///
/// A stage takes items with [`Burst::pop`]. Items it leaves in the burst are kept by the
/// executor and offered again on the next activation: this is how a rate-limited stage
/// applies backpressure without dropping anything.
#[derive(Debug)]
pub struct Burst<'a, T> {
    items: &'a mut VecDeque<T>,
}

impl<'a, T> Burst<'a, T> {
    /// Wraps an executor-owned buffer.
    #[inline]
    pub fn new(items: &'a mut VecDeque<T>) -> Self {
        Self { items }
    }

    /// Takes the next item, or `None` when the burst is used up.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Looks at the next item without taking it.
    #[inline]
    pub fn peek(&self) -> Option<&T> {
        self.items.front()
    }

    /// Items not yet taken.
    #[inline]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when every item has been taken.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes every remaining item, in order.
    #[inline]
    pub fn drain(&mut self) -> std::collections::vec_deque::Drain<'_, T> {
        self.items.drain(..)
    }
}

/// Where a stage puts its outputs: zero, one or many per input.
#[derive(Debug)]
pub struct Outbox<'a, T> {
    items: &'a mut VecDeque<T>,
}

impl<'a, T> Outbox<'a, T> {
    /// Wraps an executor-owned buffer.
    #[inline]
    pub fn new(items: &'a mut VecDeque<T>) -> Self {
        Self { items }
    }

    /// Emits one output.
    #[inline]
    pub fn push(&mut self, item: T) {
        self.items.push_back(item);
    }

    /// Outputs emitted so far in this activation and not yet handed downstream.
    #[inline]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is waiting to go downstream.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<T> Extend<T> for Outbox<'_, T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        self.items.extend(iter);
    }
}

/// Per-item failures of one activation. The executor applies the stage's
/// [`ErrorPolicy`](crate::ErrorPolicy) to each one after the burst.
#[derive(Debug)]
pub struct Failures<'a, E> {
    errors: &'a mut Vec<E>,
}

impl<'a, E> Failures<'a, E> {
    /// Wraps an executor-owned buffer.
    #[inline]
    pub fn new(errors: &'a mut Vec<E>) -> Self {
        Self { errors }
    }

    /// Records that one item failed with `error`.
    #[inline]
    pub fn push(&mut self, error: E) {
        self.errors.push(error);
    }

    /// Failures recorded so far in this activation.
    #[inline]
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// True when no item failed.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}
