//! The two ways blocks reach the cache file, [`Blocking`] and [`Uring`], behind one
//! [`BlockIo`] trait (see the parent module's docs for which caller uses which).

use std::io;
use std::os::fd::AsRawFd;

use pipewright_runtime::uring::{self, BufferPool};

use super::*;

/// How blocks reach the cache file: [`Blocking`] or [`Uring`] (see the module docs
/// for which caller uses which).
pub(crate) trait BlockIo {
    /// Reads `count` blocks from `first` of `slot` and their tags.
    async fn read_blocks(
        &self,
        file: &StoreFile,
        slot: u32,
        first: u32,
        count: u32,
    ) -> io::Result<(BlockBuf, Vec<Tag>)>;

    /// Writes whole blocks `data` from `first` of `slot` with their tags under
    /// `instance`; gives the bytes back.
    async fn write_blocks(
        &self,
        file: &StoreFile,
        slot: u32,
        first: u32,
        data: Vec<u8>,
        instance: u64,
        addr: BlockAddr,
    ) -> io::Result<Vec<u8>>;

    /// `fdatasync(2)` of the cache file.
    async fn sync(&self, file: &StoreFile) -> io::Result<()>;

    /// `len` bytes of `file` (a backend's local file) from `pos`; bytes past its end
    /// are zeros.
    async fn read_file(&self, file: &Arc<File>, pos: u64, len: usize) -> io::Result<Vec<u8>>;
}

/// Positioned I/O on tokio's blocking pool: for callers that are not on a pipewright
/// worker.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Blocking;

async fn on_pool<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
}

impl BlockIo for Blocking {
    async fn read_blocks(
        &self,
        file: &StoreFile,
        slot: u32,
        first: u32,
        count: u32,
    ) -> io::Result<(BlockBuf, Vec<Tag>)> {
        let file = file.clone();
        on_pool(move || {
            let mut data = Vec::new();
            let tags = file.read_blocks(slot, first, count, &mut data)?;
            Ok((BlockBuf::Heap(data), tags))
        })
        .await
    }

    async fn write_blocks(
        &self,
        file: &StoreFile,
        slot: u32,
        first: u32,
        data: Vec<u8>,
        instance: u64,
        addr: BlockAddr,
    ) -> io::Result<Vec<u8>> {
        let file = file.clone();
        on_pool(move || {
            file.write_blocks(slot, first, &data, instance, addr)?;
            Ok(data)
        })
        .await
    }

    async fn sync(&self, file: &StoreFile) -> io::Result<()> {
        let file = file.file.clone();
        on_pool(move || file.sync_data()).await
    }

    async fn read_file(&self, file: &Arc<File>, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = file.clone();
        on_pool(move || {
            let mut buf = vec![0u8; len];
            let mut done = 0;
            while done < len {
                let n = file.read_at(&mut buf[done..], pos + done as u64)?;
                if n == 0 {
                    break; // past the end: zeros
                }
                done += n;
            }
            Ok(buf)
        })
        .await
    }
}

/// Reads and writes through the calling worker's io_uring, into buffers of its pools:
/// block data in two size classes, tags in a third. Only for futures running on a
/// pipewright worker (or another thread inside a tokio `LocalSet`): the ring is the
/// thread's.
#[derive(Debug, Clone)]
pub(crate) struct Uring {
    /// Data pools, smallest buffers first.
    data: Vec<BufferPool>,
    tags: BufferPool,
}

/// The buffers of the pools for one chunk size: `(size, count)` per data class.
/// Small buffers of at most 256 KiB (what NBD clients such as nbdcopy ask for at a
/// time; 128 of them, 32 MiB; a reply holds its buffer until the socket took it, and
/// past the pool a read gets a heap buffer; large NBD reads of verified blocks need
/// none: they are direct replies from the mapped file), and when chunks are larger, a
/// few whole-chunk buffers (16 MiB of them, 2 to 16).
pub(crate) fn pool_classes(chunk_size: u64) -> Vec<(usize, usize)> {
    let small = chunk_size.min(256 << 10) as usize;
    let mut classes = vec![(small, 128)];
    if chunk_size as usize > small {
        let count = ((16u64 << 20) / chunk_size).clamp(2, 16) as usize;
        classes.push((chunk_size as usize, count));
    }
    classes
}

