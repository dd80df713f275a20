//! Segmentation offload: a TSO or USO super-frame becomes wire-sized frames with
//! correct IP ids, TCP sequence numbers, flags, lengths and checksums.
//!
//! [`SuperFrame`] describes the cut once; each segment is its headers (copied from the
//! super-frame, then patched) followed by its slice of the payload. [`segment`] writes
//! the segments into pool frames; the socket underlay writes them back to back into
//! one GSO send buffer instead (one copy of the payload, see `dataplane::underlay`).

use super::{Headers, OffloadError, L3};
use crate::pool::FramePool;
use crate::wire::checksum;
use crate::{Frame, Gso, GsoKind};

const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// How a super-frame is cut: its headers, and the per-segment fields to patch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SuperFrame {
    h: Headers,
    /// Bytes of headers (Ethernet to the end of the L4 header) each segment repeats.
    pub(crate) hdr_len: usize,
    what: u8,
    /// Payload bytes per segment (the last may carry fewer).
    pub(crate) size: usize,
    /// Payload bytes in all.
    pub(crate) payload_len: usize,
    first_id: u16,
    seq0: u32,
    flags0: u8,
}

/// The smallest TCP segment payload a super-frame may ask for.
const MIN_SEGMENT: usize = 64;
/// The most datagrams one UDP super-frame may be cut into (Linux's `UDP_MAX_SEGMENTS`).
const UDP_MAX_SEGMENTS: usize = 128;

impl SuperFrame {
    /// Reads how `data` (a frame with the GSO request `gso`) is cut.
    pub(crate) fn parse(data: &[u8], gso: Gso) -> Result<Self, OffloadError> {
        let h = Headers::parse(data)?;
        let size = usize::from(gso.size);
        let (hdr_len, what) = match (gso.kind, h.protocol) {
            (GsoKind::TcpV4, TCP) if h.l3 == L3::V4 => (tcp_header_end(data, &h)?, TCP),
            (GsoKind::TcpV6, TCP) if h.l3 == L3::V6 => (tcp_header_end(data, &h)?, TCP),
            (GsoKind::Udp, UDP) if h.l4_off + 8 <= h.ip_end => (h.l4_off + 8, UDP),
            _ => {
                return Err(OffloadError::Unsegmentable(
                    "GSO type does not match the headers",
                ))
            }
        };
        // A guest chooses the size: a tiny one would make one 64 KB frame thousands
        // of segments (all taken from the pool at once). TCP segments carry at least
        // `MIN_SEGMENT` bytes (Linux's smallest MSS is 88); UDP super-frames are at
        // most `UDP_MAX_SEGMENTS` datagrams, as the kernel's own UDP GSO allows.
        let payload_len = h.ip_end.saturating_sub(hdr_len);
        let segments = payload_len.div_ceil(size.max(1));
        if size == 0
            || (what == TCP && size < MIN_SEGMENT && segments > 1)
            || (what == UDP && segments > UDP_MAX_SEGMENTS)
        {
            return Err(OffloadError::BadSegmentSize(gso.size));
        }
        let first_id = if h.l3 == L3::V4 {
            u16::from_be_bytes([data[h.l3_off + 4], data[h.l3_off + 5]])
        } else {
            0
        };
        let (seq0, flags0) = if what == TCP {
            (be32(data, h.l4_off + 4), data[h.l4_off + 13])
        } else {
            (0, 0)
        };
        Ok(Self {
            h,
            hdr_len,
            what,
            size,
            payload_len: h.ip_end - hdr_len,
            first_id,
            seq0,
            flags0,
        })
    }

    /// Segments the payload is cut into (at least one).
    pub(crate) fn count(&self) -> usize {
        self.payload_len.div_ceil(self.size).max(1)
    }

    /// Where the payload of segment `i` is within the super-frame.
    pub(crate) fn chunk_range(&self, i: usize) -> std::ops::Range<usize> {
        let start = self.hdr_len + i * self.size;
        let end = (start + self.size).min(self.h.ip_end);
        start..end
    }

