//! Wire formats: zero-copy typed *views* over bytes, kept apart from validated
//! *values* (the smoltcp split).
//!
//! - A view (`Ipv4Packet<T>`, `UdpPacket<T>`, ...) wraps any `T: AsRef<[u8]>`.
//!   `new_checked` validates lengths (and versions) once; after that no accessor can
//!   panic or read out of bounds, and variable-length accessors (`payload`,
//!   `options`) stay in bounds even if a setter later rewrites a length field.
//!   Setters live on `T: AsMut<[u8]>`. `new_unchecked` skips the check, for emitting
//!   into a buffer you sized yourself.
//! - A value (`Ipv4Repr`, `UdpRepr`, ...) is a plain `Copy` struct. `Repr::parse(&view)`
//!   validates semantics (checksums, flags, fragments) and never panics, even on an
//!   unchecked view; `repr.emit(&mut view)` writes the header and returns a
//!   [`WireError`] instead of panicking when the buffer is short or a field does not
//!   fit; `buffer_len()` is the length to allocate.
//!
//! Nothing here allocates. Multi-byte fields are big-endian, read through fixed
//! windows (`u16::from_be_bytes`).
//!
//! ```
//! use std::net::Ipv4Addr;
//! use pipewright_nic::wire::*;
//!
//! // Build UDP-in-IPv4 ...
//! let ip = Ipv4Repr {
//!     src: Ipv4Addr::new(10, 0, 0, 1),
//!     dst: Ipv4Addr::new(10, 0, 0, 2),
//!     protocol: ip_proto::UDP,
//!     ttl: 64,
//!     tos: 0,
//!     ident: 1,
//!     dont_frag: true,
//!     payload_len: 8 + 5,
//! };
//! let udp = UdpRepr { src_port: 40_000, dst_port: VXLAN_PORT, payload_len: 5 };
//! let mut buf = vec![0u8; ip.buffer_len()];
//! ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]))?;
//! let mut u = UdpPacket::new_unchecked(&mut buf[ip.header_len()..]);
//! udp.emit(&mut u)?;
//! u.payload_mut().copy_from_slice(b"hello");
//! u.fill_checksum_v4(ip.src, ip.dst);
//!
//! // ... and read it back.
//! let p = Ipv4Packet::new_checked(&buf[..])?;
//! assert_eq!(Ipv4Repr::parse(&p)?, ip);
//! let u = UdpPacket::new_checked(p.payload())?;
//! assert!(u.verify_checksum_v4(ip.src, ip.dst));
//! assert_eq!(u.payload(), b"hello");
//! # Ok::<(), WireError>(())
//! ```

mod arp;
pub mod checksum;
mod error;
mod ethernet;
mod field;
mod geneve;
mod geneve_opt;
pub mod ip_proto;
mod ipv4;
mod ipv6;
mod mac;
mod pwt;
mod tcp;
mod tcp_flags;
mod udp;
mod vxlan;

pub use arp::{ArpOp, ArpPacket, ArpRepr, ARP_LEN, HTYPE_ETHERNET};
pub use error::WireError;
pub use ethernet::{
    ethertype, EthernetFrame, EthernetRepr, MacAddr, ETHERNET_HEADER_LEN, VLAN_TAG_LEN,
};
pub use geneve::{
    GeneveOption, GeneveOptionList, GeneveOptions, GenevePacket, GeneveRepr, GENEVE_HEADER_LEN,
    GENEVE_MAX_OPTIONS_LEN, GENEVE_MAX_VNI, GENEVE_PORT,
};
pub use ipv4::{Ipv4Packet, Ipv4Repr, IPV4_HEADER_LEN};
pub use ipv6::{Ipv6Packet, Ipv6Repr, IPV6_HEADER_LEN, MAX_EXT_HEADERS};
pub use pwt::{PwtPacket, PwtRepr, PWT_FLAG_OAM, PWT_HEADER_LEN, PWT_PORT, PWT_VERSION};
pub use tcp::{TcpFlags, TcpPacket, TcpRepr, TCP_HEADER_LEN};
pub use udp::{UdpPacket, UdpRepr, UDP_HEADER_LEN};
pub use vxlan::{
    VxlanPacket, VxlanRepr, VXLAN_FLAG_I, VXLAN_HEADER_LEN, VXLAN_MAX_VNI, VXLAN_PORT,
};
