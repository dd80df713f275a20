//! Parsing the outer headers of a tunnelled frame from the underlay and removing
//! them: the ingress half of a stateless tunnel offload.

use std::net::IpAddr;

use std::sync::Arc;

use super::{Geneve, Pwt, Tunnel, TunnelKind, Vxlan};
use crate::rules::IngressKey;
use crate::wire::{
    ethertype, ip_proto, EthernetFrame, Ipv4Packet, Ipv6Packet, UdpPacket, WireError,
};
use crate::Frame;

/// Which UDP destination ports carry which tunnel, and what to accept.
#[derive(Debug, Clone)]
pub struct DecapConfig {
    ports: Vec<(u16, Arc<dyn Tunnel>)>,
    /// Accept Geneve packets with the C (critical options) bit. RFC 8926 requires an
    /// endpoint that does not process a critical option to drop the packet; we process
    /// none, so the default is to drop them.
    pub accept_critical_options: bool,
}

impl Default for DecapConfig {
    fn default() -> Self {
        Self {
            ports: vec![
                (
                    TunnelKind::Vxlan.default_port(),
                    Arc::new(Vxlan) as Arc<dyn Tunnel>,
                ),
                (TunnelKind::Geneve.default_port(), Arc::new(Geneve)),
                (TunnelKind::Pwt.default_port(), Arc::new(Pwt)),
            ],
            accept_critical_options: false,
        }
    }
}

impl DecapConfig {
    /// Whether some tunnel is decoded on UDP port `port`.
    pub fn decodes(&self, port: u16) -> bool {
        self.ports.iter().any(|(p, _)| *p == port)
    }

    /// Accepts (`true`) or drops Geneve packets with critical options.
    pub fn accept_critical_options(mut self, accept: bool) -> Self {
        self.accept_critical_options = accept;
        self
    }

    /// Carries the built-in tunnel `kind` on UDP port `port` too (or instead, if the
    /// port was mapped). For a custom kind use [`tunnel`](DecapConfig::tunnel).
    pub fn port(self, port: u16, kind: TunnelKind) -> Self {
        match super::builtin(kind) {
            Some(tunnel) => self.tunnel(port, tunnel),
            None => self,
        }
    }

    /// Carries `tunnel` (any [`Tunnel`], including one defined outside this crate) on
    /// UDP port `port`.
    pub fn tunnel(mut self, port: u16, tunnel: Arc<dyn Tunnel>) -> Self {
        self.ports.retain(|(p, _)| *p != port);
        self.ports.push((port, tunnel));
        self
    }

    #[inline]
    fn tunnel_on(&self, port: u16) -> Option<&dyn Tunnel> {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, t)| &**t)
    }
}

/// Where the inner frame starts in the UDP payload `payload` of a datagram to UDP
/// port `port`: the length of its tunnel header, or `None` when the port carries no
/// tunnel or the header does not decode (such datagrams take the full `parse_outer`
/// path, which counts why).
pub(crate) fn inner_offset(config: &DecapConfig, port: u16, payload: &[u8]) -> Option<usize> {
    let (_, hdr_len) = config.tunnel_on(port)?.decode(payload, config).ok()?;
    Some(hdr_len)
}

/// Why a frame from the underlay was not decapsulated. Every variant is counted by
/// [`reason`](DecapError::reason) and the frame dropped; none panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecapError {
    /// A header is malformed or truncated.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Not UDP over IPv4/IPv6.
    #[error("not a UDP tunnel packet")]
    NotUdp,
    /// A UDP port that carries no configured tunnel.
    #[error("UDP port {0} carries no tunnel")]
    UnknownPort(u16),
    /// The outer UDP checksum is wrong (or missing on IPv6).
    #[error("bad outer UDP checksum")]
    BadUdpChecksum,
    /// The inner protocol is not Ethernet.
    #[error("tunnel carries protocol {0:#06x}, not Ethernet")]
    NotEthernet(u16),
    /// A Geneve packet with critical options we do not process.
    #[error("Geneve packet with critical options")]
    CriticalOptions,
    /// A control (OAM) packet of the tunnel, whose payload is not tenant traffic and
    /// must not be forwarded (RFC 8926 §3.4 for Geneve's O bit).
    #[error("tunnel control (OAM) packet")]
    Control,
}