    /// The payload of segment `i` within the super-frame `data`.
    fn chunk<'d>(&self, data: &'d [u8], i: usize) -> &'d [u8] {
        &data[self.chunk_range(i)]
    }

    /// Appends segment `i` of `data` to `out`: its headers then its payload (the one
    /// copy of the payload), patched and checksummed.
    #[cfg(test)]
    pub(crate) fn append(&self, data: &[u8], i: usize, out: &mut Vec<u8>) {
        self.append_headers(data, i, out);
        out.extend_from_slice(self.chunk(data, i));
    }

    /// Appends the headers of segment `i` of `data` to `out`, patched and with the
    /// checksums that cover its payload (read, not copied); returns where that payload
    /// is in `data`. The headers followed by `data[range]` are the segment (what a
    /// vectored send puts on the wire without copying the payload).
    pub(crate) fn append_headers(
        &self,
        data: &[u8],
        i: usize,
        out: &mut Vec<u8>,
    ) -> std::ops::Range<usize> {
        let at = out.len();
        out.extend_from_slice(&data[..self.hdr_len]);
        let range = self.chunk_range(i);
        self.patch(i, &mut out[at..], &data[range.clone()]);
        range
    }

    /// Fixes the per-segment fields of segment `i` (`hdr`: its headers, followed on
    /// the wire by `chunk`, its payload).
    fn patch(&self, i: usize, hdr: &mut [u8], chunk: &[u8]) {
        let h = &self.h;
        let chunk_len = chunk.len();
        let ip_len = hdr.len() + chunk_len - h.l3_off;
        match h.l3 {
            L3::V4 => {
                hdr[h.l3_off + 2..h.l3_off + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                hdr[h.l3_off + 4..h.l3_off + 6]
                    .copy_from_slice(&self.first_id.wrapping_add(i as u16).to_be_bytes());
            }
            L3::V6 => hdr[h.l3_off + 4..h.l3_off + 6]
                .copy_from_slice(&((ip_len - 40) as u16).to_be_bytes()),
        }
        if self.what == TCP {
            let seq = self.seq0.wrapping_add((i * self.size) as u32);
            hdr[h.l4_off + 4..h.l4_off + 8].copy_from_slice(&seq.to_be_bytes());
            let mut flags = self.flags0;
            if i + 1 != self.count() {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            hdr[h.l4_off + 13] = flags;
        } else {
            hdr[h.l4_off + 4..h.l4_off + 6]
                .copy_from_slice(&((8 + chunk_len) as u16).to_be_bytes());
        }
        // The L4 header has even length (TCP: a multiple of 4; UDP: 8), so the
        // payload's sum adds to the header's.
        finish_headers(hdr, h, self.what, chunk);
    }
}

/// Cuts `frame` (whose `meta.gso` says how) into segments taken from `pool`, appended
/// to `out` in order. A frame without a GSO request, or one that already fits, is
/// passed through unchanged (with its checksums left as they are). Returns how many
/// frames were appended.
pub fn segment(
    frame: Frame,
    pool: &FramePool,
    out: &mut Vec<Frame>,
) -> Result<usize, OffloadError> {
    let Some(gso) = frame.meta.gso else {
        out.push(frame);
        return Ok(1);
    };
    let cut = SuperFrame::parse(frame.data(), gso)?;
    let before = out.len();
    if cut.payload_len <= cut.size {
        // Nothing to cut; the device still owes the checksums.
        let mut f = frame;
        f.meta.gso = None;
        f.meta.csum = None;
        let h = cut.h;
        finish_segment(&mut f.data_mut()[..h.ip_end], &h, cut.what);
        out.push(f);
        return Ok(1);
    }
    let data = frame.data();
    let count = cut.count();
    pool.take(count, out);
    for i in 0..count {
        let seg = &mut out[before + i];
        seg.meta.vf = frame.meta.vf;
        let chunk = cut.chunk(data, i);
        let room = seg.tailroom();
        let Some(buf) = seg.try_push_back(cut.hdr_len + chunk.len()) else {
            out.truncate(before);
            return Err(OffloadError::Unsegmentable(if room < cut.size {
                "pool frames too small"
            } else {
                "segment"
            }));
        };
        buf[..cut.hdr_len].copy_from_slice(&data[..cut.hdr_len]);
        buf[cut.hdr_len..].copy_from_slice(chunk);
        let (hdr, payload) = buf.split_at_mut(cut.hdr_len);
        cut.patch(i, hdr, payload);
    }
    Ok(count)
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

fn tcp_header_end(data: &[u8], h: &Headers) -> Result<usize, OffloadError> {
    let off = *data
        .get(h.l4_off + 12)
        .ok_or(OffloadError::Malformed("truncated tcp"))?;
    let end = h.l4_off + usize::from(off >> 4) * 4;
    if off >> 4 < 5 || end > h.ip_end {
        return Err(OffloadError::Malformed("tcp data offset"));
    }
    Ok(end)
}

/// Fills the IPv4 header checksum and the L4 checksum of one segment whose headers
/// `hdr` (ending with the L4 header, of even length) are followed by `payload`.
fn finish_headers(hdr: &mut [u8], h: &Headers, what: u8, payload: &[u8]) {
    if h.l3 == L3::V4 {
        hdr[h.l3_off + 10..h.l3_off + 12].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(&hdr[h.l3_off..h.l4_off]));
        hdr[h.l3_off + 10..h.l3_off + 12].copy_from_slice(&c.to_be_bytes());
    }
    let at = h.l4_off + if what == TCP { 16 } else { 6 };
    hdr[at..at + 2].copy_from_slice(&[0, 0]);
    let l4_len = hdr.len() - h.l4_off + payload.len();
    let sum = checksum::combine(
        checksum::combine(h.pseudo_sum(hdr, l4_len), checksum::sum(&hdr[h.l4_off..])),
        checksum::sum(payload),
    );
    let mut c = checksum::finish(sum);
    if c == 0 && what == UDP {
        c = 0xffff;
    }
    hdr[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Fills the IPv4 header checksum and the full L4 checksum of one segment (`data`
/// ends at `h.ip_end` or later).
fn finish_segment(data: &mut [u8], h: &Headers, what: u8) {
    if h.l3 == L3::V4 {
        data[h.l3_off + 10..h.l3_off + 12].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(&data[h.l3_off..h.l4_off]));
        data[h.l3_off + 10..h.l3_off + 12].copy_from_slice(&c.to_be_bytes());
    }
    let at = h.l4_off + if what == TCP { 16 } else { 6 };
    data[at..at + 2].copy_from_slice(&[0, 0]);
    let l4_len = h.ip_end - h.l4_off;
    let sum = checksum::combine(
        h.pseudo_sum(data, l4_len),
        checksum::sum(&data[h.l4_off..h.ip_end]),
    );
    let mut c = checksum::finish(sum);
    if c == 0 && what == UDP {
        c = 0xffff;
    }
    data[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An Ethernet + IPv4 + TCP (20-byte header) super-frame of `payload`.
    fn tso_frame(payload: &[u8], mss: u16, flags: u8) -> Frame {
        let mut d = vec![0u8; 14 + 20 + 20];
        d[12..14].copy_from_slice(&[0x08, 0x00]);
        d[14] = 0x45;
        let ip_len = (40 + payload.len()) as u16;
        d[16..18].copy_from_slice(&ip_len.to_be_bytes());
        d[18..20].copy_from_slice(&0x1234u16.to_be_bytes());
        d[22] = 64;
        d[23] = TCP;
        d[26..30].copy_from_slice(&[10, 0, 0, 1]);
        d[30..34].copy_from_slice(&[10, 0, 0, 2]);
        d[34..36].copy_from_slice(&4000u16.to_be_bytes());
        d[36..38].copy_from_slice(&5201u16.to_be_bytes());
        d[38..42].copy_from_slice(&0xfffff000u32.to_be_bytes());
        d[46] = 5 << 4;
        d[47] = flags;
        d.extend_from_slice(payload);
        let mut f = Frame::from_bytes(&d);
        f.meta.gso = Some(Gso {
            kind: GsoKind::TcpV4,
            size: mss,
        });
        f
    }

    proptest! {
        /// The underlay's GSO buffer (segments appended back to back behind a tunnel
        /// header) holds exactly the frames `segment` cuts, each behind the header.
        #[test]
        fn appended_segments_are_the_cut_frames(
            len in 1usize..6000,
            mss in 64u16..1500,
            flags in any::<u8>(),
            prefix in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let frame = tso_frame(&payload, mss, flags);
            let cut = SuperFrame::parse(frame.data(), frame.meta.gso.unwrap()).unwrap();
            let mut gso = Vec::new();
            for i in 0..cut.count() {
                gso.extend_from_slice(&prefix);
                cut.append(frame.data(), i, &mut gso);
            }
            let pool = FramePool::new(128, 2048, 64);
            let mut frames = Vec::new();
            segment(frame, &pool, &mut frames).unwrap();
            prop_assert_eq!(frames.len(), cut.count());
            let mut want = Vec::new();
            for f in &frames {
                want.extend_from_slice(&prefix);
                want.extend_from_slice(f.data());
            }
            prop_assert_eq!(gso, want);
        }
    }
}
