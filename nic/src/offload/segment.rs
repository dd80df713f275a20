//! Segmentation offload: a TSO or USO super-frame becomes wire-sized frames with
//! correct IP ids, TCP sequence numbers, flags, lengths and checksums.

use super::{Headers, OffloadError, L3};
use crate::pool::FramePool;
use crate::wire::checksum;
use crate::{Frame, GsoKind};

const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

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
    let data = frame.data();
    let h = Headers::parse(data)?;
    let size = usize::from(gso.size);
    let (hdr_len, what) = match (gso.kind, h.protocol) {
        (GsoKind::TcpV4, TCP) if h.l3 == L3::V4 => (tcp_header_end(data, &h)?, TCP),
        (GsoKind::TcpV6, TCP) if h.l3 == L3::V6 => (tcp_header_end(data, &h)?, TCP),
        (GsoKind::Udp, UDP) => (h.l4_off + 8, UDP),
        _ => {
            return Err(OffloadError::Unsegmentable(
                "GSO type does not match the headers",
            ))
        }
    };
    if size == 0 {
        return Err(OffloadError::BadSegmentSize(gso.size));
    }
    let payload = &data[hdr_len..h.ip_end];
    let before = out.len();
    if payload.len() <= size {
        // Nothing to cut; the device still owes the checksums.
        let mut f = frame;
        f.meta.gso = None;
        finish_segment(&mut f, &h, hdr_len, what);
        out.push(f);
        return Ok(1);
    }
    let count = payload.len().div_ceil(size);
    let first_id = if h.l3 == L3::V4 {
        u16::from_be_bytes([data[h.l3_off + 4], data[h.l3_off + 5]])
    } else {
        0
    };
    let seq0 = if what == TCP {
        be32(data, h.l4_off + 4)
    } else {
        0
    };
    let flags0 = if what == TCP { data[h.l4_off + 13] } else { 0 };
    let start = out.len();
    pool.take(count, out);
    for (i, chunk) in payload.chunks(size).enumerate() {
        let seg = &mut out[start + i];
        seg.meta.vf = frame.meta.vf;
        let room = seg.tailroom();
        let Some(buf) = seg.try_push_back(hdr_len + chunk.len()) else {
            out.truncate(before);
            return Err(OffloadError::Unsegmentable(if room < size {
                "pool frames too small"
            } else {
                "segment"
            }));
        };
        buf[..hdr_len].copy_from_slice(&data[..hdr_len]);
        buf[hdr_len..].copy_from_slice(chunk);
        let ip_len = hdr_len + chunk.len() - h.l3_off;
        match h.l3 {
            L3::V4 => {
                buf[h.l3_off + 2..h.l3_off + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                buf[h.l3_off + 4..h.l3_off + 6]
                    .copy_from_slice(&first_id.wrapping_add(i as u16).to_be_bytes());
            }
            L3::V6 => buf[h.l3_off + 4..h.l3_off + 6]
                .copy_from_slice(&((ip_len - 40) as u16).to_be_bytes()),
        }
        if what == TCP {
            let seq = seq0.wrapping_add((i * size) as u32);
            buf[h.l4_off + 4..h.l4_off + 8].copy_from_slice(&seq.to_be_bytes());
            let last = i + 1 == count;
            let mut flags = flags0;
            if !last {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            buf[h.l4_off + 13] = flags;
        } else {
            buf[h.l4_off + 4..h.l4_off + 6]
                .copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
        }
        let seg_h = Headers {
            ip_end: hdr_len + chunk.len(),
            ..h
        };
        finish_segment(seg, &seg_h, hdr_len, what);
    }
    Ok(out.len() - before)
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

/// Fills the IPv4 header checksum and the full L4 checksum of one segment.
fn finish_segment(seg: &mut Frame, h: &Headers, _hdr_len: usize, what: u8) {
    seg.meta.csum = None;
    let data = seg.data_mut();
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
