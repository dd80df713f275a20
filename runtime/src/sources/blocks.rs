//! A source of blocks of whole lines, for pipelines that parse lines on every core.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use pipewright_stages::{Outbox, Source, SourceState};

use super::file::{open_file, BadLine, FileError};

/// A block of whole lines of a file, as read: every line of it ends with `\n`, except
/// perhaps the file's last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineBlock {
    /// Byte offset of the block's first byte in the file.
    pub offset: u64,
    /// The lines' bytes, with their line endings.
    pub bytes: Vec<u8>,
}

/// One line of a [`LineBlock`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLine<'a> {
    /// Byte offset of the line's first byte in the file.
    pub offset: u64,
    /// The line's text, without its `\n` or `\r\n`.
    pub text: &'a str,
}

impl LineBlock {
    /// The block's lines in order: `Ok` with the text, or [`BadLine::NotUtf8`] for a
    /// line that is not UTF-8 (its bytes kept); the next line is read normally.
    pub fn lines(&self) -> impl Iterator<Item = Result<BlockLine<'_>, BadLine>> + '_ {
        let mut at = 0usize;
        std::iter::from_fn(move || {
            if at >= self.bytes.len() {
                return None;
            }
            let rest = &self.bytes[at..];
            let (line, used) = match memchr::memchr(b'\n', rest) {
                Some(end) => (&rest[..end], end + 1),
                None => (rest, rest.len()),
            };
            let offset = self.offset + at as u64;
            at += used;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Some(match std::str::from_utf8(line) {
                Ok(text) => Ok(BlockLine { offset, text }),
                Err(error) => Err(BadLine::NotUtf8 {
                    offset,
                    bytes: line.to_vec(),
                    error,
                }),
            })
        })
    }
}

/// Reads a file in blocks of whole lines ([`LineBlock`]s of about
/// [`block_size`](LineBlocks::block_size) bytes, 64 KiB by default): the source only
/// reads and finds each block's last `\n`, so splitting the lines, decoding them and
/// parsing them run in the stages after it — replicate those over every core
/// (`Stream::then_replicated`) and reading stops being the
/// pipeline's serial part, and no line costs an allocation. For one stage per line,
/// or to follow a growing file, use [`FileLines`](super::FileLines).
///
/// A line still without its end after [`max_line`](LineBlocks::max_line) bytes (1 MiB
/// by default) is skipped without being held in memory and emitted as
/// `Err(BadLine::TooLong)`; the block after it starts with the next line. A read error ends the source with
/// [`FileError::Read`].
///
/// ```
/// use pipewright::{sources::LineBlocks, stage, PipelineBuilder, Plan, Replicas, Runtime};
///
/// let dir = std::env::temp_dir().join(format!("pw-blocks-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("app.log");
/// std::fs::write(&path, "GET / 200\nGET /x 404\n")?;
///
/// let b = PipelineBuilder::new();
/// let statuses = b
///     .source("log", LineBlocks::open(&path)?)
///     .then("whole", stage::try_map(|block| block))
///     .then_replicated("status", Replicas::new(2), |_| {
///         stage::flat_map(|block: pipewright::sources::LineBlock| {
///             block
///                 .lines()
///                 .filter_map(Result::ok)
///                 .map(|line| line.text.rsplit(' ').next().unwrap_or("").to_string())
///                 .collect::<Vec<_>>()
///         })
///     })
///     .output("statuses");
/// let mut running = Runtime::start(b.build()?, Plan::spread(2))?;
/// let rx = running.output(&statuses).unwrap();
/// running.join()?;
/// assert_eq!(rx.collect(), vec!["200".to_string(), "404".to_string()]);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LineBlocks {
    path: PathBuf,
    file: File,
    /// Offset of the first byte of `carry`.
    offset: u64,
    /// The start of a line read with the previous block.
    carry: Vec<u8>,
    /// Bytes of an over-long line skipped so far.
    skipping: Option<u64>,
    block: usize,
    max_line: usize,
    ended: bool,
}

