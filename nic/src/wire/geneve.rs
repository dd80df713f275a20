//! Geneve headers (RFC 8926) and their option TLVs.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Variable-Length Options                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! Option:
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Option Class         |      Type     |R|R|R| Length  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Variable-Length Option Data                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//! Opt Len and an option's Length count 4-byte words (an option's Length excludes
//! its own 4-byte header). The high bit of an option's Type marks it critical.
//!
//! A [`GeneveRepr`] keeps its options inline in a [`GeneveOptionList`]: the raw,
//! validated TLV bytes, at most [`GeneveOptionList::CAPACITY`] (64) bytes, so the value
//! is `Copy` and never allocates (an encap template can live in a rule table). Packets
//! with a bigger option area still view and decapsulate fine through
//! [`GenevePacket`]; only `GeneveRepr::parse` rejects them as `Unsupported`.

use super::field::{be16, be32, need, set_be16, set_be32, view_constructors};
pub use super::geneve_opt::{GeneveOption, GeneveOptionList, GeneveOptions};
use super::WireError;

pub(crate) const LAYER: &str = "geneve";

/// The IANA UDP destination port for Geneve.
pub const GENEVE_PORT: u16 = 6081;
/// Length of the fixed Geneve header.
pub const GENEVE_HEADER_LEN: usize = 8;
/// The largest option area (63 words).
pub const GENEVE_MAX_OPTIONS_LEN: usize = 252;
/// The largest VNI (24 bits).
pub const GENEVE_MAX_VNI: u32 = 0x00ff_ffff;

/// A view of a Geneve header, its options and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenevePacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GenevePacket<T> {
    view_constructors!(check_len, GENEVE_HEADER_LEN);

    /// Checks the version (0) and that header and option area fit in the buffer.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        need(LAYER, b, GENEVE_HEADER_LEN)?;
        if self.version() != 0 {
            return Err(WireError::BadVersion {
                layer: LAYER,
                version: self.version(),
            });
        }
        if self.header_len() > b.len() {
            return Err(WireError::OptionsOverflow { layer: LAYER });
        }
        Ok(())
    }

    /// Version (0).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 6
    }

    /// Option area length in 4-byte words.
    #[inline]
    pub fn opt_len(&self) -> u8 {
        self.buffer.as_ref()[0] & 0x3f
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        GENEVE_HEADER_LEN + usize::from(self.opt_len()) * 4
    }

    /// The O bit: a control (OAM) packet.
    #[inline]
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[1] & 0x80 != 0
    }

    /// The C bit: critical options are present.
    #[inline]
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[1] & 0x40 != 0
    }

    /// Protocol type of the payload (an EtherType; 0x6558 = Ethernet).
    #[inline]
    pub fn protocol_type(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// Virtual network identifier (24 bits).
    #[inline]
    pub fn vni(&self) -> u32 {
        be32(self.buffer.as_ref(), 4) >> 8
    }

    /// End of the header, clamped to the buffer.
    #[inline]
    fn end(&self) -> usize {
        self.header_len().min(self.buffer.as_ref().len())
    }

    /// The raw option area.
    #[inline]
    pub fn options_bytes(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(GENEVE_HEADER_LEN..self.end())
            .unwrap_or(&[])
    }

    /// The option TLVs.
    #[inline]
    pub fn options(&self) -> GeneveOptions<'_> {
        GeneveOptions::new(self.options_bytes())
    }

    /// The payload after the options.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.end()..]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> GenevePacket<&'a T> {
    /// The payload, borrowed for as long as the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let end = self.end();
        &self.buffer.as_ref()[end..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GenevePacket<T> {
    /// Sets version 0 and the option length in words (low 6 bits of `words`).
    #[inline]
    pub fn set_opt_len(&mut self, words: u8) {
        self.buffer.as_mut()[0] = words & 0x3f;
    }

    /// Sets the O and C bits and clears the reserved bits.
    #[inline]
    pub fn set_flags(&mut self, oam: bool, critical: bool) {
        self.buffer.as_mut()[1] = (u8::from(oam) << 7) | (u8::from(critical) << 6);
    }

    /// Sets the protocol type.
    #[inline]
    pub fn set_protocol_type(&mut self, ty: u16) {
        set_be16(self.buffer.as_mut(), 2, ty);
    }

    /// Sets the VNI (low 24 bits of `vni`) and clears the reserved byte after it.
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        set_be32(self.buffer.as_mut(), 4, (vni & GENEVE_MAX_VNI) << 8);
    }

    /// The raw option area, writable.
    #[inline]
    pub fn options_bytes_mut(&mut self) -> &mut [u8] {
        let end = self.end();
        self.buffer
            .as_mut()
            .get_mut(GENEVE_HEADER_LEN..end)
            .unwrap_or_default()
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.end();
        &mut self.buffer.as_mut()[end..]
    }
}

/// A Geneve header as a value, options inline (RFC 8926; parse with
/// [`GenevePacket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneveRepr {
    /// The O bit (control packet).
    pub oam: bool,
    /// The C bit, written as given (set it when `options.has_critical()`).
    pub critical: bool,
    /// Protocol type of the payload.
    pub protocol_type: u16,
    /// Virtual network identifier (24 bits).
    pub vni: u32,
    /// Options.
    pub options: GeneveOptionList,
}

