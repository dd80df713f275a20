//! The one place that chooses between `std` and `loom` primitives.
//!
//! Lock-free code in this crate imports atomics, `Arc`, `UnsafeCell` and the async
//! waker slot from here, never from `std` directly, so `RUSTFLAGS="--cfg loom"` model
//! checks exactly the code that ships.

#[cfg(loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    future::AtomicWaker,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    sync::Arc,
};

#[cfg(not(loom))]
pub(crate) use futures::task::AtomicWaker;
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

/// `std`'s `UnsafeCell` with loom's closure-based access API, so both build the same
/// code. Accesses compile to plain pointer use.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
