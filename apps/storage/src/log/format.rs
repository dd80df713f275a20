//! The data directory's format marker: the file `format`, one line
//! `pipewright-storage format N` (like PostgreSQL's `PG_VERSION`).
//!
//! A node checks it before reading anything else and refuses to start on a directory
//! written in a format it cannot read ([`FormatError`]) instead of misreading its log.
//! A directory without the marker was written before the marker existed, in format 1.
//! Formats from [`OLDEST_READABLE`] to [`LOG_FORMAT`] are read; an older one is
//! upgraded by writing the current marker (this build writes pages in its own format,
//! which an older build would misread). An empty directory gets the current marker.
//!
//! Versions: 1 — the log records of issue 6, pages without a length; 2 — pages carry
//! the length they were written with (format-1 pages still read, as full pages); 3 —
//! the decision's acceptors: intents carry F, and acceptors log `Promise` and
//! `Accept` records (format-2 logs still read: their intents have F = 0); 4 — checkpoints
//! carry a floor (the folded low-water marks of idle clients; format-3 checkpoints
//! still read, with floor 0).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::segments::sync_dir;

/// The format of the log (record types and their encoding) and of the page file this
/// build reads and writes. Bump it with any change an older build would misread.
pub const LOG_FORMAT: u32 = 4;
/// The oldest format this build reads (and upgrades).
pub const OLDEST_READABLE: u32 = 1;

const PREFIX: &str = "pipewright-storage format ";
const FILE: &str = "format";

/// The data directory is not in this build's format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The marker names another format version.
    #[error(
        "data directory {dir} is in storage format {found}, this node reads formats \
         {OLDEST_READABLE} to {expected}: \
         start it with a pipewright build of format {found}, or move the directory aside to \
         start empty"
    )]
    Incompatible {
        /// The data directory.
        dir: PathBuf,
        /// The version its marker names.
        found: u32,
        /// [`LOG_FORMAT`].
        expected: u32,
    },
    /// The marker is not one of ours.
    #[error(
        "data directory {dir} has a `format` file that is not a pipewright storage marker \
         (found {found:?}, expected \"{PREFIX}{expected}\"): is this another program's \
         directory? Point --data elsewhere"
    )]
    Foreign {
        /// The data directory.
        dir: PathBuf,
        /// The marker's first line (at most 80 characters).
        found: String,
        /// [`LOG_FORMAT`].
        expected: u32,
    },
    /// Reading or writing the marker failed.
    #[error("format marker in {dir}: {error}")]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

/// Check `dir`'s format marker, writing the current one (durably) if the directory
/// has none or an older readable one. Returns the format found (1 if none).
pub fn check(dir: &Path) -> Result<u32, FormatError> {
    let io = |error| FormatError::Io {
        dir: dir.to_path_buf(),
        error,
    };
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let line = text.lines().next().unwrap_or("").trim();
            match line
                .strip_prefix(PREFIX)
                .and_then(|n| n.trim().parse::<u32>().ok())
            {
                Some(found) if found == LOG_FORMAT => Ok(found),
                Some(found) if (OLDEST_READABLE..LOG_FORMAT).contains(&found) => {
                    write(dir, LOG_FORMAT).map_err(io)?;
                    Ok(found)
                }
                Some(found) => Err(FormatError::Incompatible {
                    dir: dir.to_path_buf(),
                    found,
                    expected: LOG_FORMAT,
                }),
                None => Err(FormatError::Foreign {
                    dir: dir.to_path_buf(),
                    found: line.chars().take(80).collect(),
                    expected: LOG_FORMAT,
                }),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No marker: empty, or written before the marker existed (format 1, which
            // this build reads).
            write(dir, LOG_FORMAT).map_err(io)?;
            Ok(OLDEST_READABLE)
        }
        Err(e) => Err(io(e)),
    }
}

/// Write `dir`'s marker for `version` durably (temporary file, fsync, rename, fsync of
/// the directory).
pub fn write(dir: &Path, version: u32) -> std::io::Result<()> {
    let tmp = dir.join("format.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{PREFIX}{version}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    sync_dir(dir)
}
