//! No allocation per packet on the egress and ingress fast paths: frames are encapsulated
//! in place in their own buffers (headroom) and decapsulated by moving the start.
#![cfg(not(loom))]

use pipewright_testkit::CountingAlloc;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pipewright_nic::pipeline::{egress, ingress, EgressConfig, NicStats};
use pipewright_nic::rules::{
    EgressAction, EgressRule, EgressTable, IngressAction, IngressRule, IngressTable, Versioned,
    VfIdentity,
};
use pipewright_nic::tunnel::{DecapConfig, TunnelKind, TunnelSpec};
use pipewright_nic::wire::{checksum, ip_proto};
use pipewright_nic::{Frame, FramePool};
use pipewright_stages::inline::InlineTransport;
use pipewright_stages::PipelineBuilder;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

const MAC1: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC2: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn frame() -> Frame {
    let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let mut f = MAC2.to_vec();
    f.extend_from_slice(&MAC1);
    f.extend_from_slice(&[
        0x08,
        0x00,
        0x45,
        0,
        0,
        46,
        0,
        0,
        0,
        0,
        64,
        ip_proto::UDP,
        0,
        0,
    ]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let c = checksum::finish(checksum::sum(&f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&[0x13, 0x88, 0x17, 0x70, 0, 26, 0, 0]);
    f.extend_from_slice(&[0xab; 18]);
    let mut frame = Frame::from_bytes(&f);
    frame.meta.vf = 1;
    frame
}

fn run(frames: usize) -> u64 {
    let spec = Arc::new(TunnelSpec {
        kind: TunnelKind::Vxlan,
        vni: 7,
        outer_src: "192.168.0.1".parse().unwrap(),
        outer_dst: "192.168.0.2".parse().unwrap(),
        udp_dst_port: 4789,
        df: true,
        ttl: 64,
        outer_src_mac: [0; 6],
        outer_dst_mac: [0; 6],
        options: vec![],
    });
    let egress_table = EgressTable::builder()
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
            dst_prefix: Some("10.0.0.0/8".parse().unwrap()),
            vlan: None,
            ethertype: None,
            action: EgressAction::Encap(spec),
        })
        .build()
        .unwrap();
    let ingress_table = IngressTable::builder()
        .vf(2, MAC2)
        .rule(IngressRule {
            id: 1,
            kind: TunnelKind::Vxlan,
            vni: 7,
            outer_dst: "192.168.0.2".parse().unwrap(),
            outer_src: None,
            udp_dst_port: None,
            inner_dst_mac: None,
            action: IngressAction::Deliver { vf: 2 },
        })
        .build()
        .unwrap();
    let stats = NicStats::new();
    let b = PipelineBuilder::<InlineTransport>::new();
    let (input, from_vf) = b.input::<Frame>("from-vf");
    let config = EgressConfig {
        table: Versioned::new(egress_table),
        pool: Arc::new(FramePool::new(128, 2048, 8)),
        stats: stats.clone(),
    };
    let ports = egress(from_vf, &config);
    ports.to_vf.for_each("to-vf", |_| {});
    // Loop the underlay straight into ingress: encap then decap every frame.
    let delivered = ingress(
        ports.underlay,
        &Versioned::new(ingress_table),
        DecapConfig::default(),
        &stats,
    )
    .output("delivered");
    let pipeline = b.build().unwrap();
    let input_frames: Vec<Frame> = (0..frames).map(|_| frame()).collect();
    let mut run = pipeline.run_inline();
    let before = ALLOC.allocations();
    run.send_all(&input, input_frames);
    run.finish().unwrap();
    let used = ALLOC.allocations() - before;
    let out = run.take_output(&delivered);
    assert_eq!(out.len(), frames);
    assert_eq!(stats.total(), 0);
    used
}

#[test]
fn encap_and_decap_allocate_nothing_per_packet() {
    let small = run(1_000);
    let large = run(50_000);
    // 49 000 more packets through 6 stages; growth of the harness's own queues is
    // logarithmic, a per-packet allocation would add >= 49 000.
    assert!(
        large < small + 200,
        "allocations grew with packets: {small} for 1k, {large} for 50k"
    );
}
