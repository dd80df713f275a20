//! The S3 backend's configuration, its typed errors (and how an `object_store`
//! failure is classified) and its counters.

use std::error::Error as StdError;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::client::{HttpError, HttpErrorKind};

use super::{BackendErrorKind, RetryPolicy};

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The key prefix the volumes live under (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// The endpoint URL (`http://127.0.0.1:9000`) for an S3-compatible server; `None`:
    /// AWS (or `AWS_ENDPOINT` from the environment).
    pub endpoint: Option<String>,
    /// The region (default `us-east-1`, or `AWS_REGION`).
    pub region: Option<String>,
    /// Access key id; `None`: `AWS_ACCESS_KEY_ID` from the environment.
    pub access_key_id: Option<String>,
    /// Secret access key; `None`: `AWS_SECRET_ACCESS_KEY` from the environment.
    pub secret_access_key: Option<String>,
    /// Allow plain `http://` endpoints.
    pub allow_http: bool,
    /// Each request's timeout (connect included).
    pub request_timeout: Duration,
    /// Retries of failed requests.
    pub retry: RetryPolicy,
    /// Part size of volumes this backend creates (existing volumes keep theirs).
    pub part_size: u64,
}

impl S3Config {
    /// A configuration for `s3://bucket/prefix` (the prefix may be empty): credentials
    /// and region from the environment, 5 s request timeout, default retries, 1 MiB
    /// parts.
    pub fn from_url(url: &str) -> Result<Self, S3Error> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| S3Error::InvalidUrl(url.to_string()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(S3Error::InvalidUrl(url.to_string()));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            part_size: 1 << 20,
        })
    }
}

/// What went wrong talking to S3.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The backend URL is not `s3://bucket[/prefix]`.
    #[error("{0:?} is not an S3 URL: write s3://bucket or s3://bucket/prefix")]
    InvalidUrl(String),
    /// The client could not be built from the configuration.
    #[error("S3 client configuration: {0}; check the endpoint URL, region and credentials")]
    Config(String),
    /// The object does not exist.
    #[error("S3 object {key} not found; check the bucket, prefix and volume name")]
    NotFound {
        /// The object key.
        key: String,
    },
    /// The store refused our credentials.
    #[error(
        "S3 refused access to {key} ({detail}); check the access key, secret and bucket policy"
    )]
    Auth {
        /// The object key.
        key: String,
        /// What the store said.
        detail: String,
    },
    /// A request did not complete in time (after its retries).
    #[error("S3 {op} of {key} timed out after {attempts} attempt(s) of {timeout:?}; check the endpoint's health or raise the request timeout")]
    Timeout {
        /// The operation (get, put, list).
        op: &'static str,
        /// The object key.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// Each attempt's timeout.
        timeout: Duration,
    },
    /// The store kept throttling us (HTTP 429 / 503 SlowDown) through every retry.
    #[error("S3 throttled {op} of {key} after {attempts} attempt(s) ({detail}); lower the request rate or raise the retry budget")]
    Throttled {
        /// The operation.
        op: &'static str,
        /// The object key.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// What the store said.
        detail: String,
    },
    /// The store could not be reached.
    #[error("S3 endpoint unreachable for {op} of {key} after {attempts} attempt(s) ({detail}); check that the endpoint is up")]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// The object key.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// The transport error.
        detail: String,
    },
    /// Any other failure the store reported (after its retries).
    #[error("S3 {op} of {key} failed after {attempts} attempt(s): {detail}")]
    Store {
        /// The operation.
        op: &'static str,
        /// The object key.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// What the store said.
        detail: String,
    },
    /// A volume manifest object is not ours or is damaged.
    #[error("volume manifest {key} is malformed ({detail}); it was not written by pipewright or is damaged")]
    BadManifest {
        /// The manifest's key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The named volume is not in the bucket.
    #[error("volume {0:?} is not in the bucket; create it first (S3Backend::create_volume or `pipewright cache put-volume`)")]
    UnknownVolume(String),
    /// `S3Backend::connect` was called outside a tokio runtime.
    #[error("the S3 backend must be created inside a tokio runtime")]
    NoRuntime,
}

impl S3Error {
    /// The kind of failure (for retries, metrics and error codes).
    pub fn kind(&self) -> BackendErrorKind {
        match self {
            S3Error::NotFound { .. } | S3Error::UnknownVolume(_) => BackendErrorKind::NotFound,
            S3Error::Auth { .. } => BackendErrorKind::Auth,
            S3Error::Timeout { .. } => BackendErrorKind::Timeout,
            S3Error::Throttled { .. } => BackendErrorKind::Throttled,
            S3Error::Unavailable { .. } => BackendErrorKind::Unavailable,
            _ => BackendErrorKind::Other,
        }
    }

    pub(super) fn into_io(self) -> io::Error {
        io::Error::new(self.kind().io_kind(), self)
    }
}

/// Counters of the S3 backend (also reported as `cache_s3_*` metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Stats {
    /// GET requests sent (retries included).
    pub gets: u64,
    /// PUT requests sent (retries included).
    pub puts: u64,
    /// LIST requests sent.
    pub lists: u64,
    /// Requests repeated after a retryable failure.
    pub retries: u64,
    /// Failed requests by kind: timeouts.
    pub timeouts: u64,
    /// ... throttled.
    pub throttled: u64,
    /// ... endpoint unreachable.
    pub unavailable: u64,
    /// ... refused credentials.
    pub auth_errors: u64,
    /// ... any other failure (not found is not counted: a missing part reads as zeros).
    pub other_errors: u64,
    /// Operations that failed for good (after their retries).
    pub failed_ops: u64,
    /// Bytes received.
    pub bytes_read: u64,
    /// Bytes sent.
    pub bytes_written: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) gets: AtomicU64,
    pub(super) puts: AtomicU64,
    pub(super) lists: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) unavailable: AtomicU64,
    pub(super) auth_errors: AtomicU64,
    pub(super) other_errors: AtomicU64,
    pub(super) failed_ops: AtomicU64,
    pub(super) bytes_read: AtomicU64,
    pub(super) bytes_written: AtomicU64,
}

pub(super) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The transport or status failure inside an object_store error.
pub(super) fn classify(e: &object_store::Error) -> BackendErrorKind {
    match e {
        object_store::Error::NotFound { .. } => return BackendErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => return BackendErrorKind::Auth,
        _ => {}
    }
    let mut src: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            return match h.kind() {
                HttpErrorKind::Timeout => BackendErrorKind::Timeout,
                HttpErrorKind::Connect | HttpErrorKind::Interrupted | HttpErrorKind::Request => {
                    BackendErrorKind::Unavailable
                }
                _ => BackendErrorKind::Other,
            };
        }
        src = s.source();
    }
    let text = e.to_string();
    if text.contains("status code: 429")
        || text.contains("status code: 503")
        || text.contains("SlowDown")
    {
        BackendErrorKind::Throttled
    } else if text.contains("status code: 403") || text.contains("status code: 401") {
        BackendErrorKind::Auth
    } else {
        BackendErrorKind::Other
    }
}
