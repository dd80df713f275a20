//! Inner frames, tunnel specs and the encapsulated cases built from them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pipewright_nic::tunnel::{flow_hash, EncapTemplate, TunnelKind, TunnelOption, TunnelSpec};
use pipewright_nic::wire::*;
use pipewright_nic::Frame;

// ---------------------------------------------------------------- inner frames

pub(crate) const IN_MAC_A: MacAddr = MacAddr([0x02, 0x10, 0, 0, 0, 0x0a]);
pub(crate) const IN_MAC_B: MacAddr = MacAddr([0x02, 0x10, 0, 0, 0, 0x0b]);
pub(crate) const TCP_PAYLOAD: &[u8] = b"pipewright inner TCP payload, 40 bytes..";
pub(crate) const UDP_PAYLOAD: &[u8] = b"inner udp datagram";

/// What tshark must find in the inner frame.
#[derive(Debug, Clone)]
pub(crate) enum InnerKind {
    Tcp4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
    },
    Udp4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
    },
    Udp6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        sport: u16,
        dport: u16,
    },
    Arp {
        sender: Ipv4Addr,
        target: Ipv4Addr,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Inner {
    pub(crate) name: &'static str,
    pub(crate) bytes: Vec<u8>,
    pub(crate) kind: InnerKind,
}

pub(crate) fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let r = EthernetRepr {
        dst: IN_MAC_B,
        src: IN_MAC_A,
        vlan: None,
        inner_vlan: None,
        ethertype,
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut EthernetFrame::new_unchecked(&mut b[..]))
        .unwrap();
    b.extend_from_slice(payload);
    b
}

pub(crate) fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let r = Ipv4Repr {
        src,
        dst,
        protocol,
        ttl: 63,
        tos: 0,
        ident: 0x4242,
        dont_frag: true,
        payload_len: l4.len(),
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut Ipv4Packet::new_unchecked(&mut b[..])).unwrap();
    b[r.header_len()..].copy_from_slice(l4);
    b
}

pub(crate) fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4: &[u8]) -> Vec<u8> {
    let r = Ipv6Repr {
        src,
        dst,
        next_header,
        hop_limit: 63,
        traffic_class: 0,
        flow_label: 0x12345,
        payload_len: l4.len(),
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut Ipv6Packet::new_unchecked(&mut b[..])).unwrap();
    b[r.header_len()..].copy_from_slice(l4);
    b
}

pub(crate) fn udp(sport: u16, dport: u16, payload: &[u8], addrs: (IpAddr, IpAddr)) -> Vec<u8> {
    let r = UdpRepr {
        src_port: sport,
        dst_port: dport,
        payload_len: payload.len(),
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut UdpPacket::new_unchecked(&mut b[..])).unwrap();
    let mut p = UdpPacket::new_unchecked(&mut b[..]);
    p.payload_mut().copy_from_slice(payload);
    match addrs {
        (IpAddr::V4(s), IpAddr::V4(d)) => p.fill_checksum_v4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => p.fill_checksum_v6(s, d),
        _ => unreachable!("mixed address families"),
    }
    b
}

pub(crate) fn inner_tcp4() -> Inner {
    let (src, dst) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2));
    let (sport, dport) = (40_001, 40_443);
    let r = TcpRepr {
        src_port: sport,
        dst_port: dport,
        seq: 1000,
        ack: 2000,
        flags: TcpFlags::ACK | TcpFlags::PSH,
        window: 65_000,
        urgent: 0,
    };
    let mut t = vec![0; r.buffer_len() + TCP_PAYLOAD.len()];
    r.emit(&mut TcpPacket::new_unchecked(&mut t[..])).unwrap();
    let mut p = TcpPacket::new_unchecked(&mut t[..]);
    p.payload_mut().copy_from_slice(TCP_PAYLOAD);
    p.fill_checksum_v4(src, dst);
    Inner {
        name: "ipv4/tcp",
        bytes: eth(ethertype::IPV4, &ipv4(src, dst, ip_proto::TCP, &t)),
        kind: InnerKind::Tcp4 {
            src,
            dst,
            sport,
            dport,
        },
    }
}

pub(crate) fn inner_udp4() -> Inner {
    let (src, dst) = (Ipv4Addr::new(10, 2, 0, 1), Ipv4Addr::new(10, 2, 0, 2));
    let (sport, dport) = (41_000, 41_001);
    let u = udp(sport, dport, UDP_PAYLOAD, (src.into(), dst.into()));
    Inner {
        name: "ipv4/udp",
        bytes: eth(ethertype::IPV4, &ipv4(src, dst, ip_proto::UDP, &u)),
        kind: InnerKind::Udp4 {
            src,
            dst,
            sport,
            dport,
        },
    }
}