impl GeneveRepr {
    /// Reads a header and its options; errors if a TLV overflows the option area
    /// (`OptionsOverflow`) or the area exceeds [`GeneveOptionList::CAPACITY`]
    /// (`Unsupported`).
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &GenevePacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(Self {
            oam: packet.oam(),
            critical: packet.critical(),
            protocol_type: packet.protocol_type(),
            vni: packet.vni(),
            options: GeneveOptionList::from_wire(packet.options_bytes())?,
        })
    }

    /// Header length `emit` writes, options included.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        GENEVE_HEADER_LEN + self.options.as_bytes().len()
    }

    /// Writes the header and options. Errors (writing nothing) if the buffer is too
    /// short or the VNI is wider than 24 bits.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut GenevePacket<T>,
    ) -> Result<(), WireError> {
        if self.vni > GENEVE_MAX_VNI {
            return Err(WireError::BadField {
                layer: LAYER,
                field: "vni",
            });
        }
        let opts = self.options.as_bytes();
        need(
            LAYER,
            packet.buffer.as_ref(),
            GENEVE_HEADER_LEN + opts.len(),
        )?;
        packet.set_opt_len((opts.len() / 4) as u8);
        packet.set_flags(self.oam, self.critical);
        packet.set_protocol_type(self.protocol_type);
        packet.set_vni(self.vni);
        packet.options_bytes_mut().copy_from_slice(opts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethertype;

    fn repr() -> GeneveRepr {
        let mut options = GeneveOptionList::new();
        options
            .push(0x0102, 0x80, &[0xde, 0xad, 0xbe, 0xef])
            .unwrap();
        GeneveRepr {
            oam: false,
            critical: true,
            protocol_type: ethertype::TEB,
            vni: 0x0a_0b0c,
            options,
        }
    }

    #[test]
    fn golden_rfc8926_layout() {
        let mut buf = [0u8; 16];
        repr()
            .emit(&mut GenevePacket::new_unchecked(&mut buf[..]))
            .unwrap();
        let expect = [
            0x02, 0x40, 0x65, 0x58, 0x0a, 0x0b, 0x0c, 0x00, 0x01, 0x02, 0x80, 0x01, 0xde, 0xad,
            0xbe, 0xef,
        ];
        assert_eq!(buf, expect);
        let p = GenevePacket::new_checked(&buf[..]).unwrap();
        assert_eq!(GeneveRepr::parse(&p).unwrap(), repr());
        let opt = p.options().next().unwrap().unwrap();
        assert!(opt.critical() && repr().options.has_critical());
        assert_eq!(
            (opt.class, opt.ty, opt.data),
            (0x0102, 0x80, &[0xde, 0xad, 0xbe, 0xef][..])
        );
        assert_eq!(format!("{:?}", repr().options).matches("class").count(), 1);
    }

    #[test]
    fn no_options_payload_and_oam() {
        let r = GeneveRepr {
            oam: true,
            critical: false,
            options: GeneveOptionList::new(),
            ..repr()
        };
        let mut buf = [0u8; 11];
        r.emit(&mut GenevePacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf[8..].copy_from_slice(b"eth");
        assert_eq!(&buf[..2], &[0x00, 0x80]);
        let p = GenevePacket::new_checked(&buf[..]).unwrap();
        assert_eq!(GeneveRepr::parse(&p).unwrap(), r);
        assert_eq!(
            (p.payload(), p.into_payload(), p.options().count()),
            (&b"eth"[..], &b"eth"[..], 0)
        );
    }

    #[test]
    fn tlv_overflow_is_a_typed_error() {
        // Opt Len 2 (8 bytes); the option claims 2 words of data (12 bytes).
        let buf = [
            0x02, 0x00, 0x65, 0x58, 0, 0, 1, 0, 0x01, 0x02, 0x03, 0x02, 1, 2, 3, 4,
        ];
        let p = GenevePacket::new_checked(&buf[..]).unwrap();
        let all: Vec<_> = p.options().collect();
        assert_eq!(
            all,
            vec![Err(WireError::OptionsOverflow { layer: "geneve" })]
        );
        assert_eq!(
            GeneveRepr::parse(&p),
            Err(WireError::OptionsOverflow { layer: "geneve" })
        );
        // An area shorter than a TLV header overflows too.
        let all: Vec<_> = GeneveOptions::new(&[1, 2, 3]).collect();
        assert_eq!(
            all,
            vec![Err(WireError::OptionsOverflow { layer: "geneve" })]
        );
    }

    #[test]
    fn header_errors() {
        let mut buf = [0u8; 16];
        repr()
            .emit(&mut GenevePacket::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(
            GenevePacket::new_checked(&buf[..15]),
            Err(WireError::OptionsOverflow { layer: "geneve" })
        );
        assert!(matches!(
            GenevePacket::new_checked(&buf[..7]),
            Err(WireError::Truncated { .. })
        ));
        let mut b = buf;
        b[0] |= 0x40;
        assert_eq!(
            GenevePacket::new_checked(&b[..]),
            Err(WireError::BadVersion {
                layer: "geneve",
                version: 1
            })
        );
        assert!(repr()
            .emit(&mut GenevePacket::new_unchecked(&mut buf[..15]))
            .is_err());
        let r = GeneveRepr {
            vni: 1 << 24,
            ..repr()
        };
        assert!(r
            .emit(&mut GenevePacket::new_unchecked(&mut buf[..]))
            .is_err());
    }
}
