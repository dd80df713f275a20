//! Encap then decap is bit-exact for every tunnel kind and outer family; corrupted
//! outer headers are rejected with a typed reason, never delivered.
#![cfg(not(loom))]

use std::net::IpAddr;

use pipewright_nic::tunnel::{
    flow_hash, parse_outer, strip_outer, DecapConfig, DecapError, EncapError, EncapTemplate,
    TunnelKind, TunnelOption, TunnelSpec,
};
use pipewright_nic::Frame;
use proptest::prelude::*;

fn spec(kind: TunnelKind, v6: bool, vni: u32, options: Vec<TunnelOption>) -> TunnelSpec {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
    } else {
        (
            "192.168.0.1".parse().unwrap(),
            "192.168.0.2".parse().unwrap(),
        )
    };
    TunnelSpec {
        kind,
        vni,
        outer_src: src,
        outer_dst: dst,
        udp_dst_port: kind.default_port(),
        df: true,
        ttl: 64,
        outer_src_mac: [2, 0xaa, 0, 0, 0, 1],
        outer_dst_mac: [2, 0xaa, 0, 0, 0, 2],
        options,
    }
}

/// An inner Ethernet frame: dst MAC, src MAC, EtherType, then arbitrary bytes.
fn inner_frame(dst: [u8; 6], body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + body.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn kinds() -> impl Strategy<Value = (TunnelKind, bool)> {
    prop_oneof![
        Just((TunnelKind::Vxlan, false)),
        Just((TunnelKind::Vxlan, true)),
        Just((TunnelKind::Geneve, false)),
        Just((TunnelKind::Geneve, true)),
        Just((TunnelKind::Pwt, false)),
        Just((TunnelKind::Pwt, true)),
    ]
}

proptest! {
    #[test]
    fn encap_decap_is_bit_exact(
        (kind, v6) in kinds(),
        vni in 0u32..(1 << 24),
        body in prop::collection::vec(any::<u8>(), 0..1400),
        dst in any::<[u8; 6]>(),
        ip_id in any::<u16>(),
        with_option in any::<bool>(),
    ) {
        let options = if with_option && kind == TunnelKind::Geneve {
            vec![TunnelOption { class: 0x0102, kind: 0x80, data: vec![1, 2, 3, 4] }]
        } else {
            vec![]
        };
        let spec = spec(kind, v6, vni, options);
        let template = EncapTemplate::new(&spec, 9000).unwrap();
        let original = inner_frame(dst, &body);
        let mut frame = Frame::from_bytes(&original);
        template.encap(&mut frame, ip_id, flow_hash(&original)).unwrap();
        prop_assert_eq!(frame.len(), original.len() + template.overhead());

        let config = DecapConfig::default().accept_critical_options(true);
        let outer = parse_outer(frame.data(), &config).unwrap();
        prop_assert_eq!(outer.key.kind, kind);
        prop_assert_eq!(outer.key.vni, vni);
        prop_assert_eq!(outer.key.outer_src, spec.outer_src);
        prop_assert_eq!(outer.key.outer_dst, spec.outer_dst);
        prop_assert_eq!(outer.key.udp_dst_port, kind.default_port());
        prop_assert_eq!(outer.key.inner_dst_mac, dst);
        strip_outer(&mut frame, &outer);
        prop_assert_eq!(frame.data(), &original[..]);
    }

    /// A corrupted byte in a checksummed outer header is caught and never delivers the
    /// inner frame under another key. Covered: the IPv4 header (header checksum), all of
    /// UDP + tunnel over IPv6 (mandatory UDP checksum) and the PWT header (its own
    /// checksum). Not covered, by design of RFC 7348/8926: VXLAN and Geneve over IPv4
    /// send a zero UDP checksum, so their VNI is protected by nothing — one reason PWT
    /// checksums its header.
    #[test]
    fn corrupted_outer_headers_are_rejected_or_visible(at in 14usize..50, flip in 1u8..=255, kind_v6 in kinds()) {
        let (kind, v6) = kind_v6;
        let at = if !v6 && kind != TunnelKind::Pwt { 14 + (at % 20) } else { at };
        let spec = spec(kind, v6, 4242, vec![]);
        let template = EncapTemplate::new(&spec, 9000).unwrap();
        let original = inner_frame([2, 0, 0, 0, 0, 9], &[7u8; 64]);
        let mut frame = Frame::from_bytes(&original);
        template.encap(&mut frame, 1, 99).unwrap();
        let at = at.min(template.overhead() - 1);
        frame.data_mut()[at] ^= flip;
        let config = DecapConfig::default();
        if let Ok(outer) = parse_outer(frame.data(), &config) {
            // Only fields covered by no checksum may change undetected (for example the
            // IPv6 traffic class, or TTL/hop limit); the key must still be the one sent.
            prop_assert_eq!(outer.key.vni, 4242);
            prop_assert_eq!(outer.key.outer_dst, spec.outer_dst);
        }
    }
}

#[test]
fn decap_rejects_with_typed_reasons() {
    let spec = spec(TunnelKind::Vxlan, false, 7, vec![]);
    let template = EncapTemplate::new(&spec, 1500).unwrap();
    let original = inner_frame([2, 0, 0, 0, 0, 9], &[1u8; 100]);
    let fresh = || {
        let mut f = Frame::from_bytes(&original);
        template.encap(&mut f, 1, 2).unwrap();
        f
    };
    let config = DecapConfig::default();
    // Outer IPv4 header checksum.
    let mut f = fresh();
    f.data_mut()[14 + 8] ^= 1; // TTL
    assert_eq!(
        parse_outer(f.data(), &config).unwrap_err().reason(),
        "bad_checksum"
    );
    // Outer UDP checksum present and wrong.
    let mut f = fresh();
    f.data_mut()[14 + 20 + 6] = 0x12;
    assert_eq!(
        parse_outer(f.data(), &config),
        Err(DecapError::BadUdpChecksum)
    );
    // An unknown port.
    let mut f = fresh();
    f.data_mut()[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&5555u16.to_be_bytes());
    assert_eq!(
        parse_outer(f.data(), &config),
        Err(DecapError::UnknownPort(5555))
    );
    // VXLAN I flag cleared.
    let mut f = fresh();
    f.data_mut()[14 + 20 + 8] = 0;
    assert_eq!(
        parse_outer(f.data(), &config).unwrap_err().reason(),
        "bad_field"
    );
    // Truncated at every length: an error, never a panic.
    let f = fresh();
    for len in 0..f.len() - original.len() + 14 {
        assert!(
            parse_outer(&f.data()[..len], &config).is_err(),
            "accepted a frame cut to {len} bytes"
        );
    }
    // Geneve with a critical option is dropped unless configured otherwise.
    let g = spec_with_critical();
    let t = EncapTemplate::new(&g, 1500).unwrap();
    let mut f = Frame::from_bytes(&original);
    t.encap(&mut f, 1, 2).unwrap();
    assert_eq!(
        parse_outer(f.data(), &config),
        Err(DecapError::CriticalOptions)
    );
    // A Geneve control packet (O bit) is not tenant traffic: never delivered.
    let plain = self::spec(TunnelKind::Geneve, false, 7, Vec::new());
    let t = EncapTemplate::new(&plain, 1500).unwrap();
    let mut f = Frame::from_bytes(&original);
    t.encap(&mut f, 1, 2).unwrap();
    assert!(parse_outer(f.data(), &config).is_ok());
    f.data_mut()[14 + 20 + 8 + 1] |= 0x80;
    let refused = parse_outer(f.data(), &config).unwrap_err();
    assert_eq!(refused, DecapError::Control);
    assert_eq!(refused.reason(), "oam");
}

fn spec_with_critical() -> TunnelSpec {
    spec(
        TunnelKind::Geneve,
        false,
        9,
        vec![TunnelOption {
            class: 1,
            kind: 0x81,
            data: vec![0; 8],
        }],
    )
}

#[test]
fn encap_respects_mtu_and_headroom() {
    let spec = spec(TunnelKind::Vxlan, false, 7, vec![]);
    let template = EncapTemplate::new(&spec, 1500).unwrap();
    assert_eq!(template.overhead(), 50);
    assert_eq!(template.max_inner_len(), 1464);
    let mut fits = Frame::from_bytes(&vec![0u8; 1464]);
    template.encap(&mut fits, 1, 1).unwrap();
    let mut big = Frame::from_bytes(&vec![0u8; 1465]);
    assert_eq!(
        template.encap(&mut big, 1, 1),
        Err(EncapError::TooBig {
            len: 1501,
            mtu: 1500
        })
    );
    assert_eq!(big.len(), 1465, "a refused frame is left untouched");
    let mut tight = Frame::with_capacity(10, 100);
    tight.try_push_back(60).unwrap();
    assert_eq!(
        template.encap(&mut tight, 1, 1),
        Err(EncapError::NoHeadroom { need: 50, have: 10 })
    );
}

#[test]
fn flow_hash_keeps_a_flow_together_and_spreads_flows() {
    let mut frame = inner_frame([2, 0, 0, 0, 0, 9], &[0u8; 40]);
    // IPv4 header: version/IHL, protocol TCP, addresses; TCP ports after it.
    frame[14] = 0x45;
    frame[23] = 6;
    frame[26..30].copy_from_slice(&[10, 0, 0, 1]);
    frame[30..34].copy_from_slice(&[10, 0, 0, 2]);
    frame[34..38].copy_from_slice(&[0x9c, 0x40, 0, 80]);
    let a = flow_hash(&frame);
    frame[18] = 0x77; // IP id differs between packets of one flow
    assert_eq!(
        flow_hash(&frame),
        a,
        "per-packet fields must not move the flow"
    );
    frame[35] ^= 1; // another source port: another flow
    assert_ne!(flow_hash(&frame), a);
    for len in 0..frame.len() {
        let _ = flow_hash(&frame[..len]);
    }
}
