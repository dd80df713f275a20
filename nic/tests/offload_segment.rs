//! Segmentation and checksum offloads produce what a NIC would put on the wire.
#![cfg(not(loom))]

use std::net::{Ipv4Addr, Ipv6Addr};

use pipewright_nic::offload::{complete_partial, segment, verify_l3l4, OffloadError};
use pipewright_nic::wire::{
    checksum, ip_proto, Ipv4Packet, Ipv6Packet, TcpFlags, TcpPacket, UdpPacket,
};
use pipewright_nic::{Frame, FramePool, Gso, GsoKind, PartialCsum};
use proptest::prelude::*;

const SRC4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A TCP/IPv4 super-frame whose checksum field holds only the pseudo-header sum, as a
/// guest hands it over with TSO and checksum offload.
fn tcp4_superframe(payload: &[u8], flags: u8) -> Frame {
    let mut f = eth(0x0800);
    let total = 20 + 20 + payload.len();
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x1000u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = ip_proto::TCP;
    ip[12..16].copy_from_slice(&SRC4.octets());
    ip[16..20].copy_from_slice(&DST4.octets());
    let c = checksum::finish(checksum::sum(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&0xfffff000u32.to_be_bytes()); // wraps mid-stream
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let pseudo = checksum::fold(checksum::pseudo_v4(
        SRC4,
        DST4,
        ip_proto::TCP,
        (20 + payload.len()) as u16,
    ));
    tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend_from_slice(payload);
    let mut frame = Frame::from_bytes(&f);
    frame.meta.csum = Some(PartialCsum {
        start: 34,
        offset: 16,
    });
    frame
}

fn pool() -> FramePool {
    FramePool::new(128, 2048, 256)
}

#[test]
fn tso_cuts_a_64k_superframe_into_valid_segments() {
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    let flags = (TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN | TcpFlags::CWR).bits();
    let mut frame = tcp4_superframe(&payload, flags);
    frame.meta.gso = Some(Gso {
        kind: GsoKind::TcpV4,
        size: 1448,
    });
    frame.meta.vf = 3;
    let mut out = Vec::new();
    let n = segment(frame, &pool(), &mut out).unwrap();
    assert_eq!(n, 60_000usize.div_ceil(1448));
    let mut rebuilt = Vec::new();
    for (i, seg) in out.iter().enumerate() {
        verify_l3l4(seg.data()).unwrap_or_else(|e| panic!("segment {i}: {e}"));
        assert_eq!(seg.meta.vf, 3);
        assert!(seg.meta.gso.is_none() && seg.meta.csum.is_none());
        let ip = Ipv4Packet::new_checked(&seg.data()[14..]).unwrap();
        assert_eq!(ip.ident(), 0x1000u16.wrapping_add(i as u16));
        assert!(ip.dont_frag());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(
            tcp.seq_number(),
            0xfffff000u32.wrapping_add((i * 1448) as u32)
        );
        let last = i + 1 == n;
        assert_eq!(
            tcp.flags().contains(TcpFlags::FIN),
            last,
            "FIN only on the last segment"
        );
        assert_eq!(
            tcp.flags().contains(TcpFlags::PSH),
            last,
            "PSH only on the last segment"
        );
        assert_eq!(
            tcp.flags().contains(TcpFlags::CWR),
            i == 0,
            "CWR only on the first segment"
        );
        assert!(tcp.flags().contains(TcpFlags::ACK));
        assert!(tcp.payload().len() <= 1448);
        rebuilt.extend_from_slice(tcp.payload());
    }
    assert_eq!(rebuilt, payload);
}

#[test]
fn tso_over_ipv6_and_uso() {
    // IPv6 TCP.
    let payload = vec![0x5au8; 5000];
    let (s6, d6): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
    let mut f = eth(0x86DD);
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip[6] = ip_proto::TCP;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&s6.octets());
    ip[24..40].copy_from_slice(&d6.octets());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[12] = 5 << 4;
    tcp[13] = TcpFlags::ACK.bits();
    f.extend_from_slice(&tcp);
    f.extend_from_slice(&payload);
    let mut frame = Frame::from_bytes(&f);
    frame.meta.gso = Some(Gso {
        kind: GsoKind::TcpV6,
        size: 1400,
    });
    let mut out = Vec::new();
    assert_eq!(segment(frame, &pool(), &mut out).unwrap(), 4);
    for seg in &out {
        verify_l3l4(seg.data()).unwrap();
        let ip = Ipv6Packet::new_checked(&seg.data()[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum_v6(s6, d6));
    }

    // UDP (USO): each datagram gets its own length and checksum.
    let payload = vec![0xa5u8; 5000];
    let mut f = eth(0x0800);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = ip_proto::UDP;
    ip[12..16].copy_from_slice(&SRC4.octets());
    ip[16..20].copy_from_slice(&DST4.octets());
    f.extend_from_slice(&ip);
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&5000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&udp);
    f.extend_from_slice(&payload);
    let mut frame = Frame::from_bytes(&f);
    frame.meta.gso = Some(Gso {
        kind: GsoKind::Udp,
        size: 1200,
    });
    let mut out = Vec::new();
    assert_eq!(segment(frame, &pool(), &mut out).unwrap(), 5);
    let mut total = 0;
    for seg in &out {
        verify_l3l4(seg.data()).unwrap();
        let ip = Ipv4Packet::new_checked(&seg.data()[14..]).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_ne!(udp.checksum(), 0);
        total += udp.payload().len();
    }
    assert_eq!(total, 5000);
}

