//! PWT, the pipewright tunnel: a stateless UDP encapsulation with a 32-bit tenant id
//! and a header checksum of its own.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Ver=1 |HLen=3 |     Flags     |         Protocol Type         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Tenant ID (32)                         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Flow Entropy (16)      |      Header Checksum (16)     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |              Extensions (HLen - 3 words, skipped)             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//! - **Ver** (4 bits): 1; anything else is `BadVersion`.
//! - **HLen** (4 bits): header length in 32-bit words, at least 3 (no extensions)
//!   and at most 15. Extension words are covered by the checksum and otherwise
//!   skipped; a header longer than the buffer is `OptionsOverflow`.
//! - **Flags** (8 bits): [`PWT_FLAG_OAM`] (0x80) marks a control packet; the others
//!   are reserved, carried as they are.
//! - **Protocol Type** (16 bits): an EtherType for the payload, 0x6558 = Ethernet.
//! - **Tenant ID** (32 bits): the virtual network; wider than a VXLAN/Geneve VNI.
//! - **Flow Entropy** (16 bits): a hash of the inner flow, for ECMP in the underlay
//!   (an encapsulator also uses it as the outer UDP source port).
//! - **Header Checksum** (16 bits): the internet checksum of the PWT header
//!   (extensions included) computed with this field zero, so a corrupted header is
//!   caught without touching the inner packet. [`PwtRepr::parse`] verifies it.
//!
//! PWT runs over UDP port [`PWT_PORT`] (7470).

use super::checksum;
use super::field::{be16, be32, need, set_be16, set_be32, view_constructors};
use super::WireError;

const LAYER: &str = "pwt";

/// Default UDP destination port for PWT.
pub const PWT_PORT: u16 = 7470;
/// The PWT version this implementation speaks.
pub const PWT_VERSION: u8 = 1;
/// Length of a PWT header without extensions (HLen = 3).
pub const PWT_HEADER_LEN: usize = 12;
/// The OAM flag: a control packet, not tenant traffic.
pub const PWT_FLAG_OAM: u8 = 0x80;

/// A view of a PWT header and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PwtPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> PwtPacket<T> {
    view_constructors!(check_len, PWT_HEADER_LEN);

    /// Checks the version, that HLen is at least 3 and that the header fits.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        need(LAYER, b, PWT_HEADER_LEN)?;
        if self.version() != PWT_VERSION {
            return Err(WireError::BadVersion {
                layer: LAYER,
                version: self.version(),
            });
        }
        let hl = self.header_len();
        if hl < PWT_HEADER_LEN {
            return Err(WireError::BadLength {
                layer: LAYER,
                field: "hlen",
                value: hl / 4,
            });
        }
        if hl > b.len() {
            return Err(WireError::OptionsOverflow { layer: LAYER });
        }
        Ok(())
    }

    /// Version (1).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Header length in bytes (HLen * 4), extensions included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x0f) * 4
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// True for a control (OAM) packet.
    #[inline]
    pub fn oam(&self) -> bool {
        self.flags() & PWT_FLAG_OAM != 0
    }

    /// Protocol type of the payload.
    #[inline]
    pub fn protocol_type(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// Tenant id.
    #[inline]
    pub fn tenant_id(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }

    /// Flow entropy.
    #[inline]
    pub fn flow_entropy(&self) -> u16 {
        be16(self.buffer.as_ref(), 8)
    }

    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 10)
    }

    /// Header bytes, clamped to the buffer.
    #[inline]
    fn header(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..self.header_len().min(b.len())]
    }

    /// Extension bytes (empty when HLen = 3).
    #[inline]
    pub fn extensions(&self) -> &[u8] {
        self.header().get(PWT_HEADER_LEN..).unwrap_or(&[])
    }

    /// True when the header checksum verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::is_valid(checksum::sum(self.header()))
    }

    /// The payload after the header and extensions.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header().len()..]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> PwtPacket<&'a T> {
    /// The payload, borrowed for as long as the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let start = self.header().len();
        &self.buffer.as_ref()[start..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> PwtPacket<T> {
    /// Sets version 1 and the header length in bytes (a multiple of 4, 12..=60).
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[0] = (PWT_VERSION << 4) | ((len / 4) as u8 & 0x0f);
    }

    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[1] = flags;
    }

    /// Sets the protocol type.
    #[inline]
    pub fn set_protocol_type(&mut self, ty: u16) {
        set_be16(self.buffer.as_mut(), 2, ty);
    }

    /// Sets the tenant id.
    #[inline]
    pub fn set_tenant_id(&mut self, id: u32) {
        set_be32(self.buffer.as_mut(), 4, id);
    }

    /// Sets the flow entropy.
    #[inline]
    pub fn set_flow_entropy(&mut self, entropy: u16) {
        set_be16(self.buffer.as_mut(), 8, entropy);
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, csum: u16) {
        set_be16(self.buffer.as_mut(), 10, csum);
    }

    /// Computes and stores the header checksum (extensions included).
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::sum(self.header()));
        self.set_checksum(c);
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header().len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// A PWT header as a value (extensions are skipped on parse; emit writes none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PwtRepr {
    /// Flags ([`PWT_FLAG_OAM`]; others reserved).
    pub flags: u8,
    /// Protocol type of the payload (0x6558 = Ethernet).
    pub protocol_type: u16,
    /// Tenant id.
    pub tenant_id: u32,
    /// Flow entropy.
    pub flow_entropy: u16,
}

