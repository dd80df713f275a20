//! TCP headers (RFC 9293) with IPv4 and IPv6 checksums.
//!
//! TCP has no length field: a view covers the whole segment, so wrap exactly the IP
//! payload (`Ipv4Packet::payload`), not the rest of the frame.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::field::{be16, be32, need, set_be16, set_be32, view_constructors};
use super::ip_proto;
pub use super::tcp_flags::TcpFlags;
use super::WireError;

const LAYER: &str = "tcp";

/// Length of a TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;

/// A view of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    view_constructors!(check_len, TCP_HEADER_LEN);

    /// Checks that the data offset is at least 5 and the header, options included,
    /// fits in the buffer.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        need(LAYER, b, TCP_HEADER_LEN)?;
        let hl = self.header_len();
        if hl < TCP_HEADER_LEN {
            return Err(WireError::BadLength {
                layer: LAYER,
                field: "data_offset",
                value: hl / 4,
            });
        }
        need(LAYER, b, hl)
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

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }

    /// Acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 8)
    }

    /// Header length in bytes (data offset * 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[12] >> 4) * 4
    }

    /// Flags.
    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags::from_bits(self.buffer.as_ref()[13])
    }

    /// Window.
    #[inline]
    pub fn window(&self) -> u16 {
        be16(self.buffer.as_ref(), 14)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 16)
    }

    /// Urgent pointer.
    #[inline]
    pub fn urgent(&self) -> u16 {
        be16(self.buffer.as_ref(), 18)
    }

    /// Header length clamped to the buffer.
    #[inline]
    fn data_start(&self) -> usize {
        self.header_len().min(self.buffer.as_ref().len())
    }

    /// Option bytes.
    #[inline]
    pub fn options(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(TCP_HEADER_LEN..self.data_start())
            .unwrap_or(&[])
    }

    /// The payload: everything after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.data_start()..]
    }

    /// True when the checksum verifies over IPv4 (the segment is the whole buffer).
    #[inline]
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        u16::try_from(b.len()).is_ok_and(|len| {
            checksum::is_valid(checksum::pseudo_v4(src, dst, ip_proto::TCP, len) + checksum::sum(b))
        })
    }

    /// True when the checksum verifies over IPv6 (the segment is the whole buffer).
    #[inline]
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let b = self.buffer.as_ref();
        u32::try_from(b.len()).is_ok_and(|len| {
            checksum::is_valid(checksum::pseudo_v6(src, dst, ip_proto::TCP, len) + checksum::sum(b))
        })
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> TcpPacket<&'a T> {
    /// The payload, borrowed for as long as the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let start = self.data_start();
        &self.buffer.as_ref()[start..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
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

    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, seq: u32) {
        set_be32(self.buffer.as_mut(), 4, seq);
    }

    /// Sets the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, ack: u32) {
        set_be32(self.buffer.as_mut(), 8, ack);
    }

    /// Sets the header length in bytes (a multiple of 4, at most 60); clears the
    /// reserved bits.
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[12] = ((len / 4) as u8) << 4;
    }

    /// Sets the flags.
    #[inline]
    pub fn set_flags(&mut self, flags: TcpFlags) {
        self.buffer.as_mut()[13] = flags.bits();
    }

    /// Sets the window.
    #[inline]
    pub fn set_window(&mut self, window: u16) {
        set_be16(self.buffer.as_mut(), 14, window);
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_be16(self.buffer.as_mut(), 16, csum);
    }

    /// Sets the urgent pointer.
    #[inline]
    pub fn set_urgent(&mut self, urgent: u16) {
        set_be16(self.buffer.as_mut(), 18, urgent);
    }

    fn fill_with(&mut self, pseudo: u32) {
        self.set_checksum(0);
        let c = checksum::finish(pseudo + checksum::sum(self.buffer.as_ref()));
        self.set_checksum(c);
    }

    /// Computes and stores the checksum over the IPv4 pseudo-header and the whole
    /// buffer (whose length must fit 16 bits, as it does in any IPv4 packet).
    #[inline]
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let len = self.buffer.as_ref().len() as u16;
        self.fill_with(checksum::pseudo_v4(src, dst, ip_proto::TCP, len));
    }

    /// Computes and stores the checksum over the IPv6 pseudo-header and the whole
    /// buffer.
    #[inline]
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let len = self.buffer.as_ref().len() as u32;
        self.fill_with(checksum::pseudo_v6(src, dst, ip_proto::TCP, len));
    }

    /// Option bytes, writable (MSS clamping).
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.data_start();
        self.buffer
            .as_mut()
            .get_mut(TCP_HEADER_LEN..end)
            .unwrap_or(&mut [])
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.data_start();
        &mut self.buffer.as_mut()[start..]
    }
}

