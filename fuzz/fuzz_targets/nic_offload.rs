//! Frames from a guest (a TAP VF) asking for offloads: segmentation of a TSO/USO
//! super-frame at a guest-chosen size, and completion of a partial checksum at
//! guest-chosen offsets. The first bytes of the input choose the request, the rest is
//! the frame. Nothing may panic, and every segment fits its size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipewright_nic::offload::{complete_partial, segment};
use pipewright_nic::{Frame, FramePool, Gso, GsoKind, PartialCsum};

fuzz_target!(|data: &[u8]| {
    let [kind, s0, s1, c0, c1, c2, c3, frame @ ..] = data else {
        return;
    };
    let mut f = Frame::from_bytes(frame);
    f.meta.gso = match kind % 4 {
        0 => None,
        1 => Some(GsoKind::TcpV4),
        2 => Some(GsoKind::TcpV6),
        _ => Some(GsoKind::Udp),
    }
    .map(|kind| Gso {
        kind,
        size: u16::from_le_bytes([*s0, *s1]),
    });
    if kind & 4 != 0 {
        f.meta.csum = Some(PartialCsum {
            start: u16::from_le_bytes([*c0, *c1]),
            offset: u16::from_le_bytes([*c2, *c3]),
        });
    }
    let mut whole = f.clone();
    let _ = complete_partial(&mut whole);
    let pool = FramePool::new(128, 2048, 64);
    let mut out = Vec::new();
    if let Ok(n) = segment(f, &pool, &mut out) {
        assert_eq!(n, out.len());
    }
});
