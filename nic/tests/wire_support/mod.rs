//! Shared by the `wire_*` integration tests: valid sample frames covering every
//! format and a full decoder through Ethernet, IP, UDP/TCP and the tunnels.
#![allow(dead_code)]

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use pipewright_nic::wire::*;

// ---------------------------------------------------------------- sample packets

pub(crate) const M1: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
pub(crate) const M2: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 2]);
pub(crate) const A4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(crate) const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub(crate) const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub(crate) const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

pub(crate) fn eth(vlan: Option<u16>, inner_vlan: Option<u16>, ty: u16, payload: &[u8]) -> Vec<u8> {
    let r = EthernetRepr {
        dst: M1,
        src: M2,
        vlan,
        inner_vlan,
        ethertype: ty,
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut EthernetFrame::new_unchecked(&mut b[..]))
        .unwrap();
    b.extend_from_slice(payload);
    b
}

pub(crate) fn arp() -> Vec<u8> {
    let r = ArpRepr {
        op: ArpOp::Request,
        sender_mac: M1,
        sender_ip: A4,
        target_mac: MacAddr::ZERO,
        target_ip: B4,
    };
    let mut b = vec![0; ARP_LEN];
    r.emit(&mut ArpPacket::new_unchecked(&mut b[..])).unwrap();
    b
}

pub(crate) fn ipv4(protocol: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let r = Ipv4Repr {
        src: A4,
        dst: B4,
        protocol,
        ttl: 64,
        tos: 0,
        ident: 7,
        dont_frag: true,
        payload_len: 0,
    };
    let hl = IPV4_HEADER_LEN + options.len();
    let mut b = vec![0; hl + payload.len()];
    r.emit(&mut Ipv4Packet::new_unchecked(&mut b[..])).unwrap();
    b[IPV4_HEADER_LEN..hl].copy_from_slice(options);
    b[hl..].copy_from_slice(payload);
    let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
    p.set_header_len(hl);
    p.set_total_len((hl + payload.len()) as u16);
    p.fill_checksum();
    b
}

/// IPv6 with extension headers `(type, bytes)` chained in order before `proto`.
pub(crate) fn ipv6(exts: &[(u8, Vec<u8>)], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, bytes)) in exts.iter().enumerate() {
        let mut h = bytes.clone();
        h[0] = exts.get(i + 1).map_or(proto, |e| e.0);
        body.extend(h);
    }
    body.extend_from_slice(payload);
    let first = exts.first().map_or(proto, |e| e.0);
    let r = Ipv6Repr {
        src: A6,
        dst: B6,
        next_header: first,
        hop_limit: 64,
        traffic_class: 0,
        flow_label: 1,
        payload_len: body.len(),
    };
    let mut b = vec![0; IPV6_HEADER_LEN];
    r.emit(&mut Ipv6Packet::new_unchecked(&mut b[..])).unwrap();
    b.extend(body);
    b
}

pub(crate) enum Pseudo {
    V4,
    V4NoCsum,
    V6,
}

pub(crate) fn udp(pseudo: Pseudo, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let r = UdpRepr {
        src_port: 49_999,
        dst_port,
        payload_len: payload.len(),
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut UdpPacket::new_unchecked(&mut b[..])).unwrap();
    b[UDP_HEADER_LEN..].copy_from_slice(payload);
    let mut p = UdpPacket::new_unchecked(&mut b[..]);
    match pseudo {
        Pseudo::V4 => p.fill_checksum_v4(A4, B4),
        Pseudo::V4NoCsum => {}
        Pseudo::V6 => p.fill_checksum_v6(A6, B6),
    }
    b
}

pub(crate) fn tcp(v6: bool, payload: &[u8]) -> Vec<u8> {
    let r = TcpRepr {
        src_port: 1234,
        dst_port: 443,
        seq: 1,
        ack: 2,
        flags: TcpFlags::ACK | TcpFlags::PSH,
        window: 1000,
        urgent: 0,
    };
    let mut b = vec![0; 24 + payload.len()];
    r.emit(&mut TcpPacket::new_unchecked(&mut b[..])).unwrap();
    let mut p = TcpPacket::new_unchecked(&mut b[..]);
    p.set_header_len(24);
    p.options_mut().copy_from_slice(&[2, 4, 0x05, 0xb4]);
    p.payload_mut().copy_from_slice(payload);
    if v6 {
        p.fill_checksum_v6(A6, B6);
    } else {
        p.fill_checksum_v4(A4, B4);
    }
    b
}

