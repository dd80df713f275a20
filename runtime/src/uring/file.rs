//! A file stage on io_uring: a range reader.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use pipewright_stages::{AsyncStage, Burst, Failures, Outbox};

use std::collections::VecDeque;

use super::in_flight::{read_if_cached, start_read, start_read_pooled, InFlight};
use super::{BufferPool, PooledBuf};

/// A range of a file to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRange {
    /// Where to start.
    pub offset: u64,
    /// How many bytes.
    pub len: usize,
}

impl ReadRange {
    /// Ranges of `chunk` bytes covering a file of `size` bytes.
    pub fn chunks(size: u64, chunk: usize) -> impl Iterator<Item = ReadRange> {
        let chunk = chunk.max(1) as u64;
        (0..size.div_ceil(chunk)).map(move |i| ReadRange {
            offset: i * chunk,
            len: (size - i * chunk).min(chunk) as usize,
        })
    }
}

/// Bytes read by [`FileReader`].
#[derive(Debug, PartialEq)]
pub struct Chunk {
    /// Where they start in the file.
    pub offset: u64,
    /// The bytes (shorter than asked at the end of the file).
    pub data: ChunkBytes,
}

/// The bytes of a [`Chunk`]: its own allocation, or a buffer of the reader's pool that
/// goes back to the pool when the chunk is dropped. Dereferences to `[u8]` either way.
#[derive(Debug, PartialEq)]
pub enum ChunkBytes {
    /// A buffer of its own.
    Owned(Vec<u8>),
    /// A buffer of a [`BufferPool`].
    Pooled(PooledBuf),
}

impl std::ops::Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Owned(v) => v,
            ChunkBytes::Pooled(b) => b,
        }
    }
}

/// Reads ranges of a file through io_uring, a whole burst of reads in flight at once,
/// emitting chunks in input order.
///
/// With [`FileReader::with_buffers`] it reads into a [`BufferPool`]: no allocation per
/// chunk, at most the pool's buffers in flight (a reader whose consumer holds every
/// buffer waits for one to come back), and fixed-buffer reads when the plan gave its
/// worker fixed-buffer slots ([`UringBudget`](crate::UringBudget)). A range the page
/// cache already holds whole is copied into its buffer at submission (`preadv2` with
/// `RWF_NOWAIT`, which never waits for storage) instead of going through the ring:
/// faster for warm data, and one failed syscall for cold data.
///
/// ```no_run
/// use pipewright::uring::{BufferPool, FileReader, ReadRange};
/// use pipewright::{PipelineBuilder, Plan, Runtime, UringBudget};
///
/// let pool = BufferPool::new(32, 1 << 20)?;
/// let b = PipelineBuilder::new();
/// let (ranges, input) = b.input::<ReadRange>("ranges");
/// let chunks = input
///     .then_async("read", FileReader::with_buffers("/var/tmp/big", pool)?)
///     .output("chunks");
/// let plan = Plan::fused().uring("read", UringBudget { sq_entries: 32, fixed_buffers: 32 });
/// let running = Runtime::start(b.build()?, plan)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileReader {
    file: File,
    pool: Option<BufferPool>,
    in_flight: VecDeque<Reading>,
    /// Opened with `O_DIRECT`: reads bypass the page cache, aligned to this many bytes.
    direct: Option<u64>,
}

/// The alignment `O_DIRECT` reads keep (offsets, lengths, buffer addresses): the
/// largest logical block size in common use.
const DIRECT_ALIGN: u64 = 4096;

