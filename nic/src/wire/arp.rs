//! ARP (RFC 826) for Ethernet hardware and IPv4 protocol addresses only.
//!
//! ```text
//! htype(2)=1 ptype(2)=0x0800 hlen(1)=6 plen(1)=4 op(2)
//! sender_mac(6) sender_ip(4) target_mac(6) target_ip(4)      = 28 bytes
//! ```
//! Other hardware or protocol types are rejected with [`WireError::Unsupported`].

use std::net::Ipv4Addr;

use super::ethernet::{ethertype, MacAddr};
use super::field::{array, be16, need, set_be16, view_constructors};
use super::WireError;

const LAYER: &str = "arp";

/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;
/// ARP hardware type for Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;

/// An ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOp {
    /// Who has `target_ip`? (1)
    Request,
    /// `sender_ip` is at `sender_mac`. (2)
    Reply,
}

impl ArpOp {
    /// The wire value.
    #[inline]
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Request => 1,
            Self::Reply => 2,
        }
    }

    /// From a wire value, if it is a request or a reply.
    #[inline]
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Request),
            2 => Some(Self::Reply),
            _ => None,
        }
    }
}

/// A view of an ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    view_constructors!(check, ARP_LEN);

    /// Checks the length and the hardware/protocol types and sizes.
    #[inline]
    pub fn check(&self) -> Result<(), WireError> {
        need(LAYER, self.buffer.as_ref(), ARP_LEN)?;
        let unsupported = |field, value: u16| {
            Err(WireError::Unsupported {
                layer: LAYER,
                field,
                value: value.into(),
            })
        };
        if self.htype() != HTYPE_ETHERNET {
            return unsupported("htype", self.htype());
        }
        if self.ptype() != ethertype::IPV4 {
            return unsupported("ptype", self.ptype());
        }
        if self.hlen() != 6 {
            return unsupported("hlen", self.hlen().into());
        }
        if self.plen() != 4 {
            return unsupported("plen", self.plen().into());
        }
        Ok(())
    }

    /// Hardware type (1 = Ethernet).
    #[inline]
    pub fn htype(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }

    /// Protocol type (0x0800 = IPv4).
    #[inline]
    pub fn ptype(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// Hardware address length.
    #[inline]
    pub fn hlen(&self) -> u8 {
        self.buffer.as_ref()[4]
    }

    /// Protocol address length.
    #[inline]
    pub fn plen(&self) -> u8 {
        self.buffer.as_ref()[5]
    }

    /// Operation, raw.
    #[inline]
    pub fn op(&self) -> u16 {
        be16(self.buffer.as_ref(), 6)
    }

    /// Sender hardware address.
    #[inline]
    pub fn sender_mac(&self) -> MacAddr {
        MacAddr(array(self.buffer.as_ref(), 8))
    }

    /// Sender protocol address.
    #[inline]
    pub fn sender_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(array::<4>(self.buffer.as_ref(), 14))
    }

    /// Target hardware address.
    #[inline]
    pub fn target_mac(&self) -> MacAddr {
        MacAddr(array(self.buffer.as_ref(), 18))
    }

    /// Target protocol address.
    #[inline]
    pub fn target_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(array::<4>(self.buffer.as_ref(), 24))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes the Ethernet/IPv4 type and size fields.
    #[inline]
    pub fn set_ethernet_ipv4(&mut self) {
        let b = self.buffer.as_mut();
        set_be16(b, 0, HTYPE_ETHERNET);
        set_be16(b, 2, ethertype::IPV4);
        b[4] = 6;
        b[5] = 4;
    }

    /// Sets the operation.
    #[inline]
    pub fn set_op(&mut self, op: ArpOp) {
        set_be16(self.buffer.as_mut(), 6, op.to_u16());
    }

    /// Sets the sender hardware address.
    #[inline]
    pub fn set_sender_mac(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[8..14].copy_from_slice(&mac.0);
    }

    /// Sets the sender protocol address.
    #[inline]
    pub fn set_sender_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[14..18].copy_from_slice(&ip.octets());
    }

    /// Sets the target hardware address.
    #[inline]
    pub fn set_target_mac(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[18..24].copy_from_slice(&mac.0);
    }

    /// Sets the target protocol address.
    #[inline]
    pub fn set_target_ip(&mut self, ip: Ipv4Addr) {
        self.buffer.as_mut()[24..28].copy_from_slice(&ip.octets());
    }
}