impl LineBlocks {
    /// Opens `path` for reading from its start.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let (path, file) = open_file(path.as_ref())?;
        Ok(Self {
            path,
            file,
            offset: 0,
            carry: Vec::new(),
            skipping: None,
            block: 64 * 1024,
            max_line: 1 << 20,
            ended: false,
        })
    }

    /// Sets how many bytes each read takes (at least 1; a block is this plus the
    /// start of a line carried over, minus the end of its last line).
    pub fn block_size(mut self, bytes: usize) -> Self {
        self.block = bytes.max(1);
        self
    }

    /// Sets the longest line kept, in bytes (at least 1); longer lines are
    /// [`BadLine::TooLong`].
    pub fn max_line(mut self, bytes: usize) -> Self {
        self.max_line = bytes.max(1);
        self
    }

    /// Reads up to a block's bytes after the carried ones; 0 at the end of the file.
    fn read_more(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        loop {
            match (&mut self.file).take(self.block as u64).read_to_end(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// The next item, or `None` at the end of the file.
    fn next_item(&mut self) -> std::io::Result<Option<Result<LineBlock, BadLine>>> {
        loop {
            let mut buf = Vec::with_capacity(self.carry.len() + self.block);
            buf.append(&mut self.carry);
            let kept = buf.len();
            let read = self.read_more(&mut buf)?;
            if let Some(skipped) = &mut self.skipping {
                // Inside an over-long line: drop bytes up to its end.
                match memchr::memchr(b'\n', &buf) {
                    Some(end) => {
                        let len = *skipped + end as u64 + 1;
                        let offset = self.offset;
                        self.skipping = None;
                        self.offset += len;
                        self.carry = buf.split_off(end + 1);
                        return Ok(Some(Err(self.too_long(offset, len))));
                    }
                    None if read == 0 => {
                        let len = *skipped;
                        let offset = self.offset;
                        self.skipping = None;
                        self.offset += len;
                        self.ended = true;
                        return Ok(Some(Err(self.too_long(offset, len))));
                    }
                    None => {
                        *skipped += buf.len() as u64;
                        continue;
                    }
                }
            }
            let scan_from = kept.saturating_sub(1).min(buf.len());
            match memchr::memrchr(b'\n', &buf[scan_from..]) {
                Some(end) => {
                    let end = scan_from + end + 1;
                    self.carry = buf.split_off(end);
                    let offset = self.offset;
                    self.offset += end as u64;
                    return Ok(Some(Ok(LineBlock { offset, bytes: buf })));
                }
                None if read == 0 => {
                    self.ended = true;
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let offset = self.offset;
                    self.offset += buf.len() as u64;
                    return Ok(Some(Ok(LineBlock { offset, bytes: buf })));
                }
                None if buf.len() > self.max_line + 2 => {
                    // No line end within the limit (with room for `\r\n`): skip it.
                    self.skipping = Some(buf.len() as u64);
                }
                None => self.carry = buf,
            }
        }
    }

    fn too_long(&self, offset: u64, len: u64) -> BadLine {
        BadLine::TooLong {
            offset,
            len,
            max: self.max_line,
        }
    }
}

impl Source for LineBlocks {
    type Out = Result<LineBlock, BadLine>;

    fn pull(&mut self, out: &mut Outbox<'_, Self::Out>, max: usize) -> SourceState {
        for _ in 0..max {
            if self.ended {
                return SourceState::Exhausted;
            }
            match self.next_item() {
                Ok(Some(item)) => out.push(item),
                Ok(None) => return SourceState::Exhausted,
                Err(source) => {
                    return SourceState::failed(FileError::Read {
                        path: self.path.clone(),
                        offset: self.offset + self.carry.len() as u64,
                        source,
                    })
                }
            }
        }
        SourceState::Ready
    }
}
