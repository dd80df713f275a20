//! A tunnel defined outside the crate, through the `Tunnel` trait alone, runs the whole
//! egress and ingress paths: no other code changes.
#![cfg(not(loom))]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pipewright_nic::pipeline::{egress, ingress, EgressConfig, NicStats};
use pipewright_nic::rules::{
    EgressAction, EgressRule, EgressTable, IngressAction, IngressRule, IngressTable, Versioned,
    VfIdentity,
};
use pipewright_nic::tunnel::{DecapConfig, DecapError, EncapError, Tunnel, TunnelKind, TunnelSpec};
use pipewright_nic::wire::WireError;
use pipewright_nic::{Frame, FramePool};
use pipewright_stages::inline::InlineTransport;
use pipewright_stages::PipelineBuilder;

const MINI: TunnelKind = TunnelKind::Custom(1);
const MINI_PORT: u16 = 9999;

/// A 4-byte header: magic 0xA5, reserved, 16-bit VNI.
#[derive(Debug)]
struct Mini;

impl Tunnel for Mini {
    fn kind(&self) -> TunnelKind {
        MINI
    }
    fn max_vni(&self) -> u32 {
        0xffff
    }
    fn header_len(&self, _spec: &TunnelSpec) -> Result<usize, EncapError> {
        Ok(4)
    }
    fn write_template(&self, spec: &TunnelSpec, h: &mut [u8]) -> Result<(), EncapError> {
        h[0] = 0xA5;
        h[2..4].copy_from_slice(&(spec.vni as u16).to_be_bytes());
        Ok(())
    }
    fn decode(&self, p: &[u8], _config: &DecapConfig) -> Result<(u32, usize), DecapError> {
        match p {
            [0xA5, _, hi, lo, ..] => Ok((u32::from(u16::from_be_bytes([*hi, *lo])), 4)),
            [_, _, _, _, ..] => Err(WireError::BadField {
                layer: "mini",
                field: "magic",
            }
            .into()),
            _ => Err(WireError::Truncated {
                layer: "mini",
                needed: 4,
                got: p.len(),
            }
            .into()),
        }
    }
}

#[test]
fn a_user_defined_tunnel_runs_both_paths() {
    let (mac1, mac2) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let spec = Arc::new(TunnelSpec {
        kind: MINI,
        vni: 0x1234,
        outer_src: "192.168.0.1".parse().unwrap(),
        outer_dst: "192.168.0.2".parse().unwrap(),
        udp_dst_port: MINI_PORT,
        df: true,
        ttl: 64,
        outer_src_mac: [0; 6],
        outer_dst_mac: [0; 6],
        options: vec![],
    });
    let rule = EgressRule {
        id: 1,
        vf: 1,
        dst_mac: None,
        dst_prefix: Some("10.0.0.0/8".parse().unwrap()),
        vlan: None,
        ethertype: None,
        action: EgressAction::Encap(spec),
    };
    let identity = VfIdentity {
        vf: 1,
        mac: mac1,
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
        vlan: None,
    };
    // Without the implementation registered, the table says what is missing.
    let missing = EgressTable::builder()
        .vf(identity.clone())
        .rule(rule.clone())
        .build()
        .unwrap_err();
    assert!(
        missing.to_string().contains("no tunnel implementation"),
        "{missing}"
    );
    let table = EgressTable::builder()
        .vf(identity)
        .rule(rule)
        .tunnel(Arc::new(Mini))
        .build()
        .unwrap();
    let ingress_table = IngressTable::builder()
        .vf(2, mac2)
        .rule(IngressRule {
            id: 1,
            kind: MINI,
            vni: 0x1234,
            outer_dst: "192.168.0.2".parse().unwrap(),
            outer_src: None,
            udp_dst_port: Some(MINI_PORT),
            inner_dst_mac: None,
            action: IngressAction::Deliver { vf: 2 },
        })
        .build()
        .unwrap();

    let stats = NicStats::new();
    let b = PipelineBuilder::<InlineTransport>::new();
    let (input, frames) = b.input::<Frame>("from-vf");
    let config = EgressConfig {
        table: Versioned::new(table),
        pool: Arc::new(FramePool::new(128, 2048, 8)),
        stats: stats.clone(),
    };
    let ports = egress(frames, &config);
    ports.to_vf.for_each("to-vf", |_| {});
    let decap = DecapConfig::default().tunnel(MINI_PORT, Arc::new(Mini));
    let delivered = ingress(
        ports.underlay,
        &Versioned::new(ingress_table),
        decap,
        &stats,
    )
    .output("delivered");
    let mut run = b.build().unwrap().run_inline();
    // An ARP-free IPv4 frame from VF 1 to VF 2 (no L4, so no checksum to complete).
    let mut f = mac2.to_vec();
    f.extend_from_slice(&mac1);
    f.extend_from_slice(&[
        0x08, 0x00, 0x45, 0, 0, 24, 0, 0, 0, 0, 64, 253, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 1, 2, 3, 4,
    ]);
    let c = pipewright_nic::wire::checksum::finish(pipewright_nic::wire::checksum::sum(&f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let mut frame = Frame::from_bytes(&f);
    frame.meta.vf = 1;
    run.send_all(&input, [frame]);
    run.finish().unwrap();
    let out = run.take_output(&delivered);
    assert_eq!(out.len(), 1, "{:?}", stats.all());
    assert_eq!(out[0].data(), &f[..]);
    assert_eq!(out[0].meta.vf, 2);
}
