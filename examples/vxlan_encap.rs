//! A VF's egress path on the runtime: build a rule table in code, push frames from
//! the VF through classify → offload → VXLAN encap, and print the counters.
//!
//! `cargo run --release --example vxlan_encap`

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pipewright::nic::pipeline::{egress, EgressConfig, NicStats};
use pipewright::nic::rules::{EgressAction, EgressRule, EgressTable, Versioned, VfIdentity};
use pipewright::nic::tunnel::{parse_outer, DecapConfig, TunnelKind, TunnelSpec};
use pipewright::nic::wire::{checksum, ip_proto};
use pipewright::nic::{Frame, FramePool};
use pipewright::{PipelineBuilder, Plan, Runtime};

const VF_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tunnel = Arc::new(TunnelSpec {
        kind: TunnelKind::Vxlan,
        vni: 5001,
        outer_src: "192.168.10.1".parse()?,
        outer_dst: "192.168.10.2".parse()?,
        udp_dst_port: 4789,
        df: true,
        ttl: 64,
        outer_src_mac: [2, 0xaa, 0, 0, 0, 1],
        outer_dst_mac: [2, 0xaa, 0, 0, 0, 2],
        options: vec![],
    });
    let table = EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: VF_MAC,
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1))],
            vlan: None,
        })
        .rule(EgressRule {
            id: 1,
            vf: 1,
            dst_mac: None,
            dst_prefix: Some("10.1.0.0/16".parse()?),
            vlan: None,
            ethertype: None,
            action: EgressAction::Encap(tunnel),
        })
        .build()?;

    let stats = NicStats::new();
    let config = EgressConfig {
        table: Versioned::new(table),
        pool: Arc::new(FramePool::new(128, 2048, 256)),
        stats: stats.clone(),
    };
    let b = PipelineBuilder::new();
    let (from_vf, frames) = b.input::<Frame>("from-vf");
    let ports = egress(frames, &config);
    let underlay = ports.underlay.output("underlay");
    ports.to_vf.for_each("to-vf", |_| {});
    let mut running = Runtime::start(b.build()?, Plan::fused())?;
    let rx = running.output(&underlay).unwrap();
    // The underlay side drains concurrently: a full output ring would stop the VF.
    let underlay_port = std::thread::spawn(move || rx.collect());
    let mut tx = running.input(&from_vf).unwrap();
    for i in 0..10_000u32 {
        // Every 1000th frame is sent to an address no rule covers.
        let dst = if i % 1000 == 999 {
            Ipv4Addr::new(172, 16, 0, 1)
        } else {
            Ipv4Addr::new(10, 1, 0, 2)
        };
        tx.send(udp_from_vf(dst, &i.to_be_bytes()))?;
    }
    drop(tx);
    let report = running.drain()?;
    let frames = underlay_port.join().expect("underlay thread");
    let first = parse_outer(frames[0].data(), &DecapConfig::default())?;
    println!(
        "{} frames encapsulated; first: VNI {} {} -> {}",
        frames.len(),
        first.key.vni,
        first.key.outer_src,
        first.key.outer_dst
    );
    let counters = config.table.current().1;
    let rule = counters.counters(1).unwrap();
    println!("rule 1: {} packets, {} bytes", rule.packets(), rule.bytes());
    for (stage, reason, n) in stats.all() {
        println!("dropped at {stage}: {n} ({reason})");
    }
    println!("\n{}", report.snapshot);
    Ok(())
}

/// Ethernet/IPv4/UDP from the VF, checksums complete.
fn udp_from_vf(dst: Ipv4Addr, payload: &[u8]) -> Frame {
    let src = Ipv4Addr::new(10, 1, 0, 1);
    let mut f = vec![2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&VF_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = ip_proto::UDP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::finish(checksum::sum(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x13, 0x88, 0x17, 0x70]);
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let mut frame = Frame::from_bytes(&f);
    frame.meta.vf = 1;
    frame
}
