//! Backends: where the volumes live. One trait; local files ([`FileBackend`]) and S3
//! through `object_store` ([`S3Backend`]).

mod file;
mod retry;
mod s3;
mod s3_config;
mod s3_parts;

use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use file::FileBackend;
pub use retry::RetryPolicy;
pub use s3::S3Backend;
pub use s3_config::{S3Config, S3Error, S3Stats};

/// A volume a backend serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Its name (the NBD export name).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The remote store the cache sits in front of. Reads past a volume's end return
/// zeros; a write is durable once [`Backend::sync`] of its volume returned.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The volumes it holds (a directory listing, a bucket listing: I/O, so async).
    fn volumes(&self) -> BoxFuture<'_, io::Result<Vec<VolumeInfo>>>;
    /// `len` bytes of `volume` from `offset`.
    fn read(&self, volume: &str, offset: u64, len: usize) -> BoxFuture<'_, io::Result<Vec<u8>>>;
    /// Writes `data` at `offset` of `volume`.
    fn write(&self, volume: &str, offset: u64, data: Vec<u8>) -> BoxFuture<'_, io::Result<()>>;
    /// Makes the volume's writes durable.
    fn sync(&self, volume: &str) -> BoxFuture<'_, io::Result<()>>;
    /// The local file holding `volume`, when this backend keeps its volumes in local
    /// files: the cache then reads its misses from the file itself, on the worker that
    /// serves the miss (through that worker's io_uring: no hop to a thread pool and
    /// back), instead of calling [`Backend::read`]; bytes past the file's end read as
    /// zeros, as `read`'s do. The default, `None`: every read goes through `read`.
    fn local_file(&self, volume: &str) -> Option<Arc<File>> {
        let _ = volume;
        None
    }
}

/// What kind of failure a backend error is, for retries, metrics and the client's
/// error code. Backends report `io::Error`s whose kind (and, for S3, whose inner
/// [`S3Error`]) says this; [`BackendErrorKind::of`] reads it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendErrorKind {
    /// The object or file does not exist.
    NotFound,
    /// Credentials missing, wrong or not allowed.
    Auth,
    /// A request did not complete within its timeout.
    Timeout,
    /// The store asked us to slow down (HTTP 429 / 503 SlowDown).
    Throttled,
    /// The store could not be reached (connection refused or reset).
    Unavailable,
    /// Anything else (a server error, a malformed reply, local I/O).
    Other,
}

impl BackendErrorKind {
    /// The kind of a backend's `io::Error`.
    pub fn of(e: &io::Error) -> Self {
        if let Some(s3) = e.get_ref().and_then(|i| i.downcast_ref::<S3Error>()) {
            return s3.kind();
        }
        match e.kind() {
            io::ErrorKind::NotFound => Self::NotFound,
            io::ErrorKind::PermissionDenied => Self::Auth,
            io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::ResourceBusy => Self::Throttled,
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected => Self::Unavailable,
            _ => Self::Other,
        }
    }

    /// The `io::ErrorKind` an error of this kind is reported with.
    pub fn io_kind(self) -> io::ErrorKind {
        match self {
            Self::NotFound => io::ErrorKind::NotFound,
            Self::Auth => io::ErrorKind::PermissionDenied,
            Self::Timeout => io::ErrorKind::TimedOut,
            Self::Throttled => io::ErrorKind::ResourceBusy,
            Self::Unavailable => io::ErrorKind::NotConnected,
            Self::Other => io::ErrorKind::Other,
        }
    }

    /// Whether a request that failed so may succeed if repeated.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Throttled | Self::Unavailable | Self::Other
        )
    }

    /// A short label (the `kind` of the `cache_backend_errors` metrics).
    pub fn label(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Auth => "auth",
            Self::Timeout => "timeout",
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}
