//! Ports: where frames enter and leave the data plane.
//!
//! A [`VfPort`] is a virtual function as the guest sees it: frames the guest sends are
//! received here (and go through the egress pipeline), frames for the guest are sent
//! here (after the ingress pipeline). Two backends put it on real Linux interfaces:
//! an AF_XDP socket on a veth (`xsk`) and a TAP device with a virtio-net header
//! (`tap`), which keeps the offload metadata (GSO, partial checksum) a VF descriptor
//! carries.
//!
//! Ports never block: a receive with nothing waiting returns 0, a send to a full ring
//! takes what fits. Callers wait for [`VfPort::rx_fd`] to become readable (tokio
//! `AsyncFd`, `poll`, or an io_uring poll) instead of spinning, because busy-polling
//! starves the kernel's softirq on small machines.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use crate::{Frame, FramePool};

/// Why a port operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A system call failed; `what` says which step, so the message says what to check.
    #[error("{what}: {source}")]
    Io {
        /// The step that failed ("bind AF_XDP socket to veth0 queue 0", ...).
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The interface does not exist.
    #[error("no interface named {0:?}: create it first (or check the name in the config)")]
    NoSuchInterface(String),
    /// A frame to send does not fit the port's buffers; it was dropped and counted.
    #[error("frame of {len} bytes does not fit the port's {max}-byte buffers")]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The largest frame the port can carry.
        max: usize,
    },
    /// The port cannot be used as configured.
    #[error("port setup: {0}")]
    Setup(String),
}

impl PortError {
    /// An I/O error with the step that failed.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        PortError::Io {
            what: what.into(),
            source,
        }
    }

    /// An I/O error from `errno`, with the step that failed.
    pub fn last_os_error(what: impl Into<String>) -> Self {
        Self::io(what, io::Error::last_os_error())
    }
}

/// Counters every port keeps (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames received from the guest.
    pub rx_frames: u64,
    /// Bytes received from the guest.
    pub rx_bytes: u64,
    /// Frames handed to the guest.
    pub tx_frames: u64,
    /// Bytes handed to the guest.
    pub tx_bytes: u64,
    /// Frames dropped by the port (too large, malformed descriptor, kernel ring full
    /// with drop policy), each also reported as an error or counted by reason.
    pub dropped: u64,
    /// Frames the kernel dropped on the way to the port before it could see them (an
    /// AF_XDP socket's full RX ring or missing fill buffers), where the backend can
    /// tell; 0 otherwise.
    pub kernel_dropped: u64,
    /// Frame bytes the port copied in user space (both directions): a TAP's
    /// super-frame that spilled past its buffer, an AF_XDP socket's copies between
    /// its UMEM and the frames.
    pub copied_bytes: u64,
}

/// A virtual function's port: a non-blocking, burst-oriented frame interface.
pub trait VfPort: Send + fmt::Debug {
    /// The VF number this port serves; stamped into [`crate::FrameMeta::vf`] of every
    /// received frame.
    fn vf(&self) -> u16;

    /// Moves up to `max` frames the guest sent into `out`, taking buffers from `pool`,
    /// and returns how many. Returns 0 at once when nothing is waiting.
    fn recv_burst(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError>;

    /// Hands frames to the guest from the front of `frames`, removing those it took, and
    /// returns how many. Frames it could not take now (the ring is full) stay in
    /// `frames`; retry after the guest drains. Buffers of sent frames go back to `pool`.
    /// On an error, the frame it was about to send when the error happened (one too
    /// large for the port, one the system call refused) was removed and counted, and
    /// the frames still in `frames` were not sent: the caller may send them again.
    fn send_burst(&mut self, frames: &mut Vec<Frame>, pool: &FramePool)
        -> Result<usize, PortError>;

    /// A descriptor that is readable while frames are waiting to be received.
    fn rx_fd(&self) -> BorrowedFd<'_>;

    /// The port's counters.
    fn counters(&self) -> PortCounters;

    /// Whether [`send_burst`](VfPort::send_burst) takes super-frames (frames with
    /// [`crate::FrameMeta::gso`], up to 64 KiB) and partial checksums whole, as a TAP
    /// with a virtio-net header does; if not (the default), the data plane cuts them
    /// into wire-sized frames first.
    fn accepts_super_frames(&self) -> bool {
        false
    }
}

mod tap;
mod xsk;

pub use tap::{
    decode_vnet_hdr, encode_vnet_hdr, TapDropReason, TapDrops, TapOffloads, TapPort, MAX_FRAME_LEN,
    VNET_HDR_LEN,
};
pub(crate) use tap::{tunnel_header, TunnelGsoTap};
pub use xsk::{AfXdpBuilder, AfXdpPort, BindMode, XdpMode, XskCounters, XskKernelStats};
