//! IPv6 headers (RFC 8200) and a bounded walk over extension headers.
//!
//! [`Ipv6Packet::new_checked`] accepts a buffer when the version is 6 and the fixed
//! header plus the payload length fit in it (bytes after that, e.g. Ethernet padding,
//! are ignored). [`Ipv6Packet::upper_layer`] finds the transport header behind any
//! extension headers, checking every length against the payload and giving up after
//! [`MAX_EXT_HEADERS`].

use std::net::Ipv6Addr;

use super::field::{array, be16, be32, need, set_be16, set_be32, view_constructors};
use super::ip_proto;
use super::WireError;

const LAYER: &str = "ipv6";
const EXT_LAYER: &str = "ipv6-ext";

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Most extension headers [`Ipv6Packet::upper_layer`] walks before giving up.
pub const MAX_EXT_HEADERS: usize = 8;

/// A view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    view_constructors!(check_len, IPV6_HEADER_LEN);

    /// Checks the version and that header and payload fit in the buffer.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        need(LAYER, b, IPV6_HEADER_LEN)?;
        if self.version() != 6 {
            return Err(WireError::BadVersion {
                layer: LAYER,
                version: self.version(),
            });
        }
        need(LAYER, b, IPV6_HEADER_LEN + usize::from(self.payload_len()))
    }

    /// Version (6).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Traffic class (DSCP << 2 | ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (be16(self.buffer.as_ref(), 0) >> 4) as u8
    }

    /// Flow label (20 bits).
    #[inline]
    pub fn flow_label(&self) -> u32 {
        be32(self.buffer.as_ref(), 0) & 0x000f_ffff
    }

    /// Payload length (extension headers included).
    #[inline]
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    /// The first next header (an extension header or the transport protocol).
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }

    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(array::<16>(self.buffer.as_ref(), 8))
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(array::<16>(self.buffer.as_ref(), 24))
    }

    /// End of the payload, clamped to the buffer.
    #[inline]
    fn end(&self) -> usize {
        (IPV6_HEADER_LEN + usize::from(self.payload_len())).min(self.buffer.as_ref().len())
    }

    /// The payload (extension headers included), padding excluded.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(IPV6_HEADER_LEN..self.end()).unwrap_or(&[])
    }

    /// The transport protocol and the offset of its header from the start of the IPv6
    /// header, skipping hop-by-hop (first only), routing, destination options, AH and
    /// atomic fragment headers.
    ///
    /// Errors: [`WireError::Fragmented`] for a real fragment (offset or M bit set),
    /// `Truncated` when an extension header runs past the payload, `BadField` for a
    /// hop-by-hop header that is not first, `TooManyHeaders` after
    /// [`MAX_EXT_HEADERS`]. Other protocols (including ESP and "no next header") end
    /// the walk and are returned as they are.
    pub fn upper_layer(&self) -> Result<(u8, usize), WireError> {
        let b = self.buffer.as_ref();
        let end = self.end();
        let mut nh = self.next_header();
        let mut off = IPV6_HEADER_LEN;
        let mut count = 0;
        loop {
            let len = match nh {
                ip_proto::HOPOPT | ip_proto::IPV6_ROUTE | ip_proto::IPV6_OPTS | ip_proto::AH => {
                    if nh == ip_proto::HOPOPT && count != 0 {
                        return Err(WireError::BadField {
                            layer: EXT_LAYER,
                            field: "hop_by_hop",
                        });
                    }
                    ext_need(off + 2, end)?;
                    let units = usize::from(b[off + 1]);
                    if nh == ip_proto::AH {
                        (units + 2) * 4
                    } else {
                        (units + 1) * 8
                    }
                }
                ip_proto::IPV6_FRAG => {
                    ext_need(off + 8, end)?;
                    // Offset (13 bits) << 3 | res (2) | M (1): anything but zero
                    // offset and M clear is a piece of a larger datagram.
                    if be16(b, off + 2) & 0xfff9 != 0 {
                        return Err(WireError::Fragmented);
                    }
                    8
                }
                _ => return Ok((nh, off)),
            };
            if count == MAX_EXT_HEADERS {
                return Err(WireError::TooManyHeaders { layer: LAYER });
            }
            ext_need(off + len, end)?;
            nh = b[off];
            off += len;
            count += 1;
        }
    }
}

