//! The NBD error code each failure is answered with.

use std::io;

use super::super::wire::*;
use crate::backend::BackendErrorKind;
use crate::error::CacheError;

/// The NBD error code a failed request is answered with (counted per code in
/// `cache_nbd_error_replies_total{code}`): a backend's typed error keeps its meaning
/// (a refused credential is `EPERM`, a full store `ENOSPC`), the cache's own errors
/// map to what a block device would say.
pub(crate) fn errno(e: &CacheError, write: bool) -> u32 {
    let code = match e {
        CacheError::OutOfRange { .. } if write => ENOSPC,
        CacheError::OutOfRange { .. } | CacheError::UnknownVolume(_) => EINVAL,
        CacheError::Backend { source, .. } => io_errno(source),
        CacheError::Io(source) => io_errno(source),
        CacheError::Config(_) => EINVAL,
        CacheError::Closed | CacheError::CloseDeadline { .. } => ESHUTDOWN,
        CacheError::Meta(_)
        | CacheError::GeometryMismatch { .. }
        | CacheError::DirtyBlockCorrupt { .. }
        | CacheError::UnflushedWritesUnreachable { .. }
        | CacheError::NoFreeSlot { .. }
        | CacheError::Pipeline(_) => EIO,
    };
    metrics::counter!("cache_nbd_error_replies_total", "code" => code_name(code)).increment(1);
    code
}

/// The NBD code of an I/O error (a backend's or the cache file's).
fn io_errno(e: &io::Error) -> u32 {
    const OS_EPERM: i32 = 1;
    const OS_EACCES: i32 = 13;
    const OS_ENOSPC: i32 = 28;
    const OS_EDQUOT: i32 = 122;
    const OS_EROFS: i32 = 30;
    const OS_ENOMEM: i32 = 12;
    match e.raw_os_error() {
        Some(OS_EPERM | OS_EACCES | OS_EROFS) => return EPERM,
        Some(OS_ENOSPC | OS_EDQUOT) => return ENOSPC,
        Some(OS_ENOMEM) => return ENOMEM,
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => return ENOSPC,
        io::ErrorKind::ReadOnlyFilesystem => return EPERM,
        io::ErrorKind::OutOfMemory => return ENOMEM,
        _ => {}
    }
    match BackendErrorKind::of(e) {
        BackendErrorKind::Auth => EPERM,
        BackendErrorKind::NotFound
        | BackendErrorKind::Timeout
        | BackendErrorKind::Throttled
        | BackendErrorKind::Unavailable
        | BackendErrorKind::Other => EIO,
    }
}

fn code_name(code: u32) -> &'static str {
    match code {
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(e: io::Error) -> CacheError {
        CacheError::Backend {
            volume: "disk".into(),
            source: e,
        }
    }

    /// Each typed failure reaches the client as the code a block device would give.
    #[test]
    fn typed_errors_become_the_right_nbd_codes() {
        let kind = |k: io::ErrorKind| backend(io::Error::new(k, "x"));
        assert_eq!(errno(&kind(io::ErrorKind::PermissionDenied), false), EPERM);
        assert_eq!(
            errno(&backend(io::Error::from_raw_os_error(13)), false),
            EPERM
        );
        assert_eq!(
            errno(&backend(io::Error::from_raw_os_error(30)), true),
            EPERM
        );
        assert_eq!(
            errno(&backend(io::Error::from_raw_os_error(28)), true),
            ENOSPC
        );
        assert_eq!(errno(&kind(io::ErrorKind::StorageFull), true), ENOSPC);
        assert_eq!(errno(&kind(io::ErrorKind::QuotaExceeded), true), ENOSPC);
        assert_eq!(errno(&kind(io::ErrorKind::OutOfMemory), false), ENOMEM);
        for k in [
            io::ErrorKind::TimedOut,
            io::ErrorKind::NotFound,
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ResourceBusy,
            io::ErrorKind::Other,
        ] {
            assert_eq!(errno(&kind(k), false), EIO, "{k:?}");
        }
        assert_eq!(
            errno(&CacheError::Io(io::Error::from_raw_os_error(28)), true),
            ENOSPC
        );
        assert_eq!(errno(&CacheError::Closed, false), ESHUTDOWN);
        let oor = CacheError::OutOfRange {
            volume: "disk".into(),
            offset: 0,
            len: 1,
            size: 0,
        };
        assert_eq!(errno(&oor, false), EINVAL);
        assert_eq!(errno(&oor, true), ENOSPC);
        assert_eq!(errno(&CacheError::UnknownVolume("x".into()), false), EINVAL);
        assert_eq!(errno(&CacheError::Meta("x".into()), true), EIO);
    }
}
