//! Frames: packet bytes in a fixed buffer with headroom in front, so encapsulation
//! writes its outer headers in place instead of copying the packet.

use std::fmt;

/// Bytes reserved in front of a received frame for outer headers (Ethernet + IPv6 +
/// UDP + Geneve with options fits with room to spare).
pub const DEFAULT_HEADROOM: usize = 128;

/// Segmentation offload requested for a frame, as a VF descriptor (or a virtio-net
/// header) carries it: the frame is a super-frame to be cut into `size`-byte payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// What is segmented.
    pub kind: GsoKind,
    /// Payload bytes per segment (the MSS for TCP).
    pub size: u16,
}

/// The transport a [`Gso`] request segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4 (TSO).
    TcpV4,
    /// TCP over IPv6 (TSO6).
    TcpV6,
    /// UDP (USO / UDP GSO): payload cut into datagrams.
    Udp,
}

/// A partial L4 checksum to complete: the guest wrote only the pseudo-header sum at
/// `start + offset`; the sum over `start..` goes there (virtio's `csum_start`/`csum_offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialCsum {
    /// Where checksumming starts (the L4 header), from the frame start.
    pub start: u16,
    /// Where the checksum field is, from `start`.
    pub offset: u16,
}

/// Offload metadata that travels with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameMeta {
    /// The virtual function the frame came from or goes to.
    pub vf: u16,
    /// Segmentation requested, if any.
    pub gso: Option<Gso>,
    /// A partial checksum to complete, if any.
    pub csum: Option<PartialCsum>,
    /// On an encapsulated super-frame (`gso` set) kept whole for the socket
    /// underlay: bytes of outer headers (Ethernet to the tunnel header) in front of
    /// the inner frame, written once for all its segments; 0 otherwise.
    pub outer_len: u16,
}

/// A packet in a buffer with headroom.
///
/// ```
/// use pipewright_nic::Frame;
/// let mut f = Frame::from_bytes(&[0xaa; 60]);
/// f.push_front(14).copy_from_slice(&[0x11; 14]); // an outer header, written in place
/// assert_eq!(f.len(), 74);
/// f.pull_front(14);
/// assert_eq!(f.data(), &[0xaa; 60][..]);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
    /// Offload metadata.
    pub meta: FrameMeta,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("len", &self.len)
            .field("headroom", &self.head)
            .field("meta", &self.meta)
            .finish()
    }
}

impl Frame {
    /// An empty frame able to hold `capacity` bytes after `headroom` bytes of headroom.
    pub fn with_capacity(headroom: usize, capacity: usize) -> Self {
        Self {
            buf: vec![0; headroom + capacity].into_boxed_slice(),
            head: headroom,
            len: 0,
            meta: FrameMeta::default(),
        }
    }

    /// A frame holding a copy of `bytes`, with [`DEFAULT_HEADROOM`].
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut f = Self::with_capacity(DEFAULT_HEADROOM, bytes.len());
        f.len = bytes.len();
        f.data_mut().copy_from_slice(bytes);
        f
    }

    /// Replaces the contents with `bytes` (keeping the buffer when it is big enough).
    pub fn reset_from(&mut self, headroom: usize, bytes: &[u8]) {
        if self.buf.len() < headroom + bytes.len() {
            self.buf = vec![0; headroom + bytes.len()].into_boxed_slice();
        }
        self.head = headroom;
        self.len = bytes.len();
        self.meta = FrameMeta::default();
        self.data_mut().copy_from_slice(bytes);
    }

    /// Empties the frame, leaving `headroom` bytes (at most the buffer) in front.
    #[inline]
    pub fn clear(&mut self, headroom: usize) {
        self.head = headroom.min(self.buf.len());
        self.len = 0;
        self.meta = FrameMeta::default();
    }

    /// Size of the underlying buffer (headroom + data + tailroom).
    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    /// The packet bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }

    /// The packet bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.head + self.len]
    }

    /// Packet length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Free bytes in front of the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Free bytes after the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.head - self.len
    }

    /// Grows the packet at the front by `n` bytes and returns them (for outer headers).
    ///
    /// # Panics
    /// If the headroom is smaller than `n`; check [`headroom`](Frame::headroom) or use
    /// [`try_push_front`](Frame::try_push_front).
    #[inline]
    pub fn push_front(&mut self, n: usize) -> &mut [u8] {
        self.try_push_front(n).expect("not enough headroom")
    }

    /// Grows the packet at the front by `n` bytes, or `None` if the headroom is short.
    #[inline]
    pub fn try_push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head {
            return None;
        }
        self.head -= n;
        self.len += n;
        Some(&mut self.buf[self.head..self.head + n])
    }

    /// Drops `n` bytes from the front (decapsulation); they become headroom.
    #[inline]
    pub fn pull_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head += n;
        self.len -= n;
    }

    /// Cuts the packet to `len` bytes (no effect if it is shorter).
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Grows the packet at the back by `n` bytes and returns them, or `None` if the
    /// tailroom is short.
    #[inline]
    pub fn try_push_back(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.tailroom() {
            return None;
        }
        let end = self.head + self.len;
        self.len += n;
        Some(&mut self.buf[end..end + n])
    }
}
