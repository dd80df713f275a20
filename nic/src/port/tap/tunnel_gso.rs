//! A TAP device that takes whole encapsulated super-frames with UDP-tunnel GSO
//! metadata (Linux 6.17+: `TUN_F_UDP_TUNNEL_GSO` and the 24-byte
//! `virtio_net_hdr_v1_hash_tunnel`), so the kernel carries one 64 KB tunnel-GSO skb
//! where the socket underlay sends 1.5 KB datagrams: the frame enters the stack at
//! the TAP, is forwarded to the underlay interface as one skb, and a kernel VXLAN
//! peer decapsulates it once.
//!
//! [`tunnel_header`] is the pure part: the virtio-net header and the patched outer
//! headers of one frame. [`TunnelGsoTap`] opens the device and writes.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{ifname, set_offload, IfReq, TUN_F_BASE};
use crate::port::PortError;
use crate::wire::{ethertype, ip_proto};
use crate::{Gso, GsoKind};

/// `TUN_F_UDP_TUNNEL_GSO` (`include/uapi/linux/if_tun.h`, Linux 6.17).
const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x080;
/// Bytes of `struct virtio_net_hdr_v1_hash_tunnel`.
pub(crate) const TUNNEL_HDR_LEN: usize = 24;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV4`, `_UDP_L4`, `_TCPV6`.
const GSO_TCPV4: u8 = 1;
const GSO_UDP_L4: u8 = 5;
const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`.
const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;

/// Why a frame cannot go through the tunnel-GSO TAP (it goes the socket way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotTunnelable {
    /// The outer headers are not Ethernet + IPv4 (20 bytes) + UDP.
    Outer,
    /// The inner headers are not Ethernet + IPv4/IPv6 + TCP/UDP as the GSO says.
    Inner,
    /// The super-frame has no partial checksum pending (the kernel needs one).
    NoPartialCsum,
    /// Longer than an IPv4 packet may be.
    TooLong,
}

impl NotTunnelable {
    /// A short label for metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotTunnelable::Outer => "outer-headers",
            NotTunnelable::Inner => "inner-headers",
            NotTunnelable::NoPartialCsum => "no-partial-csum",
            NotTunnelable::TooLong => "too-long",
        }
    }
}

/// The virtio-net header and patched outer headers for writing `data` (an encapsulated
/// frame; `outer_len` bytes of outer headers, then the inner frame) to a tunnel-GSO
/// TAP whose MAC is `tap_mac`; appended to `out`. Returns how many bytes of `data`
/// the appended headers replace (write `out`, then `data[returned..]`).
///
/// Without `gso` the frame goes as it is (its Ethernet destination made the TAP's, so
/// the kernel takes it in). With `gso` (and `partial_csum`: the inner L4 checksum
/// holds the pseudo-header sum, as a guest's TSO frame does), the outer IPv4 length,
/// header checksum and UDP length are made the whole frame's, the outer UDP checksum
/// zero, and the header says `GSO_{TCPV4,TCPV6,UDP_L4} | GSO_UDP_TUNNEL_IPV4` with
/// the outer transport and inner network offsets.
pub(crate) fn tunnel_header(
    data: &[u8],
    outer_len: usize,
    gso: Option<Gso>,
    partial_csum: bool,
    tap_mac: [u8; 6],
    out: &mut Vec<u8>,
) -> Result<usize, NotTunnelable> {
    let at = out.len();
    out.resize(at + TUNNEL_HDR_LEN, 0);
    let Some(gso) = gso else {
        // IPv4 outer headers only, as for super-frames: the TAP side forwards IPv4
        // (`net.ipv4.ip_forward`), so any other frame takes the sockets.
        if data.len() < 14 || data[12..14] != [0x08, 0x00] {
            out.truncate(at);
            return Err(NotTunnelable::Outer);
        }
        out.extend_from_slice(&tap_mac);
        out.extend_from_slice(&data[6..14]);
        return Ok(14);
    };
    let result = super_header(data, outer_len, gso, partial_csum, tap_mac, out, at);
    if result.is_err() {
        out.truncate(at);
    }
    result
}

