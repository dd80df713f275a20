//! Completing partial checksums and verifying received ones.

use super::{Headers, OffloadError, L3};
use crate::wire::checksum;
use crate::Frame;

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Completes a partial L4 checksum (`frame.meta.csum`): the guest wrote the
/// pseudo-header sum at `start + offset`; the sum over `start..` goes there.
pub fn complete_partial(frame: &mut Frame) -> Result<(), OffloadError> {
    let Some(p) = frame.meta.csum else {
        return Ok(());
    };
    let len = frame.len();
    let (start, at) = (
        usize::from(p.start),
        usize::from(p.start) + usize::from(p.offset),
    );
    if start >= len || at + 2 > len {
        return Err(OffloadError::BadCsumOffsets {
            start: p.start,
            offset: p.offset,
            len,
        });
    }
    let data = frame.data_mut();
    let mut csum = checksum::finish(checksum::sum(&data[start..]));
    // UDP transmits a computed zero as all ones (zero means "no checksum").
    if csum == 0 && p.offset == 6 {
        csum = 0xffff;
    }
    data[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    frame.meta.csum = None;
    Ok(())
}

/// Verifies the IPv4 header checksum and the TCP/UDP checksum of a frame (IPv4 UDP
/// with checksum 0 means none). Other protocols pass with only the IP header checked.
pub fn verify_l3l4(data: &[u8]) -> Result<(), OffloadError> {
    let h = match Headers::parse(data) {
        Ok(h) => h,
        // Non-IP frames (ARP) carry no checksum to verify.
        Err(OffloadError::Unsegmentable("not IPv4/IPv6")) => return Ok(()),
        Err(OffloadError::Unsegmentable(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    if h.l3 == L3::V4 && !checksum::is_valid(checksum::sum(&data[h.l3_off..h.l4_off])) {
        return Err(OffloadError::BadChecksum("ipv4 header"));
    }
    let l4 = &data[h.l4_off..h.ip_end];
    let what = match h.protocol {
        TCP if l4.len() >= 20 => "tcp",
        UDP if l4.len() >= 8 => {
            if h.l3 == L3::V4 && l4[6] == 0 && l4[7] == 0 {
                return Ok(());
            }
            "udp"
        }
        TCP | UDP => return Err(OffloadError::Malformed("truncated l4 header")),
        _ => return Ok(()),
    };
    let sum = checksum::combine(h.pseudo_sum(data, l4.len()), checksum::sum(l4));
    if checksum::is_valid(sum) {
        Ok(())
    } else {
        Err(OffloadError::BadChecksum(what))
    }
}