/// An Ethernet/IPv4 ARP packet as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    /// Request or reply.
    pub op: ArpOp,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in a request).
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Reads a packet; errors on other hardware/protocol types or operations.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self, WireError> {
        packet.check()?;
        let op = ArpOp::from_u16(packet.op()).ok_or(WireError::Unsupported {
            layer: LAYER,
            field: "op",
            value: packet.op().into(),
        })?;
        Ok(Self {
            op,
            sender_mac: packet.sender_mac(),
            sender_ip: packet.sender_ip(),
            target_mac: packet.target_mac(),
            target_ip: packet.target_ip(),
        })
    }

    /// Bytes `emit` writes: [`ARP_LEN`].
    #[inline]
    pub fn buffer_len(&self) -> usize {
        ARP_LEN
    }

    /// Writes the packet; errors (writing nothing) if the buffer is too short.
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut ArpPacket<T>,
    ) -> Result<(), WireError> {
        need(LAYER, packet.buffer.as_ref(), ARP_LEN)?;
        packet.set_ethernet_ipv4();
        packet.set_op(self.op);
        packet.set_sender_mac(self.sender_mac);
        packet.set_sender_ip(self.sender_ip);
        packet.set_target_mac(self.target_mac);
        packet.set_target_ip(self.target_ip);
        Ok(())
    }

    /// The reply to this request from the owner of `target_ip` at `our_mac`, or
    /// `None` if this is not a request.
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// use pipewright_nic::wire::{ArpOp, ArpRepr, MacAddr};
    /// let req = ArpRepr {
    ///     op: ArpOp::Request,
    ///     sender_mac: MacAddr([2, 0, 0, 0, 0, 1]),
    ///     sender_ip: Ipv4Addr::new(10, 0, 0, 1),
    ///     target_mac: MacAddr::ZERO,
    ///     target_ip: Ipv4Addr::new(10, 0, 0, 2),
    /// };
    /// let rep = req.reply(MacAddr([2, 0, 0, 0, 0, 2])).unwrap();
    /// assert_eq!((rep.op, rep.sender_ip, rep.target_mac), (ArpOp::Reply, req.target_ip, req.sender_mac));
    /// ```
    #[inline]
    pub fn reply(&self, our_mac: MacAddr) -> Option<Self> {
        (self.op == ArpOp::Request).then_some(Self {
            op: ArpOp::Reply,
            sender_mac: our_mac,
            sender_ip: self.target_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ArpRepr {
        ArpRepr {
            op: ArpOp::Request,
            sender_mac: MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
            sender_ip: Ipv4Addr::new(192, 168, 1, 1),
            target_mac: MacAddr::ZERO,
            target_ip: Ipv4Addr::new(192, 168, 1, 2),
        }
    }

    #[test]
    fn golden_request() {
        let mut buf = [0u8; ARP_LEN];
        request()
            .emit(&mut ArpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        let expect = [
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55,
            192, 168, 1, 1, 0, 0, 0, 0, 0, 0, 192, 168, 1, 2,
        ];
        assert_eq!(buf, expect);
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap(),
            request()
        );
    }

    #[test]
    fn reply_round_trip() {
        let rep = request().reply(MacAddr([2, 0, 0, 0, 0, 9])).unwrap();
        assert!(rep.reply(MacAddr::ZERO).is_none());
        let mut buf = [0u8; 60]; // padded to the Ethernet minimum
        rep.emit(&mut ArpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap(),
            rep
        );
    }

    #[test]
    fn rejects_other_types_and_ops() {
        let mut buf = [0u8; ARP_LEN];
        request()
            .emit(&mut ArpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        for (at, v, field) in [
            (1, 6u8, "htype"),
            (2, 0x86, "ptype"),
            (4, 8, "hlen"),
            (5, 16, "plen"),
        ] {
            let mut b = buf;
            b[at] = v;
            match ArpPacket::new_checked(&b[..]) {
                Err(WireError::Unsupported { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
        let mut b = buf;
        b[7] = 3;
        let p = ArpPacket::new_checked(&b[..]).unwrap();
        assert!(matches!(
            ArpRepr::parse(&p),
            Err(WireError::Unsupported {
                field: "op",
                value: 3,
                ..
            })
        ));
        assert!(ArpPacket::new_checked(&buf[..27]).is_err());
        assert!(request()
            .emit(&mut ArpPacket::new_unchecked(&mut [0u8; 27][..]))
            .is_err());
    }
}
