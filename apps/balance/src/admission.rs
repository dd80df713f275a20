//! A counted admission limit shared by concurrent tasks: at most `limit` holders at
//! once, each holding an [`Admitted`] that gives its place back when dropped.
//!
//! The agent's connection cap, its in-flight cap for lease requests and a producer's
//! queue limit are all this. Its atomics come from `pipewright_runtime::sync`, so
//! `RUSTFLAGS="--cfg loom"` model-checks this code (`tests/loom_admission.rs`).
//!
//! tokio's `Semaphore::try_acquire_owned` would do the same; this one is built on the
//! `sync` facade so that loom checks it, and it reads as a gauge ([`Admission::held`]).

use pipewright_runtime::sync::atomic::{AtomicUsize, Ordering};
use pipewright_runtime::sync::Arc;

/// At most `limit` holders at once (see the [module docs](self)).
///
/// ```
/// use pipewright_balance::Admission;
///
/// let queue = Admission::new(2);
/// let a = queue.try_admit().expect("room for two");
/// let _b = queue.try_admit().expect("room for two");
/// assert!(queue.try_admit().is_none(), "a third is refused, not queued");
/// drop(a);
/// assert_eq!(queue.held(), 1);
/// assert!(queue.try_admit().is_some());
/// ```
///
/// Clones share the count.
#[derive(Debug, Clone)]
pub struct Admission {
    held: Arc<AtomicUsize>,
    limit: usize,
}

impl Admission {
    /// A limit of `limit` holders (0 admits nobody).
    pub fn new(limit: usize) -> Self {
        Self {
            held: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// A place if fewer than `limit` are held, else `None`. The check and the count
    /// are one atomic step: concurrent callers never exceed the limit together, and a
    /// caller is refused only when the limit really is reached.
    pub fn try_admit(&self) -> Option<Admitted> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.limit).then_some(held + 1)
            })
            .ok()
            .map(|_| Admitted(self.held.clone()))
    }

    /// Places held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One admitted place; dropping it gives the place back.
#[derive(Debug)]
#[must_use = "the place is given back as soon as this is dropped"]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
