//! The egress and ingress paths as pipelines: VF frames are classified, offloaded and
//! encapsulated; the underlay frames they become are matched, decapsulated, verified
//! and delivered to the right VF. Bad frames are dropped with a reason, and counted.
#![cfg(not(loom))]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pipewright_nic::pipeline::{egress, ingress, EgressConfig, NicStats};
use pipewright_nic::rules::{
    EgressAction, EgressRule, EgressTable, IngressAction, IngressRule, IngressTable, TrapAction,
    Versioned, VfIdentity,
};
use pipewright_nic::tunnel::{DecapConfig, TunnelKind, TunnelSpec};
use pipewright_nic::wire::{checksum, ip_proto, ArpOp, ArpPacket, ArpRepr, EthernetFrame, MacAddr};
use pipewright_nic::{Frame, FramePool, Gso, GsoKind, PartialCsum};
use pipewright_stages::inline::InlineTransport;
use pipewright_stages::PipelineBuilder;

const MAC1: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC2: [u8; 6] = [2, 0, 0, 0, 0, 2];
const IP1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn spec(kind: TunnelKind) -> Arc<TunnelSpec> {
    Arc::new(TunnelSpec {
        kind,
        vni: 100,
        outer_src: "192.168.0.1".parse().unwrap(),
        outer_dst: "192.168.0.2".parse().unwrap(),
        udp_dst_port: kind.default_port(),
        df: true,
        ttl: 64,
        outer_src_mac: [2, 0xaa, 0, 0, 0, 1],
        outer_dst_mac: [2, 0xaa, 0, 0, 0, 2],
        options: vec![],
    })
}

fn egress_table(kind: TunnelKind) -> EgressTable {
    let rule = |id, dst_prefix: Option<&str>, ethertype, action| EgressRule {
        id,
        vf: 1,
        dst_mac: None,
        dst_prefix: dst_prefix.map(|p| p.parse().unwrap()),
        vlan: None,
        ethertype,
        action,
    };
    EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: MAC1,
            ips: vec![IpAddr::V4(IP1)],
            vlan: None,
        })
        .neighbour(1, IP2, MAC2)
        .rule(rule(
            1,
            Some("10.0.0.0/24"),
            None,
            EgressAction::Encap(spec(kind)),
        ))
        .rule(rule(
            2,
            None,
            Some(0x0806),
            EgressAction::Trap(TrapAction::AnswerArp),
        ))
        .underlay_mtu(1500)
        .build()
        .unwrap()
}

fn ingress_table(kind: TunnelKind) -> IngressTable {
    IngressTable::builder()
        .vf(2, MAC2)
        .rule(IngressRule {
            id: 1,
            kind,
            vni: 100,
            outer_dst: "192.168.0.2".parse().unwrap(),
            outer_src: Some("192.168.0.1".parse().unwrap()),
            udp_dst_port: None,
            inner_dst_mac: None,
            action: IngressAction::Deliver { vf: 2 },
        })
        .build()
        .unwrap()
}

/// Ethernet/IPv4/UDP from VF 1 to VF 2 with the UDP checksum left partial.
fn udp_frame(payload: &[u8], src_mac: [u8; 6], src_ip: Ipv4Addr) -> Frame {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC2);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = ip_proto::UDP;
    ip[12..16].copy_from_slice(&src_ip.octets());
    ip[16..20].copy_from_slice(&IP2.octets());
    let c = checksum::finish(checksum::sum(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let len = (8 + payload.len()) as u16;
    let pseudo = checksum::fold(checksum::pseudo_v4(src_ip, IP2, ip_proto::UDP, len));
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&6000u16.to_be_bytes());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&pseudo.to_be_bytes());
    f.extend_from_slice(payload);
    let mut frame = Frame::from_bytes(&f);
    frame.meta.vf = 1;
    frame.meta.csum = Some(PartialCsum {
        start: 34,
        offset: 6,
    });
    frame
}

fn arp_request() -> Frame {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC1);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0u8; 28]);
    let req = ArpRepr {
        op: ArpOp::Request,
        sender_mac: MacAddr(MAC1),
        sender_ip: IP1,
        target_mac: MacAddr([0; 6]),
        target_ip: IP2,
    };
    req.emit(&mut ArpPacket::new_unchecked(&mut f[14..]))
        .unwrap();
    let mut frame = Frame::from_bytes(&f);
    frame.meta.vf = 1;
    frame
}

