//! The one place that chooses between `std` and `loom` primitives.
//!
//! Shared-state code in this crate (the [`LockTable`](crate::locks::LockTable)) imports
//! its mutex from here, never from `std` directly, so `RUSTFLAGS="--cfg loom"` model
//! checks exactly the code that ships.

#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