impl Uring {
    /// The pools for chunks of `chunk_size` bytes in `block_size` blocks (see
    /// [`pool_classes`]), as many tag buffers as data buffers.
    pub(crate) fn new(chunk_size: u64, block_size: u32) -> io::Result<Self> {
        let blocks = (chunk_size / block_size as u64) as usize;
        let classes = pool_classes(chunk_size);
        let data = classes
            .iter()
            .map(|&(size, count)| BufferPool::new(count, size))
            .collect::<io::Result<Vec<_>>>()?;
        let buffers = classes.iter().map(|c| c.1).sum();
        Ok(Self {
            data,
            tags: BufferPool::new(buffers, blocks * TAG_SIZE)?,
        })
    }

    /// Fixed-buffer slots all the pools take in a ring's table.
    pub(crate) fn fixed_buffers(&self) -> u32 {
        (self.data.iter().map(BufferPool::count).sum::<usize>() + self.tags.count()) as u32
    }
}

/// Reads exactly `len` bytes at `pos` into a pooled buffer when one is free (a
/// fixed-buffer read if its pool is registered), or into a heap buffer.
async fn read_exact_uring(
    fd: std::os::fd::RawFd,
    pools: &[BufferPool],
    len: usize,
    pos: u64,
) -> io::Result<BlockBuf> {
    let short = |n: usize| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("cache file read of {len} bytes at {pos} returned {n}: is the file truncated?"),
        )
    };
    let free = pools
        .iter()
        .filter(|p| p.buffer_size() >= len)
        .find_map(BufferPool::try_take);
    match free {
        Some(buf) => {
            let (r, mut buf) = uring::read_pooled(fd, buf, len, pos).await;
            let mut n = r?;
            // A regular file returns short reads only at its end; finish the rest
            // anyway (a signal or a filesystem may split a read).
            while n < len {
                let (r, rest) = uring::read_at(fd, Vec::new(), len - n, pos + n as u64).await;
                let got = r?;
                if got == 0 {
                    return Err(short(n));
                }
                buf.set_len(n + got);
                buf[n..n + got].copy_from_slice(&rest[..got]);
                n += got;
            }
            Ok(BlockBuf::Pooled(buf))
        }
        _ => {
            let mut out = Vec::with_capacity(len);
            while out.len() < len {
                let n = out.len();
                let (r, mut chunk) = uring::read_at(fd, Vec::new(), len - n, pos + n as u64).await;
                let got = r?;
                if got == 0 {
                    return Err(short(n));
                }
                if n == 0 {
                    out = chunk;
                } else {
                    out.append(&mut chunk);
                }
            }
            Ok(BlockBuf::Heap(out))
        }
    }
}

impl BlockIo for Uring {
    async fn read_blocks(
        &self,
        file: &StoreFile,
        slot: u32,
        first: u32,
        count: u32,
    ) -> io::Result<(BlockBuf, Vec<Tag>)> {
        let fd = file.file.as_raw_fd();
        let len = count as usize * file.geometry.block_size as usize;
        let (data, tags) = futures::join!(
            read_exact_uring(fd, &self.data, len, file.data_pos(slot, first)),
            read_exact_uring(
                fd,
                std::slice::from_ref(&self.tags),
                count as usize * TAG_SIZE,
                file.tag_pos(slot, first)
            ),
        );
        let tags = decode_tags(&tags?);
        Ok((data?, tags))
    }

    async fn write_blocks(
        &self,
        file: &StoreFile,
        slot: u32,
        first: u32,
        data: Vec<u8>,
        instance: u64,
        addr: BlockAddr,
    ) -> io::Result<Vec<u8>> {
        // Two positioned writes on the worker itself: a buffered write of a chunk
        // only copies into the page cache, while an io_uring buffered write to ext4 is
        // handed to an io-wq thread (a wake-up and a context switch each way, the
        // largest cost of a miss in `perf`). The durability point, when there is one,
        // is the `fdatasync` that follows, still on the ring.
        file.write_blocks(slot, first, &data, instance, addr)?;
        Ok(data)
    }

    async fn sync(&self, file: &StoreFile) -> io::Result<()> {
        uring::fdatasync(file.file.as_raw_fd()).await
    }

    async fn read_file(&self, file: &Arc<File>, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        // A page-cached range completes at submission, on this worker; the rest is
        // the kernel's to schedule (no thread-pool hop of ours either way).
        let fd = file.as_raw_fd();
        let (r, mut out) = uring::read_at(fd, Vec::new(), len, pos).await;
        r?;
        while out.len() < len {
            let n = out.len();
            let (r, rest) = uring::read_at(fd, Vec::new(), len - n, pos + n as u64).await;
            if r? == 0 {
                out.resize(len, 0); // past the end: zeros
                break;
            }
            out.extend_from_slice(&rest);
        }
        Ok(out)
    }
}
