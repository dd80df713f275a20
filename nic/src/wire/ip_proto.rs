//! IP protocol numbers (IPv4 protocol, IPv6 next header), per the IANA registry.

/// IPv6 hop-by-hop options (extension header).
pub const HOPOPT: u8 = 0;
/// ICMP.
pub const ICMP: u8 = 1;
/// IPv4 in IP.
pub const IPIP: u8 = 4;
/// TCP.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// IPv6 in IP.
pub const IPV6: u8 = 41;
/// IPv6 routing header (extension header).
pub const IPV6_ROUTE: u8 = 43;
/// IPv6 fragment header (extension header).
pub const IPV6_FRAG: u8 = 44;
/// GRE.
pub const GRE: u8 = 47;
/// ESP (IPsec payload; opaque).
pub const ESP: u8 = 50;
/// AH (IPsec authentication header; an extension header in IPv6).
pub const AH: u8 = 51;
/// ICMPv6.
pub const ICMPV6: u8 = 58;
/// IPv6 "no next header".
pub const IPV6_NONXT: u8 = 59;
/// IPv6 destination options (extension header).
pub const IPV6_OPTS: u8 = 60;