#[test]
fn partial_checksums_are_completed_and_bad_ones_caught() {
    let mut frame = tcp4_superframe(&[1, 2, 3, 4, 5], TcpFlags::ACK.bits());
    assert!(matches!(
        verify_l3l4(frame.data()),
        Err(OffloadError::BadChecksum("tcp"))
    ));
    complete_partial(&mut frame).unwrap();
    verify_l3l4(frame.data()).unwrap();
    assert!(frame.meta.csum.is_none());
    // Offsets outside the frame are a typed error, not a panic.
    let mut bad = tcp4_superframe(&[1], 0);
    bad.meta.csum = Some(PartialCsum {
        start: 34,
        offset: 60_000,
    });
    assert!(matches!(
        complete_partial(&mut bad),
        Err(OffloadError::BadCsumOffsets { .. })
    ));
    // A flipped payload bit fails verification.
    let mut flipped = frame.clone();
    let last = flipped.len() - 1;
    flipped.data_mut()[last] ^= 0x10;
    assert!(verify_l3l4(flipped.data()).is_err());
}

#[test]
fn bad_segmentation_requests_are_typed_errors() {
    let mut frame = tcp4_superframe(&[0u8; 3000], 0);
    frame.meta.gso = Some(Gso {
        kind: GsoKind::TcpV6,
        size: 1000,
    });
    assert!(matches!(
        segment(frame, &pool(), &mut Vec::new()),
        Err(OffloadError::Unsegmentable(_))
    ));
    let mut frame = tcp4_superframe(&[0u8; 3000], 0);
    frame.meta.gso = Some(Gso {
        kind: GsoKind::TcpV4,
        size: 0,
    });
    assert!(matches!(
        segment(frame, &pool(), &mut Vec::new()),
        Err(OffloadError::BadSegmentSize(0))
    ));
    // A guest's 1-byte segment size would cut 3000 bytes into 3000 segments.
    let mut frame = tcp4_superframe(&[0u8; 3000], 0);
    frame.meta.gso = Some(Gso {
        kind: GsoKind::TcpV4,
        size: 1,
    });
    assert!(matches!(
        segment(frame, &pool(), &mut Vec::new()),
        Err(OffloadError::BadSegmentSize(1))
    ));
    let whole = tcp4_superframe(&[0u8; 3000], 0);
    for cut in [0, 13, 20, 40, 53] {
        let mut short = Frame::from_bytes(&whole.data()[..cut]);
        short.meta.gso = Some(Gso {
            kind: GsoKind::TcpV4,
            size: 1000,
        });
        assert!(
            segment(short, &pool(), &mut Vec::new()).is_err(),
            "cut at {cut}"
        );
    }
}

proptest! {
    #[test]
    fn segments_reassemble_to_the_original(len in 0usize..20_000, mss in 64u16..3000) {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut frame = tcp4_superframe(&payload, TcpFlags::ACK.bits());
        frame.meta.gso = Some(Gso { kind: GsoKind::TcpV4, size: mss });
        let mut out = Vec::new();
        segment(frame, &FramePool::new(64, 4096, 64), &mut out).unwrap();
        let mut rebuilt = Vec::new();
        for seg in &out {
            prop_assert!(verify_l3l4(seg.data()).is_ok());
            let ip = Ipv4Packet::new_checked(&seg.data()[14..]).unwrap();
            rebuilt.extend_from_slice(TcpPacket::new_checked(ip.payload()).unwrap().payload());
        }
        prop_assert_eq!(rebuilt, payload);
    }
}
