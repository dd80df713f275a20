//! Record framing: encode into a caller buffer, replay a byte slice or file.
//!
//! A frame is
//!
//! ```text
//! +-----------+-----------+--------+------------------------+
//! | len: u32  | crc: u32  | type:u8| payload: len bytes     |
//! +-----------+-----------+--------+------------------------+
//!   little endian            1..=5   postcard (serde)
//! ```
//!
//! `crc` is CRC-32C (Castagnoli) over the `len` bytes, the type byte and the payload, so a
//! flipped bit anywhere in a frame, including its length, is detected.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use super::record::{Checkpoint, CheckpointV3, Intent, IntentV1, Record, Verdict};
use crate::protocol::Ballot;
use crate::types::{ClientId, TxnId};

/// Bytes before a record's payload: length, checksum, type.
pub const FRAME_HEADER: usize = 9;
/// The largest payload a frame may carry; a longer length field is corruption.
pub const MAX_PAYLOAD: usize = 16 << 20;

const T_INTENT: u8 = 1;
const T_DECISION: u8 = 2;
const T_COMPLETION: u8 = 3;
const T_FORGET: u8 = 4;
const T_CHECKPOINT: u8 = 5;
const T_INTENT_F: u8 = 6;
const T_PROMISE: u8 = 7;
const T_ACCEPT: u8 = 8;
/// A checkpoint with a floor (format 4).
const T_CHECKPOINT_FLOOR: u8 = 9;

/// A record could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The payload would exceed [`MAX_PAYLOAD`].
    #[error("record payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLong(usize),
    /// The serialiser failed.
    #[error("serialising a record: {0}")]
    Serialize(#[from] postcard::Error),
}

/// Why replay stopped before the end of the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorruptionReason {
    /// Fewer than [`FRAME_HEADER`] bytes remain (a torn header).
    #[error("torn frame header: {have} of {FRAME_HEADER} bytes")]
    TornHeader {
        /// Bytes present.
        have: usize,
    },
    /// The payload is cut short (a torn write).
    #[error("torn payload: {have} of {need} bytes")]
    TornPayload {
        /// Payload bytes the header announces.
        need: usize,
        /// Payload bytes present.
        have: usize,
    },
    /// The length field is larger than any valid record.
    #[error("length field {len} exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLong {
        /// The length read.
        len: usize,
    },
    /// The checksum does not match the frame's bytes.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// The checksum in the frame.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The checksum matches but the type byte is unknown (a newer writer?).
    #[error("unknown record type {0}")]
    UnknownType(u8),
    /// The checksum matches but the payload does not decode as its type.
    #[error("undecodable {kind} payload")]
    Undecodable {
        /// The record type.
        kind: &'static str,
    },
}

/// Where and why replay stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// Byte offset of the first invalid frame (equal to [`Replay::valid_len`]).
    pub offset: usize,
    /// What was wrong with it.
    pub reason: CorruptionReason,
}

/// The result of replaying a log.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Replay {
    /// Every complete, valid record before the first invalid frame, in log order.
    pub records: Vec<Record>,
    /// Length of the valid prefix: truncate the log file to this before appending.
    pub valid_len: usize,
    /// `None` if the whole input was valid frames.
    pub corruption: Option<Corruption>,
}

/// Lets postcard append to a borrowed buffer.
struct Appender<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

fn put_payload<T: Serialize>(out: &mut Vec<u8>, kind: u8, value: &T) -> Result<usize, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    postcard::to_extend(value, Appender(out))?;
    let len = out.len() - start - FRAME_HEADER;
    if len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(EncodeError::TooLong(len));
    }
    let len_bytes = (len as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&len_bytes);
    crc = crc32c::crc32c_append(crc, &[kind]);
    crc = crc32c::crc32c_append(crc, &out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out[start + 8] = kind;
    Ok(FRAME_HEADER + len)
}

