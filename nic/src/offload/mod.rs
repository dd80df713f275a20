//! Offloads a VF expects from its NIC: checksum completion and verification, and
//! segmentation of TSO/USO super-frames.

mod csum;
pub(crate) mod gro;
mod l3l4;
mod segment;

pub use csum::{complete_partial, verify_l3l4};
pub use l3l4::{Headers, L3};
pub use segment::segment;
pub(crate) use segment::SuperFrame;

/// Why an offload could not be applied; the frame is dropped and counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The frame's headers are truncated or inconsistent.
    #[error("malformed headers for offload: {0}")]
    Malformed(&'static str),
    /// The partial checksum's start/offset point outside the frame.
    #[error("partial checksum start {start} + offset {offset} is outside the {len}-byte frame")]
    BadCsumOffsets {
        /// csum_start.
        start: u16,
        /// csum_offset.
        offset: u16,
        /// Frame length.
        len: usize,
    },
    /// A checksum did not verify.
    #[error("bad {0} checksum")]
    BadChecksum(&'static str),
    /// Segmentation asked of something that is not TCP or UDP over IPv4/IPv6.
    #[error("cannot segment: {0}")]
    Unsegmentable(&'static str),
    /// A segment size of 0 or one that leaves no payload room.
    #[error("invalid segment size {0}")]
    BadSegmentSize(u16),
}

impl OffloadError {
    /// Label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            OffloadError::Malformed(_) => "malformed",
            OffloadError::BadCsumOffsets { .. } => "bad_csum_offsets",
            OffloadError::BadChecksum(_) => "bad_checksum",
            OffloadError::Unsegmentable(_) => "unsegmentable",
            OffloadError::BadSegmentSize(_) => "bad_segment_size",
        }
    }
}
