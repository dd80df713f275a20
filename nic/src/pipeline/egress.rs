use std::net::IpAddr;
use std::sync::Arc;

use pipewright_stages::exec::Transport;
use pipewright_stages::{Burst, Failures, Outbox, Stage, Stream};

use super::{Direction, NicDrop, NicStats};
use crate::offload::{complete_partial, segment, SuperFrame};
use crate::rules::{EgressDecision, EgressDrop, EgressKey, EgressTable, Reader, Versioned};
use crate::tunnel::{flow_hash, EncapTemplate};
use crate::wire::{
    ethertype, ArpOp, ArpPacket, ArpRepr, EthernetFrame, Ipv4Packet, Ipv6Packet, MacAddr,
};
use crate::{Frame, FramePool, Gso, GsoKind};

/// What egress decided for a frame.
#[derive(Debug, Clone)]
pub enum EgressVerdict {
    /// Encapsulate with this template (a unicast rule).
    Encap(Arc<EncapTemplate>),
    /// Flood to the remote VTEP with this template.
    Flood(Arc<EncapTemplate>),
    /// Send back to the VF (an ARP reply built in place).
    ToVf,
}

/// A classified egress frame.
#[derive(Debug)]
pub struct Classified {
    /// The frame.
    pub frame: Frame,
    /// What to do with it.
    pub verdict: EgressVerdict,
}

/// A frame ready for encapsulation.
#[derive(Debug)]
pub struct ToEncap {
    /// The inner frame (checksums complete, at most one MSS of payload).
    pub frame: Frame,
    /// Its outer header.
    pub template: Arc<EncapTemplate>,
}

/// What the egress path needs.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The egress rule table (updated live by publishing new versions).
    pub table: Versioned<EgressTable>,
    /// Frames for TSO/USO segments.
    pub pool: Arc<FramePool>,
    /// Drop counters.
    pub stats: NicStats,
}

/// The two streams out of the egress path.
#[derive(Debug)]
pub struct EgressPorts<'b, X: Transport> {
    /// Encapsulated frames for the underlay.
    pub underlay: Stream<'b, Frame, X>,
    /// Frames answered locally (ARP replies) for the VF they came from.
    pub to_vf: Stream<'b, Frame, X>,
}

/// Builds the egress path on `frames` (frames from VFs, `meta.vf` set).
pub fn egress<'b, X: Transport>(
    frames: Stream<'b, Frame, X>,
    config: &EgressConfig,
) -> EgressPorts<'b, X> {
    egress_with(frames, config, false)
}

/// [`egress`], optionally keeping TCP super-frames (TSO) whole: encapsulated once
/// ([`EncapTemplate::encap_super`]) for an underlay that cuts them itself while
/// copying them into its GSO sends (the socket underlay), instead of being cut here.
pub(crate) fn egress_with<'b, X: Transport>(
    frames: Stream<'b, Frame, X>,
    config: &EgressConfig,
    keep_super_frames: bool,
) -> EgressPorts<'b, X> {
    let classify = Classify {
        table: config.table.reader(),
        stats: config.stats.clone(),
    };
    let [tunnel, to_vf] = frames
        .then("egress-classify", classify)
        .route("egress-route", |c: &Classified| {
            usize::from(matches!(c.verdict, EgressVerdict::ToVf))
        });
    let offload = Offload {
        pool: config.pool.clone(),
        stats: config.stats.clone(),
        scratch: Vec::new(),
        keep_super_frames,
    };
    let encap = Encap {
        ip_id: 0,
        stats: config.stats.clone(),
    };
    let underlay = tunnel
        .then("egress-offload", offload)
        .then("egress-encap", encap);
    let to_vf = to_vf.then(
        "egress-to-vf",
        pipewright_stages::stage::map(|c: Classified| c.frame),
    );
    EgressPorts { underlay, to_vf }
}

/// Extracts the egress rule key of a VF frame.
pub(crate) fn egress_key(vf: u16, data: &[u8]) -> Result<EgressKey, crate::wire::WireError> {
    let eth = EthernetFrame::new_checked(data)?;
    let (src_ip, dst_ip) = match eth.ethertype() {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(eth.payload())?;
            (
                Some(IpAddr::V4(ip.src_addr())),
                Some(IpAddr::V4(ip.dst_addr())),
            )
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(eth.payload())?;
            (
                Some(IpAddr::V6(ip.src_addr())),
                Some(IpAddr::V6(ip.dst_addr())),
            )
        }
        ethertype::ARP => {
            let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload())?)?;
            (Some(IpAddr::V4(arp.sender_ip)), None)
        }
        other => return Err(crate::wire::WireError::UnknownEtherType(other)),
    };
    Ok(EgressKey {
        vf,
        src_mac: eth.src().0,
        dst_mac: eth.dst().0,
        vlan: eth.vlan(),
        ethertype: eth.ethertype(),
        src_ip,
        dst_ip,
    })
}

struct Classify {
    table: Reader<EgressTable>,
    stats: NicStats,
}

const CLASSIFY: &str = "egress-classify";

