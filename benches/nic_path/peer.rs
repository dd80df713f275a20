//! Peer: etherparse, the straightforward way. This module holds the egress side and
//! the outer-header writing it shares with TSO; `ingress` and `tso` are submodules.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use etherparse::{
    EtherType, Ethernet2Header, IpHeaders, IpNumber, Ipv4Header, LinkSlice, NetSlice,
    PacketBuilder, SlicedPacket, TransportSlice, UdpHeader,
};

use crate::{
    TTL, UNDERLAY_MTU, VF, VF_IP, VF_MAC, VNI, VTEP_DST, VTEP_DST_MAC, VTEP_SRC, VTEP_SRC_MAC,
    VXLAN_PORT,
};

mod ingress;
mod tso;

pub use ingress::PeerIngress;
pub use tso::PeerTso;

/// How the peer writes the outer headers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OuterWriter {
    /// `PacketBuilder` (which always computes the outer UDP checksum).
    Builder,
    /// Etherparse's header structs, outer UDP checksum 0: our bytes exactly.
    Headers,
}

/// What the peer's egress rule says about the tunnel.
#[derive(Clone, Copy)]
struct Tunnel {
    vni: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    port: u16,
    ttl: u8,
    df: bool,
}

/// An egress rule as a naive table keeps it: the tunnel and its counters.
struct PeerRule {
    tunnel: Tunnel,
    packets: u64,
    bytes: u64,
}

/// Who a VF is, for the peer's anti-spoofing check.
struct PeerVf {
    mac: [u8; 6],
    ips: Vec<[u8; 4]>,
}

