//! The TAP port against a real kernel: the guest's stack (a TAP device in its own
//! network namespace) sends and receives through `TapPort`, including TSO
//! super-frames and partial checksums carried in the virtio-net header.
//!
//! Needs root; without it every test prints a SKIP line (and fails instead when
//! `PIPEWRIGHT_REQUIRE_NETNS=1`).

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use pipewright_nic::offload::{complete_partial, segment, verify_l3l4};
use pipewright_nic::port::{PortError, TapPort, VfPort};
use pipewright_nic::port::{TapDropReason, VNET_HDR_LEN};
use pipewright_nic::{Frame, FrameMeta, Gso, GsoKind, PartialCsum};

mod tap_support;
use tap_support::*;

#[test]
fn guest_frames_arrive_byte_exact_with_offload_metadata() {
    if !pipewright_testkit::netns() {
        return;
    }
    let Guest { mut port, ns } = guest("r");
    let pool = pool();
    let offloads = port.offloads();
    assert!(
        offloads.csum && offloads.tso4 && offloads.tso6,
        "{offloads:?}"
    );
    eprintln!("TAP offloads accepted: {offloads:?}, vnet header {VNET_HDR_LEN} bytes");
    let mut none = Vec::new();
    assert_eq!(
        port.recv_burst(&pool, &mut none, 8).unwrap(),
        0,
        "nothing waiting: 0 at once"
    );

    let sock = ns
        .run(|| UdpSocket::bind("10.75.0.2:40000"))
        .unwrap()
        .unwrap();

    // ARP: the guest resolves 10.75.0.9; the request is fully determined.
    let arp = recv_matching(
        &mut port,
        &pool,
        || drop(sock.send_to(b"?", "10.75.0.9:9")),
        |f| f.data().get(12..14) == Some(&[0x08, 0x06][..]),
    );
    let mut want = vec![0xff; 6];
    want.extend(GUEST_MAC.0);
    want.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    want.extend(GUEST_MAC.0);
    want.extend(GUEST_IP.octets());
    want.extend([0; 6]);
    want.extend([10, 75, 0, 9]);
    assert_eq!(arp.data(), &want[..], "ARP request byte-exact");
    assert_eq!(
        arp.meta,
        FrameMeta {
            vf: VF,
            gso: None,
            csum: None,
            outer_len: 0,
        }
    );

    // UDP to the static neighbour: rebuilt independently, it matches byte for byte
    // once the partial checksum the guest left to us is completed.
    let payload = b"from the guest's kernel, through the TAP";
    let mut udp = recv_matching(
        &mut port,
        &pool,
        || drop(sock.send_to(payload, (PEER_IP, 5000))),
        |f| f.data().get(23) == Some(&17) && f.data().len() > 42,
    );
    assert_eq!(udp.meta.vf, VF);
    assert_eq!(udp.meta.gso, None);
    assert_eq!(
        udp.meta.csum,
        Some(PartialCsum {
            start: 34,
            offset: 6
        }),
        "the guest's stack left the UDP checksum to the device"
    );
    let d = udp.data();
    let ident = u16::from_be_bytes([d[18], d[19]]);
    let mut l4 = Vec::new();
    l4.extend(40000u16.to_be_bytes());
    l4.extend(5000u16.to_be_bytes());
    l4.extend(((8 + payload.len()) as u16).to_be_bytes());
    l4.extend([0, 0]);
    l4.extend(payload);
    let mut partial_l4 = l4.clone();
    fill_l4_csum(&mut partial_l4, 6, GUEST_IP, PEER_IP, 17, true);
    let as_sent = ipv4_frame(
        PEER_MAC,
        GUEST_MAC,
        GUEST_IP,
        PEER_IP,
        17,
        ident,
        &partial_l4,
    );
    assert_eq!(
        d,
        &as_sent[..],
        "UDP frame byte-exact (pseudo-header sum in place)"
    );
    complete_partial(&mut udp).unwrap();
    fill_l4_csum(&mut l4, 6, GUEST_IP, PEER_IP, 17, false);
    let completed = ipv4_frame(PEER_MAC, GUEST_MAC, GUEST_IP, PEER_IP, 17, ident, &l4);
    assert_eq!(udp.data(), &completed[..]);
    verify_l3l4(udp.data()).unwrap();

    // UDP segmentation offload (when the kernel took TUN_F_USO): one send with
    // UDP_SEGMENT arrives as one super-frame with GsoKind::Udp.
    if offloads.uso {
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::UdpGsoSegment, &1000)
            .expect("setsockopt(UDP_SEGMENT)");
        let big = pattern(3500, 3);
        let mut uso = recv_matching(
            &mut port,
            &pool,
            || drop(sock.send_to(&big, (PEER_IP, 5002))),
            |f| f.data().get(23) == Some(&17) && f.len() > 1514,
        );
        assert_eq!(
            uso.meta.gso,
            Some(Gso {
                kind: GsoKind::Udp,
                size: 1000
            })
        );
        assert_eq!(
            uso.meta.csum,
            Some(PartialCsum {
                start: 34,
                offset: 6
            })
        );
        assert_eq!(uso.len(), 42 + big.len());
        assert_eq!(&uso.data()[42..], &big[..]);
        uso.meta.vf = VF;
        let mut segs = Vec::new();
        assert_eq!(segment(uso, &pool, &mut segs).unwrap(), 4);
        for s in &segs {
            verify_l3l4(s.data()).unwrap();
        }
    }

    let c = port.counters();
    assert!(
        c.rx_frames >= 2 && c.rx_bytes >= (want.len() + as_sent.len()) as u64,
        "{c:?}"
    );
    assert_eq!(c.dropped, 0);
}

