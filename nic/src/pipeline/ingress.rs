use pipewright_stages::exec::Transport;
use pipewright_stages::{Burst, Failures, Outbox, Stage, Stream};

use super::{NicDrop, NicStats};
use crate::offload::{verify_l3l4, Headers};
use crate::rules::{IngressDecision, IngressTable, Reader, Versioned};
use crate::tunnel::{parse_outer, strip_outer, DecapConfig, Outer};
use crate::{Frame, PartialCsum};

/// A tunnelled frame matched to the VF it is for.
#[derive(Debug)]
pub struct Matched {
    /// The frame, outer headers still on.
    pub frame: Frame,
    /// Where its inner frame is.
    pub outer: Outer,
    /// The VF to deliver to.
    pub vf: u16,
}

/// Builds the ingress path on `frames` (frames from the underlay); the result carries
/// inner frames with `meta.vf` set to the VF they are for.
pub fn ingress<'b, X: Transport>(
    frames: Stream<'b, Frame, X>,
    table: &Versioned<IngressTable>,
    decap: DecapConfig,
    stats: &NicStats,
) -> Stream<'b, Frame, X> {
    frames
        .then(
            "ingress-match",
            Match {
                table: table.reader(),
                decap,
                stats: stats.clone(),
            },
        )
        .then(
            "ingress-decap",
            Decap {
                stats: stats.clone(),
            },
        )
}

struct Match {
    table: Reader<IngressTable>,
    decap: DecapConfig,
    stats: NicStats,
}

const MATCH: &str = "ingress-match";

impl Match {
    fn one(
        table: &IngressTable,
        decap: &DecapConfig,
        stats: &NicStats,
        frame: Frame,
    ) -> Result<Matched, NicDrop> {
        let outer =
            parse_outer(frame.data(), decap).map_err(|e| stats.drop_frame(MATCH, e.reason()))?;
        match table.classify(&outer.key) {
            IngressDecision::Deliver { vf, counters, .. } => {
                counters.add(1, frame.len() as u64);
                Ok(Matched { frame, outer, vf })
            }
            IngressDecision::RuleDrop { counters, .. } => {
                counters.add(1, frame.len() as u64);
                Err(stats.drop_frame(MATCH, "rule_drop"))
            }
            IngressDecision::Drop(reason) => Err(stats.drop_frame(MATCH, reason.reason())),
        }
    }
}

impl Stage for Match {
    type In = Frame;
    type Out = Matched;
    type Error = NicDrop;

    fn process(&mut self, frame: Frame, out: &mut Outbox<'_, Matched>) -> Result<(), NicDrop> {
        out.push(Self::one(
            self.table.refresh(),
            &self.decap,
            &self.stats,
            frame,
        )?);
        Ok(())
    }

    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Frame>,
        out: &mut Outbox<'_, Matched>,
        failures: &mut Failures<'_, NicDrop>,
    ) {
        let table = self.table.refresh();
        while let Some(frame) = burst.pop() {
            match Self::one(table, &self.decap, &self.stats, frame) {
                Ok(m) => out.push(m),
                Err(e) => failures.push(e),
            }
        }
    }
}

struct Decap {
    stats: NicStats,
}

impl Stage for Decap {
    type In = Matched;
    type Out = Frame;
    type Error = NicDrop;

    #[inline]
    fn process(&mut self, m: Matched, out: &mut Outbox<'_, Frame>) -> Result<(), NicDrop> {
        let Matched {
            mut frame,
            outer,
            vf,
        } = m;
        strip_outer(&mut frame, &outer);
        if frame.meta.gso.is_some() {
            // A super-frame the underlay coalesced (GRO) from segments whose checksums
            // it verified: its TCP checksum holds the pseudo-header sum, to be
            // completed by the VF's port (or by segmentation).
            let h = Headers::parse(frame.data())
                .map_err(|e| self.stats.drop_frame("ingress-decap", e.reason()))?;
            frame.meta.csum = Some(PartialCsum {
                start: h.l4_off as u16,
                offset: 16,
            });
        } else {
            verify_l3l4(frame.data())
                .map_err(|e| self.stats.drop_frame("ingress-decap", e.reason()))?;
        }
        frame.meta.vf = vf;
        out.push(frame);
        Ok(())
    }
}
