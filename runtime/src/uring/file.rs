//! File stages on io_uring: a group-commit sink and a range reader.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use pipewright_stages::{AsyncStage, Burst, Failures, Outbox};

use super::{fdatasync, read_at, read_pooled, write_at, BufferPool, PooledBuf};

/// A record made durable by [`FileSink`]: where it is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// Offset of the record's first byte.
    pub offset: u64,
    /// Its length.
    pub len: usize,
}

/// Appends records to a file with group commit: each burst is one write and one
/// `fdatasync`, and a record is emitted as [`Durable`] only after the sync returned.
/// A record whose write or sync failed is failed (not acknowledged), never silently
/// dropped.
///
/// ```no_run
/// use pipewright::{uring::FileSink, PipelineBuilder, Plan, Runtime};
/// let b = PipelineBuilder::new();
/// let (input, records) = b.input::<Vec<u8>>("records");
/// let acks = records.then_async("log", FileSink::create("/tmp/log")?).output("acks");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileSink {
    file: File,
    offset: u64,
    buf: Vec<u8>,
    pending: Vec<Durable>,
}

impl FileSink {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Self {
            file,
            offset: 0,
            buf: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// Appends to `path`, creating it if needed.
    pub fn append(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        let offset = file.metadata()?.len();
        Ok(Self {
            file,
            offset,
            buf: Vec::new(),
            pending: Vec::new(),
        })
    }
}

fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl AsyncStage for FileSink {
    type In = Vec<u8>;
    type Out = Durable;
    type Error = io::Error;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Vec<u8>>,
        out: &mut Outbox<'_, Durable>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.pending.clear();
        while let Some(record) = burst.pop() {
            self.pending.push(Durable {
                offset: self.offset + buf.len() as u64,
                len: record.len(),
            });
            buf.extend_from_slice(&record);
        }
        let fd = self.file.as_raw_fd();
        let mut written = 0;
        let mut failed = None;
        while written < buf.len() {
            let (result, b) = write_at(fd, buf, written, self.offset + written as u64).await;
            buf = b;
            match result {
                Ok(0) => {
                    failed = Some(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file accepted no bytes",
                    ))
                }
                Ok(n) => written += n,
                Err(e) => failed = Some(e),
            }
            if failed.is_some() {
                break;
            }
        }
        if failed.is_none() {
            failed = fdatasync(fd).await.err();
        }
        match failed {
            None => {
                self.offset += buf.len() as u64;
                out.extend(self.pending.drain(..));
            }
            Some(e) => {
                // Nothing of this burst is known durable: fail every record. The next
                // burst writes at the same offset, over whatever partly landed.
                for _ in self.pending.drain(..) {
                    failures.push(copy_error(&e));
                }
            }
        }
        self.buf = buf;
    }
}

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
/// worker fixed-buffer slots ([`UringBudget`](crate::UringBudget)).
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
}

impl FileReader {
    /// Opens `path` for reading; each chunk gets a buffer of its own.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            pool: None,
        })
    }

    /// Opens `path` for reading into `pool`'s buffers. Ranges longer than a buffer
    /// fail (split them with [`ReadRange::chunks`] at `pool.buffer_size()`).
    pub fn with_buffers(path: impl AsRef<Path>, pool: BufferPool) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            pool: Some(pool),
        })
    }
}

async fn read_range(fd: RawFd, buf: Option<PooledBuf>, r: ReadRange) -> io::Result<Chunk> {
    let data = match buf {
        None => {
            let (result, data) = read_at(fd, Vec::new(), r.len, r.offset).await;
            result?;
            ChunkBytes::Owned(data)
        }
        Some(buf) if r.len > buf.capacity() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a read of {} bytes does not fit the pool's {}-byte buffers; split ranges with ReadRange::chunks(size, pool.buffer_size())",
                    r.len,
                    buf.capacity()
                ),
            ))
        }
        Some(buf) => {
            let (result, buf) = read_pooled(fd, buf, r.len, r.offset).await;
            result?;
            ChunkBytes::Pooled(buf)
        }
    };
    Ok(Chunk {
        offset: r.offset,
        data,
    })
}

impl AsyncStage for FileReader {
    type In = ReadRange;
    type Out = Chunk;
    type Error = io::Error;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, ReadRange>,
        out: &mut Outbox<'_, Chunk>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        let fd = self.file.as_raw_fd();
        let reads: Vec<_> = match &self.pool {
            None => burst.drain().map(|r| read_range(fd, None, r)).collect(),
            Some(pool) => {
                // As many reads as there are free buffers (waiting for one if none):
                // the rest of the burst stays queued, so the pool bounds the bytes in
                // flight and a burst larger than the pool cannot wait on itself.
                let mut bufs = vec![pool.take().await];
                while bufs.len() < burst.len() {
                    match pool.try_take() {
                        Some(b) => bufs.push(b),
                        None => break,
                    }
                }
                bufs.into_iter()
                    .map_while(|buf| burst.pop().map(|r| read_range(fd, Some(buf), r)))
                    .collect()
            }
        };
        for result in futures::future::join_all(reads).await {
            match result {
                Ok(chunk) => out.push(chunk),
                Err(e) => failures.push(e),
            }
        }
    }
}