#[test]
fn frames_sent_reach_the_guests_socket() {
    if !pipewright_testkit::netns() {
        return;
    }
    let Guest { mut port, ns } = guest("s");
    let pool = pool();
    let sock = ns
        .run(|| UdpSocket::bind("10.75.0.2:6000"))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let full = Frame::from_bytes(&udp_to_guest(b"full checksum", false, 7000, 6000));
    // Checksum left partial, with the metadata that says so: the guest's stack
    // accepts it only because the vnet header carries NEEDS_CSUM.
    let mut partial = Frame::from_bytes(&udp_to_guest(b"partial checksum", true, 7001, 6000));
    partial.meta.csum = Some(PartialCsum {
        start: 34,
        offset: 6,
    });
    // The same partial checksum without the metadata is a corrupt datagram.
    let corrupt = Frame::from_bytes(&udp_to_guest(b"bad checksum", true, 7002, 6000));
    let mut frames = vec![corrupt, full, partial];
    assert_eq!(port.send_burst(&mut frames, &pool).unwrap(), 3);
    assert!(frames.is_empty(), "every frame was taken");
    assert_eq!(port.counters().tx_frames, 3);

    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    for _ in 0..2 {
        let (n, from) = sock.recv_from(&mut buf).expect("datagram in the guest");
        got.push((buf[..n].to_vec(), from.port()));
    }
    assert_eq!(
        got,
        vec![
            (b"full checksum".to_vec(), 7000),
            (b"partial checksum".to_vec(), 7001)
        ]
    );
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "the bad-checksum datagram was dropped by the guest"
    );
}

#[test]
fn malformed_metadata_is_dropped_and_counted() {
    if !pipewright_testkit::netns() {
        return;
    }
    let Guest { mut port, ns } = guest("m");
    let pool = pool();
    let sock = ns
        .run(|| UdpSocket::bind("10.75.0.2:6001"))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let bytes = udp_to_guest(b"ok", false, 7000, 6001);
    let mut beyond = Frame::from_bytes(&bytes);
    beyond.meta.csum = Some(PartialCsum {
        start: 40,
        offset: 6,
    }); // 40+6+2 > 44
    let mut zero_mss = Frame::from_bytes(&bytes);
    zero_mss.meta.gso = Some(Gso {
        kind: GsoKind::Udp,
        size: 0,
    });
    zero_mss.meta.csum = Some(PartialCsum {
        start: 34,
        offset: 6,
    });
    let good = Frame::from_bytes(&bytes);
    let mut frames = vec![beyond, zero_mss, good];
    assert_eq!(
        port.send_burst(&mut frames, &pool).unwrap(),
        1,
        "only the good frame is sent"
    );
    assert!(
        frames.is_empty(),
        "bad frames are taken (dropped), not left to block the burst"
    );
    let d = port.drops();
    assert_eq!(d.tx_bad_meta, 2, "{d:?}");
    assert_eq!(d.last, Some(TapDropReason::ZeroGsoSize));
    assert_eq!(port.counters().dropped, 2);
    assert_eq!(port.counters().tx_frames, 1);
    let mut buf = [0u8; 16];
    assert_eq!(sock.recv_from(&mut buf).unwrap().0, 2);

    // Opening errors say what is wrong.
    assert!(matches!(
        ns.run(|| TapPort::open_existing("nosuch0", 0)).unwrap(),
        Err(PortError::NoSuchInterface(_))
    ));
    let dup = ns.run(|| TapPort::create("tap0", 0)).unwrap().unwrap_err();
    assert!(dup.to_string().contains("exists"), "{dup}");
    let lo = ns
        .run(|| TapPort::open_existing("lo", 0))
        .unwrap()
        .unwrap_err();
    assert!(lo.to_string().contains("not a TAP"), "{lo}");
    assert!(matches!(
        TapPort::create("a-name-far-too-long", 0),
        Err(PortError::Setup(_))
    ));
}

