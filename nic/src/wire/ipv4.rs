//! IPv4 headers (RFC 791).
//!
//! [`Ipv4Packet::new_checked`] accepts a buffer when the version is 4, the header
//! (options included) fits in both the buffer and the total length, and the total
//! length fits in the buffer; bytes after the total length (Ethernet padding) are
//! allowed and ignored by [`payload`](Ipv4Packet::payload).

use std::net::Ipv4Addr;

use super::checksum;
use super::field::{array, be16, need, set_be16, view_constructors};
use super::WireError;

const LAYER: &str = "ipv4";

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;

/// A view of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    view_constructors!(check_len, IPV4_HEADER_LEN);

    /// Checks version, header length and total length against each other and the
    /// buffer.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        need(LAYER, b, IPV4_HEADER_LEN)?;
        if self.version() != 4 {
            return Err(WireError::BadVersion {
                layer: LAYER,
                version: self.version(),
            });
        }
        let hl = self.header_len();
        if hl < IPV4_HEADER_LEN {
            return Err(WireError::BadLength {
                layer: LAYER,
                field: "ihl",
                value: hl / 4,
            });
        }
        need(LAYER, b, hl)?;
        let tl = usize::from(self.total_len());
        if tl < hl {
            return Err(WireError::BadLength {
                layer: LAYER,
                field: "total_len",
                value: tl,
            });
        }
        need(LAYER, b, tl)
    }

    /// Version (4).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Header length in bytes (IHL * 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x0f) * 4
    }

    /// The type-of-service byte (DSCP << 2 | ECN).
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// Differentiated services code point.
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.tos() >> 2
    }

    /// Explicit congestion notification bits.
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.tos() & 0x03
    }

    /// Total length (header and payload) in bytes.
    #[inline]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }

    /// Don't-fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.buffer.as_ref()[6] & 0x40 != 0
    }

    /// More-fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.buffer.as_ref()[6] & 0x20 != 0
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), 6) & 0x1fff) << 3
    }

    /// True for any fragment other than a whole datagram (MF set or offset nonzero).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), 6) & 0x3fff != 0
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[8]
    }

    /// Protocol of the payload (see [`ip_proto`](super::ip_proto)).
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[9]
    }

    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 10)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(array::<4>(self.buffer.as_ref(), 12))
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(array::<4>(self.buffer.as_ref(), 16))
    }

    /// Header bytes, clamped to the buffer.
    #[inline]
    fn header(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..self.header_len().min(b.len())]
    }

    /// Option bytes (between the fixed header and the payload).
    #[inline]
    pub fn options(&self) -> &[u8] {
        self.header().get(IPV4_HEADER_LEN..).unwrap_or(&[])
    }

    /// True when the header checksum verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::is_valid(checksum::sum(self.header()))
    }

    /// The payload: from the end of the header to the total length (padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let (start, end) = payload_range(b.len(), self.header_len(), self.total_len());
        &b[start..end]
    }
}

/// `header_len..total_len`, clamped so it is always a valid range of a `len`-byte buffer.
#[inline]
fn payload_range(len: usize, header_len: usize, total_len: u16) -> (usize, usize) {
    let end = usize::from(total_len).min(len);
    (header_len.min(end), end)
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv4Packet<&'a T> {
    /// The payload, borrowed for as long as the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        let (start, end) = payload_range(b.len(), self.header_len(), self.total_len());
        &b[start..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the version nibble.
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        let b = self.buffer.as_mut();
        b[0] = (b[0] & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes (a multiple of 4, at most 60).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let b = self.buffer.as_mut();
        b[0] = (b[0] & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    /// Sets the type-of-service byte.
    #[inline]
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[1] = tos;
    }

    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        set_be16(self.buffer.as_mut(), 2, len);
    }

    /// Sets the identification.
    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        set_be16(self.buffer.as_mut(), 4, ident);
    }

    /// Sets DF, MF and the fragment offset (in bytes, a multiple of 8).
    #[inline]
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let v = (u16::from(dont_frag) << 14) | (u16::from(more_frags) << 13) | (offset >> 3);
        set_be16(self.buffer.as_mut(), 6, v);
    }

    /// Sets the time to live.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[8] = ttl;
    }

    /// Sets the protocol.
    #[inline]
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[9] = protocol;
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_be16(self.buffer.as_mut(), 10, csum);
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[12..16].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[16..20].copy_from_slice(&addr.octets());
    }

    /// Computes and stores the header checksum (over the options too).
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::sum(self.header()));
        self.set_checksum(c);
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, tl) = (self.header_len(), self.total_len());
        let b = self.buffer.as_mut();
        let (start, end) = payload_range(b.len(), hl, tl);
        &mut b[start..end]
    }
}

