//! Bounded fuzzing of the whole packet path: arbitrary bytes from a VF or from the
//! underlay never panic a stage; every frame is delivered or dropped with a reason.
#![cfg(not(loom))]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pipewright_nic::pipeline::{egress, ingress, EgressConfig, NicStats};
use pipewright_nic::rules::{
    EgressAction, EgressRule, EgressTable, IngressAction, IngressRule, IngressTable, TrapAction,
    Versioned, VfIdentity,
};
use pipewright_nic::tunnel::{DecapConfig, TunnelKind, TunnelSpec};
use pipewright_nic::{Frame, FramePool, Gso, GsoKind, PartialCsum};
use pipewright_stages::inline::InlineTransport;
use pipewright_stages::PipelineBuilder;
use proptest::prelude::*;

const MAC1: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn tables() -> (EgressTable, IngressTable) {
    let spec = Arc::new(TunnelSpec {
        kind: TunnelKind::Geneve,
        vni: 7,
        outer_src: "192.168.0.1".parse().unwrap(),
        outer_dst: "192.168.0.2".parse().unwrap(),
        udp_dst_port: 6081,
        df: true,
        ttl: 64,
        outer_src_mac: [0; 6],
        outer_dst_mac: [0; 6],
        options: vec![],
    });
    let e = EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: MAC1,
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
            vlan: None,
        })
        .rule(EgressRule {
            id: 1,
            vf: 1,
            dst_mac: None,
            dst_prefix: Some("0.0.0.0/0".parse().unwrap()),
            vlan: None,
            ethertype: None,
            action: EgressAction::Encap(spec),
        })
        .rule(EgressRule {
            id: 2,
            vf: 1,
            dst_mac: None,
            dst_prefix: None,
            vlan: None,
            ethertype: Some(0x0806),
            action: EgressAction::Trap(TrapAction::AnswerArp),
        })
        .build()
        .unwrap();
    let i = IngressTable::builder()
        .vf(1, MAC1)
        .rule(IngressRule {
            id: 1,
            kind: TunnelKind::Vxlan,
            vni: 7,
            outer_dst: "192.168.0.2".parse().unwrap(),
            outer_src: None,
            udp_dst_port: None,
            inner_dst_mac: None,
            action: IngressAction::Deliver { vf: 1 },
        })
        .build()
        .unwrap();
    (e, i)
}

/// A frame that starts like a real one from VF 1 (so fuzzing reaches deep layers), then
/// random bytes, with random offload metadata.
fn vf_frame() -> impl Strategy<Value = Frame> {
    (
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
        any::<(u16, u16, u16)>(),
        0u8..4,
    )
        .prop_map(|(tail, keep_prefix, (a, b, c), meta)| {
            let mut bytes = if keep_prefix {
                let mut v = vec![2, 0, 0, 0, 0, 2];
                v.extend_from_slice(&MAC1);
                v.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
                v
            } else {
                Vec::new()
            };
            bytes.extend_from_slice(&tail);
            let mut f = Frame::from_bytes(&bytes);
            f.meta.vf = 1;
            match meta {
                1 => {
                    f.meta.csum = Some(PartialCsum {
                        start: a,
                        offset: b,
                    })
                }
                2 => {
                    f.meta.gso = Some(Gso {
                        kind: GsoKind::TcpV4,
                        size: c,
                    })
                }
                3 => {
                    f.meta.gso = Some(Gso {
                        kind: GsoKind::Udp,
                        size: c,
                    })
                }
                _ => {}
            }
            f
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_vf_frames_are_encapsulated_or_dropped_with_a_reason(frames in prop::collection::vec(vf_frame(), 1..8)) {
        let (e, _) = tables();
        let stats = NicStats::new();
        let b = PipelineBuilder::<InlineTransport>::new();
        let (input, stream) = b.input::<Frame>("from-vf");
        let config = EgressConfig { table: Versioned::new(e), pool: Arc::new(FramePool::new(128, 2048, 8)), stats: stats.clone() };
        let ports = egress(stream, &config);
        let (under, to_vf) = (ports.underlay.output("u"), ports.to_vf.output("v"));
        let mut run = b.build().unwrap().run_inline();
        let n = frames.len() as u64;
        run.send_all(&input, frames);
        run.finish().unwrap();
        let out = run.take_output(&under).len() as u64 + run.take_output(&to_vf).len() as u64;
        // Segmentation may turn one frame into several; otherwise in = out + dropped.
        prop_assert!(out + stats.total() >= n, "frames vanished: {n} in, {out} out, {:?}", stats.all());
    }

    #[test]
    fn arbitrary_underlay_frames_never_panic(bytes in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..8)) {
        let (_, i) = tables();
        let stats = NicStats::new();
        let b = PipelineBuilder::<InlineTransport>::new();
        let (input, stream) = b.input::<Frame>("from-underlay");
        let out = ingress(stream, &Versioned::new(i), DecapConfig::default(), &stats).output("to-vf");
        let mut run = b.build().unwrap().run_inline();
        let n = bytes.len() as u64;
        run.send_all(&input, bytes.iter().map(|b| Frame::from_bytes(b)));
        run.finish().unwrap();
        let delivered = run.take_output(&out).len() as u64;
        prop_assert_eq!(delivered + stats.total(), n);
    }
}
