//! The one-shot file operations on the worker's ring: each hands the kernel a buffer it
//! owns until the completion is reaped (see [`Op`]), and gives it back with the result.

// Unsafe here: the submissions point the kernel into the buffers the ops own.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types};

use super::buffers::PooledBuf;
use super::driver::Op;

/// Writes `buf[start..]` at `offset` of `fd`; returns bytes written and the buffer.
pub async fn write_at(
    fd: RawFd,
    buf: Vec<u8>,
    start: usize,
    offset: u64,
) -> (io::Result<usize>, Vec<u8>) {
    let start = start.min(buf.len());
    let len = (buf.len() - start).min(u32::MAX as usize) as u32;
    let entry = opcode::Write::new(types::Fd(fd), buf[start..].as_ptr(), len)
        .offset(offset)
        .build();
    // SAFETY: the entry points into `buf`'s heap buffer, which the op owns until done.
    match unsafe { Op::new(entry, buf) } {
        Ok(op) => {
            let (r, buf) = op.await;
            (r.map(|n| n as usize), buf)
        }
        Err((e, buf)) => (Err(e), buf),
    }
}

/// Reads up to `len` bytes at `offset` of `fd` into `buf` (replacing its contents).
pub async fn read_at(
    fd: RawFd,
    mut buf: Vec<u8>,
    len: usize,
    offset: u64,
) -> (io::Result<usize>, Vec<u8>) {
    buf.clear();
    buf.reserve(len);
    let len32 = len.min(u32::MAX as usize) as u32;
    let entry = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), len32)
        .offset(offset)
        .build();
    // SAFETY: the entry points into `buf`'s heap buffer (capacity >= len), owned by
    // the op until done.
    match unsafe { Op::new(entry, buf) } {
        Ok(op) => {
            let (r, mut buf) = op.await;
            if let Ok(n) = r {
                // SAFETY: the kernel initialised the first `n <= len <= capacity` bytes.
                unsafe { buf.set_len(n as usize) };
            }
            (r.map(|n| n as usize), buf)
        }
        Err((e, buf)) => (Err(e), buf),
    }
}

/// Reads up to `len` bytes (at most the buffer's capacity) at `offset` of `fd` into a
/// pooled buffer, as a fixed-buffer read when the worker's ring has the pool
/// registered (see [`UringBudget`](crate::UringBudget)); the buffer's length is set to
/// the bytes read.
pub async fn read_pooled(
    fd: RawFd,
    buf: PooledBuf,
    len: usize,
    offset: u64,
) -> (io::Result<usize>, PooledBuf) {
    match super::in_flight::start_read_pooled(fd, buf, len, offset) {
        Ok(op) => {
            let (r, mut buf) = op.await;
            if let Ok(n) = r {
                buf.set_len(n as usize);
            }
            (r.map(|n| n as usize), buf)
        }
        Err((e, buf)) => (Err(e), buf),
    }
}

/// Writes the pooled buffer's bytes (its length, not its capacity) at `offset` of `fd`,
/// as a fixed-buffer write (`WRITE_FIXED`) when the worker's ring has the pool
/// registered (see [`UringBudget`](crate::UringBudget)); returns the bytes written
/// and the buffer. A short write is not retried: write the rest from the count.
pub async fn write_pooled(
    fd: RawFd,
    buf: PooledBuf,
    offset: u64,
) -> (io::Result<usize>, PooledBuf) {
    match super::in_flight::start_write_pooled(fd, buf, offset) {
        Ok(op) => {
            let (r, buf) = op.await;
            (r.map(|n| n as usize), buf)
        }
        Err((e, buf)) => (Err(e), buf),
    }
}

/// `fdatasync(2)` through the ring.
pub async fn fdatasync(fd: RawFd) -> io::Result<()> {
    let entry = opcode::Fsync::new(types::Fd(fd))
        .flags(types::FsyncFlags::DATASYNC)
        .build();
    // SAFETY: the entry refers to no memory.
    let op = unsafe { Op::new(entry, ()) }.map_err(|(e, ())| e)?;
    op.await.0.map(|_| ())
}