/// An IPv4 header as a value: no options, not a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// Type-of-service byte (DSCP << 2 | ECN).
    pub tos: u8,
    /// Identification.
    pub ident: u16,
    /// Don't-fragment flag.
    pub dont_frag: bool,
    /// Payload length in bytes.
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// Reads a packet: verifies the header checksum and rejects fragments. Options are
    /// skipped (not kept).
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::BadChecksum { layer: LAYER });
        }
        if packet.is_fragment() {
            return Err(WireError::Fragmented);
        }
        Ok(Self {
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            protocol: packet.protocol(),
            ttl: packet.ttl(),
            tos: packet.tos(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
        })
    }

    /// Header length `emit` writes: [`IPV4_HEADER_LEN`].
    #[inline]
    pub fn header_len(&self) -> usize {
        IPV4_HEADER_LEN
    }

    /// Header and payload length: the total length field.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        IPV4_HEADER_LEN + self.payload_len
    }

    /// Writes the header (checksum filled) at the start of the packet's buffer; the
    /// payload is the caller's.
    ///
    /// Errors (writing nothing) if the buffer is shorter than the header or the total
    /// length does not fit 16 bits.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Ipv4Packet<T>,
    ) -> Result<(), WireError> {
        let total = u16::try_from(self.buffer_len()).map_err(|_| WireError::BadLength {
            layer: LAYER,
            field: "payload_len",
            value: self.payload_len,
        })?;
        need(LAYER, packet.buffer.as_ref(), IPV4_HEADER_LEN)?;
        packet.buffer.as_mut()[0] = 0x45;
        packet.set_tos(self.tos);
        packet.set_total_len(total);
        packet.set_ident(self.ident);
        packet.set_frag(self.dont_frag, false, 0);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src);
        packet.set_dst_addr(self.dst);
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_proto;

    /// The classic example header (checksum 0xb861).
    const GOLDEN: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn golden_repr() -> Ipv4Repr {
        Ipv4Repr {
            src: Ipv4Addr::new(192, 168, 0, 1),
            dst: Ipv4Addr::new(192, 168, 0, 199),
            protocol: ip_proto::UDP,
            ttl: 64,
            tos: 0,
            ident: 0,
            dont_frag: true,
            payload_len: 0x73 - 20,
        }
    }

    #[test]
    fn golden_checksum_and_emit() {
        let mut buf = [0u8; 0x73];
        buf[..20].copy_from_slice(&GOLDEN);
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&p).unwrap(), golden_repr());
        assert_eq!(p.payload().len(), 0x73 - 20);

        let mut out = [0u8; 0x73];
        golden_repr()
            .emit(&mut Ipv4Packet::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(&out[..20], &GOLDEN);

        let mut hdr = GOLDEN;
        let mut p = Ipv4Packet::new_unchecked(&mut hdr[..]);
        p.set_checksum(0);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert_eq!(p.checksum(), 0xb861);
    }

    #[test]
    fn options_padding_and_fragments() {
        // IHL 6 (4 option bytes), total 28, plus 4 bytes of Ethernet padding.
        let mut buf = [0u8; 32];
        buf[0] = 0x46;
        buf[3] = 28;
        buf[20..24].copy_from_slice(&[1, 1, 1, 0]); // NOPs, EOL
        buf[24..28].copy_from_slice(b"data");
        buf[28..].copy_from_slice(b"PADD");
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum();
        assert_eq!(
            (p.header_len(), p.options(), p.payload()),
            (24, &[1, 1, 1, 0][..], &b"data"[..])
        );
        assert_eq!(Ipv4Repr::parse(&p).unwrap().payload_len, 4);

        p.set_frag(false, true, 0);
        p.fill_checksum();
        assert!(p.is_fragment() && p.more_frags());
        assert_eq!(Ipv4Repr::parse(&p), Err(WireError::Fragmented));
        p.set_frag(true, false, 1480);
        p.fill_checksum();
        assert_eq!(
            (p.frag_offset(), p.dont_frag(), p.is_fragment()),
            (1480, true, true)
        );
        assert_eq!(Ipv4Repr::parse(&p), Err(WireError::Fragmented));
    }

    #[test]
    fn errors() {
        let mut buf = [0u8; 40];
        buf[..20].copy_from_slice(&GOLDEN);
        buf[3] = 40;
        let check = |b: &[u8]| {
            Ipv4Packet::new_checked(b)
                .map(|_| ())
                .map_err(|e| e.reason())
        };
        assert_eq!(check(&buf), Ok(()));
        assert_eq!(check(&buf[..39]), Err("truncated"));
        let mut b = buf;
        b[0] = 0x65;
        assert_eq!(check(&b), Err("bad_version"));
        b[0] = 0x44;
        assert_eq!(check(&b), Err("bad_length"));
        b[0] = 0x4f; // 60-byte header in a 40-byte buffer
        assert_eq!(check(&b), Err("truncated"));
        b[0] = 0x46;
        b[3] = 20; // total shorter than header
        assert_eq!(check(&b), Err("bad_length"));
        let mut b = buf;
        b[11] ^= 1;
        assert_eq!(
            Ipv4Repr::parse(&Ipv4Packet::new_checked(&b[..]).unwrap()),
            Err(WireError::BadChecksum { layer: "ipv4" })
        );

        let too_big = Ipv4Repr {
            payload_len: 65_516,
            ..golden_repr()
        };
        assert!(too_big
            .emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]))
            .is_err());
        assert!(golden_repr()
            .emit(&mut Ipv4Packet::new_unchecked(&mut buf[..19]))
            .is_err());
    }

    #[test]
    fn accessors_after_setter_abuse_do_not_panic() {
        let mut buf = GOLDEN;
        buf[3] = 20;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_header_len(60);
        p.set_total_len(9000);
        assert_eq!((p.options(), p.payload()), (&[][..], &[][..]));
        p.fill_checksum();
        assert!(p.payload_mut().is_empty());
    }
}