impl DecapError {
    /// Label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecapError::Wire(e) => e.reason(),
            DecapError::NotUdp => "not_udp",
            DecapError::UnknownPort(_) => "unknown_port",
            DecapError::BadUdpChecksum => "bad_checksum",
            DecapError::NotEthernet(_) => "not_ethernet",
            DecapError::CriticalOptions => "critical_options",
            DecapError::Control => "oam",
        }
    }
}

/// Where the inner frame is, and the fields ingress rules match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    /// The ingress rule key.
    pub key: IngressKey,
    /// Offset of the inner Ethernet frame.
    pub inner_off: usize,
    /// Length of the inner Ethernet frame.
    pub inner_len: usize,
}

/// Parses and validates the outer headers of `data` (Ethernet, IPv4/IPv6 with header
/// checksum, UDP with checksum, VXLAN/Geneve/PWT). Never panics on any input.
#[inline]
pub fn parse_outer(data: &[u8], config: &DecapConfig) -> Result<Outer, DecapError> {
    let eth = EthernetFrame::new_checked(data)?;
    let l3_off = eth.header_len();
    let (src, dst, udp_off, udp_end) = match eth.ethertype() {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(&data[l3_off..])?;
            if !ip.verify_checksum() {
                return Err(WireError::BadChecksum { layer: "ipv4" }.into());
            }
            if ip.is_fragment() {
                return Err(WireError::Fragmented.into());
            }
            if ip.protocol() != ip_proto::UDP {
                return Err(DecapError::NotUdp);
            }
            let start = l3_off + ip.header_len();
            (
                IpAddr::V4(ip.src_addr()),
                IpAddr::V4(ip.dst_addr()),
                start,
                l3_off + usize::from(ip.total_len()),
            )
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(&data[l3_off..])?;
            let (proto, off) = ip.upper_layer()?;
            if proto != ip_proto::UDP {
                return Err(DecapError::NotUdp);
            }
            let end = l3_off + 40 + ip.payload().len();
            (
                IpAddr::V6(ip.src_addr()),
                IpAddr::V6(ip.dst_addr()),
                l3_off + off,
                end,
            )
        }
        _ => return Err(DecapError::NotUdp),
    };
    let udp = UdpPacket::new_checked(&data[udp_off..udp_end])?;
    let csum_ok = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => udp.verify_checksum_v4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => udp.verify_checksum_v6(s, d),
        _ => false,
    };
    if !csum_ok {
        return Err(DecapError::BadUdpChecksum);
    }
    let port = udp.dst_port();
    let tunnel = config
        .tunnel_on(port)
        .ok_or(DecapError::UnknownPort(port))?;
    let kind = tunnel.kind();
    let tun_off = udp_off + 8;
    let tun_end = udp_off + usize::from(udp.len());
    let (vni, hdr_len) = tunnel.decode(&data[tun_off..tun_end], config)?;
    let inner_off = tun_off + hdr_len;
    let inner = EthernetFrame::new_checked(&data[inner_off..tun_end])?;
    let mut inner_dst_mac = [0u8; 6];
    inner_dst_mac.copy_from_slice(&inner.dst().0);
    Ok(Outer {
        key: IngressKey {
            kind,
            vni,
            outer_src: src,
            outer_dst: dst,
            udp_dst_port: port,
            inner_dst_mac,
        },
        inner_off,
        inner_len: tun_end - inner_off,
    })
}

/// Removes the outer headers found by [`parse_outer`], leaving the inner frame.
#[inline]
pub fn strip_outer(frame: &mut Frame, outer: &Outer) {
    frame.pull_front(outer.inner_off);
    frame.truncate(outer.inner_len);
}
