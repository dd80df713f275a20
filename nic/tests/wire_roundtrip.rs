//! Property round trips for every wire format: random value -> emit -> parse gives the
//! same value back, and checksums filled by the views verify.

use std::net::{Ipv4Addr, Ipv6Addr};

use pipewright_nic::wire::*;
use proptest::prelude::*;

fn mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

fn ethernet() -> impl Strategy<Value = EthernetRepr> {
    let tags = prop_oneof![
        Just((None, None)),
        (0u16..4096).prop_map(|v| (Some(v), None)),
        (0u16..4096, 0u16..4096).prop_map(|(o, i)| (Some(o), Some(i))),
    ];
    let ty = any::<u16>().prop_filter("not a TPID", |t| {
        *t != ethertype::VLAN && *t != ethertype::QINQ
    });
    (mac(), mac(), tags, ty).prop_map(|(dst, src, (vlan, inner_vlan), ethertype)| EthernetRepr {
        dst,
        src,
        vlan,
        inner_vlan,
        ethertype,
    })
}

fn arp() -> impl Strategy<Value = ArpRepr> {
    (any::<bool>(), mac(), v4(), mac(), v4()).prop_map(
        |(req, sender_mac, sender_ip, target_mac, target_ip)| ArpRepr {
            op: if req { ArpOp::Request } else { ArpOp::Reply },
            sender_mac,
            sender_ip,
            target_mac,
            target_ip,
        },
    )
}