pub(crate) fn inner_udp6() -> Inner {
    let (src, dst): (Ipv6Addr, Ipv6Addr) =
        ("fd00:1::1".parse().unwrap(), "fd00:2::2".parse().unwrap());
    let (sport, dport) = (42_000, 42_001);
    let u = udp(sport, dport, UDP_PAYLOAD, (src.into(), dst.into()));
    Inner {
        name: "ipv6/udp",
        bytes: eth(ethertype::IPV6, &ipv6(src, dst, ip_proto::UDP, &u)),
        kind: InnerKind::Udp6 {
            src,
            dst,
            sport,
            dport,
        },
    }
}

pub(crate) fn inner_arp() -> Inner {
    let (sender, target) = (Ipv4Addr::new(10, 3, 0, 1), Ipv4Addr::new(10, 3, 0, 2));
    let r = ArpRepr {
        op: ArpOp::Request,
        sender_mac: IN_MAC_A,
        sender_ip: sender,
        target_mac: MacAddr::ZERO,
        target_ip: target,
    };
    let mut b = vec![0; ARP_LEN];
    r.emit(&mut ArpPacket::new_unchecked(&mut b[..])).unwrap();
    let mut bytes = eth(ethertype::ARP, &b);
    bytes[0..6].copy_from_slice(&MacAddr::BROADCAST.octets());
    Inner {
        name: "arp",
        bytes,
        kind: InnerKind::Arp { sender, target },
    }
}

pub(crate) fn inners() -> Vec<Inner> {
    vec![inner_tcp4(), inner_udp4(), inner_udp6(), inner_arp()]
}

// ---------------------------------------------------------------- tunnels

pub(crate) const OUTER_SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub(crate) const OUTER_DST4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
pub(crate) const OUTER_SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x10);
pub(crate) const OUTER_DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x20);
pub(crate) const OUTER_TTL: u8 = 17;

pub(crate) fn spec(kind: TunnelKind, v6: bool, vni: u32, options: Vec<TunnelOption>) -> TunnelSpec {
    let (outer_src, outer_dst): (IpAddr, IpAddr) = if v6 {
        (OUTER_SRC6.into(), OUTER_DST6.into())
    } else {
        (OUTER_SRC4.into(), OUTER_DST4.into())
    };
    TunnelSpec {
        kind,
        vni,
        outer_src,
        outer_dst,
        udp_dst_port: kind.default_port(),
        df: true,
        ttl: OUTER_TTL,
        outer_src_mac: [0x02, 0xee, 0, 0, 0, 0x01],
        outer_dst_mac: [0x02, 0xee, 0, 0, 0, 0x02],
        options,
    }
}

pub(crate) fn critical_option() -> TunnelOption {
    TunnelOption {
        class: 0x0102,
        kind: 0x80,
        data: vec![0xde, 0xad, 0xbe, 0xef],
    }
}

pub(crate) fn plain_option() -> TunnelOption {
    TunnelOption {
        class: 0xffff,
        kind: 0x01,
        data: vec![0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
    }
}

pub(crate) struct Tunnel {
    pub(crate) name: &'static str,
    pub(crate) spec: TunnelSpec,
}

pub(crate) fn tunnels() -> Vec<Tunnel> {
    vec![
        Tunnel {
            name: "vxlan/ipv4",
            spec: spec(TunnelKind::Vxlan, false, 5001, vec![]),
        },
        Tunnel {
            name: "vxlan/ipv6",
            spec: spec(TunnelKind::Vxlan, true, 0xfe_dcba, vec![]),
        },
        Tunnel {
            name: "geneve/ipv4",
            spec: spec(TunnelKind::Geneve, false, 0x00_abcd, vec![]),
        },
        Tunnel {
            name: "geneve+opt/ipv4",
            spec: spec(
                TunnelKind::Geneve,
                false,
                0x12_3456,
                vec![critical_option()],
            ),
        },
        Tunnel {
            name: "geneve+2opts/ipv6",
            spec: spec(
                TunnelKind::Geneve,
                true,
                0xff_fffe,
                vec![critical_option(), plain_option()],
            ),
        },
    ]
}

/// One encapsulated frame and what it was built from.
pub(crate) struct Case<'a> {
    pub(crate) tunnel: &'a Tunnel,
    pub(crate) inner: &'a Inner,
    pub(crate) ip_id: u16,
    pub(crate) bytes: Vec<u8>,
}

pub(crate) fn encapsulate(template: &EncapTemplate, inner: &[u8], ip_id: u16) -> Vec<u8> {
    let mut f = Frame::from_bytes(inner);
    template.encap(&mut f, ip_id, flow_hash(inner)).unwrap();
    assert_eq!(f.len(), inner.len() + template.overhead());
    f.data().to_vec()
}
