//! Receive coalescing (GRO) of tunnelled TCP segments: consecutive datagrams that
//! carry consecutive segments of one inner TCP flow become one TSO super-frame, handed
//! to a VF as one unit (a TAP writes it with a virtio-net GSO header), the reverse of
//! [`SuperFrame`](super::SuperFrame). Pure functions over byte slices, no I/O.
//!
//! A segment joins a run only if the kernel's own GRO would merge it: its inner TCP
//! checksum verifies (the super-frame is delivered with its checksum marked to be
//! completed, so it is checked here, segment by segment), every header byte but the
//! per-segment fields (IP length, id and checksum; TCP sequence, flags and checksum)
//! equals the run's first segment's, its sequence number follows the previous
//! segment's, the previous segment carried a full segment size and no PSH, and it
//! carries only ACK (and PSH) flags.

use super::{Headers, L3};
use crate::wire::checksum;
use crate::{Gso, GsoKind};

const TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// Most bytes of a coalesced datagram (tunnel header, inner headers, payload), so its
/// outer UDP length and the inner IP length stay below 64 KiB.
pub(crate) const MAX_COALESCED: usize = 65_000;

/// A datagram that may take part in a run: where its parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpSeg {
    /// Offset of the inner Ethernet frame in the datagram (after the tunnel header).
    inner_off: usize,
    /// The inner frame's headers, offsets from the inner frame's start.
    h: Headers,
    /// Offset of the TCP payload in the datagram.
    pub(crate) data_off: usize,
    seq: u32,
    flags: u8,
    /// TCP payload bytes.
    pub(crate) len: usize,
}

impl TcpSeg {
    /// Reads `datagram` (a tunnel header of `inner_off` bytes, then an Ethernet
    /// frame) as a segment that may be coalesced, or `None`: not TCP over IPv4/IPv6,
    /// padded, carrying flags other than ACK/PSH, empty, or with a bad checksum.
    pub(crate) fn parse(datagram: &[u8], inner_off: usize) -> Option<Self> {
        let inner = datagram.get(inner_off..)?;
        let h = Headers::parse(inner).ok()?;
        if h.protocol != TCP || h.ip_end != inner.len() {
            return None;
        }
        let tcp = inner.get(h.l4_off..)?;
        if tcp.len() < 20 {
            return None;
        }
        let hdr = usize::from(tcp[12] >> 4) * 4;
        if hdr < 20 || hdr > tcp.len() {
            return None;
        }
        let flags = tcp[13];
        if flags & !(TCP_ACK | TCP_PSH) != 0 || flags & TCP_ACK == 0 {
            return None;
        }
        let len = tcp.len() - hdr;
        if len == 0 {
            return None;
        }
        if h.l3 == L3::V4 && !checksum::is_valid(checksum::sum(&inner[h.l3_off..h.l4_off])) {
            return None;
        }
        let sum = checksum::combine(h.pseudo_sum(inner, tcp.len()), checksum::sum(tcp));
        if !checksum::is_valid(sum) {
            return None;
        }
        Some(Self {
            inner_off,
            h,
            data_off: inner_off + h.l4_off + hdr,
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            flags,
            len,
        })
    }

    /// The GSO request of a super-frame whose first segment is this one.
    pub(crate) fn gso(&self) -> Gso {
        Gso {
            kind: match self.h.l3 {
                L3::V4 => GsoKind::TcpV4,
                L3::V6 => GsoKind::TcpV6,
            },
            size: self.len as u16,
        }
    }

    /// Header bytes (datagram offsets) that may differ between segments of one run.
    fn per_segment_fields(&self) -> [std::ops::Range<usize>; 5] {
        let (l3, l4) = (
            self.inner_off + self.h.l3_off,
            self.inner_off + self.h.l4_off,
        );
        let ip = match self.h.l3 {
            // Total length and id; the header checksum.
            L3::V4 => [l3 + 2..l3 + 6, l3 + 10..l3 + 12],
            // Payload length (and nothing else).
            L3::V6 => [l3 + 4..l3 + 6, l3 + 4..l3 + 6],
        };
        // Sequence number; flags; checksum.
        [
            ip[0].clone(),
            ip[1].clone(),
            l4 + 4..l4 + 8,
            l4 + 13..l4 + 14,
            l4 + 16..l4 + 18,
        ]
    }
}

