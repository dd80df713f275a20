//! Guests behind pipewright talk to a remote namespace behind the Linux kernel's own
//! `vxlan` devices: ARP (answered from the rule table), ICMP echo, UDP both ways, and a
//! 100 MB TCP transfer with its content checked, through TAP and AF_XDP VF ports and
//! the io_uring underlay. Guests on different VNIs cannot reach each other; spoofed
//! guest frames and garbage sent to the underlay port are counted and never delivered.
//!
//! Each test runs on both underlays: the io_uring UDP sockets and the AF_XDP socket
//! on the underlay veth (outer MACs from the kernel's neighbour table).
//!
//! Needs root and network namespaces; without them every test prints a SKIP line
//! (and fails instead when `PIPEWRIGHT_REQUIRE_NETNS=1`; AF_XDP:
//! `PIPEWRIGHT_REQUIRE_AF_XDP=1`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pipewright_nic::dataplane::{start_on_host, OnHostOptions, RunningDataPlane, Workers};
use pipewright_nic::host::{Host, UnderlaySpec, VfKind, VfSpec, VniSpec};
use pipewright_nic::wire::MacAddr;
use pipewright_testkit::PING;

fn prefix(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "pwd{}{tag}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Two VFs on VNIs 100 and 200 (`kinds` picks TAP or veth+AF_XDP for each), an
/// underlay, and the remote's kernel vxlan devices for both VNIs.
fn host(tag: &str, kinds: [VfKind; 2]) -> Host {
    Host::builder(&prefix(tag))
        .vf(VfSpec::new(
            100,
            MacAddr([2, 0, 0, 0, 1, 2]),
            "10.100.0.2/24".parse().unwrap(),
            kinds[0],
        ))
        .vf(VfSpec::new(
            200,
            MacAddr([2, 0, 0, 0, 2, 2]),
            "10.200.0.2/24".parse().unwrap(),
            kinds[1],
        ))
        .underlay(UnderlaySpec::new(
            "192.168.77.1/30".parse().unwrap(),
            "192.168.77.2/30".parse().unwrap(),
            1600,
        ))
        .remote_vni(VniSpec::new(100, "10.100.0.1/24".parse().unwrap()))
        .remote_vni(VniSpec::new(200, "10.200.0.1/24".parse().unwrap()))
        .build()
        .expect("build the host")
}

fn ping(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", to,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn stop(plane: RunningDataPlane) {
    let stats = plane.stats().all();
    let report = plane.stop().expect("data plane stops");
    eprintln!("drops: {stats:?}; completed: {}", report.completed);
}

/// The data plane on the io_uring UDP underlay, or on the AF_XDP one.
fn options(afxdp_underlay: bool) -> OnHostOptions {
    OnHostOptions {
        afxdp_underlay,
        ..OnHostOptions::default()
    }
}

/// The plan of the isolation tests: the AF_XDP underlay's runs to completion on one
/// worker (so the one-worker plan is covered without a run of its own).
fn isolation_options(afxdp_underlay: bool) -> OnHostOptions {
    OnHostOptions {
        workers: if afxdp_underlay {
            Workers::One
        } else {
            Workers::Two
        },
        ..options(afxdp_underlay)
    }
}

/// On the AF_XDP underlay, encapsulated frames went through the socket (their next
/// hop found in the kernel's neighbour table), not only the kernel-path fallback.
fn check_underlay(plane: &RunningDataPlane, afxdp_underlay: bool) {
    match plane.underlay_counters() {
        Some(c) => {
            assert!(afxdp_underlay, "counters only on the AF_XDP underlay");
            eprintln!("AF_XDP underlay: {c:?}");
            assert!(c.xsk_tx > 0 && c.xsk_rx > 0, "{c:?}");
            assert!(c.kernel_path < c.xsk_tx, "{c:?}");
        }
        None => assert!(!afxdp_underlay, "the AF_XDP underlay has counters"),
    }
}

#[test]
fn guests_reach_the_kernel_vxlan_peer_ping_udp_and_100mb_tcp() {
    reach_the_kernel_peer("a", false);
}

#[test]
fn guests_reach_the_kernel_vxlan_peer_over_the_afxdp_underlay() {
    reach_the_kernel_peer("c", true);
}

fn reach_the_kernel_peer(tag: &str, afxdp_underlay: bool) {
    if !(pipewright_testkit::netns()
        && pipewright_testkit::af_xdp()
        && pipewright_testkit::io_uring()
        && PING.require())
    {
        return;
    }
    let host = host(tag, [VfKind::Tap, VfKind::Veth]);
    let (plane, _, _) = start_on_host(&host, &options(afxdp_underlay)).expect("start");
    let g0 = host.vfs[0].guest_ns.clone();
    let g1 = host.vfs[1].guest_ns.clone();

    // ARP + ICMP through both ports (ping resolves the remote through the table).
    if !ping(&g0, "10.100.0.1") {
        panic!(
            "TAP guest pings the remote over VNI 100\n{}",
            describe(&plane)
        );
    }
    assert!(
        ping(&g1, "10.200.0.1"),
        "AF_XDP guest pings the remote over VNI 200"
    );

    // UDP both ways on the TAP guest.
    let remote = host.remote_ns().unwrap();
    let server = remote
        .run(|| UdpSocket::bind("10.100.0.1:7000").unwrap())
        .unwrap();
    let client = host
        .guest_ns(0)
        .unwrap()
        .run(|| UdpSocket::bind("10.100.0.2:7001").unwrap())
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..100u32 {
        let msg = format!("guest->remote {i}");
        client.send_to(msg.as_bytes(), "10.100.0.1:7000").unwrap();
        let (n, from) = server
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("remote receives datagram {i}: {e}\n{}", describe(&plane)));
        assert_eq!(&buf[..n], msg.as_bytes());
        let reply = format!("remote->guest {i}");
        server.send_to(reply.as_bytes(), from).unwrap();
        let (n, _) = client
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("guest receives reply {i}: {e}\n{}", describe(&plane)));
        assert_eq!(&buf[..n], reply.as_bytes());
    }

    // 100 MB over TCP from each guest, content checked on the far side.
    for (i, (guest, remote_ip)) in [(0usize, "10.100.0.1"), (1, "10.200.0.1")]
        .iter()
        .enumerate()
    {
        let addr: SocketAddr = format!("{remote_ip}:{}", 7100 + i).parse().unwrap();
        let listener = remote
            .run(move || TcpListener::bind(addr).unwrap())
            .unwrap();
        let receiver = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut total = 0u64;
            let mut sum = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                for b in &buf[..n] {
                    assert_eq!(*b, pattern_byte(total), "byte {total}");
                    sum = sum.wrapping_add(u64::from(*b));
                    total += 1;
                }
            }
            (total, sum)
        });
        const SIZE: u64 = 100 << 20;
        let copies_before = copied(&plane, *guest as u16);
        let start = Instant::now();
        let sent_sum = host
            .guest_ns(*guest)
            .unwrap()
            .run(move || {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                let mut sent = 0u64;
                let mut sum = 0u64;
                let mut chunk = vec![0u8; 1 << 16];
                while sent < SIZE {
                    let n = chunk.len().min((SIZE - sent) as usize);
                    for (k, b) in chunk[..n].iter_mut().enumerate() {
                        *b = pattern_byte(sent + k as u64);
                        sum = sum.wrapping_add(u64::from(*b));
                    }
                    s.write_all(&chunk[..n]).unwrap();
                    sent += n as u64;
                }
                sum
            })
            .unwrap();
        let (total, sum) = receiver.join().unwrap();
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "VF {guest}: 100 MB in {secs:.2} s ({:.0} Mbit/s)",
            SIZE as f64 * 8.0 / secs / 1e6
        );
        assert_eq!(total, SIZE);
        assert_eq!(sum, sent_sum);
        let egress = (copied(&plane, *guest as u16).0 - copies_before.0) as f64 / SIZE as f64;
        eprintln!("VF {guest}: {egress:.3} user-space copies per byte on egress");
        if *guest == 0 && !afxdp_underlay {
            // The TAP's TSO super-frames: read whole, sent as GSO runs whose payload
            // slices point into the frame (no copy); only each segment's headers are
            // written (~5%), the kernel's copies not counted.
            assert!(
                egress <= 0.5,
                "{egress:.3} copies per byte\n{}",
                describe(&plane)
            );
        }
    }

    // 20 MB from the remote to the TAP guest: its copies on ingress.
    let addr: SocketAddr = "10.100.0.2:7200".parse().unwrap();
    let listener = host
        .guest_ns(0)
        .unwrap()
        .run(move || TcpListener::bind(addr).unwrap())
        .unwrap();
    const BACK: u64 = 20 << 20;
    let copies_before = copied(&plane, 0);
    let tap_before = tap_tx(&plane);
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break total;
            }
            assert!(buf[..n].iter().all(|b| *b == 0x5a), "content at {total}");
            total += n as u64;
        }
    });
    remote
        .run(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            let chunk = vec![0x5au8; 1 << 16];
            for _ in 0..BACK / chunk.len() as u64 {
                s.write_all(&chunk).unwrap();
            }
        })
        .unwrap();
    assert_eq!(receiver.join().unwrap(), BACK);
    let ingress = (copied(&plane, 0).1 - copies_before.1) as f64 / BACK as f64;
    eprintln!("VF 0: {ingress:.3} user-space copies per byte on ingress");
    let tap_after = tap_tx(&plane);
    let (frames, bytes) = (tap_after.0 - tap_before.0, tap_after.1 - tap_before.1);
    let mean = bytes / frames.max(1);
    eprintln!("VF 0: {frames} frames of {mean} bytes on average written to the TAP on ingress");
    if !afxdp_underlay {
        // GRO: the kernel coalesces the flow's datagrams for the underlay socket, the
        // data plane their TCP segments into super-frames the TAP takes whole.
        let segments = BACK.div_ceil(1448);
        assert!(
            frames * 2 < segments,
            "{frames} frames for {segments} segments: no receive coalescing\n{}",
            describe(&plane)
        );
    }
    if !afxdp_underlay {
        // Each received datagram copied once into its frame (GRO buffers from the
        // socket), written to the TAP from there.
        assert!(
            ingress <= 1.2,
            "{ingress:.3} copies per byte\n{}",
            describe(&plane)
        );
    }
    check_underlay(&plane, afxdp_underlay);
    stop(plane);
}