impl Classify {
    fn one(table: &EgressTable, stats: &NicStats, mut frame: Frame) -> Result<Classified, NicDrop> {
        let key = egress_key(frame.meta.vf, frame.data())
            .map_err(|e| stats.drop_frame(CLASSIFY, e.reason()))?;
        let bytes = frame.len() as u64;
        match table.classify(&key) {
            EgressDecision::Encap {
                template, counters, ..
            } => {
                counters.add(1, bytes);
                Ok(Classified {
                    frame,
                    verdict: EgressVerdict::Encap(template.clone()),
                })
            }
            EgressDecision::Flood {
                template, counters, ..
            } => {
                counters.add(1, bytes);
                Ok(Classified {
                    frame,
                    verdict: EgressVerdict::Flood(template.clone()),
                })
            }
            EgressDecision::AnswerArp { counters, .. } => {
                counters.add(1, bytes);
                answer_arp(table, &mut frame)
                    .map_err(|reason| stats.drop_frame(CLASSIFY, reason))?;
                Ok(Classified {
                    frame,
                    verdict: EgressVerdict::ToVf,
                })
            }
            EgressDecision::RuleDrop { counters, .. } => {
                counters.add(1, bytes);
                Err(stats.drop_frame(CLASSIFY, "rule_drop"))
            }
            EgressDecision::Drop(reason) => {
                Err(stats.drop_frame(CLASSIFY, EgressDrop::reason(reason)))
            }
        }
    }
}

/// Rewrites an ARP request into the reply, in place, from the table's neighbours.
fn answer_arp(table: &EgressTable, frame: &mut Frame) -> Result<(), &'static str> {
    let vf = frame.meta.vf;
    let data = frame.data_mut();
    let eth = EthernetFrame::new_checked(&data[..]).map_err(|e| e.reason())?;
    let l2 = eth.header_len();
    let request = ArpRepr::parse(&ArpPacket::new_checked(&data[l2..]).map_err(|e| e.reason())?)
        .map_err(|e| e.reason())?;
    if request.op != ArpOp::Request {
        return Err("arp_not_request");
    }
    let mac = table.neighbour(vf, request.target_ip).ok_or("arp_miss")?;
    let reply = ArpRepr {
        op: ArpOp::Reply,
        sender_mac: MacAddr(mac),
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    };
    reply
        .emit(&mut ArpPacket::new_unchecked(&mut data[l2..]))
        .map_err(|e| e.reason())?;
    let mut eth = EthernetFrame::new_unchecked(&mut data[..]);
    eth.set_dst(request.sender_mac);
    eth.set_src(MacAddr(mac));
    Ok(())
}

impl Stage for Classify {
    type In = Frame;
    type Out = Classified;
    type Error = NicDrop;

    fn process(&mut self, frame: Frame, out: &mut Outbox<'_, Classified>) -> Result<(), NicDrop> {
        out.push(Self::one(self.table.refresh(), &self.stats, frame)?);
        Ok(())
    }

    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Frame>,
        out: &mut Outbox<'_, Classified>,
        failures: &mut Failures<'_, NicDrop>,
    ) {
        // One table version for the whole burst.
        let table = self.table.refresh();
        while let Some(frame) = burst.pop() {
            match Self::one(table, &self.stats, frame) {
                Ok(c) => out.push(c),
                Err(e) => failures.push(e),
            }
        }
    }
}

struct Offload {
    pool: Arc<FramePool>,
    stats: NicStats,
    scratch: Vec<Frame>,
    keep_super_frames: bool,
}

impl Stage for Offload {
    type In = Classified;
    type Out = ToEncap;
    type Error = NicDrop;

    fn process(&mut self, item: Classified, out: &mut Outbox<'_, ToEncap>) -> Result<(), NicDrop> {
        let template = match item.verdict {
            EgressVerdict::Encap(t) | EgressVerdict::Flood(t) => t,
            EgressVerdict::ToVf => {
                return Err(self.stats.drop_frame("egress-offload", "misrouted"))
            }
        };
        let mut frame = item.frame;
        let tso = matches!(
            frame.meta.gso,
            Some(Gso {
                kind: GsoKind::TcpV4 | GsoKind::TcpV6,
                ..
            })
        );
        if tso && self.keep_super_frames {
            // Cut (and checksummed) by the underlay, in its one copy of the payload.
            out.push(ToEncap { frame, template });
            return Ok(());
        }
        if frame.meta.gso.is_none() {
            complete_partial(&mut frame)
                .map_err(|e| self.stats.drop_frame("egress-offload", e.reason()))?;
            out.push(ToEncap { frame, template });
            return Ok(());
        }
        self.scratch.clear();
        segment(frame, &self.pool, &mut self.scratch)
            .map_err(|e| self.stats.drop_frame("egress-offload", e.reason()))?;
        let copied = self.scratch.iter().map(Frame::len).sum();
        self.stats.count_copy(Direction::Egress, copied);
        for frame in self.scratch.drain(..) {
            out.push(ToEncap {
                frame,
                template: template.clone(),
            });
        }
        Ok(())
    }
}

struct Encap {
    ip_id: u16,
    stats: NicStats,
}

impl Stage for Encap {
    type In = ToEncap;
    type Out = Frame;
    type Error = NicDrop;

    #[inline]
    fn process(&mut self, item: ToEncap, out: &mut Outbox<'_, Frame>) -> Result<(), NicDrop> {
        let ToEncap {
            mut frame,
            template,
        } = item;
        self.ip_id = self.ip_id.wrapping_add(1);
        let entropy = flow_hash(frame.data());
        let encapsulated = match frame.meta.gso {
            // A super-frame kept whole: one outer header for all its segments.
            Some(gso) => {
                let cut = SuperFrame::parse(frame.data(), gso)
                    .map_err(|e| self.stats.drop_frame("egress-encap", e.reason()))?;
                let segment_len = cut.hdr_len + cut.size;
                template.encap_super(&mut frame, self.ip_id, entropy, segment_len)
            }
            None => template.encap(&mut frame, self.ip_id, entropy),
        };
        encapsulated.map_err(|e| self.stats.drop_frame("egress-encap", e.reason()))?;
        out.push(frame);
        Ok(())
    }
}