fn ipv4() -> impl Strategy<Value = Ipv4Repr> {
    (
        v4(),
        v4(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<bool>(),
        0usize..1500,
    )
        .prop_map(
            |(src, dst, protocol, ttl, tos, ident, dont_frag, payload_len)| Ipv4Repr {
                src,
                dst,
                protocol,
                ttl,
                tos,
                ident,
                dont_frag,
                payload_len,
            },
        )
}

fn ipv6() -> impl Strategy<Value = Ipv6Repr> {
    (
        v6(),
        v6(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        0u32..0x10_0000,
        0usize..1500,
    )
        .prop_map(
            |(src, dst, next_header, hop_limit, traffic_class, flow_label, payload_len)| Ipv6Repr {
                src,
                dst,
                next_header,
                hop_limit,
                traffic_class,
                flow_label,
                payload_len,
            },
        )
}

fn tcp() -> impl Strategy<Value = TcpRepr> {
    (
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(
            |(src_port, dst_port, seq, ack, flags, window, urgent)| TcpRepr {
                src_port,
                dst_port,
                seq,
                ack,
                flags: TcpFlags::from_bits(flags),
                window,
                urgent,
            },
        )
}

fn geneve() -> impl Strategy<Value = GeneveRepr> {
    let opt = (
        any::<u16>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..=3),
    )
        .prop_flat_map(|(c, t, words)| {
            (
                Just(c),
                Just(t),
                prop::collection::vec(any::<u8>(), words.len() * 4),
            )
        });
    let opts = prop::collection::vec(opt, 0..=4);
    (any::<bool>(), any::<u16>(), 0u32..=0xff_ffff, opts).prop_map(
        |(oam, protocol_type, vni, opts)| {
            let mut options = GeneveOptionList::new();
            for (class, ty, data) in &opts {
                options.push(*class, *ty, data).unwrap(); // at most 4 * 16 = 64 bytes
            }
            GeneveRepr {
                oam,
                critical: options.has_critical(),
                protocol_type,
                vni,
                options,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn ethernet_round_trip(r in ethernet(), payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut buf = vec![0u8; r.buffer_len() + payload.len()];
        r.emit(&mut EthernetFrame::new_unchecked(&mut buf[..])).unwrap();
        buf[r.buffer_len()..].copy_from_slice(&payload);
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(EthernetRepr::parse(&f).unwrap(), r);
        prop_assert_eq!(f.header_len(), r.buffer_len());
        prop_assert_eq!(f.payload(), &payload[..]);
    }

    #[test]
    fn arp_round_trip(r in arp()) {
        let mut buf = [0u8; ARP_LEN];
        r.emit(&mut ArpPacket::new_unchecked(&mut buf[..])).unwrap();
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap(), r);
        if let Some(reply) = r.reply(MacAddr([2, 0, 0, 0, 0, 1])) {
            reply.emit(&mut ArpPacket::new_unchecked(&mut buf[..])).unwrap();
            let back = ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap();
            prop_assert_eq!((back.op, back.target_ip, back.sender_ip), (ArpOp::Reply, r.sender_ip, r.target_ip));
        }
    }

    #[test]
    fn ipv4_round_trip(r in ipv4(), pad in 0usize..8) {
        let mut buf = vec![0xa5u8; r.buffer_len() + pad];
        r.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..])).unwrap();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(p.verify_checksum());
        prop_assert_eq!(Ipv4Repr::parse(&p).unwrap(), r);
        prop_assert_eq!(p.payload().len(), r.payload_len);
    }

    #[test]
    fn ipv6_round_trip(r in ipv6(), pad in 0usize..8) {
        let mut buf = vec![0u8; r.buffer_len() + pad];
        r.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..])).unwrap();
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(Ipv6Repr::parse(&p).unwrap(), r);
        prop_assert_eq!(p.payload().len(), r.payload_len);
    }

    #[test]
    fn udp_round_trip_and_checksums(
        src_port in any::<u16>(),
        dst_port in any::<u16>(),
        payload in prop::collection::vec(any::<u8>(), 0..600),
        (s4, d4, s6, d6) in (v4(), v4(), v6(), v6()),
    ) {
        let r = UdpRepr { src_port, dst_port, payload_len: payload.len() };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut UdpPacket::new_unchecked(&mut buf[..])).unwrap();
        buf[UDP_HEADER_LEN..].copy_from_slice(&payload);
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        prop_assert_eq!(UdpRepr::parse(&p).unwrap(), r);
        p.fill_checksum_v4(s4, d4);
        prop_assert!(p.checksum() != 0 && p.verify_checksum_v4(s4, d4));
        p.fill_checksum_v6(s6, d6);
        prop_assert!(p.checksum() != 0 && p.verify_checksum_v6(s6, d6));
        prop_assert_eq!(p.payload(), &payload[..]);
    }

    #[test]
    fn tcp_round_trip_and_checksums(
        r in tcp(),
        payload in prop::collection::vec(any::<u8>(), 0..600),
        (s4, d4, s6, d6) in (v4(), v4(), v6(), v6()),
    ) {
        let mut buf = vec![0u8; r.buffer_len() + payload.len()];
        r.emit(&mut TcpPacket::new_unchecked(&mut buf[..])).unwrap();
        let mut p = TcpPacket::new_checked(&mut buf[..]).unwrap();
        p.payload_mut().copy_from_slice(&payload);
        prop_assert_eq!(TcpRepr::parse(&p).unwrap(), r);
        p.fill_checksum_v4(s4, d4);
        prop_assert!(p.verify_checksum_v4(s4, d4));
        p.fill_checksum_v6(s6, d6);
        prop_assert!(p.verify_checksum_v6(s6, d6));
        prop_assert_eq!(p.payload(), &payload[..]);
    }

    #[test]
    fn vxlan_round_trip(vni in 0u32..=0xff_ffff) {
        let r = VxlanRepr { vni };
        let mut buf = [0u8; VXLAN_HEADER_LEN];
        r.emit(&mut VxlanPacket::new_unchecked(&mut buf[..])).unwrap();
        prop_assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&buf[..]).unwrap()).unwrap(), r);
    }

    #[test]
    fn geneve_round_trip(r in geneve()) {
        let mut buf = vec![0u8; r.buffer_len() + 3];
        r.emit(&mut GenevePacket::new_unchecked(&mut buf[..])).unwrap();
        let p = GenevePacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(GeneveRepr::parse(&p).unwrap(), r);
        prop_assert_eq!(p.header_len(), r.buffer_len());
        prop_assert_eq!(p.options().count(), r.options.iter().count());
        prop_assert!(p.options().all(|o| o.is_ok()));
        prop_assert_eq!(p.payload().len(), 3);
    }

    #[test]
    fn pwt_round_trip(flags in any::<u8>(), protocol_type in any::<u16>(), tenant_id in any::<u32>(), flow_entropy in any::<u16>()) {
        let r = PwtRepr { flags, protocol_type, tenant_id, flow_entropy };
        let mut buf = [0u8; PWT_HEADER_LEN];
        r.emit(&mut PwtPacket::new_unchecked(&mut buf[..])).unwrap();
        let p = PwtPacket::new_checked(&buf[..]).unwrap();
        prop_assert!(p.verify_checksum());
        prop_assert_eq!(PwtRepr::parse(&p).unwrap(), r);
    }

    #[test]
    fn ip_checksum_incremental_ttl_update(r in ipv4(), new_ttl in any::<u8>()) {
        // Forwarding path: rewrite TTL with RFC 1624 instead of recomputing.
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..])).unwrap();
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        let old_word = u16::from_be_bytes([p.ttl(), p.protocol()]);
        let new_word = u16::from_be_bytes([new_ttl, p.protocol()]);
        let c = checksum::update(p.checksum(), old_word, new_word);
        p.set_ttl(new_ttl);
        p.set_checksum(c);
        prop_assert!(p.verify_checksum());
    }
}
