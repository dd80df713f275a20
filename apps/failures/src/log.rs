//! The durable event log: framed records of accepted lines, and their replay.
//!
//! A record is `len: u32 LE | crc32c(now ‖ payload): u32 LE | now: i64 LE | payload`,
//! where the payload is the batch's accepted lines and `now` the ingesting clock they
//! were judged by (so replay validates them exactly as they were). Replay stops at
//! the first record that is short or fails its checksum. When nothing valid follows,
//! that is a torn tail, never acknowledged (the sink acknowledges only after the whole
//! write was synced), and it is cut off. When a valid record does follow, the bytes in
//! between are damage, not a torn write: replay refuses rather than cut acknowledged
//! records away (see [`replay`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

const HEADER: usize = 16;

/// Set to cut a damaged log at its first bad record even though intact records follow
/// (see [`replay`]).
pub(crate) const TRUNCATE_DAMAGED: &str = "PIPEWRIGHT_FAILURES_TRUNCATE_DAMAGED_LOG";

/// The largest record replay accepts (a corrupt length beyond it ends the log).
pub const MAX_RECORD: usize = 256 << 20;

/// Encodes one record.
pub fn encode(now: i64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&now.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    v.extend_from_slice(&crc.to_le_bytes());
    v.extend_from_slice(&now.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The ingesting clock of its batch.
    pub now: i64,
    /// The accepted lines.
    pub payload: Vec<u8>,
    /// Where the record ends in the file.
    pub end: u64,
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// The good records after the starting offset, in order.
    pub records: Vec<Record>,
    /// Where the good records end (the file is cut there).
    pub end: u64,
    /// Bytes cut off the tail (a torn or corrupt record and what followed it).
    pub truncated: u64,
}

/// The record at the start of `bytes`, if a whole, intact one is there: its clock,
/// payload and length with the header.
fn record_at(bytes: &[u8]) -> Option<(i64, &[u8], usize)> {
    if bytes.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let now_bytes: [u8; 8] = bytes[8..16].try_into().expect("8 bytes");
    if len > MAX_RECORD || bytes.len() - HEADER < len {
        return None;
    }
    let payload = &bytes[HEADER..HEADER + len];
    let want = crc32c::crc32c_append(crc32c::crc32c(&now_bytes), payload);
    (want == crc).then(|| (i64::from_le_bytes(now_bytes), payload, HEADER + len))
}

/// Decodes the records of `bytes` (which starts at file offset `base`); also returns
/// how many bytes they take.
pub fn decode(bytes: &[u8], base: u64) -> (Vec<Record>, usize) {
    let mut at = 0;
    let mut out = Vec::new();
    while let Some((now, payload, len)) = record_at(&bytes[at..]) {
        at += len;
        out.push(Record {
            now,
            payload: payload.to_vec(),
            end: base + at as u64,
        });
    }
    (out, at)
}

/// Where the first intact record after the start of `bytes` begins, if one does.
fn next_record(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len()).find(|&at| record_at(&bytes[at..]).is_some())
}

/// Reads the records of the log at `path` from `from`, and cuts a torn tail off the
/// file (synced), so that appends continue after the last good record.
///
/// Fails, changing nothing, when bytes that do not decode are followed by an intact
/// record: that is damage (a flipped bit, or a checkpoint older than the log, whose
/// released prefix reads back as zeros), and cutting there would lose acknowledged
/// events; unless [`TRUNCATE_DAMAGED`] is set.
pub fn replay(path: &Path, from: u64) -> io::Result<Replay> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replay::default()),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    if from > size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the checkpoint says the log reaches {from} bytes but it has {size}: the log was truncated or replaced"),
        ));
    }
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::with_capacity((size - from) as usize);
    file.read_to_end(&mut bytes)?;
    let (records, used) = decode(&bytes, from);
    let end = from + used as u64;
    let truncated = size - end;
    let damaged =
        next_record(&bytes[used..]).filter(|_| std::env::var_os(TRUNCATE_DAMAGED).is_none());
    if let Some(next) = damaged {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} does not decode at byte {end} although an intact record follows at byte {}: \
                 the log is damaged (or checkpoint.redb is older than the log; its released \
                 prefix reads as zeros). Nothing was changed. Restore the data directory from \
                 a backup; or, if the machine lost power during a write, start with \
                 {TRUNCATE_DAMAGED}=1 to cut the log at byte {end} (what follows is lost)",
                path.display(),
                end + next as u64
            ),
        ));
    }
    if truncated > 0 {
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(Replay {
        records,
        end,
        truncated,
    })
}

