//! Golden byte checks of the tunnel headers against the layouts in RFC 7348
//! (VXLAN) and RFC 8926 (Geneve).

use std::net::Ipv4Addr;

use pipewright_nic::tunnel::{EncapTemplate, TunnelKind, TunnelOption, TunnelSpec};

use crate::checks::hex;
use crate::frames::*;

// ---------------------------------------------------------------- golden bytes

/// Bytes from hex, whitespace ignored.
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap())
        .collect()
}

/// RFC 1071 the slow way, a carry fold after every 16-bit word: independent of
/// `wire::checksum`.
pub(crate) fn rfc1071(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for w in data.chunks(2) {
        s += u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0));
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

pub(crate) fn golden_spec(kind: TunnelKind, vni: u32, options: Vec<TunnelOption>) -> TunnelSpec {
    TunnelSpec {
        outer_src: Ipv4Addr::new(192, 168, 0, 1).into(),
        outer_dst: Ipv4Addr::new(192, 168, 0, 199).into(),
        ttl: 64,
        ..spec(kind, false, vni, options)
    }
}

/// The whole outer header of a VXLAN/IPv4 frame. The IPv4 header is the classic
/// worked example of the header checksum (total length 0x73, id 0, DF, TTL 64, UDP,
/// 192.168.0.1 -> 192.168.0.199: checksum 0xb861); the VXLAN header is RFC 7348
/// section 5: flags 0x08 (I), 24 reserved bits, VNI, 8 reserved bits.
#[test]
fn golden_vxlan_ipv4_outer_header() {
    let t = EncapTemplate::new(&golden_spec(TunnelKind::Vxlan, 0x12_3456, vec![]), 1500).unwrap();
    let inner = [0xa5; 0x73 - 20 - 8 - 8];
    let out = encapsulate(&t, &inner, 0);
    let want = unhex(
        "02ee00000002 02ee00000001 0800
         4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7
         0000 12b5 005f 0000
         0800 0000 1234 5600",
    );
    assert_eq!(t.overhead(), want.len());
    let mut got = out[..want.len()].to_vec();
    let sport = u16::from_be_bytes([got[34], got[35]]);
    assert!(
        sport >= 49152,
        "source port {sport} outside the dynamic range"
    );
    got[34..36].fill(0);
    assert_eq!(hex(&got), hex(&want));
    assert_eq!(&out[want.len()..], &inner[..]);
    assert_eq!(rfc1071(&out[14..34]), 0, "IPv4 header checksum verifies");
}

/// Geneve base header and options, RFC 8926 section 3.4: Ver (2 bits) = 0, Opt Len
/// (6 bits, 4-byte words), O, C (critical option present), Protocol Type 0x6558
/// (Transparent Ethernet Bridging), VNI, reserved; each option is Class (16), Type
/// (8, high bit = critical), 3 reserved bits, Length (5 bits, words of data), data.
#[test]
fn golden_geneve_headers() {
    let cases: [(Vec<TunnelOption>, &str); 4] = [
        (vec![], "00 00 6558 abcdef 00"),
        (
            vec![critical_option()],
            "02 40 6558 abcdef 00  0102 80 01 deadbeef",
        ),
        (
            vec![plain_option()],
            "03 00 6558 abcdef 00  ffff 01 02 1122334455667788",
        ),
        (
            vec![plain_option(), critical_option()],
            "05 40 6558 abcdef 00  ffff 01 02 1122334455667788  0102 80 01 deadbeef",
        ),
    ];
    let inner = inner_udp4().bytes;
    for (options, want) in cases {
        let want = unhex(want);
        let t =
            EncapTemplate::new(&golden_spec(TunnelKind::Geneve, 0xab_cdef, options), 1500).unwrap();
        assert_eq!(t.overhead(), 14 + 20 + 8 + want.len());
        let out = encapsulate(&t, &inner, 7);
        assert_eq!(hex(&out[42..42 + want.len()]), hex(&want));
        assert_eq!(&out[36..38], &6081u16.to_be_bytes(), "UDP destination port");
        let udp_len = u16::from_be_bytes([out[38], out[39]]);
        assert_eq!(
            usize::from(udp_len),
            8 + want.len() + inner.len(),
            "UDP length"
        );
        assert_eq!(&out[42 + want.len()..], &inner[..]);
        assert_eq!(rfc1071(&out[14..34]), 0, "IPv4 header checksum verifies");
    }
}

/// IPv6 outer header (RFC 8200 section 3) and its mandatory UDP checksum over the
/// pseudo-header (section 8.1), recomputed independently.
#[test]
fn golden_ipv6_outer_header_and_udp_checksum() {
    for kind in [TunnelKind::Vxlan, TunnelKind::Geneve, TunnelKind::Pwt] {
        let spec = spec(kind, true, 0x00_0102, vec![critical_option()]);
        let t = EncapTemplate::new(&spec, 1500).unwrap();
        for inner in inners() {
            let out = encapsulate(&t, &inner.bytes, 0);
            let plen = out.len() - 54;
            let mut want = unhex("86dd 6000 0000");
            want.extend((plen as u16).to_be_bytes());
            want.extend([17, OUTER_TTL]);
            want.extend(OUTER_SRC6.octets());
            want.extend(OUTER_DST6.octets());
            assert_eq!(hex(&out[12..54]), hex(&want), "{kind:?} {}", inner.name);
            assert_eq!(&out[58..60], &(plen as u16).to_be_bytes(), "UDP length");

            let mut pseudo = Vec::new();
            pseudo.extend(OUTER_SRC6.octets());
            pseudo.extend(OUTER_DST6.octets());
            pseudo.extend((plen as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, 17]);
            pseudo.extend(&out[54..]);
            let stored = u16::from_be_bytes([out[60], out[61]]);
            assert_ne!(stored, 0, "a zero UDP checksum is not allowed over IPv6");
            assert_eq!(rfc1071(&pseudo), 0, "{kind:?} {}: UDP checksum", inner.name);
        }
    }
}