/// Whether `next` (datagram `next_d`) continues a run that starts with `first`
/// (datagram `first_d`), ends with `last` and holds `run_bytes` bytes so far.
pub(crate) fn continues(
    first_d: &[u8],
    first: &TcpSeg,
    last: &TcpSeg,
    run_bytes: usize,
    next_d: &[u8],
    next: &TcpSeg,
) -> bool {
    if last.len != first.len
        || last.flags & TCP_PSH != 0
        || next.len > first.len
        || next.data_off != first.data_off
        || next.inner_off != first.inner_off
        || next.h
            != (Headers {
                ip_end: next.h.ip_end,
                ..first.h
            })
        || next.seq != last.seq.wrapping_add(last.len as u32)
        || run_bytes + next.len > MAX_COALESCED
    {
        return false;
    }
    // Every header byte outside the per-segment fields equal.
    let mut at = 0;
    let mut fields = first.per_segment_fields();
    fields.sort_by_key(|r| r.start);
    for r in fields {
        if r.start > at && first_d[at..r.start] != next_d[at..r.start] {
            return false;
        }
        at = at.max(r.end);
    }
    first_d[at..first.data_off] == next_d[at..first.data_off]
}

/// Consecutive datagrams delivered as one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    /// The datagrams' indices.
    pub(crate) range: std::ops::Range<usize>,
    /// For a run of two or more: its first segment and its last segment's TCP flags
    /// (for [`finish_merged`]).
    pub(crate) merge: Option<(TcpSeg, u8)>,
}

impl Run {
    /// A run of datagram `i` alone.
    pub(crate) fn single(i: usize) -> Self {
        Self {
            range: i..i + 1,
            merge: None,
        }
    }
}

/// Splits `datagrams` into runs to deliver: each range is a run of datagrams that
/// coalesce into one super-frame (a range of one: delivered as it came). `inner_off`
/// says where a datagram's inner frame starts (its tunnel header's length), `None`
/// for one that is not a tunnel packet this data plane decodes.
pub(crate) fn plan_runs(
    datagrams: &[&[u8]],
    inner_off: impl Fn(&[u8]) -> Option<usize>,
) -> Vec<Run> {
    let segs: Vec<Option<TcpSeg>> = datagrams
        .iter()
        .map(|d| inner_off(d).and_then(|off| TcpSeg::parse(d, off)))
        .collect();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < datagrams.len() {
        let Some(first) = segs[i] else {
            runs.push(Run::single(i));
            i += 1;
            continue;
        };
        let mut last = first;
        let mut bytes = datagrams[i].len();
        let mut j = i + 1;
        while let Some(next) = segs.get(j).copied().flatten() {
            if !continues(datagrams[i], &first, &last, bytes, datagrams[j], &next) {
                break;
            }
            bytes += next.len;
            last = next;
            j += 1;
        }
        runs.push(Run {
            range: i..j,
            merge: (j - i > 1).then_some((first, last.flags)),
        });
        i = j;
    }
    runs
}

