//! Readiness of a descriptor a stage does not own (a port's socket, a TAP device),
//! on the worker's tokio reactor.

// Unsafe here: registers a borrowed descriptor with the reactor (the caller keeps it open).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;

/// Waits for a descriptor to become readable. Holds a duplicate of it, so the
/// registration stays valid whoever owns the original.
#[derive(Debug)]
pub struct Readable {
    fd: AsyncFd<OwnedFd>,
}

impl Readable {
    /// Watches `fd` (duplicated) on the current tokio runtime; call it on the worker.
    pub fn new(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let owned = fd.try_clone_to_owned()?;
        // SAFETY: `owned` is a descriptor this value owns; it stays open and the same
        // until the AsyncFd (which owns it) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd })
    }

    /// Resolves when the descriptor is (or may be) readable. Call
    /// [`ReadyGuard::not_ready`] on the guard when a read then found nothing.
    pub async fn ready(&self) -> io::Result<ReadyGuard<'_>> {
        Ok(ReadyGuard(self.fd.readable().await?))
    }

    /// The duplicate's number.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// The watched duplicate, for reads and `poll(2)` on it without a raw number.
impl AsFd for Readable {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// Proof of readiness from [`Readable::ready`].
#[derive(Debug)]
pub struct ReadyGuard<'a>(AsyncFdReadyGuard<'a, OwnedFd>);

impl ReadyGuard<'_> {
    /// The read found nothing: wait for the next readiness event.
    pub fn not_ready(mut self) {
        self.0.clear_ready();
    }
}
