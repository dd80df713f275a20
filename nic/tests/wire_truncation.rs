//! Truncating a valid packet at any length is an error, at every layer and through
//! the whole decode chain (tunnels included), and never a panic.

mod wire_support;

use pipewright_nic::wire::*;
use wire_support::*;

#[test]
fn samples_decode_and_every_truncation_fails() {
    for (i, s) in samples().iter().enumerate() {
        let layers = decode(s, true, 0).unwrap_or_else(|e| panic!("sample {i}: {e}"));
        assert!(layers >= 2, "sample {i}");
        for cut in 0..s.len() {
            let r = decode(&s[..cut], true, 0);
            assert!(r.is_err(), "sample {i} cut at {cut} decoded: {r:?}");
            assert!(
                decode(&s[..cut], false, 0).is_err(),
                "sample {i} cut at {cut}"
            );
        }
    }
}

/// Every view's header, emitted by its value, truncated at every length: `new_checked`
/// or `parse` fails.
#[test]
fn every_header_truncation_fails() {
    fn all_cuts(name: &str, full: &[u8], ok: impl Fn(&[u8]) -> Result<(), WireError>) {
        ok(full).unwrap_or_else(|e| panic!("{name}: {e}"));
        for cut in 0..full.len() {
            assert!(ok(&full[..cut]).is_err(), "{name} cut at {cut}");
        }
    }
    let s = samples();
    all_cuts("ethernet", &s[2][..22], |b| {
        EthernetRepr::parse(&EthernetFrame::new_checked(b)?).map(drop)
    });
    all_cuts("arp", &arp(), |b| {
        ArpRepr::parse(&ArpPacket::new_checked(b)?).map(drop)
    });
    all_cuts("ipv4", &ipv4(17, &[1, 1, 1, 0], b"xyz"), |b| {
        Ipv4Repr::parse(&Ipv4Packet::new_checked(b)?).map(drop)
    });
    all_cuts("ipv6", &ipv6(&[], 17, b"xyz"), |b| {
        Ipv6Repr::parse(&Ipv6Packet::new_checked(b)?).map(drop)
    });
    all_cuts("udp", &udp(Pseudo::V4, 9, b"xyz"), |b| {
        UdpRepr::parse(&UdpPacket::new_checked(b)?).map(drop)
    });
    all_cuts("tcp", &tcp(false, b"")[..], |b| {
        TcpRepr::parse(&TcpPacket::new_checked(b)?).map(drop)
    });
    all_cuts("vxlan", &tunnel_vxlan(b""), |b| {
        VxlanRepr::parse(&VxlanPacket::new_checked(b)?).map(drop)
    });
    all_cuts("geneve", &tunnel_geneve(b""), |b| {
        GeneveRepr::parse(&GenevePacket::new_checked(b)?).map(drop)
    });
    all_cuts("pwt", &tunnel_pwt(b""), |b| {
        PwtRepr::parse(&PwtPacket::new_checked(b)?).map(drop)
    });
}
