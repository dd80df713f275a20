//! Sources that read a file: lines, or fixed-size records, each with its byte offset.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pipewright_stages::{Outbox, Source, SourceState};

/// Why a file source could not start or had to end.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be opened.
    #[error("cannot open {path}: {source}: check the path exists and is readable")]
    Open {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A read failed; the source ended at `offset`.
    #[error("reading {path} failed at byte {offset}: {source}: check it is a regular, readable file on a healthy disk")]
    Read {
        /// The file.
        path: PathBuf,
        /// Byte offset of the failed read.
        offset: u64,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file ends inside a record: its size is not a multiple of the record size.
    #[error("{path} ends with a partial record of {len} bytes at byte {offset} (records are {size} bytes): the file is truncated or the record size is wrong")]
    PartialRecord {
        /// The file.
        path: PathBuf,
        /// Offset of the partial record.
        offset: u64,
        /// Its length.
        len: usize,
        /// The record size.
        size: usize,
    },
    /// A record size of zero would never make progress.
    #[error("record size 0 for {0}: use at least 1 byte")]
    ZeroRecordSize(PathBuf),
}

/// Opens `path` for reading, the error naming it.
pub(super) fn open_file(path: &Path) -> Result<(PathBuf, File), FileError> {
    let file = File::open(path).map_err(|source| FileError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((path.to_path_buf(), file))
}

/// One line of a file, without its `\n` or `\r\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Byte offset of the line's first byte in the file.
    pub offset: u64,
    /// The line's text.
    pub text: String,
}

/// A line that cannot be a [`Line`]; the next line is read normally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    /// The line is not valid UTF-8: its bytes are kept, nothing is lost.
    #[error("the line at byte {offset} is not valid UTF-8 ({error}): fix the file's encoding, or decode `bytes` with `String::from_utf8_lossy`")]
    NotUtf8 {
        /// Byte offset of the line's first byte in the file.
        offset: u64,
        /// The line's bytes, without its line ending.
        bytes: Vec<u8>,
        /// Where decoding failed.
        error: std::str::Utf8Error,
    },
    /// The line is longer than the source's limit; it was skipped, not buffered.
    #[error("the line at byte {offset} is {len} bytes, over the limit of {max}: raise it with `FileLines::max_line`, or check the file is line-oriented text")]
    TooLong {
        /// Byte offset of the line's first byte in the file.
        offset: u64,
        /// Its length in bytes, with its line ending.
        len: u64,
        /// The limit.
        max: usize,
    },
}

impl BadLine {
    /// Byte offset of the bad line in the file.
    pub fn offset(&self) -> u64 {
        match self {
            BadLine::NotUtf8 { offset, .. } | BadLine::TooLong { offset, .. } => *offset,
        }
    }
}

/// Reads a file line by line: each item is `Ok(Line)` with the line's byte offset, or
/// `Err(BadLine)` for a line that is not UTF-8 or is longer than
/// [`max_line`](FileLines::max_line) (1 MiB by default; such a line is skipped
/// without being held in memory). The next line is read normally. A
/// read error ends the source with [`FileError::Read`] (see
/// [`SourceState::Failed`]). Pulls at most `max` lines per activation, so a full
/// pipeline simply leaves the rest of the file unread.
///
/// Pass the items through `stage::try_map(|line| line)` to count bad lines as errors
/// under that stage's error policy, or route them with a layer.
///
/// ```
/// use pipewright::{sources::FileLines, stage, PipelineBuilder, Plan, Runtime};
///
/// let dir = std::env::temp_dir().join(format!("pw-lines-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("app.log");
/// std::fs::write(&path, "GET / 200\nGET /x 404\n")?;
///
/// let b = PipelineBuilder::new();
/// let lines = b.source("log", FileLines::open(&path)?);
/// let out = lines
///     .then("utf8", stage::try_map(|line| line))
///     .then("status", stage::map(|line: pipewright::sources::Line| {
///         (line.offset, line.text.rsplit(' ').next().unwrap_or("").to_string())
///     }))
///     .output("statuses");
/// let mut running = Runtime::start(b.build()?, Plan::fused())?;
/// let rx = running.output(&out).unwrap();
/// running.join()?;
/// assert_eq!(rx.collect(), vec![(0, "200".to_string()), (10, "404".to_string())]);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileLines {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    /// A line read so far (kept across pulls when following a growing file).
    partial: Vec<u8>,
    /// Bytes of the current line skipped because it is over `max_line`.
    skipped: Option<u64>,
    max_line: usize,
    follow: Option<Duration>,
}