/// A TCP header as a value (options are not kept; emit writes none).
///
/// [`parse`](Self::parse) does not verify the checksum (it needs the IP addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// Window.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
}

impl TcpRepr {
    /// Reads a segment's header.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &TcpPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq: packet.seq_number(),
            ack: packet.ack_number(),
            flags: packet.flags(),
            window: packet.window(),
            urgent: packet.urgent(),
        })
    }

    /// Header length `emit` writes: [`TCP_HEADER_LEN`] (the payload is the caller's).
    #[inline]
    pub fn buffer_len(&self) -> usize {
        TCP_HEADER_LEN
    }

    /// Writes the header with a zero checksum; write the payload, then fill the
    /// checksum over the whole segment. Errors (writing nothing) if the buffer is
    /// shorter than the header.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
    ) -> Result<(), WireError> {
        need(LAYER, packet.buffer.as_ref(), TCP_HEADER_LEN)?;
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq);
        packet.set_ack_number(self.ack);
        packet.set_header_len(TCP_HEADER_LEN);
        packet.set_flags(self.flags);
        packet.set_window(self.window);
        packet.set_checksum(0);
        packet.set_urgent(self.urgent);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn() -> TcpRepr {
        TcpRepr {
            src_port: 0x1234,
            dst_port: 80,
            seq: 0x0102_0304,
            ack: 0,
            flags: TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR,
            window: 0xffff,
            urgent: 0,
        }
    }

    #[test]
    fn golden_header_and_flags() {
        let mut buf = [0u8; 20];
        syn()
            .emit(&mut TcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        let expect = [
            0x12, 0x34, 0, 80, 1, 2, 3, 4, 0, 0, 0, 0, 0x50, 0xc2, 0xff, 0xff, 0, 0, 0, 0,
        ];
        assert_eq!(buf, expect);
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(TcpRepr::parse(&p).unwrap(), syn());
    }

    #[test]
    fn options_payload_and_checksums() {
        // Data offset 6: one MSS option, then a 3-byte payload.
        let mut buf = [0u8; 27];
        syn()
            .emit(&mut TcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        let mut p = TcpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_header_len(24);
        p.options_mut().copy_from_slice(&[2, 4, 0x05, 0xb4]);
        p.payload_mut().copy_from_slice(b"abc");
        p.set_seq_number(7);
        p.set_ack_number(9);
        p.set_flags(TcpFlags::ACK | TcpFlags::PSH);
        assert_eq!(
            (p.header_len(), p.options(), p.payload()),
            (24, &[2, 4, 5, 0xb4][..], &b"abc"[..])
        );

        let (s, d) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        p.fill_checksum_v4(s, d);
        assert!(p.verify_checksum_v4(s, d) && !p.verify_checksum_v4(d, d));
        let (s6, d6): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8::a".parse().unwrap(),
            "2001:db8::b".parse().unwrap(),
        );
        p.fill_checksum_v6(s6, d6);
        assert!(p.verify_checksum_v6(s6, d6));
        p.payload_mut()[2] = b'd';
        assert!(!p.verify_checksum_v6(s6, d6));
        let r = TcpRepr::parse(&p).unwrap();
        assert_eq!(
            (r.seq, r.ack, r.flags),
            (7, 9, TcpFlags::ACK | TcpFlags::PSH)
        );
    }

    #[test]
    fn errors() {
        let mut buf = [0u8; 24];
        syn()
            .emit(&mut TcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        assert!(TcpPacket::new_checked(&buf[..19]).is_err());
        buf[12] = 0x40;
        assert!(matches!(
            TcpPacket::new_checked(&buf[..]),
            Err(WireError::BadLength {
                field: "data_offset",
                ..
            })
        ));
        buf[12] = 0x70;
        assert!(matches!(
            TcpPacket::new_checked(&buf[..]),
            Err(WireError::Truncated {
                needed: 28,
                got: 24,
                ..
            })
        ));
        assert!(syn()
            .emit(&mut TcpPacket::new_unchecked(&mut buf[..19]))
            .is_err());
    }
}
