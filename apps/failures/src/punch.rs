//! Freeing the log's checkpointed prefix: `fallocate(PUNCH_HOLE)` keeps the file's
//! size and every offset (the checkpoint's offset stays valid) while the disk blocks
//! before the offset are released, so the log's disk use stays bounded by what came
//! after the last checkpoint. Unsafe only for the system call.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Releases the disk blocks of `file` before `offset` (rounded down to 4 KiB).
pub(crate) fn punch_prefix(file: &File, offset: u64) -> io::Result<()> {
    let len = offset & !4095;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate(2) on a file descriptor we own for the call's duration; it
    // reads no memory of ours.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
