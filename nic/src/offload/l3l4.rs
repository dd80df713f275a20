//! Locating the L3 and L4 headers of an Ethernet frame, bounds-checked.

use super::OffloadError;
use crate::wire::{ethertype, EthernetFrame, Ipv4Packet, Ipv6Packet, IPV6_HEADER_LEN};

/// The network layer of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// IPv4.
    V4,
    /// IPv6 (no extension headers before L4).
    V6,
}

/// Offsets of a frame's headers; every offset is within the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// Network layer.
    pub l3: L3,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// L4 protocol number.
    pub protocol: u8,
    /// End of the IP packet (frames may carry Ethernet padding beyond it).
    pub ip_end: usize,
}

impl Headers {
    /// Finds the headers of an Ethernet (optionally VLAN-tagged) IPv4/IPv6 frame,
    /// validated by the wire views. IPv6 extension headers are not walked: the L4
    /// header must follow the fixed header (offloads of such frames are refused).
    pub fn parse(data: &[u8]) -> Result<Self, OffloadError> {
        let eth =
            EthernetFrame::new_checked(data).map_err(|_| OffloadError::Malformed("truncated"))?;
        let l3_off = eth.header_len();
        let l3 = &data[l3_off..];
        match eth.ethertype() {
            ethertype::IPV4 => {
                let ip = Ipv4Packet::new_checked(l3)
                    .map_err(|_| OffloadError::Malformed("ipv4 header"))?;
                if ip.is_fragment() {
                    return Err(OffloadError::Unsegmentable("ipv4 fragment"));
                }
                Ok(Self {
                    l3: L3::V4,
                    l3_off,
                    l4_off: l3_off + ip.header_len(),
                    protocol: ip.protocol(),
                    ip_end: l3_off + usize::from(ip.total_len()),
                })
            }
            ethertype::IPV6 => {
                let ip = Ipv6Packet::new_checked(l3)
                    .map_err(|_| OffloadError::Malformed("ipv6 header"))?;
                Ok(Self {
                    l3: L3::V6,
                    l3_off,
                    l4_off: l3_off + IPV6_HEADER_LEN,
                    protocol: ip.next_header(),
                    ip_end: l3_off + IPV6_HEADER_LEN + usize::from(ip.payload_len()),
                })
            }
            _ => Err(OffloadError::Unsegmentable("not IPv4/IPv6")),
        }
    }

    /// Ones-complement sum of the L4 pseudo-header for an L4 segment of `l4_len` bytes.
    pub fn pseudo_sum(&self, data: &[u8], l4_len: usize) -> u32 {
        use crate::wire::checksum;
        let addr = |at: usize, n: usize| checksum::sum(&data[at..at + n]);
        let addrs = match self.l3 {
            L3::V4 => addr(self.l3_off + 12, 8),
            L3::V6 => addr(self.l3_off + 8, 32),
        };
        let len = l4_len as u32;
        checksum::combine(
            addrs,
            u32::from(self.protocol) + (len >> 16) + (len & 0xffff),
        )
    }
}
