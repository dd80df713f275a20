//! Synchronization types that are `std`'s in a normal build and [loom]'s under
//! `RUSTFLAGS="--cfg loom"`: the one place that chooses between them.
//!
//! pipewright's lock-free code (the [rings](crate::ring), the [wake-up
//! signals](crate::signal)) imports its atomics, `Arc` and `UnsafeCell` from here,
//! never from `std` directly, so a loom build model-checks exactly the code that
//! ships. Your stages can do the same: write shared state (a dedup set, a counter,
//! a cache) with these types, and the same code runs at full speed in the threaded
//! runtime and is model-checked by loom in a test that runs the pipeline with the
//! single-threaded inline executor on two loom threads.
//!
//! | here | normal build | `--cfg loom` |
//! |---|---|---|
//! | [`Arc`], [`Mutex`], [`RwLock`], [`Condvar`] | `std::sync` | `loom::sync` |
//! | [`atomic`] | `std::sync::atomic` | `loom::sync::atomic` |
//! | [`thread`] | `std::thread` | `loom::thread` |
//! | [`UnsafeCell`] | `std`'s, with loom's `with`/`with_mut` API | `loom::cell::UnsafeCell` |
//! | [`AtomicWaker`] | `futures`' | `loom::future::AtomicWaker` |
//! | [`model`] | runs the closure once | `loom::model`: every interleaving |
//!
//! Under loom these types may only be used inside [`model`]; a loom build is for
//! loom tests only (`cargo test --release --test <your_loom_test>` with its own
//! `--target-dir`, since every dependency is rebuilt).
//!
//! ```
//! use pipewright::sync::{atomic::{AtomicU64, Ordering}, model, thread, Arc};
//!
//! model(|| {
//!     let hits = Arc::new(AtomicU64::new(0));
//!     let other = {
//!         let hits = hits.clone();
//!         thread::spawn(move || hits.fetch_add(1, Ordering::Relaxed))
//!     };
//!     hits.fetch_add(1, Ordering::Relaxed);
//!     other.join().unwrap();
//!     assert_eq!(hits.load(Ordering::Relaxed), 2);
//! });
//! ```
//!
//! The guide's "testing with loom" page (`pipewright::guide::loom`) shows a whole
//! pipeline model-checked this way.
//!
//! [loom]: https://docs.rs/loom

#[cfg(loom)]
pub use loom::{
    cell::UnsafeCell,
    future::AtomicWaker,
    sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
    thread,
};

#[cfg(not(loom))]
pub use futures::task::AtomicWaker;
#[cfg(not(loom))]
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(loom))]
pub use std::thread;

// The runtime's own lock-free code names these at this module's root.
pub(crate) use self::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Atomic integers, booleans and pointers, [`Ordering`] and
/// [`fence`](atomic::fence):
/// `std::sync::atomic`'s, or loom's under `--cfg loom`.
pub mod atomic {
    #[cfg(loom)]
    pub use loom::sync::atomic::{
        fence, AtomicBool, AtomicI16, AtomicI32, AtomicI64, AtomicI8, AtomicIsize, AtomicPtr,
        AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
    };
    #[cfg(not(loom))]
    pub use std::sync::atomic::{
        fence, AtomicBool, AtomicI16, AtomicI32, AtomicI64, AtomicI8, AtomicIsize, AtomicPtr,
        AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
    };
}

/// Runs `f` under the model checker: with `--cfg loom`, `loom::model(f)` — `f` runs
/// once for every interleaving of the [`thread`]s it spawns (within loom's bounds,
/// e.g. `LOOM_MAX_PREEMPTIONS`), and a panic in any of them fails with the failing
/// schedule; in a normal build, `f` runs once on real threads (a smoke test).
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    #[cfg(loom)]
    loom::model(f);
    #[cfg(not(loom))]
    f();
}

/// `std`'s `UnsafeCell` with loom's closure-based access API, so the same code builds
/// under both. Accesses compile to plain pointer use; under loom, every access is
/// checked against concurrent ones.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a shared pointer to the value (loom checks that no `with_mut`
    /// runs concurrently).
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with an exclusive pointer to the value (loom checks that no other
    /// access runs concurrently).
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
