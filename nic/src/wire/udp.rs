//! UDP headers (RFC 768) with IPv4 and IPv6 checksums.
//!
//! [`UdpPacket::new_checked`] accepts a buffer when the length field is at least 8
//! and fits in it; bytes after the length field are ignored.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::field::{be16, need, set_be16, view_constructors};
use super::ip_proto;
use super::WireError;

const LAYER: &str = "udp";

/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    view_constructors!(check_len, UDP_HEADER_LEN);

    /// Checks that the length field is at least 8 and fits in the buffer.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        need(LAYER, b, UDP_HEADER_LEN)?;
        let len = usize::from(self.len());
        if len < UDP_HEADER_LEN {
            return Err(WireError::BadLength {
                layer: LAYER,
                field: "length",
                value: len,
            });
        }
        need(LAYER, b, len)
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// Length field (header and payload).
    #[inline]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    /// True when the length field says there is no payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= UDP_HEADER_LEN
    }

    /// Checksum field (0 = none, IPv4 only).
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 6)
    }

    /// The datagram, header included, up to the length field (clamped to the buffer).
    #[inline]
    fn datagram(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..usize::from(self.len()).min(b.len())]
    }

    /// The payload, up to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.datagram().get(UDP_HEADER_LEN..).unwrap_or(&[])
    }

    /// True when the checksum verifies over IPv4, or is 0 (no checksum).
    #[inline]
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0
            || checksum::is_valid(
                checksum::pseudo_v4(src, dst, ip_proto::UDP, self.len())
                    + checksum::sum(self.datagram()),
            )
    }

    /// True when the checksum verifies over IPv6 (where 0 is not allowed).
    #[inline]
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.checksum() != 0
            && checksum::is_valid(
                checksum::pseudo_v6(src, dst, ip_proto::UDP, self.len().into())
                    + checksum::sum(self.datagram()),
            )
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> UdpPacket<&'a T> {
    /// The payload, borrowed for as long as the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        let end = usize::from(self.len()).min(b.len());
        b.get(UDP_HEADER_LEN..end).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        set_be16(self.buffer.as_mut(), 0, port);
    }

    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        set_be16(self.buffer.as_mut(), 2, port);
    }

    /// Sets the length field.
    #[inline]
    pub fn set_len(&mut self, len: u16) {
        set_be16(self.buffer.as_mut(), 4, len);
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_be16(self.buffer.as_mut(), 6, csum);
    }

    fn fill_with(&mut self, pseudo: u32) {
        self.set_checksum(0);
        let c = checksum::finish(pseudo + checksum::sum(self.datagram()));
        // A computed 0 is sent as 0xffff: 0 means "no checksum".
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    /// Computes and stores the checksum over the IPv4 pseudo-header and the datagram.
    #[inline]
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.fill_with(checksum::pseudo_v4(src, dst, ip_proto::UDP, self.len()));
    }

    /// Computes and stores the checksum over the IPv6 pseudo-header and the datagram.
    #[inline]
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.fill_with(checksum::pseudo_v6(
            src,
            dst,
            ip_proto::UDP,
            self.len().into(),
        ));
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        let b = self.buffer.as_mut();
        let end = len.min(b.len());
        b.get_mut(UDP_HEADER_LEN..end).unwrap_or(&mut [])
    }
}

/// A UDP header as a value.
///
/// [`parse`](Self::parse) does not verify the checksum (it needs the IP addresses):
/// call [`UdpPacket::verify_checksum_v4`] / [`verify_checksum_v6`](UdpPacket::verify_checksum_v6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length in bytes.
    pub payload_len: usize,
}

