//! Ready-made sources: files (lines, blocks of whole lines, fixed-size records, with
//! byte offsets), TCP
//! (lines or length-prefixed frames from accepted connections) and UDP datagrams.
//! A timer is [`source::interval`](pipewright_stages::source::interval).
//!
//! Every one pulls only as many items as its pipeline has room for (the `max` of
//! `pull`), ends with a typed error as [`SourceState::Failed`](crate::SourceState)
//! when it cannot go on, and ends at once on a [`StopHandle`](crate::StopHandle).

mod blocks;
mod file;
mod framing;
mod tcp;
mod udp;

pub use blocks::{BlockLine, LineBlock, LineBlocks};
pub use file::{BadLine, FileError, FileLines, FileRecords, Line, Record};
pub use framing::{length_prefixed, FrameError, Framing};
pub use tcp::{Message, SocketError, SocketStats, TcpSource};
pub use udp::{Datagram, UdpSource};
