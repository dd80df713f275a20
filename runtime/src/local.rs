//! Worker-local values inside stages that move to their worker.
//!
//! A stage is built on the caller's thread and moved to its worker, so it must be
//! `Send`; I/O resources tied to the worker's io_uring (which are `!Send`) can only be
//! created once the stage runs there. [`WorkerLocal`] holds such a value: created and
//! used on one thread only, it may travel inside a stage because nothing but that
//! thread ever touches the value.

// Unsafe here: `Send` for a value only its owning thread ever touches.
#![allow(unsafe_code)]

use std::thread::{self, ThreadId};

/// A value created on, and only ever touched by, one thread (the worker's), inside a
/// `Send` stage.
///
/// ```
/// use std::rc::Rc;
/// use pipewright::WorkerLocal;
///
/// struct MyStage {
///     ring: WorkerLocal<Rc<u32>>, // stands for a !Send io_uring resource
/// }
/// fn assert_send<T: Send>() {}
/// assert_send::<MyStage>();
///
/// let mut stage = MyStage { ring: WorkerLocal::new() };
/// // On the worker, at first use:
/// let ring = stage.ring.get_or_try_init(|| Ok::<_, std::io::Error>(Rc::new(7))).unwrap();
/// assert_eq!(**ring, 7);
/// ```
pub struct WorkerLocal<T> {
    value: Option<(ThreadId, Box<T>)>,
}

impl<T> std::fmt::Debug for WorkerLocal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLocal")
            .field("initialised", &self.value.is_some())
            .finish()
    }
}

impl<T> Default for WorkerLocal<T> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: the value is only ever reached (created, borrowed, dropped) on the thread
// recorded with it: `get`/`get_or_try_init` return `None`/an error elsewhere, and a
// `WorkerLocal` dropped on another thread leaks its value instead of dropping it. Moving
// the `WorkerLocal` only moves the `Box` pointer, never touching `T`.
unsafe impl<T> Send for WorkerLocal<T> {}

impl<T> WorkerLocal<T> {
    /// Empty.
    pub const fn new() -> Self {
        Self { value: None }
    }

    /// The value, if it was created on this thread.
    pub fn get(&mut self) -> Option<&mut T> {
        match &mut self.value {
            Some((owner, value)) if *owner == thread::current().id() => Some(value),
            _ => None,
        }
    }

    /// The value, created on this thread by `init` if there is none yet. Fails with
    /// `init`'s error, or [`WrongThread`] if the value belongs to another thread.
    pub fn get_or_try_init<E: From<WrongThread>>(
        &mut self,
        init: impl FnOnce() -> Result<T, E>,
    ) -> Result<&mut T, E> {
        let me = thread::current().id();
        match &self.value {
            Some((owner, _)) if *owner != me => return Err(WrongThread.into()),
            Some(_) => {}
            None => self.value = Some((me, Box::new(init()?))),
        }
        Ok(&mut self.value.as_mut().expect("set above").1)
    }
}

impl<T> Drop for WorkerLocal<T> {
    fn drop(&mut self) {
        if let Some((owner, value)) = self.value.take() {
            if owner != thread::current().id() {
                // Dropping `T` here could race its thread (an `Rc`'s count): leak it.
                std::mem::forget(value);
            }
        }
    }
}

/// A [`WorkerLocal`] was used on a thread other than the one that created its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a worker-local value was used off its worker thread")]
pub struct WrongThread;

impl From<WrongThread> for std::io::Error {
    fn from(e: WrongThread) -> Self {
        std::io::Error::other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn another_thread_sees_nothing_and_drops_nothing() {
        let mut local = WorkerLocal::new();
        let rc = Rc::new(5);
        local
            .get_or_try_init(|| Ok::<_, std::io::Error>(rc.clone()))
            .unwrap();
        assert_eq!(Rc::strong_count(&rc), 2);
        let moved = std::thread::spawn(move || {
            assert!(local.get().is_none());
            assert!(local
                .get_or_try_init(|| Ok::<_, std::io::Error>(Rc::new(1)))
                .is_err());
            // Dropped here, on the wrong thread: leaked, not dropped.
        });
        moved.join().unwrap();
        assert_eq!(
            Rc::strong_count(&rc),
            2,
            "the clone was leaked, not touched"
        );
    }
}
