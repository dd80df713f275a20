//! The virtio-net header (`struct virtio_net_hdr_v1`) as the TAP port reads and
//! writes it, mapped to and from [`FrameMeta`]; pure functions, no I/O.

use std::fmt;

use crate::{FrameMeta, Gso, GsoKind, PartialCsum};

/// Bytes of virtio-net header in front of every frame (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// The largest frame the port reads or writes: a 64 KiB GSO super-frame plus link
/// headers fits with room to spare.
pub const MAX_FRAME_LEN: usize = 128 * 1024;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// Why the port dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapDropReason {
    /// The header's `gso_type` is none we know (or legacy UFO, which we do not take).
    UnknownGsoType(u8),
    /// A GSO type with a zero segment size.
    ZeroGsoSize,
    /// `csum_start + csum_offset + 2` lies beyond the frame.
    CsumOutOfFrame {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// The frame's length.
        len: usize,
    },
    /// A read shorter than the virtio-net header.
    ShortRead(usize),
    /// A frame larger than [`MAX_FRAME_LEN`] (or the kernel's read would not fit it).
    TooLarge(usize),
    /// The kernel refused the frame with its header (`EINVAL` on write).
    KernelRejected,
    /// The guest's interface is down (`EIO` on write).
    LinkDown,
}

impl TapDropReason {
    /// A short label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::UnknownGsoType(_) => "unknown_gso_type",
            Self::ZeroGsoSize => "zero_gso_size",
            Self::CsumOutOfFrame { .. } => "csum_out_of_frame",
            Self::ShortRead(_) => "short_read",
            Self::TooLarge(_) => "too_large",
            Self::KernelRejected => "kernel_rejected",
            Self::LinkDown => "link_down",
        }
    }
}

impl fmt::Display for TapDropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownGsoType(t) => write!(f, "unknown virtio-net gso_type {t:#x}"),
            Self::ZeroGsoSize => write!(f, "GSO requested with gso_size 0"),
            Self::CsumOutOfFrame { start, offset, len } => write!(
                f,
                "checksum at csum_start {start} + csum_offset {offset} lies beyond the {len}-byte frame"
            ),
            Self::ShortRead(n) => write!(f, "read of {n} bytes is shorter than the vnet header"),
            Self::TooLarge(n) => write!(f, "frame of {n} bytes exceeds {MAX_FRAME_LEN}"),
            Self::KernelRejected => write!(f, "the kernel rejected the frame's vnet header"),
            Self::LinkDown => write!(f, "the guest's interface is down"),
        }
    }
}

/// Maps a received virtio-net header onto frame metadata, checking it against the
/// frame's length. The ECN bit of `gso_type` is accepted and not kept.
pub fn decode_vnet_hdr(
    hdr: &[u8; VNET_HDR_LEN],
    frame_len: usize,
) -> Result<(Option<Gso>, Option<PartialCsum>), TapDropReason> {
    let field = |at: usize| u16::from_ne_bytes([hdr[at], hdr[at + 1]]);
    let (flags, gso_type, gso_size) = (hdr[0], hdr[1], field(4));
    let kind = match gso_type & !GSO_ECN {
        GSO_NONE => None,
        GSO_TCPV4 => Some(GsoKind::TcpV4),
        GSO_TCPV6 => Some(GsoKind::TcpV6),
        GSO_UDP_L4 => Some(GsoKind::Udp),
        _ => return Err(TapDropReason::UnknownGsoType(gso_type)),
    };
    let gso = match kind {
        Some(_) if gso_size == 0 => return Err(TapDropReason::ZeroGsoSize),
        Some(kind) => Some(Gso {
            kind,
            size: gso_size,
        }),
        None => None,
    };
    let csum = if flags & F_NEEDS_CSUM != 0 {
        let c = PartialCsum {
            start: field(6),
            offset: field(8),
        };
        check_csum(c, frame_len)?;
        Some(c)
    } else {
        None
    };
    Ok((gso, csum))
}

