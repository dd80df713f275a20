//! The append-only log of a node: intents, decisions, completions.
//!
//! Records are framed (length, CRC-32C, type, postcard payload: a [`FRAME_HEADER`]-byte header, then the
//! payload) and
//! encoded into a caller buffer with [`encode`], so the node's writer can append a burst
//! of frames and make them durable with one `fdatasync` (group commit). After a crash,
//! [`replay`] returns every complete, valid record up to the first torn or corrupt
//! frame and the length of that valid prefix; the node truncates the file there and
//! never applies a half-written record.
//!
//! The log is kept in [`segments`]: a checkpoint starts a new segment and lets the
//! older one be deleted, so the log's disk use stays bounded. The data directory's
//! [`format`] marker names the format version; a node refuses another.

pub mod format;
mod frame;
mod record;
pub mod segments;

pub use frame::{
    decode_frame, encode, replay, replay_file, Corruption, CorruptionReason, EncodeError, Replay,
    FRAME_HEADER, MAX_PAYLOAD,
};
pub use record::{Checkpoint, Intent, PageWrite, Record, Verdict};
