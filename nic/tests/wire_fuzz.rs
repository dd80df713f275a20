//! Random and mutated bytes never make a view, a parser or a setter panic; what
//! parses re-emits to the same value.
//!
//! Bounded (a few thousand cases per test) so the file runs in a couple of seconds
//! under `cargo test`.

mod wire_support;

use std::hint::black_box;

use pipewright_nic::wire::*;
use proptest::prelude::*;
use wire_support::*;

// ---------------------------------------------------------------- pokes

/// Every accessor of every view over `b`, then parse -> emit -> parse, then setters
/// that rewrite length fields to `junk` followed by the variable-length accessors.
fn poke_all(b: &[u8], junk: u16) {
    poke_ethernet(b, junk);
    poke_arp(b);
    poke_ipv4(b, junk);
    poke_ipv6(b, junk);
    poke_udp(b, junk);
    poke_tcp(b, junk);
    poke_vxlan(b);
    poke_geneve(b, junk);
    poke_pwt(b, junk);
}

fn poke_ethernet(b: &[u8], junk: u16) {
    let Ok(f) = EthernetFrame::new_checked(b) else {
        return;
    };
    black_box((
        f.dst(),
        f.src(),
        f.ethertype(),
        f.vlan(),
        f.inner_vlan(),
        f.vlan_tci(),
        f.outer_tpid(),
        f.payload(),
    ));
    if let Ok(r) = EthernetRepr::parse(&f) {
        let mut out = vec![0; r.buffer_len()];
        r.emit(&mut EthernetFrame::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(
            EthernetRepr::parse(&EthernetFrame::new_checked(&out[..]).unwrap()).unwrap(),
            r
        );
    }
    let mut m = b.to_vec();
    let mut f = EthernetFrame::new_checked(&mut m[..]).unwrap();
    f.set_ethertype(junk);
    let _ = f.set_vlan(junk);
    black_box((
        f.header_len(),
        f.ethertype(),
        f.vlan(),
        f.inner_vlan(),
        f.payload().len(),
        f.payload_mut().len(),
    ));
}

fn poke_arp(b: &[u8]) {
    let Ok(a) = ArpPacket::new_checked(b) else {
        return;
    };
    black_box((
        a.op(),
        a.sender_mac(),
        a.sender_ip(),
        a.target_mac(),
        a.target_ip(),
    ));
    if let Ok(r) = ArpRepr::parse(&a) {
        let mut out = [0; ARP_LEN];
        r.emit(&mut ArpPacket::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_checked(&out[..]).unwrap()).unwrap(),
            r
        );
        black_box(r.reply(M1));
    }
}

fn poke_ipv4(b: &[u8], junk: u16) {
    let Ok(p) = Ipv4Packet::new_checked(b) else {
        return;
    };
    black_box((
        p.tos(),
        p.dscp(),
        p.ecn(),
        p.ident(),
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
        p.is_fragment(),
    ));
    black_box((
        p.ttl(),
        p.protocol(),
        p.checksum(),
        p.src_addr(),
        p.dst_addr(),
        p.options(),
        p.payload(),
    ));
    black_box(p.verify_checksum());
    if let Ok(r) = Ipv4Repr::parse(&p) {
        let mut out = vec![0; r.buffer_len()];
        r.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(
            Ipv4Repr::parse(&Ipv4Packet::new_checked(&out[..]).unwrap()).unwrap(),
            r
        );
    }
    let mut m = b.to_vec();
    let mut p = Ipv4Packet::new_checked(&mut m[..]).unwrap();
    p.set_header_len(usize::from(junk));
    p.set_total_len(junk.rotate_left(7));
    black_box((
        p.options().len(),
        p.payload().len(),
        p.verify_checksum(),
        Ipv4Repr::parse(&p).is_ok(),
    ));
    p.fill_checksum();
    black_box(p.payload_mut().len());
}

