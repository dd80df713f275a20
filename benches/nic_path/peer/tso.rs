//! The etherparse NIC's TSO: segment a super-frame with `PacketBuilder`, then
//! encapsulate every segment as the egress side does.

use etherparse::{
    IpHeaders, LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
};

use super::{OuterWriter, PeerEgress};
use crate::{MSS, TSO_SEGMENTS};

/// TSO + encap, the etherparse way.
pub struct PeerTso {
    egress: PeerEgress,
    /// One reused output buffer per segment.
    outs: Vec<Vec<u8>>,
}

impl PeerTso {
    pub fn new(writer: OuterWriter) -> Self {
        Self {
            egress: PeerEgress::new(writer),
            outs: (0..TSO_SEGMENTS)
                .map(|_| Vec::with_capacity(2048))
                .collect(),
        }
    }

    /// Segments and encapsulates one super-frame; `sent` sees every underlay frame.
    /// Returns the output bytes.
    #[inline(never)]
    pub fn one(&mut self, vf: u16, frame: &[u8], mut sent: impl FnMut(&[u8])) -> u64 {
        let pkt = SlicedPacket::from_ethernet(frame).expect("a good super-frame");
        let e = &mut self.egress;
        let tunnel = e
            .lookup(vf, &pkt, frame.len())
            .expect("a rule for the frame");
        let (
            Some(LinkSlice::Ethernet2(eth)),
            Some(NetSlice::Ipv4(ip)),
            Some(TransportSlice::Tcp(tcp)),
        ) = (&pkt.link, &pkt.net, &pkt.transport)
        else {
            panic!("not TCP/IPv4");
        };
        let (ip0, tcp0) = (ip.header().to_header(), tcp.to_header());
        let payload = tcp.payload();
        let count = payload.len().div_ceil(MSS);
        if self.outs.len() < count {
            self.outs.resize_with(count, || Vec::with_capacity(2048));
        }
        let mut bytes = 0;
        for (i, (chunk, out)) in payload.chunks(MSS).zip(self.outs.iter_mut()).enumerate() {
            let mut iph = ip0.clone();
            iph.identification = ip0.identification.wrapping_add(i as u16);
            let mut th: TcpHeader = tcp0.clone();
            th.sequence_number = tcp0.sequence_number.wrapping_add((i * MSS) as u32);
            if i + 1 != count {
                th.fin = false;
                th.psh = false;
            }
            if i > 0 {
                th.cwr = false;
            }
            let outer = e.next_outer(tunnel, &pkt);
            // The inner segment goes after the VXLAN header: the builder wants the
            // outer UDP payload as one slice.
            e.scratch.clear();
            e.scratch.extend_from_slice(&outer.vxlan());
            PacketBuilder::ethernet2(eth.source(), eth.destination())
                .ip(IpHeaders::Ipv4(iph, Default::default()))
                .tcp_header(th)
                .write(&mut e.scratch, chunk)
                .expect("inner segment");
            assert!(
                20 + 8 + e.scratch.len() <= e.mtu,
                "would exceed the underlay MTU"
            );
            out.clear();
            match e.writer {
                OuterWriter::Builder => outer.build(&e.scratch, out),
                OuterWriter::Headers => {
                    outer.headers(e.scratch.len(), out);
                    out.extend_from_slice(&e.scratch);
                }
            }
            sent(out);
            bytes += out.len() as u64;
        }
        bytes
    }
}