#[test]
fn tcp_from_the_guest_arrives_as_tso_super_frames() {
    if !pipewright_testkit::netns() {
        return;
    }
    let Guest { mut port, ns } = guest("t");
    let pool = pool();
    const UP: usize = 256 * 1024;
    const DOWN: usize = 3000;

    std::thread::scope(|s| {
        let guest = s.spawn(|| {
            ns.run(|| -> std::io::Result<Vec<u8>> {
                let mut st =
                    TcpStream::connect_timeout(&(PEER_IP, 5001).into(), Duration::from_secs(10))?;
                st.set_read_timeout(Some(Duration::from_secs(10)))?;
                st.write_all(&pattern(UP, 1))?;
                let mut back = vec![0u8; DOWN];
                st.read_exact(&mut back)?;
                Ok(back)
            })
            .unwrap()
        });

        let mut frames = Vec::new();
        let mut guest_port = 0u16;
        let mut next = 0u32; // next sequence number expected from the guest
        let mut received = Vec::new();
        let mut supers: Vec<Frame> = Vec::new();
        let mut plain_data = 0usize;
        let mut sent_down = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !guest.is_finished() && Instant::now() < deadline {
            recv(&mut port, &pool, &mut frames, 50);
            for f in frames.drain(..) {
                let d = f.data();
                if d.len() < 54 || d[12..14] != [8, 0] || d[23] != 6 {
                    continue;
                }
                let ihl = usize::from(d[14] & 0xf) * 4;
                let ip_end = 14 + usize::from(u16::from_be_bytes([d[16], d[17]]));
                let t = &d[14 + ihl..ip_end];
                let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
                let flags = t[13];
                let doff = usize::from(t[12] >> 4) * 4;
                let mut reply = Vec::new();
                if flags & SYN != 0 {
                    guest_port = u16::from_be_bytes([t[0], t[1]]);
                    next = seq.wrapping_add(1);
                    // MSS 1460, NOP, window scale 7.
                    let opts = [2, 4, 0x05, 0xb4, 1, 3, 3, 7];
                    reply.push(Frame::from_bytes(&tcp_to_guest(
                        guest_port,
                        PEER_ISN,
                        next,
                        SYN | ACK,
                        &opts,
                        &[],
                        false,
                    )));
                } else {
                    let payload = &t[doff..];
                    if !payload.is_empty() {
                        if f.meta.gso.is_some() {
                            supers.push(f.clone());
                        } else {
                            plain_data += 1;
                        }
                        if seq == next {
                            received.extend_from_slice(payload);
                            next = next.wrapping_add(payload.len() as u32);
                        }
                        reply.push(Frame::from_bytes(&tcp_to_guest(
                            guest_port,
                            PEER_ISN + 1,
                            next,
                            ACK,
                            &[],
                            &[],
                            false,
                        )));
                    }
                    if received.len() == UP && !sent_down {
                        // Our answer: one TSO super-frame with a partial checksum.
                        let mut big = Frame::from_bytes(&tcp_to_guest(
                            guest_port,
                            PEER_ISN + 1,
                            next,
                            ACK | PSH,
                            &[],
                            &pattern(DOWN, 7),
                            true,
                        ));
                        big.meta.gso = Some(Gso {
                            kind: GsoKind::TcpV4,
                            size: 1000,
                        });
                        big.meta.csum = Some(PartialCsum {
                            start: 34,
                            offset: 16,
                        });
                        reply.push(big);
                        sent_down = true;
                    }
                }
                port.send_burst(&mut reply, &pool).unwrap();
                assert!(reply.is_empty());
            }
        }
        let back = guest.join().unwrap().expect("guest's TCP exchange");
        assert_eq!(
            back,
            pattern(DOWN, 7),
            "our TSO super-frame reached the guest's socket"
        );
        assert_eq!(received.len(), UP);
        assert!(
            received == pattern(UP, 1),
            "the guest's byte stream arrived intact"
        );

        eprintln!(
            "guest sent {} TSO super-frames (largest {} bytes) and {plain_data} plain data frames",
            supers.len(),
            supers.iter().map(Frame::len).max().unwrap_or(0)
        );
        assert!(
            !supers.is_empty(),
            "the guest's stack handed us TSO super-frames"
        );
        for f in &supers {
            assert_eq!(
                f.meta.gso,
                Some(Gso {
                    kind: GsoKind::TcpV4,
                    size: 1460
                })
            );
            assert_eq!(
                f.meta.csum,
                Some(PartialCsum {
                    start: 34,
                    offset: 16
                })
            );
            assert_eq!(f.meta.vf, VF);
        }
        let biggest = supers.iter().max_by_key(|f| f.len()).unwrap().clone();
        assert!(biggest.len() > 1514, "a super-frame is larger than the MTU");
        // The metadata is consistent with the bytes: cut it into wire segments.
        let mut segs = Vec::new();
        let n = segment(biggest.clone(), &pool, &mut segs).unwrap();
        assert_eq!(n, (biggest.len() - 54).div_ceil(1460));
        for s in &segs {
            assert!(s.len() <= 1514);
            verify_l3l4(s.data()).unwrap();
        }
    });
}