impl FileReader {
    /// Opens `path` for reading; each chunk gets a buffer of its own.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            pool: None,
            in_flight: VecDeque::new(),
            direct: None,
        })
    }

    /// Opens `path` for reading into `pool`'s buffers. Ranges longer than a buffer
    /// fail (split them with [`ReadRange::chunks`] at `pool.buffer_size()`).
    pub fn with_buffers(path: impl AsRef<Path>, pool: BufferPool) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            pool: Some(pool),
            in_flight: VecDeque::new(),
            direct: None,
        })
    }

    /// Opens `path` with `O_DIRECT`, reading into `pool`'s (page-aligned, registered
    /// when the plan allows) buffers straight from the device, bypassing the page
    /// cache: for data read once, or larger than memory. Ranges must start at a
    /// multiple of 4096 bytes (as [`ReadRange::chunks`] makes them with a 4096-multiple
    /// chunk); the pool's buffers must be a multiple of 4096 bytes.
    pub fn direct(path: impl AsRef<Path>, pool: BufferPool) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        if pool.buffer_size() as u64 % DIRECT_ALIGN != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "O_DIRECT reads need buffers of a multiple of {DIRECT_ALIGN} bytes; the pool's are {}",
                    pool.buffer_size()
                ),
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        Ok(Self {
            file,
            pool: Some(pool),
            in_flight: VecDeque::new(),
            direct: Some(DIRECT_ALIGN),
        })
    }

    /// Tells the kernel the file will be read front to back
    /// (`POSIX_FADV_SEQUENTIAL`: a larger readahead window), for readers fed with
    /// [`ReadRange::chunks`]; leave it off for random ranges.
    pub fn sequential(self) -> io::Result<Self> {
        nix::fcntl::posix_fadvise(
            &self.file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        )
        .map_err(io::Error::from)?;
        Ok(self)
    }
}

/// A read in flight, in input order.
#[derive(Debug)]
enum Reading {
    Owned(ReadRange, InFlight<Vec<u8>>),
    Pooled(ReadRange, InFlight<PooledBuf>),
    /// Served from the page cache at submission (see `read_if_cached`).
    Cached(u64, Option<PooledBuf>),
}

/// Reads in flight at once without a pool.
const OWNED_IN_FLIGHT: usize = 32;

/// Bytes of page-cache reads one activation emits before letting its consumer run.
const CACHED_BYTES_PER_ACTIVATION: usize = 256 << 10;

impl FileReader {
    /// Why `r` cannot be read into `pool`'s buffers, if it cannot.
    fn misfit(&self, pool: &BufferPool, r: ReadRange) -> Option<io::Error> {
        if r.len > pool.buffer_size() {
            return Some(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a read of {} bytes does not fit the pool's {}-byte buffers; split ranges with ReadRange::chunks(size, pool.buffer_size())",
                    r.len,
                    pool.buffer_size()
                ),
            ));
        }
        if self.direct.is_some_and(|a| r.offset % a != 0) {
            return Some(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "an O_DIRECT read must start at a multiple of {DIRECT_ALIGN} bytes, not at {}; make ranges with ReadRange::chunks(size, a multiple of {DIRECT_ALIGN})",
                    r.offset
                ),
            ));
        }
        None
    }

    /// Submits the read of `r` (into `buf` when pooled).
    fn submit(&mut self, r: ReadRange, buf: Option<PooledBuf>) -> Result<(), io::Error> {
        let fd = self.file.as_raw_fd();
        let reading = match buf {
            None => Reading::Owned(
                r,
                start_read(fd, Vec::new(), r.len, r.offset).map_err(|(e, _)| e)?,
            ),
            Some(mut buf) => {
                if self.direct.is_none() && read_if_cached(fd, &mut buf, r.len, r.offset) {
                    self.in_flight
                        .push_back(Reading::Cached(r.offset, Some(buf)));
                    return Ok(());
                }
                // O_DIRECT: the length rounded up to the alignment (the end of the file
                // ends the read early); the chunk is cut back to the range.
                let asked = match self.direct {
                    Some(a) => (r.len as u64).div_ceil(a) * a,
                    None => r.len as u64,
                };
                Reading::Pooled(
                    r,
                    start_read_pooled(fd, buf, asked as usize, r.offset).map_err(|(e, _)| e)?,
                )
            }
        };
        self.in_flight.push_back(reading);
        Ok(())
    }

    /// Waits for the oldest read (cancel-safe) and emits it.
    async fn settle_oldest(
        &mut self,
        out: &mut Outbox<'_, Chunk>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        let chunk = match self.in_flight.front_mut() {
            None => return,
            Some(Reading::Owned(r, op)) => {
                let r = *r;
                let (result, mut data) = op.await;
                result.map(|n| {
                    data.truncate(n as usize);
                    Chunk {
                        offset: r.offset,
                        data: ChunkBytes::Owned(data),
                    }
                })
            }
            Some(Reading::Cached(offset, buf)) => Ok(Chunk {
                offset: *offset,
                data: ChunkBytes::Pooled(buf.take().expect("a cached read is settled once")),
            }),
            Some(Reading::Pooled(r, op)) => {
                let r = *r;
                let (result, mut buf) = op.await;
                result.map(|n| {
                    buf.set_len((n as usize).min(r.len));
                    Chunk {
                        offset: r.offset,
                        data: ChunkBytes::Pooled(buf),
                    }
                })
            }
        };
        self.in_flight.pop_front();
        match chunk {
            Ok(chunk) => out.push(chunk),
            Err(e) => failures.push(e),
        }
    }

    /// Emits the oldest reads that have completed, in order, without waiting.
    async fn settle_completed(
        &mut self,
        out: &mut Outbox<'_, Chunk>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        while self.in_flight.front().is_some_and(|r| match r {
            Reading::Owned(_, op) => op.is_complete(),
            Reading::Pooled(_, op) => op.is_complete(),
            Reading::Cached(..) => true,
        }) {
            self.settle_oldest(out, failures).await;
        }
    }
}

