//! File stages on io_uring: a group-commit sink and a range reader.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use pipewright_stages::{AsyncStage, Burst, Failures, Outbox};

use super::{fdatasync, read_at, write_at};

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
/// use pipewright_runtime::{uring::FileSink, PipelineBuilder, Plan, Runtime};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where they start in the file.
    pub offset: u64,
    /// The bytes (shorter than asked at the end of the file).
    pub data: Vec<u8>,
}

/// Reads ranges of a file through io_uring, a whole burst of reads in flight at once,
/// emitting chunks in input order.
#[derive(Debug)]
pub struct FileReader {
    file: File,
}

impl FileReader {
    /// Opens `path` for reading.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
        })
    }
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
        let reads: Vec<_> = burst
            .drain()
            .map(|r| async move {
                let (result, data) = read_at(fd, Vec::new(), r.len, r.offset).await;
                result.map(|_| Chunk {
                    offset: r.offset,
                    data,
                })
            })
            .collect();
        for result in futures::future::join_all(reads).await {
            match result {
                Ok(chunk) => out.push(chunk),
                Err(e) => failures.push(e),
            }
        }
    }
}
