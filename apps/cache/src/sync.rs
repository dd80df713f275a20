//! The one place that chooses between `std` and `loom` primitives.
//!
//! The slot cells ([`crate::slot`]) and the memory tier ([`crate::memtier`]) import
//! their atomics and locks from here, so `RUSTFLAGS="--cfg loom"` model-checks exactly
//! the instance-id check and the tier's admission that ship.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