impl AsyncStage for FileReader {
    type In = ReadRange;
    type Out = Chunk;
    type Error = io::Error;

    /// Submits the burst's reads, keeping reads in flight across bursts (up to the
    /// pool's buffers, or 32 without a pool), and emits completed reads in order.
    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, ReadRange>,
        out: &mut Outbox<'_, Chunk>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        let pool = self.pool.clone();
        let mut cached_bytes = 0;
        while let Some(&r) = burst.peek() {
            // Reads the page cache served at once are handed downstream after a few
            // buffers' worth, while their bytes are still in the CPU's cache (and the
            // consumer gives the buffers back for the next ones), unless reads from the
            // device are in flight too (those want the queue kept full).
            if cached_bytes >= CACHED_BYTES_PER_ACTIVATION
                && self
                    .in_flight
                    .iter()
                    .all(|r| matches!(r, Reading::Cached(..)))
            {
                break;
            }
            let buf = match &pool {
                None => {
                    if self.in_flight.len() >= OWNED_IN_FLIGHT {
                        self.settle_oldest(out, failures).await;
                    }
                    None
                }
                Some(pool) => {
                    if let Some(e) = self.misfit(pool, r) {
                        burst.pop();
                        failures.push(e);
                        continue;
                    }
                    // The pool bounds the bytes in flight. Without a free buffer: wait
                    // for our oldest read; with none in flight, hand what we emitted
                    // downstream first (its consumer gives buffers back), and wait
                    // for a buffer only when nothing of ours holds one.
                    match pool.try_take() {
                        Some(buf) => Some(buf),
                        None if !self.in_flight.is_empty() => {
                            self.settle_oldest(out, failures).await;
                            let device_reads = self
                                .in_flight
                                .iter()
                                .any(|r| !matches!(r, Reading::Cached(..)));
                            if device_reads && !out.is_empty() {
                                // Hand it downstream now, while the device's reads
                                // stay in flight: its consumer gives the buffer back
                                // for the next read. (Settling every read first let
                                // the device's queue run dry once per pool's worth:
                                // O_DIRECT reads went 0.71x -> 1.0x `std-read`.)
                                break;
                            }
                            continue;
                        }
                        None if !out.is_empty() => return,
                        None => Some(pool.take().await),
                    }
                }
            };
            burst.pop();
            if let Err(e) = self.submit(r, buf) {
                failures.push(e);
            } else if matches!(self.in_flight.back(), Some(Reading::Cached(..))) {
                cached_bytes += r.len;
            }
        }
        self.settle_completed(out, failures).await;
    }

    fn pending(&self) -> usize {
        self.in_flight.len()
    }

    async fn progress(
        &mut self,
        out: &mut Outbox<'_, Chunk>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        self.settle_oldest(out, failures).await;
        self.settle_completed(out, failures).await;
    }
}