fn super_header(
    data: &[u8],
    outer_len: usize,
    gso: Gso,
    partial_csum: bool,
    tap_mac: [u8; 6],
    out: &mut Vec<u8>,
    at: usize,
) -> Result<usize, NotTunnelable> {
    if !partial_csum {
        return Err(NotTunnelable::NoPartialCsum);
    }
    let byte = |i: usize| data.get(i).copied();
    // Outer: Ethernet + IPv4 without options + UDP, then the tunnel header.
    if byte(12) != Some((ethertype::IPV4 >> 8) as u8)
        || byte(13) != Some(ethertype::IPV4 as u8)
        || byte(14) != Some(0x45)
        || byte(23) != Some(ip_proto::UDP)
        || outer_len < 14 + 20 + 8
        || outer_len > data.len()
    {
        return Err(NotTunnelable::Outer);
    }
    let ip_len = u16::try_from(data.len() - 14).map_err(|_| NotTunnelable::TooLong)?;
    let udp_len = ip_len - 20;
    // Inner: Ethernet, then IPv4/IPv6 as the GSO kind says, then the L4 header.
    let inner = outer_len;
    let inner_nh = inner + 14;
    let inner_type = u16::from_be_bytes([
        byte(inner + 12).ok_or(NotTunnelable::Inner)?,
        byte(inner + 13).ok_or(NotTunnelable::Inner)?,
    ]);
    let l3_len = match inner_type {
        ethertype::IPV4 => {
            let vihl = byte(inner_nh).ok_or(NotTunnelable::Inner)?;
            if vihl >> 4 != 4 || vihl & 0xf < 5 || gso.kind == GsoKind::TcpV6 {
                return Err(NotTunnelable::Inner);
            }
            usize::from(vihl & 0xf) * 4
        }
        ethertype::IPV6 if gso.kind != GsoKind::TcpV4 => 40,
        _ => return Err(NotTunnelable::Inner),
    };
    let l4 = inner_nh + l3_len;
    let (gso_type, csum_offset, l4_hdr_len) = match gso.kind {
        GsoKind::TcpV4 | GsoKind::TcpV6 => {
            let doff = usize::from(byte(l4 + 12).ok_or(NotTunnelable::Inner)? >> 4) * 4;
            let kind = if gso.kind == GsoKind::TcpV4 {
                GSO_TCPV4
            } else {
                GSO_TCPV6
            };
            (kind, 16u16, doff.max(20))
        }
        GsoKind::Udp => (GSO_UDP_L4, 6u16, 8),
    };
    if l4 + l4_hdr_len > data.len() || gso.size == 0 {
        return Err(NotTunnelable::Inner);
    }
    let hdr = &mut out[at..at + TUNNEL_HDR_LEN];
    hdr[0] = NEEDS_CSUM;
    hdr[1] = gso_type | GSO_UDP_TUNNEL_IPV4;
    hdr[2..4].copy_from_slice(&((l4 + l4_hdr_len) as u16).to_le_bytes());
    hdr[4..6].copy_from_slice(&gso.size.to_le_bytes());
    hdr[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
    hdr[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    // num_buffers, hash value, report, padding: zero.
    hdr[20..22].copy_from_slice(&(14u16 + 20).to_le_bytes());
    hdr[22..24].copy_from_slice(&(inner_nh as u16).to_le_bytes());
    // The outer headers, patched for the whole frame.
    let start = out.len();
    out.extend_from_slice(&data[..outer_len]);
    let o = &mut out[start..];
    o[..6].copy_from_slice(&tap_mac);
    o[16..18].copy_from_slice(&ip_len.to_be_bytes());
    o[24..26].fill(0);
    let sum = crate::wire::checksum::finish(crate::wire::checksum::sum(&o[14..34]));
    o[24..26].copy_from_slice(&sum.to_be_bytes());
    o[38..40].copy_from_slice(&udp_len.to_be_bytes());
    o[40..42].fill(0);
    Ok(outer_len)
}

/// A TAP device taking tunnel-GSO frames; see the module docs.
#[derive(Debug)]
pub(crate) struct TunnelGsoTap {
    file: File,
    name: String,
}

impl TunnelGsoTap {
    /// Creates TAP `name` (in the calling thread's namespace) with the tunnel
    /// virtio-net header and `TUN_F_UDP_TUNNEL_GSO`. Bringing it up is the caller's.
    pub(crate) fn create(name: &str) -> Result<Self, PortError> {
        let cname = ifname(name)?;
        // SAFETY: a plain open(2) of a constant NUL-terminated path.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(PortError::last_os_error(
                "open /dev/net/tun (is the tun module loaded, are we root/CAP_NET_ADMIN?)",
            ));
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL)
                as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(cname.as_bytes()) {
            *d = *s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes an `ifreq`; `IfReq` has its layout and
        // size (40 bytes) and lives across the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
            return Err(PortError::last_os_error(format!("TUNSETIFF {name}")));
        }
        let hdr_len = TUNNEL_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(PortError::last_os_error(format!(
                "TUNSETVNETHDRSZ {TUNNEL_HDR_LEN} on {name}"
            )));
        }
        set_offload(&fd, TUN_F_BASE | TUN_F_UDP_TUNNEL_GSO).map_err(|e| {
            PortError::io(
                format!("TUNSETOFFLOAD with TUN_F_UDP_TUNNEL_GSO on {name} (needs Linux 6.17 or later; turn tunnel_gso off)"),
                e,
            )
        })?;
        Ok(Self {
            file: File::from(fd),
            name: name.to_string(),
        })
    }

    /// The device's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// One `writev`: the header buffer, then the rest of the frame.
    pub(crate) fn write(&self, head: &[u8], rest: &[u8]) -> io::Result<usize> {
        (&self.file).write_vectored(&[IoSlice::new(head), IoSlice::new(rest)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAP: [u8; 6] = [2, 0xaa, 0, 0, 0, 9];

    /// Outer Ethernet/IPv4/UDP/VXLAN (50 bytes) + inner Ethernet/IPv4/TCP + payload.
    fn frame(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 50 + 14 + 20 + 20 + payload];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&1500u16.to_be_bytes());
        f[22] = 64;
        f[23] = ip_proto::UDP;
        f[26..30].copy_from_slice(&[192, 168, 77, 1]);
        f[30..34].copy_from_slice(&[192, 168, 77, 2]);
        f[36..38].copy_from_slice(&4789u16.to_be_bytes());
        f[38..40].copy_from_slice(&1480u16.to_be_bytes());
        f[40..42].copy_from_slice(&0x1234u16.to_be_bytes());
        f[50 + 12..50 + 14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        f[64] = 0x45;
        f[64 + 9] = ip_proto::TCP;
        f[84 + 12] = 0x50;
        f
    }

    #[test]
    fn a_tso_super_frame_gets_the_tunnel_header_and_whole_frame_lengths() {
        let data = frame(40_000);
        let gso = Gso {
            kind: GsoKind::TcpV4,
            size: 1400,
        };
        let mut out = Vec::new();
        let used = tunnel_header(&data, 50, Some(gso), true, TAP, &mut out).unwrap();
        assert_eq!(used, 50);
        assert_eq!(out.len(), TUNNEL_HDR_LEN + 50);
        let h = &out[..TUNNEL_HDR_LEN];
        assert_eq!(h[0], NEEDS_CSUM);
        assert_eq!(h[1], GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4);
        assert_eq!(u16::from_le_bytes([h[2], h[3]]), 84 + 20, "hdr_len");
        assert_eq!(u16::from_le_bytes([h[4], h[5]]), 1400, "gso_size");
        assert_eq!(u16::from_le_bytes([h[6], h[7]]), 84, "csum_start");
        assert_eq!(u16::from_le_bytes([h[8], h[9]]), 16, "csum_offset");
        assert_eq!(u16::from_le_bytes([h[20], h[21]]), 34, "outer_th_offset");
        assert_eq!(u16::from_le_bytes([h[22], h[23]]), 64, "inner_nh_offset");
        let o = &out[TUNNEL_HDR_LEN..];
        assert_eq!(o[..6], TAP);
        assert_eq!(
            usize::from(u16::from_be_bytes([o[16], o[17]])),
            data.len() - 14
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([o[38], o[39]])),
            data.len() - 34
        );
        assert_eq!(o[40..42], [0, 0], "outer UDP checksum off");
        assert_eq!(
            crate::wire::checksum::finish(crate::wire::checksum::sum(&o[14..34])),
            0,
            "IPv4 header sums"
        );
    }

    #[test]
    fn frames_that_do_not_fit_are_refused_with_the_reason() {
        let gso = Some(Gso {
            kind: GsoKind::TcpV4,
            size: 1400,
        });
        let mut out = vec![7];
        let data = frame(1000);
        assert_eq!(
            tunnel_header(&data, 50, gso, false, TAP, &mut out),
            Err(NotTunnelable::NoPartialCsum)
        );
        assert_eq!(
            tunnel_header(&frame(70_000), 50, gso, true, TAP, &mut out),
            Err(NotTunnelable::TooLong)
        );
        let v6 = Some(Gso {
            kind: GsoKind::TcpV6,
            size: 1400,
        });
        assert_eq!(
            tunnel_header(&data, 50, v6, true, TAP, &mut out),
            Err(NotTunnelable::Inner)
        );
        assert_eq!(out, [7], "nothing appended on refusal");
        // A plain frame: only its Ethernet header is replaced.
        assert_eq!(tunnel_header(&data, 50, None, false, TAP, &mut out), Ok(14));
        assert_eq!(out.len(), 1 + TUNNEL_HDR_LEN + 14);
        assert!(out[1..1 + TUNNEL_HDR_LEN].iter().all(|b| *b == 0));
        // A plain frame with an IPv6 outer header takes the sockets.
        let mut v6_outer = data.clone();
        v6_outer[12..14].copy_from_slice(&[0x86, 0xdd]);
        let mut out = Vec::new();
        assert_eq!(
            tunnel_header(&v6_outer, 50, None, false, TAP, &mut out),
            Err(NotTunnelable::Outer)
        );
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            outer in 0usize..120,
            size in 0u16..2000,
            kind in 0u8..3,
        ) {
            let kind = [GsoKind::TcpV4, GsoKind::TcpV6, GsoKind::Udp][usize::from(kind)];
            let mut out = Vec::new();
            let r = tunnel_header(&data, outer, Some(Gso { kind, size }), true, TAP, &mut out);
            match r {
                Ok(used) => prop_assert_eq!(out.len(), TUNNEL_HDR_LEN + used),
                Err(_) => prop_assert!(out.is_empty()),
            }
        }
    }
}
