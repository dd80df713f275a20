//! The etherparse NIC's ingress side: validate, match and decapsulate.

use std::collections::HashMap;

use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};

use crate::{RX_MAC, RX_VF, VNI, VTEP_DST, VTEP_SRC, VXLAN_PORT};

/// An ingress rule as a naive table keeps it.
struct PeerDeliver {
    outer_src: Option<[u8; 4]>,
    vf: u16,
    packets: u64,
    bytes: u64,
}

/// The ingress side of a naive etherparse NIC.
pub struct PeerIngress {
    /// By (VNI, outer destination).
    rules: HashMap<(u32, [u8; 4]), PeerDeliver>,
    vf_macs: HashMap<u16, [u8; 6]>,
}

impl PeerIngress {
    pub fn new() -> Self {
        let mut rules = HashMap::new();
        rules.insert(
            (VNI, VTEP_DST.octets()),
            PeerDeliver {
                outer_src: Some(VTEP_SRC.octets()),
                vf: RX_VF,
                packets: 0,
                bytes: 0,
            },
        );
        let mut vf_macs = HashMap::new();
        vf_macs.insert(RX_VF, RX_MAC);
        Self { rules, vf_macs }
    }

    /// Validates, matches and decapsulates one underlay frame: the VF and the inner
    /// frame's offset and length in `data`, or `None` (drop).
    #[inline(never)]
    pub fn decap(&mut self, data: &[u8]) -> Option<(u16, usize, usize)> {
        // Outer headers, with the IPv4 header checksum and the UDP checksum (if set).
        let outer = SlicedPacket::from_ethernet(data).ok()?;
        let Some(NetSlice::Ipv4(ip)) = &outer.net else {
            return None;
        };
        let hdr = ip.header().to_header();
        if hdr.calc_header_checksum() != hdr.header_checksum || ip.is_payload_fragmented() {
            return None;
        }
        let Some(TransportSlice::Udp(udp)) = &outer.transport else {
            return None;
        };
        if udp.checksum() != 0
            && udp
                .to_header()
                .calc_checksum_ipv4(&hdr, udp.payload())
                .ok()?
                != udp.checksum()
        {
            return None;
        }
        if udp.destination_port() != VXLAN_PORT {
            return None;
        }
        // VXLAN, by hand.
        let vx = udp.payload();
        if vx.len() < 8 || vx[0] & 0x08 == 0 {
            return None;
        }
        let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
        let inner_bytes = &vx[8..];
        let inner = SlicedPacket::from_ethernet(inner_bytes).ok()?;
        let Some(LinkSlice::Ethernet2(eth)) = &inner.link else {
            return None;
        };
        // Match, tenant isolation, counters.
        let inner_dst = eth.destination();
        let rule = self.rules.get_mut(&(vni, hdr.destination))?;
        if rule.outer_src.is_some_and(|s| s != hdr.source) {
            return None;
        }
        let own = self.vf_macs.get(&rule.vf)?;
        if inner_dst[0] & 1 == 0 && *own != inner_dst {
            return None;
        }
        rule.packets += 1;
        rule.bytes += data.len() as u64;
        let vf = rule.vf;
        // Inner checksums.
        if let Some(NetSlice::Ipv4(ip)) = &inner.net {
            let ih = ip.header().to_header();
            if ih.calc_header_checksum() != ih.header_checksum {
                return None;
            }
            let l4_ok = match &inner.transport {
                Some(TransportSlice::Udp(u)) if u.checksum() != 0 => {
                    u.to_header().calc_checksum_ipv4(&ih, u.payload()).ok()? == u.checksum()
                }
                Some(TransportSlice::Tcp(t)) => {
                    t.calc_checksum_ipv4(ih.source, ih.destination).ok()? == t.checksum()
                }
                _ => true,
            };
            if !l4_ok {
                return None;
            }
        }
        let off = inner_bytes.as_ptr() as usize - data.as_ptr() as usize;
        Some((vf, off, inner_bytes.len()))
    }
}