pub(crate) fn tunnel_vxlan(inner: &[u8]) -> Vec<u8> {
    let mut b = vec![0; VXLAN_HEADER_LEN];
    VxlanRepr { vni: 42 }
        .emit(&mut VxlanPacket::new_unchecked(&mut b[..]))
        .unwrap();
    b.extend_from_slice(inner);
    b
}

pub(crate) fn tunnel_geneve(inner: &[u8]) -> Vec<u8> {
    let mut options = GeneveOptionList::new();
    options.push(0x0102, 0x80, &[1, 2, 3, 4]).unwrap();
    options.push(0xffff, 0x01, &[5; 8]).unwrap();
    let r = GeneveRepr {
        oam: false,
        critical: true,
        protocol_type: ethertype::TEB,
        vni: 0xabcdef,
        options,
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut GenevePacket::new_unchecked(&mut b[..]))
        .unwrap();
    b.extend_from_slice(inner);
    b
}

pub(crate) fn tunnel_pwt(inner: &[u8]) -> Vec<u8> {
    let r = PwtRepr {
        flags: 0,
        protocol_type: ethertype::TEB,
        tenant_id: 0xdead_beef,
        flow_entropy: 0x1234,
    };
    let mut b = vec![0; PWT_HEADER_LEN + 8]; // two extension words
    r.emit(&mut PwtPacket::new_unchecked(&mut b[..])).unwrap();
    b[PWT_HEADER_LEN..].copy_from_slice(&[0xee; 8]);
    let mut p = PwtPacket::new_unchecked(&mut b[..]);
    p.set_header_len(PWT_HEADER_LEN + 8);
    p.fill_checksum();
    b.extend_from_slice(inner);
    b
}

/// Valid frames covering every format, each fully decodable by [`decode`].
pub(crate) fn samples() -> Vec<Vec<u8>> {
    let ext = |ty: u8, len: usize| {
        (ty, {
            let mut v = vec![0u8; len];
            v[1] = if ty == ip_proto::AH {
                (len / 4 - 2) as u8
            } else {
                (len / 8 - 1) as u8
            };
            v
        })
    };
    let inner_tcp4 = eth(
        None,
        None,
        ethertype::IPV4,
        &ipv4(ip_proto::TCP, &[], &tcp(false, b"inner payload")),
    );
    let inner_tcp6 = eth(
        None,
        None,
        ethertype::IPV6,
        &ipv6(&[], ip_proto::TCP, &tcp(true, b"v6 inner")),
    );
    let inner_arp = eth(None, None, ethertype::ARP, &arp());
    let exts = [
        ext(ip_proto::HOPOPT, 8),
        ext(ip_proto::IPV6_OPTS, 16),
        ext(ip_proto::IPV6_FRAG, 8),
        ext(ip_proto::AH, 16),
        ext(ip_proto::IPV6_ROUTE, 8),
    ];
    vec![
        eth(
            Some(100),
            None,
            ethertype::IPV4,
            &ipv4(
                ip_proto::UDP,
                &[1, 1, 1, 0],
                &udp(Pseudo::V4, VXLAN_PORT, &tunnel_vxlan(&inner_tcp4)),
            ),
        ),
        eth(
            None,
            None,
            ethertype::IPV6,
            &ipv6(
                &exts,
                ip_proto::UDP,
                &udp(Pseudo::V6, GENEVE_PORT, &tunnel_geneve(&inner_arp)),
            ),
        ),
        eth(
            Some(10),
            Some(20),
            ethertype::IPV4,
            &ipv4(
                ip_proto::UDP,
                &[],
                &udp(Pseudo::V4NoCsum, PWT_PORT, &tunnel_pwt(&inner_tcp6)),
            ),
        ),
        eth(None, None, ethertype::ARP, &arp()),
        eth(
            Some(7),
            None,
            ethertype::IPV6,
            &ipv6(&[], ip_proto::TCP, &tcp(true, b"")),
        ),
    ]
}