impl UdpRepr {
    /// Reads a datagram's header.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &UdpPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - UDP_HEADER_LEN,
        })
    }

    /// Header length `emit` writes: [`UDP_HEADER_LEN`].
    #[inline]
    pub fn header_len(&self) -> usize {
        UDP_HEADER_LEN
    }

    /// Header and payload length: the length field.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        UDP_HEADER_LEN + self.payload_len
    }

    /// Writes the header with a zero checksum; write the payload, then fill the
    /// checksum with [`UdpPacket::fill_checksum_v4`] / `_v6` (or leave 0 over IPv4).
    ///
    /// Errors (writing nothing) if the buffer is shorter than the header or the length
    /// does not fit 16 bits.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
    ) -> Result<(), WireError> {
        let len = u16::try_from(self.buffer_len()).map_err(|_| WireError::BadLength {
            layer: LAYER,
            field: "payload_len",
            value: self.payload_len,
        })?;
        need(LAYER, packet.buffer.as_ref(), UDP_HEADER_LEN)?;
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        packet.set_checksum(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 199);

    fn datagram(payload: &[u8]) -> Vec<u8> {
        let r = UdpRepr {
            src_port: 49_152,
            dst_port: 4789,
            payload_len: payload.len(),
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut UdpPacket::new_unchecked(&mut buf[..])).unwrap();
        buf[8..].copy_from_slice(payload);
        buf
    }

    #[test]
    fn golden_header_and_round_trip() {
        let buf = datagram(b"hi!");
        assert_eq!(&buf[..8], &[0xc0, 0x00, 0x12, 0xb5, 0x00, 0x0b, 0x00, 0x00]);
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(
            UdpRepr::parse(&p).unwrap(),
            UdpRepr {
                src_port: 49_152,
                dst_port: 4789,
                payload_len: 3
            }
        );
        assert_eq!(
            (p.payload(), p.into_payload(), p.is_empty()),
            (&b"hi!"[..], &b"hi!"[..], false)
        );
    }

    #[test]
    fn checksums_v4_v6() {
        let mut buf = datagram(b"odd-length payload!");
        assert!(UdpPacket::new_checked(&buf[..])
            .unwrap()
            .verify_checksum_v4(SRC, DST)); // 0 = none
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum_v4(SRC, DST);
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v4(SRC, Ipv4Addr::new(192, 168, 0, 198)));
        // Independent check: sum of pseudo-header bytes and datagram.
        let mut all = Vec::new();
        all.extend(SRC.octets());
        all.extend(DST.octets());
        all.extend([0, 17, 0, p.len() as u8]);
        all.extend(p.datagram());
        assert!(checksum::is_valid(checksum::sum(&all)));

        let (s6, d6): (Ipv6Addr, Ipv6Addr) =
            ("fe80::1".parse().unwrap(), "ff02::1".parse().unwrap());
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_checksum(0);
        assert!(!p.verify_checksum_v6(s6, d6));
        p.fill_checksum_v6(s6, d6);
        assert!(p.verify_checksum_v6(s6, d6));
        p.payload_mut()[0] ^= 0xff;
        assert!(!p.verify_checksum_v6(s6, d6));
    }

    #[test]
    fn errors_and_padding() {
        let mut buf = datagram(b"abcd");
        buf.extend([0xee; 6]); // trailing padding is ignored
        assert_eq!(UdpPacket::new_checked(&buf[..]).unwrap().payload(), b"abcd");
        assert!(matches!(
            UdpPacket::new_checked(&buf[..7]),
            Err(WireError::Truncated { needed: 8, .. })
        ));
        assert!(matches!(
            UdpPacket::new_checked(&buf[..11]),
            Err(WireError::Truncated { needed: 12, .. })
        ));
        buf[5] = 7;
        assert!(matches!(
            UdpPacket::new_checked(&buf[..]),
            Err(WireError::BadLength { value: 7, .. })
        ));
        let r = UdpRepr {
            src_port: 1,
            dst_port: 2,
            payload_len: 65_528,
        };
        assert!(r.emit(&mut UdpPacket::new_unchecked(&mut buf[..])).is_err());
        assert!(UdpRepr {
            payload_len: 0,
            ..r
        }
        .emit(&mut UdpPacket::new_unchecked(&mut buf[..7]))
        .is_err());
    }
}
