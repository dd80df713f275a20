//! Ethernet II frames with up to two 802.1Q / 802.1ad VLAN tags.
//!
//! A frame starts `dst(6) src(6) type(2)`. When `type` is a tag protocol identifier
//! (0x8100 C-tag or 0x88a8 S-tag) a 2-byte TCI and the next type follow; a C-tag after
//! the first tag (QinQ) is recognised as well. [`EthernetFrame::vlan`] reports the
//! outer VLAN id, [`EthernetFrame::ethertype`] the innermost type.

use super::field::{array, be16, need, set_be16, view_constructors};
pub use super::mac::MacAddr;
use super::WireError;

/// EtherType values.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// Transparent Ethernet bridging (Ethernet inside a tunnel: Geneve, PWT, GRE).
    pub const TEB: u16 = 0x6558;
    /// 802.1Q customer VLAN tag (C-tag).
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (S-tag, the outer tag of QinQ).
    pub const QINQ: u16 = 0x88a8;
}

const LAYER: &str = "ethernet";

/// Length of an untagged Ethernet header.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Length of one VLAN tag.
pub const VLAN_TAG_LEN: usize = 4;

#[inline]
fn is_tpid(t: u16) -> bool {
    t == ethertype::VLAN || t == ethertype::QINQ
}

/// A view of an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    view_constructors!(check_len, ETHERNET_HEADER_LEN);

    /// Checks that the buffer holds the header, tags included.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        need(LAYER, b, ETHERNET_HEADER_LEN)?;
        if is_tpid(be16(b, 12)) {
            need(LAYER, b, ETHERNET_HEADER_LEN + VLAN_TAG_LEN)?;
            if be16(b, 16) == ethertype::VLAN {
                need(LAYER, b, ETHERNET_HEADER_LEN + 2 * VLAN_TAG_LEN)?;
            }
        }
        Ok(())
    }

    /// Number of VLAN tags (0..=2); a tag is only counted when the buffer holds it.
    #[inline]
    pub fn tag_count(&self) -> usize {
        let b = self.buffer.as_ref();
        if !is_tpid(be16(b, 12)) || b.len() < 18 {
            0
        } else if be16(b, 16) == ethertype::VLAN && b.len() >= 22 {
            2
        } else {
            1
        }
    }

    /// Header length: 14, 18 or 22 bytes.
    #[inline]
    pub fn header_len(&self) -> usize {
        ETHERNET_HEADER_LEN + VLAN_TAG_LEN * self.tag_count()
    }

    /// Destination MAC.
    #[inline]
    pub fn dst(&self) -> MacAddr {
        MacAddr(array(self.buffer.as_ref(), 0))
    }

    /// Source MAC.
    #[inline]
    pub fn src(&self) -> MacAddr {
        MacAddr(array(self.buffer.as_ref(), 6))
    }

    /// The EtherType of the payload (after any tags).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), self.header_len() - 2)
    }

    /// The outer tag protocol identifier (0x8100 or 0x88a8), if tagged.
    #[inline]
    pub fn outer_tpid(&self) -> Option<u16> {
        (self.tag_count() > 0).then(|| be16(self.buffer.as_ref(), 12))
    }

    /// The outer tag control information (PCP, DEI, VLAN id), if tagged.
    #[inline]
    pub fn vlan_tci(&self) -> Option<u16> {
        (self.tag_count() > 0).then(|| be16(self.buffer.as_ref(), 14))
    }

    /// The outer VLAN id (12 bits), if tagged.
    #[inline]
    pub fn vlan(&self) -> Option<u16> {
        self.vlan_tci().map(|tci| tci & 0x0fff)
    }

    /// The inner VLAN id of a double-tagged (QinQ) frame.
    #[inline]
    pub fn inner_vlan(&self) -> Option<u16> {
        (self.tag_count() == 2).then(|| be16(self.buffer.as_ref(), 18) & 0x0fff)
    }

    /// The bytes after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> EthernetFrame<&'a T> {
    /// The bytes after the header, borrowed for as long as the underlying buffer.
    #[inline]
    pub fn into_payload(self) -> &'a [u8] {
        let hl = self.header_len();
        &self.buffer.as_ref()[hl..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    #[inline]
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[0..6].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC.
    #[inline]
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[6..12].copy_from_slice(&mac.0);
    }

    /// Sets the EtherType of the payload (after any tags).
    #[inline]
    pub fn set_ethertype(&mut self, ty: u16) {
        let at = self.header_len() - 2;
        set_be16(self.buffer.as_mut(), at, ty);
    }

    /// Sets the outer VLAN id, keeping PCP and DEI; an error if the frame is untagged
    /// or `vid` is wider than 12 bits.
    #[inline]
    pub fn set_vlan(&mut self, vid: u16) -> Result<(), WireError> {
        let tci = self.vlan_tci().ok_or(WireError::BadField {
            layer: LAYER,
            field: "vlan",
        })?;
        if vid > 0x0fff {
            return Err(WireError::BadField {
                layer: LAYER,
                field: "vlan",
            });
        }
        set_be16(self.buffer.as_mut(), 14, (tci & 0xf000) | vid);
        Ok(())
    }

    /// The bytes after the header, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[hl..]
    }
}

