//! A log file on io_uring with group commit: records acknowledged only once durable.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pipewright_stages::{AsyncStage, Burst, Failures, Outbox};

use super::in_flight::{write_then_sync, InFlight, WriteThenSync};
use super::{fdatasync, write_at};

/// A record made durable by [`FileSink`]: where it is in the file, and the tag it
/// was appended with (`()` for plain byte records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable<T = ()> {
    /// Offset of the record's first byte.
    pub offset: u64,
    /// Its length.
    pub len: usize,
    /// What the caller attached to the record (see [`SinkRecord`]).
    pub tag: T,
}

/// A record a [`FileSink`] appends: its bytes, and a tag that comes back with its
/// [`Durable`] notice, so a stage can tell which of its records became durable
/// without keeping a parallel queue. `Vec<u8>` is a record without a tag; a pair
/// `(tag, bytes)` carries `tag`.
///
/// ```
/// use pipewright::uring::SinkRecord;
/// let record = (42u64, b"hello".to_vec());
/// assert_eq!(record.bytes(), b"hello");
/// assert_eq!(record.into_tag(), 42);
/// ```
pub trait SinkRecord: Send + 'static {
    /// What comes back with the record's durability notice.
    type Tag: Send + 'static;
    /// The bytes to append.
    fn bytes(&self) -> &[u8];
    /// The tag, once the bytes are copied into the batch.
    fn into_tag(self) -> Self::Tag;
}

impl SinkRecord for Vec<u8> {
    type Tag = ();
    fn bytes(&self) -> &[u8] {
        self
    }
    fn into_tag(self) {}
}

impl<T: Send + 'static, B: AsRef<[u8]> + Send + 'static> SinkRecord for (T, B) {
    type Tag = T;
    fn bytes(&self) -> &[u8] {
        self.1.as_ref()
    }
    fn into_tag(self) -> T {
        self.0
    }
}

/// What a [`FileSink`] has done, readable while it runs.
#[derive(Debug, Default)]
pub struct SinkStats {
    syncs: AtomicU64,
    records: AtomicU64,
}

impl SinkStats {
    /// `fdatasync`s that made records durable.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
    /// Records made durable.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
    /// Records made durable per `fdatasync` (0 before the first).
    pub fn records_per_sync(&self) -> f64 {
        let syncs = self.syncs();
        if syncs == 0 {
            0.0
        } else {
            self.records() as f64 / syncs as f64
        }
    }
    fn synced(&self, records: usize) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        metrics::counter!("pipewright_file_sink_syncs_total").increment(1);
        metrics::counter!("pipewright_file_sink_records_total").increment(records as u64);
    }
}

/// Appends records to a file with group commit, and emits each record as [`Durable`]
/// (with its tag, see [`SinkRecord`]) only after an `fdatasync` covering it returned. A record whose write or sync failed
/// is failed (not acknowledged), never silently dropped.
///
/// Two ways to batch:
/// - by default each burst is one write and one `fdatasync`, awaited before the
///   burst returns (what a stage that embeds the sink and calls its `process_burst`
///   itself relies on);
/// - [`pipelined`](FileSink::pipelined): one write + sync stays in flight (submitted
///   together, the sync linked after the write) while the next records gather;
///   when it completes, everything gathered meanwhile goes out as the next batch.
///   Under load the batches grow with the disk's sync latency (the database group
///   commit), while a lone record is written at once. Best for throughput; records per
///   sync are in [`stats`](FileSink::stats).
///
/// ```no_run
/// use pipewright::{uring::FileSink, PipelineBuilder, Plan, Runtime};
/// let b = PipelineBuilder::new();
/// let (input, records) = b.input::<Vec<u8>>("records");
/// let acks = records
///     .then_async("log", FileSink::create("/tmp/log")?.pipelined())
///     .output("acks");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileSink<R: SinkRecord = Vec<u8>> {
    file: File,
    /// Where the next batch is written: the end of what is durable.
    end: u64,
    stats: Arc<SinkStats>,
    /// `Some` in pipelined mode.
    pipeline: Option<Pipelined<R::Tag>>,
    buf: Vec<u8>,
    pending: Vec<Durable<R::Tag>>,
}

/// The pipelined mode's state.
#[derive(Debug)]
struct Pipelined<T> {
    /// Records gathered, not yet submitted.
    gathered: Vec<u8>,
    gathered_lens: Vec<(usize, T)>,
    /// The batch being written and synced.
    flight: Option<Flight<T>>,
    /// Past this many gathered bytes a burst waits for the flight (memory bound).
    max_gathered: usize,
}

/// A batch in flight: its write, linked sync, and records.
#[derive(Debug)]
struct Flight<T> {
    /// Where `buf[0]` goes in the file.
    base: u64,
    /// Bytes of the batch already written by earlier (short) writes.
    written: usize,
    len: usize,
    lens: Vec<(usize, T)>,
    write: Option<InFlight<Vec<u8>>>,
    write_result: Option<(io::Result<u32>, Vec<u8>)>,
    sync: InFlight<()>,
}