// ---------------------------------------------------------------- a full decoder

/// Decodes a frame through every layer, tunnels included. `strict`: semantic errors
/// (checksums, flags) fail the decode; otherwise they are ignored and decoding goes on
/// with the views. Returns the number of layers decoded.
pub(crate) fn decode(b: &[u8], strict: bool, depth: usize) -> Result<usize, WireError> {
    let soft = |r: Result<(), WireError>| if strict { r } else { Ok(()) };
    let f = EthernetFrame::new_checked(b)?;
    soft(EthernetRepr::parse(&f).map(drop))?;
    let payload = f.into_payload();
    match f.ethertype() {
        ethertype::ARP => {
            let a = ArpPacket::new_checked(payload)?;
            soft(ArpRepr::parse(&a).map(drop))?;
            Ok(2)
        }
        ethertype::IPV4 => {
            let p = Ipv4Packet::new_checked(payload)?;
            soft(Ipv4Repr::parse(&p).map(drop))?;
            let l4 = l4(
                p.protocol(),
                p.into_payload(),
                Some((p.src_addr(), p.dst_addr())),
                strict,
                depth,
            )?;
            Ok(2 + l4)
        }
        ethertype::IPV6 => {
            let p = Ipv6Packet::new_checked(payload)?;
            soft(Ipv6Repr::parse(&p).map(drop))?;
            let (proto, off) = p.upper_layer()?;
            let data = &p.into_payload()[off - IPV6_HEADER_LEN..];
            Ok(2 + l4(proto, data, None, strict, depth)?)
        }
        other => Err(WireError::UnknownEtherType(other)),
    }
}

pub(crate) fn l4(
    proto: u8,
    data: &[u8],
    v4: Option<(Ipv4Addr, Ipv4Addr)>,
    strict: bool,
    depth: usize,
) -> Result<usize, WireError> {
    let csum_ok = |ok: bool, layer| {
        if ok || !strict {
            Ok(())
        } else {
            Err(WireError::BadChecksum { layer })
        }
    };
    match proto {
        ip_proto::TCP => {
            let t = TcpPacket::new_checked(data)?;
            let r = TcpRepr::parse(&t)?;
            black_box((r, t.options(), t.payload()));
            csum_ok(
                v4.map_or_else(
                    || t.verify_checksum_v6(A6, B6),
                    |(s, d)| t.verify_checksum_v4(s, d),
                ),
                "tcp",
            )?;
            Ok(1)
        }
        ip_proto::UDP => {
            let u = UdpPacket::new_checked(data)?;
            UdpRepr::parse(&u)?;
            csum_ok(
                v4.map_or_else(
                    || u.verify_checksum_v6(A6, B6),
                    |(s, d)| u.verify_checksum_v4(s, d),
                ),
                "udp",
            )?;
            let inner = u.into_payload();
            if depth >= 4 {
                return Ok(1);
            }
            let next = match u.dst_port() {
                VXLAN_PORT => {
                    let v = VxlanPacket::new_checked(inner)?;
                    if strict {
                        VxlanRepr::parse(&v)?;
                    }
                    v.into_payload()
                }
                GENEVE_PORT => {
                    let g = GenevePacket::new_checked(inner)?;
                    for o in g.options() {
                        black_box(o?);
                    }
                    if strict {
                        GeneveRepr::parse(&g)?;
                    }
                    g.into_payload()
                }
                PWT_PORT => {
                    let p = PwtPacket::new_checked(inner)?;
                    if strict {
                        PwtRepr::parse(&p)?;
                    }
                    p.into_payload()
                }
                _ => return Ok(1),
            };
            Ok(2 + decode(next, strict, depth + 1)?)
        }
        other => Err(WireError::UnsupportedProtocol(other)),
    }
}
