//! Locating the L3 and L4 headers of an Ethernet frame, bounds-checked.

use super::OffloadError;

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
    /// Finds the headers of an Ethernet (optionally 802.1Q-tagged) IPv4/IPv6 frame.
    pub fn parse(data: &[u8]) -> Result<Self, OffloadError> {
        let be16 = |at: usize| -> Result<u16, OffloadError> {
            data.get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or(OffloadError::Malformed("truncated"))
        };
        let mut l3_off = 14;
        let mut ethertype = be16(12)?;
        if ethertype == 0x8100 {
            ethertype = be16(16)?;
            l3_off = 18;
        }
        match ethertype {
            0x0800 => {
                let vihl = *data
                    .get(l3_off)
                    .ok_or(OffloadError::Malformed("truncated ipv4"))?;
                let ihl = usize::from(vihl & 0x0f) * 4;
                if vihl >> 4 != 4 || ihl < 20 {
                    return Err(OffloadError::Malformed("ipv4 version/ihl"));
                }
                let total = usize::from(be16(l3_off + 2)?);
                let ip_end = l3_off + total;
                if total < ihl || ip_end > data.len() {
                    return Err(OffloadError::Malformed("ipv4 total length"));
                }
                let frag = be16(l3_off + 6)?;
                if frag & 0x3fff != 0 {
                    return Err(OffloadError::Unsegmentable("ipv4 fragment"));
                }
                Ok(Self {
                    l3: L3::V4,
                    l3_off,
                    l4_off: l3_off + ihl,
                    protocol: data[l3_off + 9],
                    ip_end,
                })
            }
            0x86DD => {
                if data.len() < l3_off + 40 || data[l3_off] >> 4 != 6 {
                    return Err(OffloadError::Malformed("ipv6 header"));
                }
                let ip_end = l3_off + 40 + usize::from(be16(l3_off + 4)?);
                if ip_end > data.len() {
                    return Err(OffloadError::Malformed("ipv6 payload length"));
                }
                Ok(Self {
                    l3: L3::V6,
                    l3_off,
                    l4_off: l3_off + 40,
                    protocol: data[l3_off + 6],
                    ip_end,
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