fn poke_ipv6(b: &[u8], junk: u16) {
    let Ok(p) = Ipv6Packet::new_checked(b) else {
        return;
    };
    black_box((
        p.traffic_class(),
        p.flow_label(),
        p.next_header(),
        p.hop_limit(),
        p.src_addr(),
        p.dst_addr(),
    ));
    if let Ok((_, off)) = black_box(p.upper_layer()) {
        assert!(off <= IPV6_HEADER_LEN + p.payload().len());
    }
    if let Ok(r) = Ipv6Repr::parse(&p) {
        let mut out = vec![0; r.buffer_len()];
        r.emit(&mut Ipv6Packet::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(
            Ipv6Repr::parse(&Ipv6Packet::new_checked(&out[..]).unwrap()).unwrap(),
            r
        );
    }
    let mut m = b.to_vec();
    let mut p = Ipv6Packet::new_checked(&mut m[..]).unwrap();
    p.set_payload_len(junk);
    black_box((
        p.payload().len(),
        p.upper_layer().is_ok(),
        Ipv6Repr::parse(&p).is_ok(),
        p.payload_mut().len(),
    ));
}

fn poke_udp(b: &[u8], junk: u16) {
    let Ok(u) = UdpPacket::new_checked(b) else {
        return;
    };
    black_box((
        u.src_port(),
        u.dst_port(),
        u.checksum(),
        u.payload(),
        u.is_empty(),
    ));
    black_box((u.verify_checksum_v4(A4, B4), u.verify_checksum_v6(A6, B6)));
    if let Ok(r) = UdpRepr::parse(&u) {
        let mut out = vec![0; r.buffer_len()];
        r.emit(&mut UdpPacket::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(
            UdpRepr::parse(&UdpPacket::new_checked(&out[..]).unwrap()).unwrap(),
            r
        );
    }
    let mut m = b.to_vec();
    let mut u = UdpPacket::new_checked(&mut m[..]).unwrap();
    u.set_len(junk);
    black_box((
        u.payload().len(),
        u.verify_checksum_v4(A4, B4),
        u.verify_checksum_v6(A6, B6),
    ));
    u.fill_checksum_v4(A4, B4);
    u.fill_checksum_v6(A6, B6);
    black_box((u.payload_mut().len(), UdpRepr::parse(&u).is_ok()));
}

fn poke_tcp(b: &[u8], junk: u16) {
    let Ok(t) = TcpPacket::new_checked(b) else {
        return;
    };
    black_box((
        t.src_port(),
        t.dst_port(),
        t.seq_number(),
        t.ack_number(),
        t.flags(),
        t.window(),
        t.urgent(),
    ));
    black_box((
        t.checksum(),
        t.options(),
        t.payload(),
        t.verify_checksum_v4(A4, B4),
        t.verify_checksum_v6(A6, B6),
    ));
    if let Ok(r) = TcpRepr::parse(&t) {
        let mut out = [0; TCP_HEADER_LEN];
        r.emit(&mut TcpPacket::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(
            TcpRepr::parse(&TcpPacket::new_checked(&out[..]).unwrap()).unwrap(),
            r
        );
    }
    let mut m = b.to_vec();
    let mut t = TcpPacket::new_checked(&mut m[..]).unwrap();
    t.set_header_len(usize::from(junk));
    black_box((
        t.options().len(),
        t.payload().len(),
        t.options_mut().len(),
        t.payload_mut().len(),
    ));
    t.fill_checksum_v4(A4, B4);
    t.fill_checksum_v6(A6, B6);
}

fn poke_vxlan(b: &[u8]) {
    let Ok(v) = VxlanPacket::new_checked(b) else {
        return;
    };
    black_box((v.flags(), v.vni_valid(), v.vni(), v.payload()));
    if let Ok(r) = VxlanRepr::parse(&v) {
        let mut out = [0; VXLAN_HEADER_LEN];
        r.emit(&mut VxlanPacket::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(
            VxlanRepr::parse(&VxlanPacket::new_checked(&out[..]).unwrap()).unwrap(),
            r
        );
    }
}

fn poke_geneve(b: &[u8], junk: u16) {
    let Ok(g) = GenevePacket::new_checked(b) else {
        return;
    };
    black_box((
        g.opt_len(),
        g.oam(),
        g.critical(),
        g.protocol_type(),
        g.vni(),
        g.options_bytes(),
        g.payload(),
    ));
    let mut area = 0;
    for o in g.options() {
        match o {
            Ok(o) => area += 4 + o.data.len(),
            Err(e) => assert_eq!(e.reason(), "options_overflow"),
        }
    }
    assert!(area <= g.options_bytes().len());
    if let Ok(r) = GeneveRepr::parse(&g) {
        let mut out = vec![0; r.buffer_len()];
        r.emit(&mut GenevePacket::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(
            GeneveRepr::parse(&GenevePacket::new_checked(&out[..]).unwrap()).unwrap(),
            r
        );
    }
    let mut m = b.to_vec();
    let mut g = GenevePacket::new_checked(&mut m[..]).unwrap();
    g.set_opt_len(junk as u8);
    black_box((
        g.options().count(),
        g.payload().len(),
        g.options_bytes_mut().len(),
        g.payload_mut().len(),
    ));
    black_box(GeneveRepr::parse(&g).is_ok());
}

fn poke_pwt(b: &[u8], junk: u16) {
    let Ok(p) = PwtPacket::new_checked(b) else {
        return;
    };
    black_box((
        p.flags(),
        p.oam(),
        p.protocol_type(),
        p.tenant_id(),
        p.flow_entropy(),
        p.checksum(),
    ));
    black_box((p.extensions(), p.payload(), p.verify_checksum()));
    if let Ok(r) = PwtRepr::parse(&p) {
        let mut out = [0; PWT_HEADER_LEN];
        r.emit(&mut PwtPacket::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(
            PwtRepr::parse(&PwtPacket::new_checked(&out[..]).unwrap()).unwrap(),
            r
        );
    }
    let mut m = b.to_vec();
    let mut p = PwtPacket::new_checked(&mut m[..]).unwrap();
    p.set_header_len(usize::from(junk));
    black_box((p.extensions().len(), p.payload().len(), p.verify_checksum()));
    p.fill_checksum();
    black_box((p.payload_mut().len(), PwtRepr::parse(&p).is_ok()));
}

// ---------------------------------------------------------------- fuzz

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    // Random bytes, 0..2048 long. Drawn as u64 words (then trimmed to any length): the
    // same distribution as `vec(any::<u8>(), 0..2048)` at an eighth of the cost.
    (prop::collection::vec(any::<u64>(), 0..=256), 0usize..8).prop_map(|(words, trim)| {
        let mut v: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        v.truncate(v.len().saturating_sub(trim));
        v
    })
}

/// Random bytes with the first byte forced to a plausible version/length nibble pair,
/// so the fuzz gets past the version checks.
fn versioned(first: u8) -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(any::<u64>(), 1..32), any::<u8>()).prop_map(move |(words, low)| {
        let mut v: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        v[0] = first | (low & 0x0f);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_random_frames(b in bytes(), junk in any::<u16>()) {
        let _ = decode(&b, false, 0);
        let _ = decode(&b, true, 0);
        poke_ethernet(&b, junk);
        poke_arp(&b);
    }

    #[test]
    fn fuzz_random_ip(b in bytes(), v4 in versioned(0x40), v6 in versioned(0x60), junk in any::<u16>()) {
        for b in [&b[..], &v4[..], &v6[..]] {
            poke_ipv4(b, junk);
            poke_ipv6(b, junk);
        }
    }

    #[test]
    fn fuzz_random_l4(b in bytes(), junk in any::<u16>()) {
        poke_udp(&b, junk);
        poke_tcp(&b, junk);
        let _ = l4(ip_proto::UDP, &b, Some((A4, B4)), false, 0);
        let _ = l4(ip_proto::TCP, &b, None, false, 0);
    }

    #[test]
    fn fuzz_random_tunnels(b in bytes(), g in versioned(0x00), p in versioned(0x10), junk in any::<u16>()) {
        for b in [&b[..], &g[..], &p[..]] {
            poke_vxlan(b);
            poke_geneve(b, junk);
            poke_pwt(b, junk);
        }
    }

    /// Valid frames with a few bytes overwritten and maybe truncated, decoded through
    /// every layer and poked at every offset.
    #[test]
    fn fuzz_mutated_samples(
        which in 0usize..5,
        muts in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<usize>()),
        junk in any::<u16>(),
    ) {
        let mut s = samples().swap_remove(which);
        for (at, v) in muts {
            let at = at % s.len();
            s[at] = v;
        }
        if let Some(cut) = cut {
            s.truncate(cut % (s.len() + 1));
        }
        let _ = decode(&s, false, 0);
        let _ = decode(&s, true, 0);
        for off in 0..s.len().min(160) {
            poke_all(&s[off..], junk);
        }
    }
}