impl FileLines {
    /// Opens `path` for reading from its start.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let (path, file) = open_file(path.as_ref())?;
        Ok(Self {
            path,
            reader: BufReader::with_capacity(64 * 1024, file),
            offset: 0,
            partial: Vec::new(),
            skipped: None,
            max_line: 1 << 20,
            follow: None,
        })
    }

    /// Follows the file as it grows (`tail -f`): at its end the source waits `poll`
    /// and looks again instead of ending, and a last line without `\n` is held until
    /// it is complete. Such a source ends by a stop handle.
    pub fn follow(mut self, poll: Duration) -> Self {
        self.follow = Some(poll);
        self
    }

    /// Sets the longest line kept, in bytes (at least 1); longer lines are
    /// [`BadLine::TooLong`].
    pub fn max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes.max(1);
        self
    }

    /// Reads the rest of the current line into `partial` (or skips it, once it is
    /// over the limit); true when it ended with `\n`, false at the end of the file.
    fn read_line(&mut self) -> std::io::Result<bool> {
        loop {
            let available = match self.reader.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(false);
            }
            let (take, complete) = match available.iter().position(|&b| b == b'\n') {
                Some(at) => (at + 1, true),
                None => (available.len(), false),
            };
            match &mut self.skipped {
                Some(skipped) => *skipped += take as u64,
                None => {
                    self.partial.extend_from_slice(&available[..take]);
                    if self.partial.len() > self.max_line + 2 {
                        // Over the limit (with room for `\r\n`): stop holding it.
                        self.skipped = Some(self.partial.len() as u64);
                        self.partial = Vec::new();
                    }
                }
            }
            self.reader.consume(take);
            if complete {
                return Ok(true);
            }
        }
    }

    /// True when a line was held back (partial, or being skipped).
    fn in_line(&self) -> bool {
        !self.partial.is_empty() || self.skipped.is_some()
    }

    fn emit(&mut self, out: &mut Outbox<'_, Result<Line, BadLine>>) {
        if let Some(len) = self.skipped.take() {
            out.push(Err(BadLine::TooLong {
                offset: self.offset,
                len,
                max: self.max_line,
            }));
            self.offset += len;
            return;
        }
        let bytes = std::mem::take(&mut self.partial);
        let offset = self.offset;
        self.offset += bytes.len() as u64;
        let mut end = bytes.len();
        if bytes[..end].ends_with(b"\n") {
            end -= 1;
            if bytes[..end].ends_with(b"\r") {
                end -= 1;
            }
        }
        let mut bytes = bytes;
        bytes.truncate(end);
        if bytes.len() > self.max_line {
            out.push(Err(BadLine::TooLong {
                offset,
                len: self.offset - offset,
                max: self.max_line,
            }));
            return;
        }
        out.push(match String::from_utf8(bytes) {
            Ok(text) => Ok(Line { offset, text }),
            Err(error) => Err(BadLine::NotUtf8 {
                offset,
                error: error.utf8_error(),
                bytes: error.into_bytes(),
            }),
        });
    }
}

impl Source for FileLines {
    type Out = Result<Line, BadLine>;

    fn pull(&mut self, out: &mut Outbox<'_, Self::Out>, max: usize) -> SourceState {
        for _ in 0..max {
            match self.read_line() {
                Ok(true) => self.emit(out),
                Ok(false) => {
                    // End of file (with perhaps a last line without `\n`).
                    if let Some(poll) = self.follow {
                        return SourceState::Idle(Some(poll));
                    }
                    if self.in_line() {
                        self.emit(out);
                    }
                    return SourceState::Exhausted;
                }
                Err(source) => {
                    return SourceState::failed(FileError::Read {
                        path: self.path.clone(),
                        offset: self.offset + self.skipped.unwrap_or(self.partial.len() as u64),
                        source,
                    })
                }
            }
        }
        SourceState::Ready
    }
}

/// One fixed-size record of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Byte offset of the record in the file.
    pub offset: u64,
    /// Its bytes (exactly the record size).
    pub bytes: Vec<u8>,
}

/// Reads a file as fixed-size records, each with its byte offset. A file whose size
/// is not a multiple of the record size ends with [`FileError::PartialRecord`] after
/// every whole record was emitted; a read error ends it with [`FileError::Read`].
///
/// ```
/// use pipewright::{sources::FileRecords, PipelineBuilder, Plan, Runtime};
///
/// let path = std::env::temp_dir().join(format!("pw-records-doc-{}", std::process::id()));
/// std::fs::write(&path, [1u8, 2, 3, 4, 5, 6, 7, 8])?;
/// let b = PipelineBuilder::new();
/// let out = b.source("records", FileRecords::open(&path, 4)?).output("r");
/// let mut running = Runtime::start(b.build()?, Plan::fused())?;
/// let rx = running.output(&out).unwrap();
/// let report = running.join()?;
/// let records = rx.collect();
/// assert_eq!(records.len(), 2);
/// assert_eq!((records[1].offset, records[1].bytes.as_slice()), (4, &[5u8, 6, 7, 8][..]));
/// assert!(report.source_errors.is_empty());
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileRecords {
    path: PathBuf,
    reader: BufReader<File>,
    size: usize,
    offset: u64,
}

impl FileRecords {
    /// Opens `path` to read records of `size` bytes from its start.
    pub fn open(path: impl AsRef<Path>, size: usize) -> Result<Self, FileError> {
        if size == 0 {
            return Err(FileError::ZeroRecordSize(path.as_ref().to_path_buf()));
        }
        let (path, file) = open_file(path.as_ref())?;
        Ok(Self {
            path,
            reader: BufReader::with_capacity((64 * 1024).max(size), file),
            size,
            offset: 0,
        })
    }

    /// Reads up to one record; returns how many bytes it got (less only at the end).
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

impl Source for FileRecords {
    type Out = Record;

    fn pull(&mut self, out: &mut Outbox<'_, Record>, max: usize) -> SourceState {
        for _ in 0..max {
            let mut bytes = vec![0u8; self.size];
            match self.fill(&mut bytes) {
                Ok(0) => return SourceState::Exhausted,
                Ok(n) if n < self.size => {
                    return SourceState::failed(FileError::PartialRecord {
                        path: self.path.clone(),
                        offset: self.offset,
                        len: n,
                        size: self.size,
                    })
                }
                Ok(_) => {
                    out.push(Record {
                        offset: self.offset,
                        bytes,
                    });
                    self.offset += self.size as u64;
                }
                Err(source) => {
                    return SourceState::failed(FileError::Read {
                        path: self.path.clone(),
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
        SourceState::Ready
    }
}
