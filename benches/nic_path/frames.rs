//! Setup: tables, frames.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pipewright_nic::rules::{
    EgressAction, EgressRule, EgressTable, IngressAction, IngressRule, IngressTable, Versioned,
    VfIdentity,
};
use pipewright_nic::tunnel::{TunnelKind, TunnelSpec};
use pipewright_nic::wire::{checksum, ethertype, ip_proto};
use pipewright_nic::{Frame, Gso, GsoKind};

use crate::ours::OursEgress;
use crate::{
    BURST, MSS, RX_MAC, RX_VF, TSO_HDR, TSO_SEGMENTS, TTL, UNDERLAY_MTU, VF, VF_IP, VF_MAC, VNI,
    VTEP_DST, VTEP_DST_MAC, VTEP_SRC, VTEP_SRC_MAC, VXLAN_PORT,
};

fn spec() -> Arc<TunnelSpec> {
    Arc::new(TunnelSpec {
        kind: TunnelKind::Vxlan,
        vni: VNI,
        outer_src: IpAddr::V4(VTEP_SRC),
        outer_dst: IpAddr::V4(VTEP_DST),
        udp_dst_port: VXLAN_PORT,
        df: true,
        ttl: TTL,
        outer_src_mac: VTEP_SRC_MAC,
        outer_dst_mac: VTEP_DST_MAC,
        options: vec![],
    })
}

pub fn egress_table() -> EgressTable {
    EgressTable::builder()
        .vf(VfIdentity {
            vf: VF,
            mac: VF_MAC,
            ips: vec![IpAddr::V4(VF_IP)],
            vlan: None,
        })
        .rule(EgressRule {
            id: 1,
            vf: VF,
            dst_mac: None,
            dst_prefix: Some("10.0.0.0/24".parse().expect("prefix")),
            vlan: None,
            ethertype: None,
            action: EgressAction::Encap(spec()),
        })
        .underlay_mtu(UNDERLAY_MTU)
        .build()
        .expect("egress table")
}

pub fn ingress_table() -> IngressTable {
    IngressTable::builder()
        .vf(RX_VF, RX_MAC)
        .rule(IngressRule {
            id: 1,
            kind: TunnelKind::Vxlan,
            vni: VNI,
            outer_dst: IpAddr::V4(VTEP_DST),
            outer_src: Some(IpAddr::V4(VTEP_SRC)),
            udp_dst_port: None,
            inner_dst_mac: None,
            action: IngressAction::Deliver { vf: RX_VF },
        })
        .build()
        .expect("ingress table")
}

fn ipv4_header(total_len: usize, id: u16, proto: u8, dst: Ipv4Addr) -> [u8; 20] {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = TTL;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&VF_IP.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::finish(checksum::sum(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// An Ethernet/IPv4/UDP frame of `frame_len` bytes from the VF, flow `flow`, with
/// complete checksums.
pub fn inner_udp(frame_len: usize, flow: usize) -> Vec<u8> {
    let payload_len = frame_len - 42;
    let dst = Ipv4Addr::new(10, 0, 0, 2 + (flow % 200) as u8);
    let mut f = Vec::with_capacity(frame_len);
    f.extend_from_slice(&RX_MAC);
    f.extend_from_slice(&VF_MAC);
    f.extend_from_slice(&ethertype::IPV4.to_be_bytes());
    f.extend_from_slice(&ipv4_header(
        28 + payload_len,
        flow as u16,
        ip_proto::UDP,
        dst,
    ));
    let udp_len = (8 + payload_len) as u16;
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&(10_000 + flow as u16).to_be_bytes());
    udp.extend_from_slice(&6000u16.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend((0..payload_len).map(|j| (j * 7 + flow) as u8));
    let pseudo = checksum::pseudo_v4(VF_IP, dst, ip_proto::UDP, udp_len);
    let c = match checksum::finish(checksum::combine(pseudo, checksum::sum(&udp))) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    assert_eq!(f.len(), frame_len);
    f
}

/// A TSO super-frame from the VF: Ethernet/IPv4/TCP (timestamps option) with
/// `TSO_SEGMENTS * MSS` payload bytes, GSO TcpV4 at `MSS`, flow `flow`.
pub fn tso_superframe(flow: usize) -> Frame {
    let payload_len = TSO_SEGMENTS * MSS;
    let dst = Ipv4Addr::new(10, 0, 0, 2 + (flow % 200) as u8);
    let mut f = Vec::with_capacity(TSO_HDR + payload_len);
    f.extend_from_slice(&RX_MAC);
    f.extend_from_slice(&VF_MAC);
    f.extend_from_slice(&ethertype::IPV4.to_be_bytes());
    f.extend_from_slice(&ipv4_header(
        20 + 32 + payload_len,
        0x1000 + flow as u16,
        ip_proto::TCP,
        dst,
    ));
    let mut tcp = Vec::with_capacity(32 + payload_len);
    tcp.extend_from_slice(&(40_000 + flow as u16).to_be_bytes());
    tcp.extend_from_slice(&5201u16.to_be_bytes());
    tcp.extend_from_slice(&(0x1000_0000u32 + flow as u32 * 0x0100_0000).to_be_bytes());
    tcp.extend_from_slice(&0x2000_0000u32.to_be_bytes());
    tcp.push(8 << 4); // 32-byte header
    tcp.push(0x18); // ACK | PSH
    tcp.extend_from_slice(&502u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    tcp.extend_from_slice(&[1, 1, 8, 10]); // NOP NOP timestamps
    tcp.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp.extend_from_slice(&0x0abc_def0u32.to_be_bytes());
    tcp.extend((0..payload_len).map(|j| (j * 13 + flow) as u8));
    let pseudo = checksum::pseudo_v4(VF_IP, dst, ip_proto::TCP, tcp.len() as u16);
    let c = checksum::finish(checksum::combine(pseudo, checksum::sum(&tcp)));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    let mut frame = Frame::from_bytes(&f);
    frame.meta.vf = VF;
    frame.meta.gso = Some(Gso {
        kind: GsoKind::TcpV4,
        size: MSS as u16,
    });
    frame
}

/// A burst of VF frames of `frame_len` bytes.
pub fn vf_burst(frame_len: usize) -> Vec<Frame> {
    (0..BURST)
        .map(|i| {
            let mut f = Frame::from_bytes(&inner_udp(frame_len, i));
            f.meta.vf = VF;
            f
        })
        .collect()
}

/// A burst of underlay frames: VF frames of `frame_len` bytes encapsulated by our egress.
pub fn underlay_burst(frame_len: usize) -> Vec<Frame> {
    let mut frames = vf_burst(frame_len);
    let mut ours = OursEgress::new(&Versioned::new(egress_table()));
    ours.burst(&mut frames, false);
    for f in &mut frames {
        f.meta = Default::default();
    }
    frames
}
