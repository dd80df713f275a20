//! Interop: frames encapsulated by [`EncapTemplate`] are decoded correctly by an
//! independent decoder, tshark (Wireshark's CLI), plus golden byte checks of the
//! tunnel headers against the layouts in RFC 7348 (VXLAN) and RFC 8926 (Geneve).
//!
//! The tshark test skips with one line when tshark is not installed (Debian package
//! tshark), unless `PIPEWRIGHT_REQUIRE_TSHARK=1` is set (CI sets it: a missing tshark
//! then fails the test instead). Set `TSHARK=/path/to/tshark` to use another binary.
#![cfg(not(loom))]

mod checks;
mod frames;
mod golden;
mod pcap;
mod tshark;

use pipewright_nic::tunnel::{flow_hash, EncapTemplate, TunnelKind};
use pipewright_nic::wire::*;
use pipewright_nic::Frame;

use checks::{check_control, check_frame, Check};
use frames::*;
use golden::rfc1071;
use pcap::write_pcap;
use tshark::{controls, tshark_fields};

// ---------------------------------------------------------------- tshark

#[test]
fn tshark_decodes_encapsulated_frames() {
    if !pipewright_testkit::tshark::require() {
        return;
    }
    let tunnels = tunnels();
    let inners = inners();
    let mut cases = Vec::new();
    for t in &tunnels {
        let template = EncapTemplate::new(&t.spec, 1500).unwrap();
        for inner in &inners {
            let ip_id = 0x1000 + cases.len() as u16;
            let bytes = encapsulate(&template, &inner.bytes, ip_id);
            cases.push(Case {
                tunnel: t,
                inner,
                ip_id,
                bytes,
            });
        }
    }
    let controls = controls(&cases);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encap.pcap");
    let frames = cases
        .iter()
        .map(|c| c.bytes.as_slice())
        .chain(controls.iter().map(|c| c.1.as_slice()));
    write_pcap(&path, frames);

    let rows = tshark_fields(&path);
    assert_eq!(
        rows.len(),
        cases.len() + controls.len(),
        "one row per frame"
    );

    let mut failures = Vec::new();
    for (i, (case, row)) in cases.iter().zip(&rows).enumerate() {
        let mut c = Check {
            what: format!(
                "frame {} ({} in {})",
                i + 1,
                case.inner.name,
                case.tunnel.name
            ),
            row,
            failures: &mut failures,
        };
        check_frame(case, &mut c);
    }
    for (i, ((what, _), row)) in controls.iter().zip(&rows[cases.len()..]).enumerate() {
        let mut c = Check {
            what: format!("control frame {} ({what})", cases.len() + i + 1),
            row,
            failures: &mut failures,
        };
        check_control(i, &mut c);
    }
    assert!(
        failures.is_empty(),
        "tshark disagrees with the encapsulation:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- PWT

/// tshark has no PWT dissector: our own decoder reads PWT frames back instead.
#[test]
fn pwt_frames_decode_with_our_wire_views() {
    for v6 in [false, true] {
        let spec = spec(TunnelKind::Pwt, v6, 0xdead_beef, vec![]);
        let t = EncapTemplate::new(&spec, 1500).unwrap();
        for inner in inners() {
            let out = encapsulate(&t, &inner.bytes, 9);
            let eth = EthernetFrame::new_checked(&out[..]).unwrap();
            let udp = if v6 {
                assert_eq!(eth.ethertype(), ethertype::IPV6);
                let ip = Ipv6Packet::new_checked(eth.into_payload()).unwrap();
                let r = Ipv6Repr::parse(&ip).unwrap();
                assert_eq!(
                    (r.src, r.dst, r.next_header),
                    (OUTER_SRC6, OUTER_DST6, ip_proto::UDP)
                );
                let u = UdpPacket::new_checked(ip.into_payload()).unwrap();
                assert!(u.verify_checksum_v6(OUTER_SRC6, OUTER_DST6));
                u
            } else {
                assert_eq!(eth.ethertype(), ethertype::IPV4);
                let ip = Ipv4Packet::new_checked(eth.into_payload()).unwrap();
                let r = Ipv4Repr::parse(&ip).unwrap(); // verifies the header checksum
                assert_eq!(
                    (r.src, r.dst, r.protocol),
                    (OUTER_SRC4, OUTER_DST4, ip_proto::UDP)
                );
                assert_eq!((r.ident, r.ttl, r.dont_frag), (9, OUTER_TTL, true));
                UdpPacket::new_checked(ip.into_payload()).unwrap()
            };
            let r = UdpRepr::parse(&udp).unwrap();
            assert_eq!(r.dst_port, PWT_PORT);
            assert!(r.src_port >= 49152);
            assert_eq!(r.payload_len, PWT_HEADER_LEN + inner.bytes.len());
            let p = PwtPacket::new_checked(udp.into_payload()).unwrap();
            let pr = PwtRepr::parse(&p).unwrap(); // verifies the PWT header checksum
            assert_eq!(p.version(), 1);
            assert_eq!(p.header_len(), PWT_HEADER_LEN);
            assert_eq!(pr.tenant_id, 0xdead_beef);
            assert_eq!(pr.protocol_type, ethertype::TEB);
            assert_eq!(pr.flags, 0);
            assert_eq!(pr.flow_entropy, flow_hash(&inner.bytes) as u16);
            assert_eq!(p.payload(), &inner.bytes[..], "{}", inner.name);
        }
    }
}

// ---------------------------------------------------------------- length limits

/// The outer IPv4 total length, IPv6 payload length and UDP length are 16-bit
/// fields: a frame that would overflow them is refused whatever the configured MTU,
/// never sent with a wrapped length.
#[test]
fn lengths_never_wrap_past_16_bits() {
    for v6 in [false, true] {
        let t = EncapTemplate::new(&spec(TunnelKind::Vxlan, v6, 1, vec![]), 1 << 20).unwrap();
        // Largest IP packet: 65535 bytes (IPv4 total length; IPv6 payload length + 40).
        let max_ip = if v6 { 65_535 + 40 } else { 65_535 };
        assert_eq!(t.max_inner_len(), max_ip + 14 - t.overhead());
        let fits = vec![0x5a; t.max_inner_len()];
        let out = encapsulate(&t, &fits, 1);
        assert_eq!(out.len() - 14, max_ip);
        let udp_at = if v6 { 54 } else { 34 };
        let udp_len = u16::from_be_bytes([out[udp_at + 4], out[udp_at + 5]]);
        assert_eq!(usize::from(udp_len), out.len() - udp_at);
        if v6 {
            assert_eq!(
                usize::from(u16::from_be_bytes([out[18], out[19]])),
                max_ip - 40
            );
        } else {
            assert_eq!(u16::from_be_bytes([out[16], out[17]]), 65_535);
            assert_eq!(rfc1071(&out[14..34]), 0);
        }

        let mut too_big = Frame::from_bytes(&vec![0x5a; t.max_inner_len() + 1]);
        assert_eq!(
            t.encap(&mut too_big, 1, 1),
            Err(pipewright_nic::tunnel::EncapError::TooBig {
                len: max_ip + 1,
                mtu: max_ip
            })
        );
    }
}
