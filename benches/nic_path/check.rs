//! Equivalence checks (once per case, before timing).

use pipewright_nic::offload::verify_l3l4;
use pipewright_nic::rules::Versioned;
use pipewright_nic::tunnel::{parse_outer, DecapConfig};

use crate::frames::{
    egress_table, ingress_table, inner_udp, tso_superframe, underlay_burst, vf_burst,
};
use crate::ours::{OursEgress, OursIngress, OursTso};
use crate::peer::{OuterWriter, PeerEgress, PeerIngress, PeerTso};
use crate::{MSS, RX_VF, TSO_HDR, TSO_SEGMENTS, VF, VNI};

/// Ours and the peer's underlay packets carry the same tunnel and inner frame and are
/// byte-identical apart from the outer UDP checksum (which `parse_outer` verifies).
fn assert_same_tunnel_packet(ours: &[u8], peer: &[u8], writer: OuterWriter) -> Vec<u8> {
    let cfg = DecapConfig::default();
    let a = parse_outer(ours, &cfg).expect("ours decodes");
    let b = parse_outer(peer, &cfg).unwrap_or_else(|e| panic!("peer ({writer:?}) decodes: {e}"));
    assert_eq!(a.key.vni, VNI);
    assert_eq!(a.key, b.key, "same outer key ({writer:?})");
    let inner = &ours[a.inner_off..a.inner_off + a.inner_len];
    assert_eq!(
        inner,
        &peer[b.inner_off..b.inner_off + b.inner_len],
        "same inner bytes ({writer:?})"
    );
    let mut p = peer.to_vec();
    match writer {
        OuterWriter::Builder => {
            assert_ne!(p[40..42], [0, 0], "PacketBuilder fills the UDP checksum");
            p[40..42].copy_from_slice(&[0, 0]);
        }
        OuterWriter::Headers => assert_eq!(p[40..42], [0, 0]),
    }
    assert_eq!(
        ours,
        &p[..],
        "byte-identical but for the UDP checksum ({writer:?})"
    );
    inner.to_vec()
}

pub fn check_egress(frame_len: usize) {
    let mut frames = vf_burst(frame_len);
    let inners: Vec<Vec<u8>> = frames.iter().map(|f| f.data().to_vec()).collect();
    OursEgress::new(&Versioned::new(egress_table())).burst(&mut frames, false);
    for writer in [OuterWriter::Builder, OuterWriter::Headers] {
        let mut peer = PeerEgress::new(writer);
        let mut out = Vec::new();
        for (f, inner) in frames.iter().zip(&inners) {
            peer.encap(VF, inner, &mut out);
            let got = assert_same_tunnel_packet(f.data(), &out, writer);
            assert_eq!(&got, inner);
        }
    }
}

pub fn check_ingress(frame_len: usize) {
    let mut frames = underlay_burst(frame_len);
    let raw: Vec<Vec<u8>> = frames.iter().map(|f| f.data().to_vec()).collect();
    OursIngress::new(&Versioned::new(ingress_table())).burst(&mut frames, false);
    let mut peer = PeerIngress::new();
    for (i, (f, r)) in frames.iter().zip(&raw).enumerate() {
        let (vf, off, len) = peer.decap(r).expect("peer delivers");
        assert_eq!((vf, f.meta.vf), (RX_VF, RX_VF));
        assert_eq!(&r[off..off + len], f.data());
        assert_eq!(f.data(), &inner_udp(frame_len, i)[..]);
    }
    // Both really verify the inner checksum: a flipped payload bit is refused by both.
    let mut bad = raw[0].clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(
        peer.decap(&bad).is_none(),
        "peer verifies the inner UDP checksum"
    );
    let outer = parse_outer(&bad, &DecapConfig::default()).expect("outer still fine");
    assert!(verify_l3l4(&bad[outer.inner_off..]).is_err());
}

pub fn check_tso() {
    let table = Versioned::new(egress_table());
    let mut ours_out = Vec::new();
    OursTso::new(&table).one(tso_superframe(3), |d| ours_out.push(d.to_vec()));
    assert_eq!(ours_out.len(), TSO_SEGMENTS);
    let superframe = tso_superframe(3);
    for writer in [OuterWriter::Builder, OuterWriter::Headers] {
        let mut peer_out = Vec::new();
        PeerTso::new(writer).one(VF, superframe.data(), |d| peer_out.push(d.to_vec()));
        assert_eq!(peer_out.len(), TSO_SEGMENTS);
        let mut payload = Vec::new();
        for (a, b) in ours_out.iter().zip(&peer_out) {
            let inner = assert_same_tunnel_packet(a, b, writer);
            verify_l3l4(&inner).expect("segment checksums");
            assert_eq!(inner.len(), TSO_HDR + MSS);
            payload.extend_from_slice(&inner[TSO_HDR..]);
        }
        assert_eq!(&payload[..], &superframe.data()[TSO_HDR..]);
    }
}