#[inline]
fn ext_need(needed: usize, end: usize) -> Result<(), WireError> {
    if needed > end {
        Err(WireError::Truncated {
            layer: EXT_LAYER,
            needed,
            got: end,
        })
    } else {
        Ok(())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv6Packet<&'a T> {
    /// The payload, borrowed for as long as the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let end = self.end();
        self.buffer
            .as_ref()
            .get(IPV6_HEADER_LEN..end)
            .unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version, traffic class and flow label (the first 32 bits) at once.
    #[inline]
    pub fn set_version_tc_flow(&mut self, version: u8, traffic_class: u8, flow_label: u32) {
        let v = (u32::from(version) << 28)
            | (u32::from(traffic_class) << 20)
            | (flow_label & 0x000f_ffff);
        set_be32(self.buffer.as_mut(), 0, v);
    }

    /// Sets the traffic class.
    #[inline]
    pub fn set_traffic_class(&mut self, tc: u8) {
        let w = be32(self.buffer.as_ref(), 0);
        set_be32(
            self.buffer.as_mut(),
            0,
            (w & 0xf00f_ffff) | (u32::from(tc) << 20),
        );
    }

    /// Sets the flow label (low 20 bits of `label`).
    #[inline]
    pub fn set_flow_label(&mut self, label: u32) {
        let w = be32(self.buffer.as_ref(), 0);
        set_be32(
            self.buffer.as_mut(),
            0,
            (w & 0xfff0_0000) | (label & 0x000f_ffff),
        );
    }

    /// Sets the payload length.
    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        set_be16(self.buffer.as_mut(), 4, len);
    }

    /// Sets the next header.
    #[inline]
    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[6] = nh;
    }

    /// Sets the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, hl: u8) {
        self.buffer.as_mut()[7] = hl;
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[8..24].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[24..40].copy_from_slice(&addr.octets());
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.end();
        self.buffer
            .as_mut()
            .get_mut(IPV6_HEADER_LEN..end)
            .unwrap_or(&mut [])
    }
}

/// An IPv6 header as a value (no extension headers: `next_header` is the first one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// The header after the fixed header.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
    /// Payload length in bytes.
    pub payload_len: usize,
}