/// Syncs the directory holding `path` (a new file's entry is durable after this).
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip_and_torn_tails_are_cut(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10),
            cut in 0usize..4000,
            flip in proptest::option::of(0usize..4000),
        ) {
            let mut bytes = Vec::new();
            let mut ends = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                bytes.extend_from_slice(&encode(i as i64, p));
                ends.push(bytes.len());
            }
            let cut = cut.min(bytes.len());
            let mut torn = bytes[..cut].to_vec();
            if let Some(f) = flip {
                if f < torn.len() {
                    torn[f] ^= 0x40;
                }
            }
            let (recs, used) = decode(&torn, 0);
            // Every record decoded is one that was written, in order, intact.
            for (i, r) in recs.iter().enumerate() {
                prop_assert_eq!(&r.payload, &payloads[i]);
                prop_assert_eq!(r.now, i as i64);
                prop_assert_eq!(r.end as usize, ends[i]);
            }
            prop_assert!(used <= cut);
            // Damage is told from a torn tail: an intact record after the stop means
            // the bytes before it were damaged (a flip), never only cut short.
            if next_record(&torn[used..]).is_some() {
                prop_assert!(flip.is_some_and(|f| f < cut));
            }
            // Without corruption, every whole record before the cut is found.
            if flip.is_none_or(|f| f >= cut) {
                let whole = ends.iter().filter(|&&e| e <= cut).count();
                prop_assert_eq!(recs.len(), whole);
            }
        }
    }

    fn log_of(records: &[&[u8]]) -> (tempfile::TempDir, std::path::PathBuf, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (i, p) in records.iter().enumerate() {
            bytes.extend_from_slice(&encode(i as i64, p));
            ends.push(bytes.len() as u64);
        }
        std::fs::write(&path, &bytes).unwrap();
        (dir, path, ends)
    }

    #[test]
    fn a_torn_tail_is_cut() {
        let (_dir, path, ends) = log_of(&[b"a", b"bb", b"ccc"]);
        let full = ends[2];
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 2).unwrap();
        let r = replay(&path, 0).unwrap();
        assert_eq!(r.records.len(), 2);
        assert_eq!((r.end, r.truncated), (ends[1], full - 2 - ends[1]));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ends[1]);
    }

    #[test]
    fn damage_before_intact_records_is_refused_and_the_log_left_alone() {
        let (_dir, path, ends) = log_of(&[b"first", b"second", b"third"]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[ends[0] as usize + HEADER] ^= 1; // a flipped bit in the second payload
        std::fs::write(&path, &bytes).unwrap();
        let err = replay(&path, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let message = err.to_string();
        assert!(
            message.contains(&format!("at byte {}", ends[0])),
            "{message}"
        );
        assert!(
            message.contains(&format!("follows at byte {}", ends[1])),
            "{message}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the log was changed");
    }

    #[test]
    fn a_zeroed_prefix_before_records_is_refused() {
        // What a checkpoint older than the log meets: the prefix the newer checkpoint
        // released reads as zeros.
        let (_dir, path, ends) = log_of(&[b"released", b"kept"]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..ends[0] as usize].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        assert!(replay(&path, 0).is_err());
        assert!(replay(&path, ends[0]).unwrap().records.len() == 1);
    }
}
