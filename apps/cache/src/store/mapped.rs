//! The cache file mapped read-only, for direct replies: a resident, verified range is
//! written from the mapping straight into a socket (`writev`), one copy (page cache to
//! socket) where a read into a buffer and a send from it are two.
//!
//! No Rust reference into the mapping is ever made: the file's bytes change under
//! it (fills, writes), so the only accesses are the kernel's (`writev`, `mincore`)
//! and raw copies, each reading bytes whose slot the caller has pinned (see
//! [`ChunkStore::pin`](super::ChunkStore::pin)).

// Unsafe here: mmap/munmap of the cache file, mincore, writev from the mapping, and a
// raw copy out of it; every use is bounds-checked against the mapping's length.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// The whole cache file, mapped shared and read-only.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain shared memory that is only read, through the kernel or
// raw copies (never through references); `munmap` runs once, in `drop`.
unsafe impl Send for Mapping {}
// SAFETY: as `Send`: `&Mapping` only hands out raw pointers and lengths.
unsafe impl Sync for Mapping {}

const PAGE: usize = 4096;

impl Mapping {
    /// Maps `len` bytes of `file` (its whole size, which never changes while open).
    pub(crate) fn new(file: &File, len: u64) -> io::Result<Self> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        // SAFETY: a fresh shared read-only mapping of an open file; the kernel picks
        // the address, nothing else is mapped there, and it is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { base, len })
    }

    fn ptr(&self, pos: u64, len: usize) -> Option<*const u8> {
        let pos = usize::try_from(pos).ok()?;
        (pos.checked_add(len)? <= self.len).then(|| {
            // SAFETY: `pos + len <= self.len`: inside the mapping.
            unsafe { self.base.cast::<u8>().add(pos) as *const u8 }
        })
    }

    /// Whether every page of `[pos, pos+len)` is in the page cache (a send from it
    /// never waits for the disk).
    pub(crate) fn resident(&self, pos: u64, len: usize) -> bool {
        let Some(p) = self.ptr(pos, len) else {
            return false;
        };
        let start = p as usize & !(PAGE - 1);
        let end = p as usize + len;
        let pages = (end - start).div_ceil(PAGE);
        let mut vec = vec![0u8; pages];
        // SAFETY: `[start, end)` lies inside the mapping (page-aligned down to its
        // first page, which the mapping also starts on); `vec` has one byte per page.
        let r = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
        r == 0 && vec.iter().all(|b| b & 1 == 1)
    }

    /// `writev(fd, [head, file[pos..pos+len]])` once, non-blocking as `fd` is: the
    /// bytes written (of both), or the error (`WouldBlock` when the socket is full).
    pub(crate) fn writev(&self, fd: RawFd, head: &[u8], pos: u64, len: usize) -> io::Result<usize> {
        let p = self
            .ptr(pos, len)
            .ok_or_else(|| io::Error::other("range outside the cache file mapping"))?;
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: p as *mut libc::c_void,
                iov_len: len,
            },
        ];
        // SAFETY: both iovecs point at readable memory of their lengths (`head`, and a
        // bounds-checked range of the mapping); the kernel only reads them.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// A copy of `file[pos..pos+len]`.
    pub(crate) fn copy(&self, pos: u64, len: usize) -> Option<Vec<u8>> {
        let p = self.ptr(pos, len)?;
        let mut out = Vec::with_capacity(len);
        // SAFETY: `p..p+len` is inside the mapping and readable; `out` has room for
        // `len` bytes, which the copy initialises before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), len);
            out.set_len(len);
        }
        Some(out)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are this mapping's, unmapped once, here; no pointer
        // into it outlives `self` (they are only used inside `&self` methods).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}