/// Frames and bytes written to VF 0's TAP so far.
fn tap_tx(plane: &RunningDataPlane) -> (u64, u64) {
    let c = plane.port_counters_of(0).expect("VF 0's counters");
    (c.tx_frames, c.tx_bytes)
}

/// Bytes the data plane copied in user space so far, (egress, ingress): the stages'
/// copies, those of VF `vf`'s port (counted as egress: a TAP copies only what it
/// receives) and those of the AF_XDP underlay's socket (both ways, counted as both:
/// a transfer's figure then includes its reverse ACKs).
fn copied(plane: &RunningDataPlane, vf: u16) -> (u64, u64) {
    let c = plane.stats().copies();
    let port = plane.port_counters_of(vf).map_or(0, |p| p.copied_bytes);
    let underlay = plane.underlay_counters().map_or(0, |u| u.copied_bytes);
    (c.egress + port + underlay, c.ingress + underlay)
}

/// What each stage did and dropped, and the ports' counters: for failure messages.
fn describe(plane: &RunningDataPlane) -> String {
    let mut out = String::new();
    for s in &plane.snapshot().stages {
        out += &format!(
            "  {:<20} in {:>8} out {:>8} dropped {:?}\n",
            s.name, s.items_in, s.items_out, s.dropped
        );
    }
    out += &format!(
        "  nic drops {:?}\n  ports {:?}",
        plane.stats().all(),
        plane.port_counters()
    );
    out
}

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

