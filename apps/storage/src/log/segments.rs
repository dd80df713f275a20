//! The log on disk: a sequence of segment files, of which recovery uses one.
//!
//! Segment 0 is the file `log`; segment `n > 0` is `log.n` and starts with a
//! [`Record::Checkpoint`] that replaces everything before it. A checkpoint rotates
//! the log:
//!
//! 1. the records before the checkpoint are written to the current segment and
//!    synced (as every burst is);
//! 2. the page file is synced (`fdatasync`): no write of a transaction the
//!    checkpoint forgets needs redo any more;
//! 3. segment `n + 1` is created, the checkpoint and the records after it are
//!    written and synced, and the directory is synced;
//! 4. only then are older segments deleted (and the directory synced again), and
//!    the node told that the checkpoint is durable.
//!
//! [`open`] picks the newest segment that is valid — segment 0, or a segment whose
//! first record is a complete, checksummed checkpoint — and deletes the others. A
//! crash before step 3 completed leaves a newer segment without a valid checkpoint
//! (missing, empty or torn): it is deleted and the previous segment, still complete,
//! is used. A crash after step 3 leaves both: the newer one is used. So whatever
//! the crash point, one valid segment holds every durable record the node relied
//! on, and disk use is at most two segments.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use super::frame::{replay_file, Replay};
use super::record::Record;

/// The file of segment `seq` in data directory `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    if seq == 0 {
        dir.join("log")
    } else {
        dir.join(format!("log.{seq}"))
    }
}

/// The segments present in `dir`, ascending.
pub fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == "log" {
            out.push(0);
        } else if let Some(seq) = name.strip_prefix("log.").and_then(|n| n.parse().ok()) {
            if seq > 0 {
                out.push(seq);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Make `dir`'s entries (created, deleted files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The segment [`open`] chose and what it found.
#[derive(Debug, Default)]
pub struct Opened {
    /// The segment to replay and append to.
    pub seq: u64,
    /// Its replay (records from its checkpoint on).
    pub replay: Replay,
    /// Bytes of a torn or corrupt tail truncated from it.
    pub truncated_bytes: u64,
    /// Segments deleted: older ones, and newer ones without a valid checkpoint.
    pub deleted: Vec<u64>,
}

/// Set to cut a damaged log at its first bad frame even though intact frames follow
/// (see [`open`]).
pub const TRUNCATE_DAMAGED: &str = "PIPEWRIGHT_STORAGE_TRUNCATE_DAMAGED_LOG";

/// Choose the segment to recover from (see the [module docs](self)), truncate its
/// torn tail, delete every other segment, and sync the directory. Refuses (an error,
/// nothing changed) a segment whose bad bytes are followed by an intact frame, unless
/// [`TRUNCATE_DAMAGED`] is set.
///
/// An error if segments exist but none is valid (the log was damaged beyond a torn
/// tail: starting empty would lose committed data).
pub fn open(dir: &Path) -> io::Result<Opened> {
    let all = segments(dir)?;
    let mut chosen = None;
    for &seq in all.iter().rev() {
        let replay = replay_file(segment_path(dir, seq))?;
        let valid = seq == 0 || matches!(replay.records.first(), Some(Record::Checkpoint(_)));
        if valid {
            chosen = Some((seq, replay));
            break;
        }
    }
    let (seq, replay) = match chosen {
        Some(c) => c,
        None if all.is_empty() => (0, Replay::default()),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no valid log segment among {all:?} in {}", dir.display()),
            ))
        }
    };
    let mut opened = Opened {
        seq,
        ..Opened::default()
    };
    let path = segment_path(dir, seq);
    if replay.corruption.is_some() {
        // A torn last write leaves nothing intact after it. An intact frame after the
        // bad bytes means damage (a bad sector, a flipped bit): cutting there would drop
        // committed decisions, so the node does not start, unless told to.
        let bytes = std::fs::read(&path)?;
        let bad = replay.valid_len;
        let intact_after =
            (bad + 1..bytes.len()).find(|&at| super::frame::decode_frame(&bytes[at..]).is_ok());
        if let Some(at) = intact_after {
            if std::env::var_os(TRUNCATE_DAMAGED).is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "log segment {} does not decode at byte {bad} although an intact record \
                         follows at byte {at}: the log is damaged, not torn, and cutting it would \
                         drop committed decisions. Nothing was changed. Restore the node's data \
                         directory; or, if the machine lost power during a write, start with \
                         {TRUNCATE_DAMAGED}=1 to cut the log at byte {bad} (what follows is lost)",
                        path.display()
                    ),
                ));
            }
        }
        let file = OpenOptions::new().write(true).open(&path)?;
        let len = file.metadata()?.len();
        opened.truncated_bytes = len - replay.valid_len as u64;
        file.set_len(replay.valid_len as u64)?;
        file.sync_all()?;
    }
    opened.replay = replay;
    for other in all.into_iter().filter(|&s| s != seq) {
        std::fs::remove_file(segment_path(dir, other))?;
        opened.deleted.push(other);
    }
    sync_dir(dir)?;
    Ok(opened)
}

/// Bytes of every segment in `dir` (the log's disk use).
pub fn disk_bytes(dir: &Path) -> u64 {
    segments(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|seq| std::fs::metadata(segment_path(dir, seq)).ok())
        .map(|m| m.len())
        .sum()
}