#[test]
fn vf_to_vf_through_the_tunnel_for_every_kind() {
    for kind in [TunnelKind::Vxlan, TunnelKind::Geneve, TunnelKind::Pwt] {
        let stats = NicStats::new();
        // Host A: egress.
        let b = PipelineBuilder::<InlineTransport>::new();
        let (input, frames) = b.input::<Frame>("from-vf");
        let config = EgressConfig {
            table: Versioned::new(egress_table(kind)),
            pool: Arc::new(FramePool::new(128, 2048, 64)),
            stats: stats.clone(),
        };
        let ports = egress(frames, &config);
        let (underlay, to_vf) = (
            ports.underlay.output("underlay"),
            ports.to_vf.output("to-vf"),
        );
        let mut run = b.build().unwrap().run_inline();
        let payloads: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 10 + i * 50]).collect();
        let mut frames: Vec<Frame> = payloads.iter().map(|p| udp_frame(p, MAC1, IP1)).collect();
        frames.push(arp_request());
        frames.push(udp_frame(b"spoof", MAC2, IP1)); // another VF's MAC
        frames.push(udp_frame(b"spoof", MAC1, Ipv4Addr::new(10, 0, 0, 66))); // another IP
        let mut short = Frame::from_bytes(&udp_frame(b"x", MAC1, IP1).data()[..20]);
        short.meta.vf = 1;
        frames.push(short);
        run.send_all(&input, frames);
        run.finish().unwrap();
        let encapsulated = run.take_output(&underlay);
        let replies = run.take_output(&to_vf);
        assert_eq!(encapsulated.len(), 20, "{kind:?}");
        assert_eq!(stats.drops("spoofed"), 2);
        assert_eq!(stats.drops("truncated"), 1);
        // The ARP request came back as a reply from the neighbour table.
        assert_eq!(replies.len(), 1);
        let eth = EthernetFrame::new_checked(replies[0].data()).unwrap();
        assert_eq!(eth.dst().0, MAC1);
        let reply = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(
            (reply.op, reply.sender_mac.0, reply.sender_ip),
            (ArpOp::Reply, MAC2, IP2)
        );
        assert_eq!(config.table.current().1.counters(1).unwrap().packets(), 20);

        // Host B: ingress, fed with host A's underlay frames.
        let b = PipelineBuilder::<InlineTransport>::new();
        let (input, frames) = b.input::<Frame>("from-underlay");
        let table = Versioned::new(ingress_table(kind));
        let delivered = ingress(frames, &table, DecapConfig::default(), &stats).output("to-vf");
        let mut run = b.build().unwrap().run_inline();
        run.send_all(&input, encapsulated);
        run.finish().unwrap();
        let delivered = run.take_output(&delivered);
        assert_eq!(delivered.len(), 20, "{kind:?}: {:?}", stats.all());
        for (frame, payload) in delivered.iter().zip(&payloads) {
            assert_eq!(frame.meta.vf, 2);
            let mut want = udp_frame(payload, MAC1, IP1);
            pipewright_nic::offload::complete_partial(&mut want).unwrap();
            assert_eq!(
                frame.data(),
                want.data(),
                "inner frame arrives bit-exact with its checksum completed"
            );
        }
    }
}

#[test]
fn tso_superframes_become_mtu_sized_tunnel_packets() {
    let stats = NicStats::new();
    let b = PipelineBuilder::<InlineTransport>::new();
    let (input, frames) = b.input::<Frame>("from-vf");
    let config = EgressConfig {
        table: Versioned::new(egress_table(TunnelKind::Vxlan)),
        pool: Arc::new(FramePool::new(128, 2048, 64)),
        stats: stats.clone(),
    };
    let ports = egress(frames, &config);
    let underlay = ports.underlay.output("underlay");
    ports.to_vf.for_each("discard", |_| {});
    let mut run = b.build().unwrap().run_inline();
    // A 20 000-byte UDP super-frame with USO at 1400 bytes, and one too big to send whole.
    let mut uso = udp_frame(&vec![7u8; 20_000], MAC1, IP1);
    uso.meta.gso = Some(Gso {
        kind: GsoKind::Udp,
        size: 1400,
    });
    let oversize = udp_frame(&vec![1u8; 1480], MAC1, IP1);
    run.send_all(&input, [uso, oversize]);
    run.finish().unwrap();
    let out = run.take_output(&underlay);
    assert_eq!(out.len(), 20_000usize.div_ceil(1400));
    assert!(
        out.iter().all(|f| f.len() - 14 <= 1500),
        "every outer packet fits the MTU"
    );
    assert_eq!(
        stats.drops("mtu_exceeded"),
        1,
        "an oversize frame without GSO is dropped, not fragmented"
    );
    // The rule counts the frames it matched, as the stages do: the super-frame once,
    // and the oversize frame it matched before it was dropped.
    let counted = config.table.current().1.counters(1).unwrap().packets();
    assert_eq!(counted, 2);
}

#[test]
fn ingress_never_delivers_across_tenants() {
    let stats = NicStats::new();
    // Encapsulate a frame for VF 1's MAC into VNI 100, whose only rule delivers to VF 2.
    let b = PipelineBuilder::<InlineTransport>::new();
    let (input, frames) = b.input::<Frame>("from-vf");
    let config = EgressConfig {
        table: Versioned::new(egress_table(TunnelKind::Vxlan)),
        pool: Arc::new(FramePool::new(128, 2048, 8)),
        stats: stats.clone(),
    };
    let ports = egress(frames, &config);
    let underlay = ports.underlay.output("underlay");
    ports.to_vf.for_each("discard", |_| {});
    let mut run = b.build().unwrap().run_inline();
    let mut wrong_dst = udp_frame(b"for someone else", MAC1, IP1);
    wrong_dst.data_mut()[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x77]);
    run.send_all(&input, [wrong_dst]);
    run.finish().unwrap();
    let mut frames = run.take_output(&underlay);
    assert_eq!(frames.len(), 1);
    // And a copy re-tagged with a VNI nobody has.
    let mut other_vni = frames[0].clone();
    other_vni.data_mut()[14 + 20 + 8 + 4..14 + 20 + 8 + 7].copy_from_slice(&[0, 0, 101]);
    frames.push(other_vni);

    let b = PipelineBuilder::<InlineTransport>::new();
    let (input, stream) = b.input::<Frame>("from-underlay");
    let table = Versioned::new(ingress_table(TunnelKind::Vxlan));
    let delivered = ingress(stream, &table, DecapConfig::default(), &stats).output("to-vf");
    let mut run = b.build().unwrap().run_inline();
    run.send_all(&input, frames);
    run.finish().unwrap();
    assert!(run.take_output(&delivered).is_empty());
    assert_eq!(stats.drops("not_for_vf"), 1);
    assert_eq!(stats.drops("unknown_vni"), 1);
}
