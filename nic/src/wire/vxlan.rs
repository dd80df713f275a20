//! VXLAN headers (RFC 7348).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//! The payload is an Ethernet frame. The I flag must be set; reserved bits are
//! ignored on parse and written as zero on emit.

use super::field::{be32, need, set_be32, view_constructors};
use super::WireError;

const LAYER: &str = "vxlan";

/// The IANA UDP destination port for VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// Length of a VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid.
pub const VXLAN_FLAG_I: u8 = 0x08;
/// The largest VNI (24 bits).
pub const VXLAN_MAX_VNI: u32 = 0x00ff_ffff;

/// A view of a VXLAN header and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    view_constructors!(check_len, VXLAN_HEADER_LEN);

    /// Checks that the buffer holds the header.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        need(LAYER, self.buffer.as_ref(), VXLAN_HEADER_LEN)
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// True when the I flag is set.
    #[inline]
    pub fn vni_valid(&self) -> bool {
        self.flags() & VXLAN_FLAG_I != 0
    }

    /// The VXLAN network identifier (24 bits).
    #[inline]
    pub fn vni(&self) -> u32 {
        be32(self.buffer.as_ref(), 4) >> 8
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[VXLAN_HEADER_LEN..]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> VxlanPacket<&'a T> {
    /// The inner frame, borrowed for as long as the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        &self.buffer.as_ref()[VXLAN_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[0] = flags;
    }

    /// Sets the VNI (low 24 bits of `vni`) and clears the reserved byte after it.
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        set_be32(self.buffer.as_mut(), 4, (vni & VXLAN_MAX_VNI) << 8);
    }

    /// The inner frame, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[VXLAN_HEADER_LEN..]
    }
}

/// A VXLAN header as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanRepr {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads a header; errors if the I flag is clear.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.vni_valid() {
            return Err(WireError::BadField {
                layer: LAYER,
                field: "flags",
            });
        }
        Ok(Self { vni: packet.vni() })
    }

    /// Bytes `emit` writes: [`VXLAN_HEADER_LEN`].
    #[inline]
    pub fn buffer_len(&self) -> usize {
        VXLAN_HEADER_LEN
    }

    /// Writes the header (I flag set, reserved bits zero). Errors (writing nothing)
    /// if the buffer is shorter than the header or the VNI is wider than 24 bits.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut VxlanPacket<T>,
    ) -> Result<(), WireError> {
        if self.vni > VXLAN_MAX_VNI {
            return Err(WireError::BadField {
                layer: LAYER,
                field: "vni",
            });
        }
        need(LAYER, packet.buffer.as_ref(), VXLAN_HEADER_LEN)?;
        set_be32(packet.buffer.as_mut(), 0, u32::from(VXLAN_FLAG_I) << 24);
        packet.set_vni(self.vni);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_rfc7348_layout() {
        let mut buf = [0xffu8; 8];
        VxlanRepr { vni: 0x12_3456 }
            .emit(&mut VxlanPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(buf, [0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00]);
    }

    #[test]
    fn parse_ignores_reserved_bits_and_needs_i() {
        let buf = [0xff, 0xff, 0xff, 0xff, 0xab, 0xcd, 0xef, 0xff, 0xee];
        let p = VxlanPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Ok(VxlanRepr { vni: 0xab_cdef }));
        assert_eq!((p.payload(), p.into_payload()), (&[0xee][..], &[0xee][..]));
        let mut no_i = buf;
        no_i[0] = 0xf7;
        let p = VxlanPacket::new_checked(&no_i[..]).unwrap();
        assert_eq!(
            VxlanRepr::parse(&p),
            Err(WireError::BadField {
                layer: "vxlan",
                field: "flags"
            })
        );
        assert!(VxlanPacket::new_checked(&buf[..7]).is_err());
    }

    #[test]
    fn emit_errors() {
        let mut buf = [0u8; 8];
        assert!(VxlanRepr { vni: 1 << 24 }
            .emit(&mut VxlanPacket::new_unchecked(&mut buf[..]))
            .is_err());
        assert!(VxlanRepr { vni: 1 }
            .emit(&mut VxlanPacket::new_unchecked(&mut buf[..7]))
            .is_err());
        assert_eq!(buf, [0; 8]);
    }
}