/// Builds the virtio-net header for a frame to send, or says why its metadata is
/// invalid.
pub fn encode_vnet_hdr(meta: &FrameMeta, data: &[u8]) -> Result<[u8; VNET_HDR_LEN], TapDropReason> {
    let mut hdr = [0u8; VNET_HDR_LEN];
    let mut put = |at: usize, v: u16| hdr[at..at + 2].copy_from_slice(&v.to_ne_bytes());
    let mut hdr_len = 0u16;
    if let Some(c) = meta.csum {
        check_csum(c, data.len())?;
        put(6, c.start);
        put(8, c.offset);
        hdr_len = c.start + c.offset + 2;
    }
    if let Some(g) = meta.gso {
        if g.size == 0 {
            return Err(TapDropReason::ZeroGsoSize);
        }
        put(4, g.size);
        if let Some(c) = meta.csum {
            let l4 = usize::from(c.start);
            let l4_len = match g.kind {
                GsoKind::Udp => Some(8),
                GsoKind::TcpV4 | GsoKind::TcpV6 => data.get(l4 + 12).map(|b| u16::from(b >> 4) * 4),
            };
            if let Some(l) = l4_len.filter(|l| l4 + usize::from(*l) <= data.len()) {
                hdr_len = c.start + l;
            }
        }
    }
    put(2, hdr_len);
    hdr[0] = if meta.csum.is_some() { F_NEEDS_CSUM } else { 0 };
    hdr[1] = match meta.gso.map(|g| g.kind) {
        None => GSO_NONE,
        Some(GsoKind::TcpV4) => GSO_TCPV4,
        Some(GsoKind::TcpV6) => GSO_TCPV6,
        Some(GsoKind::Udp) => GSO_UDP_L4,
    };
    Ok(hdr)
}

fn check_csum(c: PartialCsum, len: usize) -> Result<(), TapDropReason> {
    if usize::from(c.start) + usize::from(c.offset) + 2 > len {
        return Err(TapDropReason::CsumOutOfFrame {
            start: c.start,
            offset: c.offset,
            len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso_type: u8, gso_size: u16, start: u16, offset: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = flags;
        h[1] = gso_type;
        h[4..6].copy_from_slice(&gso_size.to_ne_bytes());
        h[6..8].copy_from_slice(&start.to_ne_bytes());
        h[8..10].copy_from_slice(&offset.to_ne_bytes());
        h
    }

    #[test]
    fn decodes_tso_with_partial_csum() {
        let (gso, csum) = decode_vnet_hdr(&hdr(1, GSO_TCPV4, 1448, 34, 16), 3000).unwrap();
        assert_eq!(
            gso,
            Some(Gso {
                kind: GsoKind::TcpV4,
                size: 1448
            })
        );
        assert_eq!(
            csum,
            Some(PartialCsum {
                start: 34,
                offset: 16
            })
        );
        let (gso, _) = decode_vnet_hdr(&hdr(1, GSO_TCPV6 | GSO_ECN, 1400, 54, 16), 3000).unwrap();
        assert_eq!(gso.map(|g| g.kind), Some(GsoKind::TcpV6));
        assert_eq!(decode_vnet_hdr(&hdr(0, 0, 0, 0, 0), 60), Ok((None, None)));
    }

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(
            decode_vnet_hdr(&hdr(0, 3, 1400, 0, 0), 100),
            Err(TapDropReason::UnknownGsoType(3))
        );
        assert_eq!(
            decode_vnet_hdr(&hdr(0, 0x42, 1400, 0, 0), 100),
            Err(TapDropReason::UnknownGsoType(0x42))
        );
        assert_eq!(
            decode_vnet_hdr(&hdr(0, GSO_UDP_L4, 0, 0, 0), 100),
            Err(TapDropReason::ZeroGsoSize)
        );
        assert_eq!(
            decode_vnet_hdr(&hdr(1, 0, 0, 90, 16), 100),
            Err(TapDropReason::CsumOutOfFrame {
                start: 90,
                offset: 16,
                len: 100
            })
        );
        assert_eq!(
            decode_vnet_hdr(&hdr(1, 0, 0, u16::MAX, u16::MAX), 100).map(|_| ()),
            Err(TapDropReason::CsumOutOfFrame {
                start: u16::MAX,
                offset: u16::MAX,
                len: 100
            })
        );
    }

    #[test]
    fn encode_round_trips_and_validates() {
        let mut data = vec![0u8; 200];
        data[34 + 12] = 5 << 4; // TCP data offset: 20 bytes
        let meta = FrameMeta {
            vf: 3,
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                size: 100,
            }),
            csum: Some(PartialCsum {
                start: 34,
                offset: 16,
            }),
            outer_len: 0,
        };
        let h = encode_vnet_hdr(&meta, &data).unwrap();
        assert_eq!(
            u16::from_ne_bytes([h[2], h[3]]),
            54,
            "hdr_len = L2..L4 headers"
        );
        assert_eq!(decode_vnet_hdr(&h, data.len()), Ok((meta.gso, meta.csum)));
        let bad = FrameMeta {
            csum: Some(PartialCsum {
                start: 199,
                offset: 6,
            }),
            ..meta
        };
        assert!(matches!(
            encode_vnet_hdr(&bad, &data),
            Err(TapDropReason::CsumOutOfFrame { .. })
        ));
        let zero = FrameMeta {
            gso: Some(Gso {
                kind: GsoKind::Udp,
                size: 0,
            }),
            ..meta
        };
        assert_eq!(
            encode_vnet_hdr(&zero, &data),
            Err(TapDropReason::ZeroGsoSize)
        );
    }
}