/// Append `record` as one frame to `out`; returns the frame's length. On error `out`
/// keeps the bytes it had before the call.
pub fn encode(record: &Record, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let keep = out.len();
    let res = match record {
        Record::Intent(intent) if intent.acceptors == 0 => put_payload(out, T_INTENT, &intent.v1()),
        Record::Intent(intent) => put_payload(out, T_INTENT_F, intent),
        Record::Promise {
            txn,
            client,
            ballot,
        } => put_payload(out, T_PROMISE, &(txn, client, ballot)),
        Record::Accept {
            txn,
            client,
            ballot,
            verdict,
        } => put_payload(out, T_ACCEPT, &(txn, client, ballot, verdict)),
        Record::Decision {
            txn,
            client,
            verdict,
        } => put_payload(out, T_DECISION, &(txn, client, verdict)),
        Record::Completion {
            txn,
            client,
            verdict,
        } => put_payload(out, T_COMPLETION, &(txn, client, verdict)),
        Record::Forget { txn } => put_payload(out, T_FORGET, txn),
        Record::Checkpoint(c) => put_payload(out, T_CHECKPOINT_FLOOR, c),
    };
    if res.is_err() {
        out.truncate(keep);
    }
    res
}

fn decode<T: DeserializeOwned>(payload: &[u8], kind: &'static str) -> Result<T, CorruptionReason> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok(value),
        _ => Err(CorruptionReason::Undecodable { kind }),
    }
}

/// Decode one frame at the start of `bytes`: the record and the frame's length.
pub fn decode_frame(bytes: &[u8]) -> Result<(Record, usize), CorruptionReason> {
    if bytes.len() < FRAME_HEADER {
        return Err(CorruptionReason::TornHeader { have: bytes.len() });
    }
    let len_bytes: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let kind = bytes[8];
    if len > MAX_PAYLOAD {
        return Err(CorruptionReason::TooLong { len });
    }
    let have = bytes.len() - FRAME_HEADER;
    if have < len {
        return Err(CorruptionReason::TornPayload { need: len, have });
    }
    let payload = &bytes[FRAME_HEADER..FRAME_HEADER + len];
    let mut computed = crc32c::crc32c(&len_bytes);
    computed = crc32c::crc32c_append(computed, &[kind]);
    computed = crc32c::crc32c_append(computed, payload);
    if computed != stored {
        return Err(CorruptionReason::BadChecksum { stored, computed });
    }
    let record = match kind {
        T_INTENT => Record::Intent(decode::<IntentV1>(payload, "intent")?.into()),
        T_INTENT_F => Record::Intent(decode::<Intent>(payload, "intent")?),
        T_PROMISE => {
            let (txn, client, ballot) = decode::<(TxnId, ClientId, Ballot)>(payload, "promise")?;
            Record::Promise {
                txn,
                client,
                ballot,
            }
        }
        T_ACCEPT => {
            let (txn, client, ballot, verdict) =
                decode::<(TxnId, ClientId, Ballot, Verdict)>(payload, "accept")?;
            Record::Accept {
                txn,
                client,
                ballot,
                verdict,
            }
        }
        T_DECISION => {
            let (txn, client, verdict) = decode::<(TxnId, ClientId, Verdict)>(payload, "decision")?;
            Record::Decision {
                txn,
                client,
                verdict,
            }
        }
        T_COMPLETION => {
            let (txn, client, verdict) =
                decode::<(TxnId, ClientId, Verdict)>(payload, "completion")?;
            Record::Completion {
                txn,
                client,
                verdict,
            }
        }
        T_CHECKPOINT => Record::Checkpoint(decode::<CheckpointV3>(payload, "checkpoint")?.into()),
        T_CHECKPOINT_FLOOR => Record::Checkpoint(decode::<Checkpoint>(payload, "checkpoint")?),
        T_FORGET => Record::Forget {
            txn: decode::<TxnId>(payload, "forget")?,
        },
        other => return Err(CorruptionReason::UnknownType(other)),
    };
    Ok((record, FRAME_HEADER + len))
}

/// Replay a log image: every valid record up to the first torn or corrupt frame.
///
/// Never panics, whatever the input. The node truncates its log file to
/// [`Replay::valid_len`] before appending again.
pub fn replay(bytes: &[u8]) -> Replay {
    let mut out = Replay::default();
    while out.valid_len < bytes.len() {
        match decode_frame(&bytes[out.valid_len..]) {
            Ok((record, len)) => {
                out.records.push(record);
                out.valid_len += len;
            }
            Err(reason) => {
                out.corruption = Some(Corruption {
                    offset: out.valid_len,
                    reason,
                });
                break;
            }
        }
    }
    out
}

/// [`replay`] a log file.
pub fn replay_file(path: impl AsRef<Path>) -> std::io::Result<Replay> {
    Ok(replay(&std::fs::read(path)?))
}