/// An Ethernet header as a value.
///
/// Priority bits (PCP, DEI) are not kept; emit writes them as zero. A single tag is
/// emitted as a C-tag (0x8100), a double tag as S-tag 0x88a8 outside a C-tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// Outer VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// Inner VLAN id of a QinQ frame (requires `vlan`).
    pub inner_vlan: Option<u16>,
    /// EtherType of the payload.
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Reads the header of a checked frame.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self, WireError> {
        frame.check_len()?;
        Ok(Self {
            dst: frame.dst(),
            src: frame.src(),
            vlan: frame.vlan(),
            inner_vlan: frame.inner_vlan(),
            ethertype: frame.ethertype(),
        })
    }

    /// Header length this value emits (14, 18 or 22 bytes); the payload is the
    /// caller's, so this is also the buffer length `emit` needs.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        ETHERNET_HEADER_LEN
            + VLAN_TAG_LEN
                * (usize::from(self.vlan.is_some()) + usize::from(self.inner_vlan.is_some()))
    }

    /// Writes the header at the start of the frame's buffer.
    ///
    /// Errors (and writes nothing) if the buffer is shorter than
    /// [`buffer_len`](Self::buffer_len), a VLAN id is wider than 12 bits, or
    /// `inner_vlan` is set without `vlan`.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        frame: &mut EthernetFrame<T>,
    ) -> Result<(), WireError> {
        let bad = |field| WireError::BadField {
            layer: LAYER,
            field,
        };
        if self.vlan.is_some_and(|v| v > 0x0fff) {
            return Err(bad("vlan"));
        }
        if self.inner_vlan.is_some_and(|v| v > 0x0fff)
            || (self.inner_vlan.is_some() && self.vlan.is_none())
        {
            return Err(bad("inner_vlan"));
        }
        let b = frame.buffer.as_mut();
        need(LAYER, b, self.buffer_len())?;
        b[0..6].copy_from_slice(&self.dst.0);
        b[6..12].copy_from_slice(&self.src.0);
        match (self.vlan, self.inner_vlan) {
            (Some(outer), Some(inner)) => {
                set_be16(b, 12, ethertype::QINQ);
                set_be16(b, 14, outer);
                set_be16(b, 16, ethertype::VLAN);
                set_be16(b, 18, inner);
                set_be16(b, 20, self.ethertype);
            }
            (Some(vid), None) => {
                set_be16(b, 12, ethertype::VLAN);
                set_be16(b, 14, vid);
                set_be16(b, 16, self.ethertype);
            }
            _ => set_be16(b, 12, self.ethertype),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    const B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);

    fn repr(vlan: Option<u16>, inner_vlan: Option<u16>) -> EthernetRepr {
        EthernetRepr {
            dst: A,
            src: B,
            vlan,
            inner_vlan,
            ethertype: ethertype::IPV4,
        }
    }

    #[test]
    fn golden_untagged_tagged_qinq() {
        let mut buf = [0u8; 22];
        repr(None, None)
            .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(
            &buf[..14],
            &[2, 0, 0, 0, 0, 0x0a, 2, 0, 0, 0, 0, 0x0b, 0x08, 0x00]
        );

        repr(Some(100), None)
            .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(&buf[12..18], &[0x81, 0x00, 0x00, 0x64, 0x08, 0x00]);

        repr(Some(10), Some(20))
            .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(
            &buf[12..22],
            &[0x88, 0xa8, 0x00, 0x0a, 0x81, 0x00, 0x00, 0x14, 0x08, 0x00]
        );
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (f.vlan(), f.inner_vlan(), f.ethertype(), f.header_len()),
            (Some(10), Some(20), 0x0800, 22)
        );
    }

    #[test]
    fn round_trips_and_payload() {
        for r in [
            repr(None, None),
            repr(Some(4095), None),
            repr(Some(1), Some(2)),
        ] {
            let mut buf = vec![0u8; r.buffer_len() + 5];
            r.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]))
                .unwrap();
            buf[r.buffer_len()..].copy_from_slice(b"hello");
            let f = EthernetFrame::new_checked(&buf[..]).unwrap();
            assert_eq!(EthernetRepr::parse(&f).unwrap(), r);
            assert_eq!(f.payload(), b"hello");
            assert_eq!(f.into_payload(), b"hello");
        }
    }

    #[test]
    fn single_s_tag_and_pcp() {
        let mut buf = [0u8; 18];
        set_be16(&mut buf, 12, ethertype::QINQ);
        set_be16(&mut buf, 14, 0xe123); // PCP 7, VID 0x123
        set_be16(&mut buf, 16, ethertype::IPV6);
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        assert_eq!(
            (f.vlan(), f.inner_vlan(), f.ethertype(), f.outer_tpid()),
            (Some(0x123), None, 0x86dd, Some(0x88a8))
        );
        f.set_vlan(7).unwrap();
        assert_eq!(f.vlan_tci(), Some(0xe007));
        assert!(f.set_vlan(0x1000).is_err());
    }

    #[test]
    fn errors() {
        assert!(matches!(
            EthernetFrame::new_checked(&[0u8; 13][..]),
            Err(WireError::Truncated { needed: 14, .. })
        ));
        let mut buf = [0u8; 21];
        set_be16(&mut buf, 12, ethertype::VLAN);
        assert!(EthernetFrame::new_checked(&buf[..17]).is_err());
        set_be16(&mut buf, 16, ethertype::VLAN);
        assert!(matches!(
            EthernetFrame::new_checked(&buf[..]),
            Err(WireError::Truncated { needed: 22, .. })
        ));
        let mut small = [0u8; 17];
        assert!(repr(Some(1), None)
            .emit(&mut EthernetFrame::new_unchecked(&mut small[..]))
            .is_err());
        assert!(repr(Some(0x1000), None)
            .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]))
            .is_err());
        assert!(repr(None, Some(1))
            .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]))
            .is_err());
    }
}