#[test]
fn vnis_are_isolated_spoofing_and_underlay_garbage_are_counted() {
    isolation_and_garbage("b", false);
}

#[test]
fn vnis_are_isolated_and_garbage_is_counted_on_the_afxdp_underlay() {
    isolation_and_garbage("d", true);
}

fn isolation_and_garbage(tag: &str, afxdp_underlay: bool) {
    if !(pipewright_testkit::netns()
        && pipewright_testkit::af_xdp()
        && pipewright_testkit::io_uring()
        && PING.require())
    {
        return;
    }
    let host = host(tag, [VfKind::Tap, VfKind::Tap]);
    let (plane, _, _) = start_on_host(&host, &isolation_options(afxdp_underlay)).expect("start");
    let g0 = host.vfs[0].guest_ns.clone();
    assert!(ping(&g0, "10.100.0.1"), "the path works");
    // Guest 0 (VNI 100) is told VNI 200's addresses are on its link (a route and
    // neighbour entries it may not use): its frames leave, and the data plane drops
    // them (no rule for VF 0 covers VNI 200); guest 1 and VNI 200's remote see nothing.
    for args in [
        vec!["route", "add", "10.200.0.0/24", "dev", "eth0"],
        vec![
            "neigh",
            "add",
            "10.200.0.2",
            "lladdr",
            "02:00:00:00:02:02",
            "dev",
            "eth0",
        ],
        vec![
            "neigh",
            "add",
            "10.200.0.1",
            "lladdr",
            &host.vnis[1].mac.to_string(),
            "dev",
            "eth0",
        ],
    ] {
        let mut full = vec!["-n", g0.as_str()];
        full.extend(args.iter().copied());
        assert!(
            Command::new("ip").args(&full).status().unwrap().success(),
            "ip {full:?}"
        );
    }
    let other_guest = host
        .guest_ns(1)
        .unwrap()
        .run(|| UdpSocket::bind("10.200.0.2:7300").unwrap())
        .unwrap();
    let other_remote = host
        .remote_ns()
        .unwrap()
        .run(|| UdpSocket::bind("10.200.0.1:7300").unwrap())
        .unwrap();
    other_guest.set_nonblocking(true).unwrap();
    other_remote.set_nonblocking(true).unwrap();
    let crosser = host
        .guest_ns(0)
        .unwrap()
        .run(|| UdpSocket::bind("10.100.0.2:0").unwrap())
        .unwrap();
    let before = plane.stats().drops("no_rule");
    for _ in 0..10 {
        crosser.send_to(b"cross-vni", "10.200.0.2:7300").unwrap();
        crosser.send_to(b"cross-vni", "10.200.0.1:7300").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while plane.stats().drops("no_rule") < before + 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        plane.stats().drops("no_rule") - before,
        20,
        "{}",
        describe(&plane)
    );
    let mut buf = [0u8; 64];
    assert!(
        other_guest.recv_from(&mut buf).is_err(),
        "guest 1 got nothing"
    );
    assert!(
        other_remote.recv_from(&mut buf).is_err(),
        "VNI 200's remote got nothing"
    );

    // A spoofed source IP from guest 0: dropped and counted as spoofed.
    let before = plane.stats().drops("spoofed");
    // A second address on the guest that its rules do not allow: the kernel puts the
    // unauthorised source on the wire.
    let add = Command::new("ip")
        .args(["-n", &g0, "addr", "add", "10.100.0.99/24", "dev", "eth0"])
        .status()
        .unwrap();
    assert!(add.success());
    let spoof = host
        .guest_ns(0)
        .unwrap()
        .run(|| UdpSocket::bind("10.100.0.99:0").unwrap())
        .unwrap();
    for _ in 0..10 {
        spoof.send_to(b"spoofed", "10.100.0.1:9").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while plane.stats().drops("spoofed") < before + 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        plane.stats().drops("spoofed") >= before + 10,
        "spoofed frames counted: {:?}",
        plane.stats().all()
    );

    // Garbage to the underlay port from the remote: counted, never delivered.
    let guest_rx = host
        .guest_ns(1)
        .unwrap()
        .run(|| UdpSocket::bind("10.200.0.2:9999").unwrap())
        .unwrap();
    guest_rx.set_nonblocking(true).unwrap();
    let garbage_sender = host
        .remote_ns()
        .unwrap()
        .run(|| UdpSocket::bind("192.168.77.2:0").unwrap())
        .unwrap();
    let before = plane.stats().total();
    let mut sent = 0u64;
    let mut seed = 0x1234_5678u64;
    for len in [0usize, 1, 7, 8, 15, 20, 60, 200, 1400] {
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            garbage_sender.send_to(&bytes, "192.168.77.1:4789").unwrap();
            sent += 1;
        }
    }
    // A well-formed VXLAN packet on a VNI nobody serves.
    let mut wrong_vni = vec![0x08, 0, 0, 0, 0, 0x12, 0x34, 0];
    wrong_vni.extend([0xff; 6]);
    wrong_vni.extend([2, 0, 0, 0, 9, 9]);
    wrong_vni.extend([0x08, 0x00]);
    wrong_vni.extend([0u8; 46]);
    garbage_sender
        .send_to(&wrong_vni, "192.168.77.1:4789")
        .unwrap();
    sent += 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    while plane.stats().total() < before + sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        plane.stats().total() - before,
        sent,
        "every garbage datagram counted once: {:?}",
        plane.stats().all()
    );
    let mut buf = [0u8; 2048];
    assert!(
        guest_rx.recv_from(&mut buf).is_err(),
        "nothing reached a guest"
    );
    assert!(ping(&g0, "10.100.0.1"), "the path still works");
    check_underlay(&plane, afxdp_underlay);
    stop(plane);
}