/// The outer UDP source port from the inner flow (RFC 7348 section 5): the same
/// fields, in the same order, and the same word-at-a-time mixing as our `flow_hash`,
/// read from etherparse's slices.
#[inline]
fn peer_entropy(pkt: &SlicedPacket<'_>) -> u16 {
    let mut key = [0u8; 64];
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        key[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    if let Some(LinkSlice::Ethernet2(eth)) = &pkt.link {
        put(&eth.destination());
        put(&eth.source());
    }
    if let Some(NetSlice::Ipv4(ip)) = &pkt.net {
        let hdr = ip.header();
        put(&[hdr.protocol().0]);
        put(&hdr.source());
        put(&hdr.destination());
    }
    match &pkt.transport {
        Some(TransportSlice::Udp(u)) => {
            put(&u.source_port().to_be_bytes());
            put(&u.destination_port().to_be_bytes());
        }
        Some(TransportSlice::Tcp(t)) => {
            put(&t.source_port().to_be_bytes());
            put(&t.destination_port().to_be_bytes());
        }
        _ => {}
    }
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15 ^ n as u64;
    for word in key[..n.div_ceil(8) * 8].chunks_exact(8) {
        let w = u64::from_le_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        h = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 32;
    }
    let h = (h ^ (h >> 29)) as u32;
    49152 | (h as u16 & 0x3fff)
}

/// The per-packet outer header fields.
struct OuterHeaders {
    tunnel: Tunnel,
    src_port: u16,
    ip_id: u16,
}

impl OuterHeaders {
    #[inline]
    fn vxlan(&self) -> [u8; 8] {
        let v = self.tunnel.vni.to_be_bytes();
        [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
    }

    #[inline]
    fn ipv4(&self) -> Ipv4Header {
        Ipv4Header {
            identification: self.ip_id,
            dont_fragment: self.tunnel.df,
            time_to_live: self.tunnel.ttl,
            protocol: IpNumber::UDP,
            source: self.tunnel.src_ip,
            destination: self.tunnel.dst_ip,
            ..Default::default()
        }
    }

    /// `PacketBuilder`: the whole outer packet around `udp_payload` (VXLAN header +
    /// inner frame, gathered) into `out`.
    #[inline]
    fn build(&self, udp_payload: &[u8], out: &mut Vec<u8>) {
        PacketBuilder::ethernet2(self.tunnel.src_mac, self.tunnel.dst_mac)
            .ip(IpHeaders::Ipv4(self.ipv4(), Default::default()))
            .udp(self.src_port, self.tunnel.port)
            .write(out, udp_payload)
            .expect("outer packet");
    }

    /// Header structs: Ethernet, IPv4 (checksum computed by `write`) and UDP
    /// (checksum 0) for a UDP payload of `udp_payload_len` bytes, into `out`.
    #[inline]
    fn headers(&self, udp_payload_len: usize, out: &mut Vec<u8>) {
        Ethernet2Header {
            source: self.tunnel.src_mac,
            destination: self.tunnel.dst_mac,
            ether_type: EtherType::IPV4,
        }
        .write(out)
        .expect("ethernet");
        let mut ip = self.ipv4();
        ip.total_len = (20 + 8 + udp_payload_len) as u16;
        ip.write(out).expect("ipv4");
        UdpHeader {
            source_port: self.src_port,
            destination_port: self.tunnel.port,
            length: (8 + udp_payload_len) as u16,
            checksum: 0,
        }
        .write(out)
        .expect("udp");
    }
}

/// The egress side of a naive etherparse NIC.
pub struct PeerEgress {
    vfs: HashMap<u16, PeerVf>,
    /// By (VF, destination /24).
    rules: HashMap<(u16, u32), PeerRule>,
    mtu: usize,
    ip_id: u16,
    /// VXLAN header + inner frame, gathered for `PacketBuilder::write`.
    scratch: Vec<u8>,
    writer: OuterWriter,
}

impl PeerEgress {
    pub fn new(writer: OuterWriter) -> Self {
        let mut vfs = HashMap::new();
        vfs.insert(
            VF,
            PeerVf {
                mac: VF_MAC,
                ips: vec![VF_IP.octets()],
            },
        );
        let mut rules = HashMap::new();
        rules.insert(
            (VF, u32::from(Ipv4Addr::new(10, 0, 0, 0))),
            PeerRule {
                tunnel: Tunnel {
                    vni: VNI,
                    src_mac: VTEP_SRC_MAC,
                    dst_mac: VTEP_DST_MAC,
                    src_ip: VTEP_SRC.octets(),
                    dst_ip: VTEP_DST.octets(),
                    port: VXLAN_PORT,
                    ttl: TTL,
                    df: true,
                },
                packets: 0,
                bytes: 0,
            },
        );
        Self {
            vfs,
            rules,
            mtu: UNDERLAY_MTU,
            ip_id: 0,
            scratch: Vec::with_capacity(2048),
            writer,
        }
    }

    /// Identity check and rule lookup for a parsed VF frame of `len` bytes; counts it.
    #[inline]
    fn lookup(&mut self, vf: u16, pkt: &SlicedPacket<'_>, len: usize) -> Option<Tunnel> {
        let Some(LinkSlice::Ethernet2(eth)) = &pkt.link else {
            return None;
        };
        let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
            return None;
        };
        let id = self.vfs.get(&vf)?;
        let hdr = ip.header();
        let src = hdr.source();
        if eth.source() != id.mac
            || !pkt.link_exts.is_empty()
            || !(src == [0; 4] || id.ips.contains(&src))
        {
            return None; // spoofed
        }
        let dst = u32::from_be_bytes(hdr.destination());
        let rule = self.rules.get_mut(&(vf, dst & 0xffff_ff00))?;
        rule.packets += 1;
        rule.bytes += len as u64;
        Some(rule.tunnel)
    }

    /// The outer header fields for the next packet of `pkt`'s flow.
    #[inline]
    fn next_outer(&mut self, tunnel: Tunnel, pkt: &SlicedPacket<'_>) -> OuterHeaders {
        self.ip_id = self.ip_id.wrapping_add(1);
        OuterHeaders {
            tunnel,
            src_port: peer_entropy(pkt),
            ip_id: self.ip_id,
        }
    }

    /// Parses, classifies and encapsulates one VF frame into `out`.
    #[inline(never)]
    pub fn encap(&mut self, vf: u16, frame: &[u8], out: &mut Vec<u8>) {
        let pkt = SlicedPacket::from_ethernet(frame).expect("a good frame");
        let tunnel = self
            .lookup(vf, &pkt, frame.len())
            .expect("a rule for the frame");
        assert!(
            20 + 8 + 8 + frame.len() <= self.mtu,
            "would exceed the underlay MTU"
        );
        let outer = self.next_outer(tunnel, &pkt);
        out.clear();
        match self.writer {
            OuterWriter::Builder => {
                self.scratch.clear();
                self.scratch.extend_from_slice(&outer.vxlan());
                self.scratch.extend_from_slice(frame);
                outer.build(&self.scratch, out);
            }
            OuterWriter::Headers => {
                outer.headers(8 + frame.len(), out);
                out.extend_from_slice(&outer.vxlan());
                out.extend_from_slice(frame);
            }
        }
    }
}