impl<R: SinkRecord> FileSink<R> {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Self::with_file(file, 0))
    }

    /// Appends to `path`, creating it if needed.
    pub fn append(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        let end = file.metadata()?.len();
        Ok(Self::with_file(file, end))
    }

    fn with_file(file: File, end: u64) -> Self {
        Self {
            file,
            end,
            stats: Arc::default(),
            pipeline: None,
            buf: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Keeps one batch's write and sync in flight while the next batch gathers (see
    /// the type's docs). At most 8 MiB gather meanwhile; then a burst waits.
    pub fn pipelined(mut self) -> Self {
        self.pipeline = Some(Pipelined {
            gathered: Vec::new(),
            gathered_lens: Vec::new(),
            flight: None,
            max_gathered: 8 << 20,
        });
        self
    }

    /// Its counters, shared: keep the `Arc` to read them while the pipeline runs.
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// One burst: one write and one sync, awaited.
    async fn write_burst(
        &mut self,
        burst: &mut Burst<'_, R>,
        out: &mut Outbox<'_, Durable<R::Tag>>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.pending.clear();
        while let Some(record) = burst.pop() {
            let bytes = record.bytes();
            let offset = self.end + buf.len() as u64;
            let len = bytes.len();
            buf.extend_from_slice(bytes);
            self.pending.push(Durable {
                offset,
                len,
                tag: record.into_tag(),
            });
        }
        let fd = self.file.as_raw_fd();
        let mut written = 0;
        let mut failed = None;
        while written < buf.len() {
            let (result, b) = write_at(fd, buf, written, self.end + written as u64).await;
            buf = b;
            match result {
                Ok(0) => failed = Some(write_zero()),
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
                self.end += buf.len() as u64;
                self.stats.synced(self.pending.len());
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

    /// Pipelined: submits the gathered records as the next flight, if none is in flight.
    fn launch(&mut self, failures: &mut Failures<'_, io::Error>) {
        let fd = self.file.as_raw_fd();
        let Some(p) = &mut self.pipeline else { return };
        if p.flight.is_some() || p.gathered_lens.is_empty() {
            return;
        }
        let buf = std::mem::replace(&mut p.gathered, std::mem::take(&mut self.buf));
        let lens = std::mem::take(&mut p.gathered_lens);
        let len = buf.len();
        match write_then_sync(fd, buf, 0, self.end) {
            Ok(WriteThenSync { write, sync }) => {
                p.flight = Some(Flight {
                    base: self.end,
                    written: 0,
                    len,
                    lens,
                    write: Some(write),
                    write_result: None,
                    sync,
                })
            }
            Err((e, mut buf)) => {
                for _ in &lens {
                    failures.push(copy_error(&e));
                }
                buf.clear();
                self.buf = buf;
            }
        }
    }

    /// Pipelined: waits for the flight (cancel-safe), settles it, launches the next.
    async fn settle(
        &mut self,
        out: &mut Outbox<'_, Durable<R::Tag>>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        let fd = self.file.as_raw_fd();
        let Some(flight) = self.pipeline.as_mut().and_then(|p| p.flight.as_mut()) else {
            self.launch(failures);
            return;
        };
        if let Some(write) = &mut flight.write {
            let result = write.await;
            flight.write = None;
            flight.write_result = Some(result);
        }
        let (sync_result, ()) = (&mut flight.sync).await;
        let flight = self
            .pipeline
            .as_mut()
            .and_then(|p| p.flight.take())
            .expect("settled above");
        let (write_result, mut buf) = flight.write_result.expect("the write was awaited");
        let failed = match write_result {
            Ok(0) => Some(write_zero()),
            Ok(n) if flight.written + (n as usize) < flight.len => {
                // A short write (the linked sync was cancelled): write the rest.
                let written = flight.written + n as usize;
                match write_then_sync(fd, buf, written, flight.base + written as u64) {
                    Ok(WriteThenSync { write, sync }) => {
                        let p = self.pipeline.as_mut().expect("pipelined");
                        p.flight = Some(Flight {
                            written,
                            write: Some(write),
                            write_result: None,
                            sync,
                            ..flight
                        });
                        return;
                    }
                    Err((e, b)) => {
                        buf = b;
                        Some(e)
                    }
                }
            }
            Ok(_) => sync_result.err(),
            Err(e) => Some(e),
        };
        match failed {
            None => {
                let mut offset = flight.base;
                self.stats.synced(flight.lens.len());
                for (len, tag) in flight.lens {
                    out.push(Durable { offset, len, tag });
                    offset += len as u64;
                }
                self.end = flight.base + flight.len as u64;
            }
            Some(e) => {
                // Nothing of the batch is known durable; the next batch is written at
                // the same offset, over whatever partly landed.
                for _ in &flight.lens {
                    failures.push(copy_error(&e));
                }
            }
        }
        buf.clear();
        self.buf = buf;
        self.launch(failures);
    }
}

fn write_zero() -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, "the file accepted no bytes")
}

fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl<R: SinkRecord> AsyncStage for FileSink<R> {
    type In = R;
    type Out = Durable<R::Tag>;
    type Error = io::Error;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, R>,
        out: &mut Outbox<'_, Durable<R::Tag>>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        let Some(p) = &mut self.pipeline else {
            return self.write_burst(burst, out, failures).await;
        };
        while let Some(record) = burst.pop() {
            let bytes = record.bytes();
            p.gathered.extend_from_slice(bytes);
            p.gathered_lens.push((bytes.len(), record.into_tag()));
        }
        let full = p.gathered.len() >= p.max_gathered;
        let done = p.flight.as_ref().is_none_or(|f| {
            f.write.as_ref().is_none_or(InFlight::is_complete) && f.sync.is_complete()
        });
        if full || done {
            self.settle(out, failures).await;
        }
    }

    fn pending(&self) -> usize {
        self.pipeline.as_ref().map_or(0, |p| {
            p.gathered_lens.len() + p.flight.as_ref().map_or(0, |f| f.lens.len())
        })
    }

    async fn progress(
        &mut self,
        out: &mut Outbox<'_, Durable<R::Tag>>,
        failures: &mut Failures<'_, io::Error>,
    ) {
        self.settle(out, failures).await;
    }
}