/// Fixes the headers of a coalesced datagram `merged` (the first segment's headers,
/// then every segment's payload; `last_flags` from the run's last segment): the inner
/// IP length (and IPv4 header checksum), the TCP flags, and the TCP checksum set to
/// the pseudo-header sum, to be completed by whoever segments or delivers it.
pub(crate) fn finish_merged(merged: &mut [u8], first: &TcpSeg, last_flags: u8) {
    let (l3, l4) = (
        first.inner_off + first.h.l3_off,
        first.inner_off + first.h.l4_off,
    );
    let ip_len = merged.len() - l3;
    match first.h.l3 {
        L3::V4 => {
            merged[l3 + 2..l3 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            merged[l3 + 10..l3 + 12].fill(0);
            let c = checksum::finish(checksum::sum(&merged[l3..l4]));
            merged[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        L3::V6 => merged[l3 + 4..l3 + 6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes()),
    }
    merged[l4 + 13] = last_flags;
    let h = Headers {
        ip_end: merged.len() - first.inner_off,
        ..first.h
    };
    let pseudo = h.pseudo_sum(&merged[first.inner_off..], merged.len() - l4);
    merged[l4 + 16..l4 + 18].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::segment;
    use crate::pool::FramePool;
    use crate::{Frame, PartialCsum};
    use proptest::prelude::*;

    const TUNNEL: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 100, 0];

    /// A TSO super-frame (Ethernet + IPv4 or IPv6 + TCP with `opts` option bytes).
    fn tso_frame(payload: &[u8], mss: u16, v6: bool, opts: usize, flags: u8) -> Frame {
        let tcp_len = 20 + opts;
        let mut d = vec![0u8; 14];
        let l4;
        if v6 {
            d[12..14].copy_from_slice(&[0x86, 0xdd]);
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&((tcp_len + payload.len()) as u16).to_be_bytes());
            ip[6] = TCP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&[0xfd; 16]);
            ip[24..40].copy_from_slice(&[0xfe; 16]);
            d.extend(ip);
            l4 = 54;
        } else {
            d[12..14].copy_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + tcp_len + payload.len()) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            ip[8] = 64;
            ip[9] = TCP;
            ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
            ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
            d.extend(ip);
            l4 = 34;
        }
        let mut tcp = vec![0u8; tcp_len];
        tcp[0..2].copy_from_slice(&4000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xffff_f000u32.to_be_bytes());
        tcp[12] = ((tcp_len / 4) as u8) << 4;
        tcp[13] = flags;
        for (k, b) in tcp[20..].iter_mut().enumerate() {
            *b = if k + 1 == opts { 0 } else { 1 }; // NOPs then EOL
        }
        d.extend(tcp);
        d.extend_from_slice(payload);
        let mut f = Frame::from_bytes(&d);
        f.meta.gso = Some(Gso {
            kind: if v6 { GsoKind::TcpV6 } else { GsoKind::TcpV4 },
            size: mss,
        });
        let _ = l4;
        f
    }

    /// The wire segments of a super-frame, each behind the tunnel header.
    fn datagrams(frame: Frame) -> Vec<Vec<u8>> {
        let pool = FramePool::new(128, 2048, 64);
        let mut out = Vec::new();
        segment(frame, &pool, &mut out).unwrap();
        out.iter()
            .map(|f| {
                let mut d = TUNNEL.to_vec();
                d.extend_from_slice(f.data());
                d
            })
            .collect()
    }

    fn merge(ds: &[Vec<u8>], run: std::ops::Range<usize>, first: &TcpSeg, flags: u8) -> Vec<u8> {
        let mut m = ds[run.start][..first.data_off].to_vec();
        for d in &ds[run.clone()] {
            m.extend_from_slice(&d[first.data_off..]);
        }
        finish_merged(&mut m, first, flags);
        m
    }

    proptest! {
        /// Cutting a super-frame and coalescing its segments gives it back: one run,
        /// and the merged frame, re-segmented, is the same wire segments.
        #[test]
        fn coalescing_undoes_segmentation(
            len in 1usize..20_000,
            mss in 500u16..1500,
            v6 in any::<bool>(),
            opts in prop::sample::select(vec![0usize, 4, 12]),
            psh in any::<bool>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
            let flags = TCP_ACK | if psh { TCP_PSH } else { 0 };
            let ds = datagrams(tso_frame(&payload, mss, v6, opts, flags));
            let refs: Vec<&[u8]> = ds.iter().map(|d| &d[..]).collect();
            let runs = plan_runs(&refs, |_| Some(8));
            prop_assert_eq!(runs.len(), 1);
            let Run { range: run, merge: m } = runs[0].clone();
            prop_assert_eq!(run.clone(), 0..ds.len());
            if ds.len() == 1 {
                prop_assert!(m.is_none());
                return Ok(());
            }
            let (first, flags) = m.unwrap();
            prop_assert_eq!(first.gso().size, mss.min(len as u16));
            let merged = merge(&ds, run, &first, flags);
            // Complete the checksum as a device would, then segment again.
            let mut f = Frame::from_bytes(&merged[8..]);
            f.meta.gso = Some(first.gso());
            let l4 = first.h.l4_off as u16;
            f.meta.csum = Some(PartialCsum { start: l4, offset: 16 });
            let again = datagrams(f);
            prop_assert_eq!(again, ds);
        }

        /// Any bytes, at any tunnel header length: no panic, every datagram in one run.
        #[test]
        fn garbage_never_panics(
            ds in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
            off in 0usize..40,
        ) {
            let refs: Vec<&[u8]> = ds.iter().map(|d| &d[..]).collect();
            let runs = plan_runs(&refs, |_| Some(off));
            prop_assert_eq!(runs.iter().map(|r| r.range.len()).sum::<usize>(), ds.len());
        }

        /// A corrupted, reordered or foreign segment ends the run before it; every
        /// datagram is in exactly one run, in order.
        #[test]
        fn runs_cover_every_datagram_once(
            len in 3000usize..12_000,
            damage in 0usize..8,
            which in 0usize..100,
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut ds = datagrams(tso_frame(&payload, 1000, false, 0, TCP_ACK));
            let k = 1 + which % (ds.len() - 1);
            match damage {
                0 => { let n = ds[k].len(); ds[k][n - 1] ^= 1; } // bad checksum
                1 => ds.swap(k - 1, k),                           // reordered
                2 => ds[k][7] = 99,                               // another VNI
                3 => ds[k][8 + 14 + 20 + 13] |= 0x01,             // FIN
                4 => ds[k].truncate(8 + 20),                      // garbage
                _ => {}
            }
            let refs: Vec<&[u8]> = ds.iter().map(|d| &d[..]).collect();
            let runs = plan_runs(&refs, |_| Some(8));
            let mut next = 0;
            for Run { range: r, merge: m } in &runs {
                prop_assert_eq!(r.start, next);
                prop_assert!(r.end > r.start);
                prop_assert_eq!(m.is_some(), r.len() > 1);
                next = r.end;
            }
            prop_assert_eq!(next, ds.len());
            if damage < 5 {
                prop_assert!(runs.len() >= 2, "damage {} merged anyway", damage);
            } else {
                prop_assert_eq!(runs.len(), 1);
            }
        }
    }
}
