//! The durable event log: framed records of accepted lines, and their replay.
//!
//! A record is `len: u32 LE | crc32c(now ‖ payload): u32 LE | now: i64 LE | payload`,
//! where the payload is the batch's accepted lines and `now` the ingesting clock they
//! were judged by (so replay validates them exactly as they were). Replay stops at
//! the first record that is short or fails its checksum: a torn tail, never
//! acknowledged (the sink acknowledges only after the whole write was synced).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

const HEADER: usize = 16;

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

/// Decodes the records of `bytes` (which starts at file offset `base`).
pub fn decode(bytes: &[u8], base: u64) -> (Vec<Record>, usize) {
    let mut at = 0;
    let mut out = Vec::new();
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let now_bytes: [u8; 8] = bytes[at + 8..at + 16].try_into().expect("8 bytes");
        if len > MAX_RECORD || bytes.len() - at - HEADER < len {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        let want = crc32c::crc32c_append(crc32c::crc32c(&now_bytes), payload);
        if want != crc {
            break;
        }
        at += HEADER + len;
        out.push(Record {
            now: i64::from_le_bytes(now_bytes),
            payload: payload.to_vec(),
            end: base + at as u64,
        });
    }
    (out, at)
}

/// Reads the records of the log at `path` from `from`, and cuts a torn tail off the
/// file (synced), so that appends continue after the last good record.
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
            // Without corruption, every whole record before the cut is found.
            if flip.is_none_or(|f| f >= cut) {
                let whole = ends.iter().filter(|&&e| e <= cut).count();
                prop_assert_eq!(recs.len(), whole);
            }
        }
    }
}
