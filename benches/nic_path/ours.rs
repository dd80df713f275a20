//! Ours: the stages' logic over the public building blocks.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use pipewright_nic::offload::{complete_partial, segment, verify_l3l4};
use pipewright_nic::rules::{
    EgressDecision, EgressKey, EgressTable, IngressDecision, IngressTable, Reader, Versioned,
};
use pipewright_nic::tunnel::{flow_hash, parse_outer, strip_outer, DecapConfig, EncapTemplate};
use pipewright_nic::wire::{ethertype, EthernetFrame, Ipv4Packet, Ipv6Packet};
use pipewright_nic::{Frame, FramePool};

/// The `egress-classify` stage's key extraction (`pipeline::egress::egress_key` is
/// crate-private), for IP frames (this suite sends no ARP).
#[inline]
fn egress_key(vf: u16, data: &[u8]) -> Option<EgressKey> {
    let eth = EthernetFrame::new_checked(data).ok()?;
    let (src_ip, dst_ip) = match eth.ethertype() {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            (
                Some(IpAddr::V4(ip.src_addr())),
                Some(IpAddr::V4(ip.dst_addr())),
            )
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            (
                Some(IpAddr::V6(ip.src_addr())),
                Some(IpAddr::V6(ip.dst_addr())),
            )
        }
        _ => return None,
    };
    Some(EgressKey {
        vf,
        src_mac: eth.src().0,
        dst_mac: eth.dst().0,
        vlan: eth.vlan(),
        ethertype: eth.ethertype(),
        src_ip,
        dst_ip,
    })
}

/// `egress-classify` for one frame: the template to encapsulate with (the stage
/// clones the `Arc` into its `Classified` item; so do we).
#[inline]
fn classify_egress(table: &EgressTable, frame: &Frame) -> Arc<EncapTemplate> {
    let key = egress_key(frame.meta.vf, frame.data()).expect("an IP frame");
    match table.classify(&key) {
        EgressDecision::Encap {
            template, counters, ..
        } => {
            counters.add(1, frame.len() as u64);
            template.clone()
        }
        other => panic!("egress dropped a good frame: {other:?}"),
    }
}

/// Egress: classify, complete checksums, encap.
pub struct OursEgress {
    table: Reader<EgressTable>,
    ip_id: u16,
}

impl OursEgress {
    pub fn new(table: &Versioned<EgressTable>) -> Self {
        Self {
            table: table.reader(),
            ip_id: 0,
        }
    }

    /// Encapsulates every frame of the burst in place; with `restore`, moves each frame
    /// start back afterwards (bench only). Returns the output bytes.
    #[inline(never)]
    pub fn burst(&mut self, frames: &mut [Frame], restore: bool) -> u64 {
        let Self { table, ip_id } = self;
        // One table version for the whole burst, as the stage does.
        let table = table.refresh();
        let mut bytes = 0;
        for frame in frames.iter_mut() {
            let template = classify_egress(table, frame);
            complete_partial(frame).expect("partial checksum");
            *ip_id = ip_id.wrapping_add(1);
            let entropy = flow_hash(frame.data());
            template
                .encap(frame, *ip_id, entropy)
                .expect("encapsulates");
            bytes += black_box(frame.data()).len() as u64;
            if restore {
                frame.pull_front(template.overhead());
            }
        }
        bytes
    }
}

/// Ingress: parse outer, match, strip, verify.
pub struct OursIngress {
    table: Reader<IngressTable>,
    decap: DecapConfig,
}

impl OursIngress {
    pub fn new(table: &Versioned<IngressTable>) -> Self {
        Self {
            table: table.reader(),
            decap: DecapConfig::default(),
        }
    }

    /// Decapsulates every frame; with `restore`, puts the outer headers back in front
    /// afterwards (bench only). Returns the inner bytes delivered.
    #[inline(never)]
    pub fn burst(&mut self, frames: &mut [Frame], restore: bool) -> u64 {
        let table = self.table.refresh();
        let mut bytes = 0;
        for frame in frames.iter_mut() {
            // ingress-match
            let outer = parse_outer(frame.data(), &self.decap).expect("outer headers");
            let vf = match table.classify(&outer.key) {
                IngressDecision::Deliver { vf, counters, .. } => {
                    counters.add(1, frame.len() as u64);
                    vf
                }
                other => panic!("ingress dropped a good frame: {other:?}"),
            };
            // ingress-decap
            strip_outer(frame, &outer);
            verify_l3l4(frame.data()).expect("inner checksums");
            frame.meta.vf = vf;
            bytes += black_box(frame.data()).len() as u64;
            if restore {
                frame.try_push_front(outer.inner_off).expect("headroom");
            }
        }
        bytes
    }
}

/// TSO: classify the super-frame, segment it into pool frames, encap each segment.
pub struct OursTso {
    table: Reader<EgressTable>,
    pool: Arc<FramePool>,
    segments: Vec<Frame>,
    ip_id: u16,
}

impl OursTso {
    pub fn new(table: &Versioned<EgressTable>) -> Self {
        Self {
            table: table.reader(),
            pool: Arc::new(FramePool::new(128, 2048, 256)),
            segments: Vec::with_capacity(64),
            ip_id: 0,
        }
    }

    /// Segments and encapsulates `frame`; `sent` sees every underlay frame before the
    /// segments go back to the pool. Returns the output bytes.
    #[inline(never)]
    pub fn one(&mut self, frame: Frame, mut sent: impl FnMut(&[u8])) -> u64 {
        let table = self.table.refresh();
        let template = classify_egress(table, &frame);
        self.segments.clear();
        segment(frame, &self.pool, &mut self.segments).expect("segments");
        let mut bytes = 0;
        for seg in self.segments.iter_mut() {
            self.ip_id = self.ip_id.wrapping_add(1);
            let entropy = flow_hash(seg.data());
            template
                .encap(seg, self.ip_id, entropy)
                .expect("encapsulates");
            sent(seg.data());
            bytes += seg.len() as u64;
        }
        self.pool.give_back(self.segments.drain(..));
        bytes
    }
}