impl PwtRepr {
    /// Reads a header; errors with `BadChecksum` if its checksum does not verify.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &PwtPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::BadChecksum { layer: LAYER });
        }
        Ok(Self {
            flags: packet.flags(),
            protocol_type: packet.protocol_type(),
            tenant_id: packet.tenant_id(),
            flow_entropy: packet.flow_entropy(),
        })
    }

    /// True for a control (OAM) packet.
    #[inline]
    pub fn oam(&self) -> bool {
        self.flags & PWT_FLAG_OAM != 0
    }

    /// Bytes `emit` writes: [`PWT_HEADER_LEN`].
    #[inline]
    pub fn buffer_len(&self) -> usize {
        PWT_HEADER_LEN
    }

    /// Writes the header with its checksum. Errors (writing nothing) if the buffer is
    /// shorter than the header.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut PwtPacket<T>,
    ) -> Result<(), WireError> {
        need(LAYER, packet.buffer.as_ref(), PWT_HEADER_LEN)?;
        packet.set_header_len(PWT_HEADER_LEN);
        packet.set_flags(self.flags);
        packet.set_protocol_type(self.protocol_type);
        packet.set_tenant_id(self.tenant_id);
        packet.set_flow_entropy(self.flow_entropy);
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethertype;

    fn repr() -> PwtRepr {
        PwtRepr {
            flags: 0,
            protocol_type: ethertype::TEB,
            tenant_id: 0x0102_0304,
            flow_entropy: 0xbeef,
        }
    }

    #[test]
    fn golden_layout_and_checksum() {
        let mut buf = [0u8; 12];
        repr()
            .emit(&mut PwtPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        // 0x1300 + 0x6558 + 0x0102 + 0x0304 + 0xbeef = 0x13b4d -> fold 0x3b4e -> !0xc4b1
        assert_eq!(
            buf,
            [0x13, 0x00, 0x65, 0x58, 0x01, 0x02, 0x03, 0x04, 0xbe, 0xef, 0xc4, 0xb1]
        );
        let p = PwtPacket::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(PwtRepr::parse(&p), Ok(repr()));
    }

    #[test]
    fn any_single_bit_flip_in_the_header_is_caught() {
        let mut buf = [0u8; 14];
        PwtRepr {
            flags: PWT_FLAG_OAM,
            ..repr()
        }
        .emit(&mut PwtPacket::new_unchecked(&mut buf[..]))
        .unwrap();
        assert!(PwtRepr::parse(&PwtPacket::new_checked(&buf[..]).unwrap())
            .unwrap()
            .oam());
        for bit in 0..96 {
            let mut b = buf;
            b[bit / 8] ^= 1 << (bit % 8);
            let r = PwtPacket::new_checked(&b[..]).and_then(|p| PwtRepr::parse(&p));
            assert!(r.is_err(), "bit {bit}");
        }
        // The payload is not covered.
        let mut b = buf;
        b[13] ^= 0xff;
        assert!(PwtRepr::parse(&PwtPacket::new_checked(&b[..]).unwrap()).is_ok());
    }

    #[test]
    fn extensions_are_checked_then_skipped() {
        let mut buf = [0u8; 24];
        repr()
            .emit(&mut PwtPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        let mut p = PwtPacket::new_checked(&mut buf[..]).unwrap();
        p.set_header_len(20);
        p.fill_checksum();
        p.payload_mut().copy_from_slice(b"ETH!");
        assert_eq!(
            (p.header_len(), p.extensions().len(), p.payload()),
            (20, 8, &b"ETH!"[..])
        );
        assert_eq!(PwtRepr::parse(&p), Ok(repr()));
        buf[15] = 1; // corrupt an extension word
        assert_eq!(
            PwtRepr::parse(&PwtPacket::new_checked(&buf[..]).unwrap()),
            Err(WireError::BadChecksum { layer: "pwt" })
        );
        assert_eq!(
            PwtPacket::new_checked(&buf[..19]),
            Err(WireError::OptionsOverflow { layer: "pwt" })
        );
    }

    #[test]
    fn header_errors() {
        let mut buf = [0u8; 12];
        repr()
            .emit(&mut PwtPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        assert!(matches!(
            PwtPacket::new_checked(&buf[..11]),
            Err(WireError::Truncated { .. })
        ));
        let mut b = buf;
        b[0] = 0x23;
        assert_eq!(
            PwtPacket::new_checked(&b[..]),
            Err(WireError::BadVersion {
                layer: "pwt",
                version: 2
            })
        );
        b[0] = 0x12;
        assert!(matches!(
            PwtPacket::new_checked(&b[..]),
            Err(WireError::BadLength { field: "hlen", .. })
        ));
        assert!(repr()
            .emit(&mut PwtPacket::new_unchecked(&mut buf[..11]))
            .is_err());
    }
}
