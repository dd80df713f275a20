//! The one place that chooses between `std` and `loom` primitives.
//!
//! The slot cells ([`crate::slot`]) import their atomics from here, so
//! `RUSTFLAGS="--cfg loom"` model-checks exactly the instance-id check that ships.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
