//! Configuration of an [`AfXdpPort`](super::AfXdpPort): a builder with defaults that
//! work on a veth.

use super::AfXdpPort;
use crate::port::PortError;

/// Where the XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// In the driver, before an skb exists (`XDP_FLAGS_DRV_MODE`). veth supports it.
    #[default]
    Native,
    /// In the generic stack on the skb (`XDP_FLAGS_SKB_MODE`); works on any interface.
    Generic,
}

impl XdpMode {
    /// The `XDP_FLAGS_*` attach flag.
    pub(super) fn attach_flags(self) -> u32 {
        match self {
            XdpMode::Native => 1 << 2,  // XDP_FLAGS_DRV_MODE
            XdpMode::Generic => 1 << 1, // XDP_FLAGS_SKB_MODE
        }
    }
}

/// How packet data moves between the driver and the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// The kernel copies frames into and out of the UMEM (`XDP_COPY`); every driver
    /// with XDP support (and generic mode) can do it.
    #[default]
    Copy,
    /// The driver DMAs straight into the UMEM (`XDP_ZEROCOPY`); needs driver support
    /// (veth has none and answers `EOPNOTSUPP`).
    ZeroCopy,
}

/// Builds an [`AfXdpPort`]; see [`AfXdpPort::builder`].
#[derive(Debug, Clone)]
pub struct AfXdpBuilder {
    pub(super) ifname: String,
    pub(super) queue: u32,
    pub(super) vf: u16,
    pub(super) frames: u32,
    pub(super) frame_size: u32,
    pub(super) ring_size: u32,
    pub(super) xdp_mode: XdpMode,
    pub(super) bind_mode: BindMode,
    pub(super) multi_buffer: bool,
    pub(super) max_frame: usize,
    pub(super) udp_ports: Option<Vec<u16>>,
}

/// Bytes the kernel keeps in front of received data in each frame in copy mode
/// (`XDP_PACKET_HEADROOM`).
pub(super) const XDP_PACKET_HEADROOM: u32 = 256;

impl AfXdpBuilder {
    pub(super) fn new(ifname: &str) -> Self {
        Self {
            ifname: ifname.to_string(),
            queue: 0,
            vf: 0,
            frames: 4096,
            frame_size: 2048,
            ring_size: 2048,
            xdp_mode: XdpMode::Native,
            bind_mode: BindMode::Copy,
            multi_buffer: false,
            max_frame: 9216,
            udp_ports: None,
        }
    }

    /// The interface queue to bind (default 0).
    pub fn queue(mut self, queue: u32) -> Self {
        self.queue = queue;
        self
    }

    /// The VF number stamped on received frames (default 0).
    pub fn vf(mut self, vf: u16) -> Self {
        self.vf = vf;
        self
    }

    /// UMEM frames (default 4096); at least twice the ring size, since the fill ring and
    /// the TX path each get half.
    pub fn frames(mut self, frames: u32) -> Self {
        self.frames = frames;
        self
    }

    /// Bytes per UMEM frame: 2048 (default) or 4096. Without multi-buffer a frame must
    /// fit one UMEM frame after the kernel's 256-byte headroom.
    pub fn frame_size(mut self, frame_size: u32) -> Self {
        self.frame_size = frame_size;
        self
    }

    /// Entries of each of the four rings, a power of two (default 2048).
    pub fn ring_size(mut self, ring_size: u32) -> Self {
        self.ring_size = ring_size;
        self
    }

    /// Native (default) or generic XDP.
    pub fn mode(mut self, mode: XdpMode) -> Self {
        self.xdp_mode = mode;
        self
    }

    /// Copy (default) or zero-copy.
    pub fn bind_mode(mut self, mode: BindMode) -> Self {
        self.bind_mode = mode;
        self
    }

    /// Multi-buffer frames (`XDP_USE_SG`, off by default): frames larger than one UMEM
    /// frame arrive as chained descriptors and are reassembled into one
    /// [`Frame`](crate::Frame), and large frames are sent as chains. The XDP program is then
    /// loaded frags-aware.
    pub fn multi_buffer(mut self, on: bool) -> Self {
        self.multi_buffer = on;
        self
    }

    /// The largest frame carried with multi-buffer on (default 9216); larger frames are
    /// dropped and counted. Without multi-buffer the limit is one UMEM frame less the
    /// kernel's headroom.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Redirects only UDP datagrams to these destination ports (IPv4 without options,
    /// not fragmented; IPv6 with UDP as the first next header) to the socket; every
    /// other frame (ARP, neighbour discovery, the host's own traffic) goes on to the
    /// kernel stack. By default every frame of the queue is redirected (a VF port).
    /// An underlay port uses this for its tunnel ports.
    pub fn redirect_udp_ports(mut self, ports: &[u16]) -> Self {
        self.udp_ports = Some(ports.to_vec());
        self
    }

    /// Largest frame in each direction with this configuration.
    pub(super) fn effective_max_frame(&self) -> usize {
        let per_frame = (self.frame_size - XDP_PACKET_HEADROOM) as usize;
        if self.multi_buffer {
            // The kernel chains at most MAX_SKB_FRAGS (17) + 1 buffers.
            self.max_frame.min(per_frame * 18)
        } else {
            per_frame
        }
    }

    pub(super) fn validate(&self) -> Result<(), PortError> {
        let err = |m: String| Err(PortError::Setup(m));
        if self.frame_size != 2048 && self.frame_size != 4096 {
            return err(format!(
                "frame_size {} must be 2048 or 4096",
                self.frame_size
            ));
        }
        if !self.ring_size.is_power_of_two() || self.ring_size < 8 {
            return err(format!(
                "ring_size {} must be a power of two >= 8",
                self.ring_size
            ));
        }
        if u64::from(self.frames) < 2 * u64::from(self.ring_size) {
            return err(format!(
                "frames {} must be at least twice ring_size {}",
                self.frames, self.ring_size
            ));
        }
        Ok(())
    }

    /// Opens the socket, registers the UMEM, binds, loads and attaches the XDP program.
    ///
    /// Needs `CAP_NET_ADMIN` + `CAP_BPF` (root) and runs in the calling thread's network
    /// namespace. Errors name the failing step (and carry the verifier log when the
    /// program is rejected).
    pub fn build(self) -> Result<AfXdpPort, PortError> {
        AfXdpPort::open(self)
    }
}