impl Ipv6Repr {
    /// Reads the fixed header (use [`Ipv6Packet::upper_layer`] to find the transport).
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv6Packet<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(Self {
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            next_header: packet.next_header(),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
            payload_len: usize::from(packet.payload_len()),
        })
    }

    /// Header length `emit` writes: [`IPV6_HEADER_LEN`].
    #[inline]
    pub fn header_len(&self) -> usize {
        IPV6_HEADER_LEN
    }

    /// Header and payload length.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        IPV6_HEADER_LEN + self.payload_len
    }

    /// Writes the fixed header; the payload is the caller's.
    ///
    /// Errors (writing nothing) if the buffer is shorter than the header, the flow
    /// label is wider than 20 bits or the payload length wider than 16.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Ipv6Packet<T>,
    ) -> Result<(), WireError> {
        if self.flow_label > 0x000f_ffff {
            return Err(WireError::BadField {
                layer: LAYER,
                field: "flow_label",
            });
        }
        let plen = u16::try_from(self.payload_len).map_err(|_| WireError::BadLength {
            layer: LAYER,
            field: "payload_len",
            value: self.payload_len,
        })?;
        need(LAYER, packet.buffer.as_ref(), IPV6_HEADER_LEN)?;
        packet.set_version_tc_flow(6, self.traffic_class, self.flow_label);
        packet.set_payload_len(plen);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src);
        packet.set_dst_addr(self.dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(next_header: u8, payload_len: usize) -> Ipv6Repr {
        Ipv6Repr {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            next_header,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
            payload_len,
        }
    }

    /// A packet with `exts` (next header, bytes) chained in front of an 8-byte UDP header.
    fn chain(exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (_, bytes)) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(ip_proto::UDP, |e| e.0);
            let mut h = bytes.clone();
            h[0] = next;
            body.extend(h);
        }
        body.extend([0u8; 8]);
        let first = exts.first().map_or(ip_proto::UDP, |e| e.0);
        let mut buf = vec![0u8; 40 + body.len()];
        repr(first, body.len())
            .emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]))
            .unwrap();
        buf[40..].copy_from_slice(&body);
        buf
    }

    #[test]
    fn golden_header() {
        let mut buf = [0u8; 48];
        repr(ip_proto::UDP, 8)
            .emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(&buf[..8], &[0x6b, 0x81, 0x23, 0x45, 0x00, 0x08, 0x11, 0x40]);
        assert_eq!(&buf[8..10], &[0x20, 0x01]);
        assert_eq!(buf[39], 2);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Ipv6Repr::parse(&p).unwrap(), repr(ip_proto::UDP, 8));
        assert_eq!(p.upper_layer(), Ok((ip_proto::UDP, 40)));
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn walks_extension_headers() {
        let hbh = (ip_proto::HOPOPT, vec![0, 0, 1, 4, 0, 0, 0, 0]);
        let dst = (
            ip_proto::IPV6_OPTS,
            vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        let rt = (ip_proto::IPV6_ROUTE, vec![0, 0, 0, 0, 0, 0, 0, 0]);
        let atomic = (ip_proto::IPV6_FRAG, vec![0, 0, 0, 0, 0, 0, 0, 42]);
        let ah = (
            ip_proto::AH,
            vec![
                0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        );
        let buf = chain(&[hbh.clone(), dst.clone(), rt, atomic, ah]);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(
            p.upper_layer(),
            Ok((ip_proto::UDP, 40 + 8 + 16 + 8 + 8 + 24))
        );

        let frag = |m: u8, off: u8| (ip_proto::IPV6_FRAG, vec![0, 0, off, m, 0, 0, 0, 1]);
        for f in [frag(1, 0), frag(0, 0x08), frag(1, 0x08)] {
            let buf = chain(&[f]);
            assert_eq!(
                Ipv6Packet::new_checked(&buf[..]).unwrap().upper_layer(),
                Err(WireError::Fragmented)
            );
        }

        let buf = chain(&[dst.clone(), hbh]);
        assert!(matches!(
            Ipv6Packet::new_checked(&buf[..]).unwrap().upper_layer(),
            Err(WireError::BadField {
                field: "hop_by_hop",
                ..
            })
        ));

        let buf = chain(&vec![dst.clone(); MAX_EXT_HEADERS]);
        assert!(Ipv6Packet::new_checked(&buf[..])
            .unwrap()
            .upper_layer()
            .is_ok());
        let buf = chain(&vec![dst; MAX_EXT_HEADERS + 1]);
        assert_eq!(
            Ipv6Packet::new_checked(&buf[..]).unwrap().upper_layer(),
            Err(WireError::TooManyHeaders { layer: "ipv6" })
        );
    }

    #[test]
    fn extension_lengths_are_bounded_by_payload_len() {
        let mut buf = chain(&[(ip_proto::IPV6_OPTS, vec![0; 8])]);
        buf[41] = 2; // claims 24 bytes; only 16 remain
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert!(matches!(
            p.upper_layer(),
            Err(WireError::Truncated {
                layer: "ipv6-ext",
                needed: 64,
                got: 56
            })
        ));
        // Shrinking the payload length bounds the walk even though the buffer is longer.
        let mut buf = chain(&[(ip_proto::IPV6_OPTS, vec![0; 8])]);
        buf[5] = 4;
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert!(matches!(
            p.upper_layer(),
            Err(WireError::Truncated { got: 44, .. })
        ));
        assert_eq!(p.payload().len(), 4);
    }

    #[test]
    fn errors() {
        let buf = chain(&[]);
        assert!(Ipv6Packet::new_checked(&buf[..47]).is_err());
        assert!(Ipv6Packet::new_checked(&buf[..39]).is_err());
        let mut b = buf.clone();
        b[0] = 0x45;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]),
            Err(WireError::BadVersion {
                layer: "ipv6",
                version: 4
            })
        );
        let mut out = [0u8; 40];
        let r = Ipv6Repr {
            flow_label: 0x10_0000,
            ..repr(0, 0)
        };
        assert!(r
            .emit(&mut Ipv6Packet::new_unchecked(&mut out[..]))
            .is_err());
        let r = Ipv6Repr {
            payload_len: 65_536,
            ..repr(0, 0)
        };
        assert!(r
            .emit(&mut Ipv6Packet::new_unchecked(&mut out[..]))
            .is_err());
        assert!(repr(0, 0)
            .emit(&mut Ipv6Packet::new_unchecked(&mut out[..39]))
            .is_err());
    }
}
