//! The socket underlay with tunnel GSO (`UnderlayConfig::tunnel_gso`, Linux 6.17+): a
//! guest behind a TAP VF sends 50 MB over TCP to the remote namespace behind the
//! kernel's `vxlan` device; the content arrives intact, the guest's TSO super-frames
//! went to the kernel whole through the tunnel-GSO TAP, and the remote's vxlan device
//! decapsulated far fewer packets than the 1448-byte segments the transfer holds (one
//! per super-frame, not one per segment). ARP, ping and UDP still pass.
//!
//! Needs root and network namespaces (SKIP line otherwise, failure with
//! `PIPEWRIGHT_REQUIRE_NETNS=1`) and a kernel whose tun takes
//! `TUN_F_UDP_TUNNEL_GSO` (Linux 6.17+; SKIP line otherwise, failure with
//! `PIPEWRIGHT_REQUIRE_TUNNEL_GSO=1`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;

use pipewright_nic::dataplane::{start_on_host, OnHostOptions, RunningDataPlane};
use pipewright_nic::host::{Host, UnderlaySpec, VfKind, VfSpec, VniSpec};
use pipewright_nic::wire::MacAddr;
use pipewright_testkit::PING;

const SIZE: u64 = 50 << 20;

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn host() -> Host {
    Host::builder(&format!("pwg{}", std::process::id() % 100_000))
        .vf(VfSpec::new(
            100,
            MacAddr([2, 0, 0, 0, 1, 2]),
            "10.100.0.2/24".parse().unwrap(),
            VfKind::Tap,
        ))
        .underlay(UnderlaySpec::new(
            "192.168.77.1/30".parse().unwrap(),
            "192.168.77.2/30".parse().unwrap(),
            1600,
        ))
        .remote_vni(VniSpec::new(100, "10.100.0.1/24".parse().unwrap()))
        .build()
        .expect("build the host")
}

/// Packets the remote's `vx100` device received (decapsulated).
fn remote_vxlan_rx(host: &Host) -> u64 {
    let ns = host.remote_ns().unwrap().name().to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "cat", "/proc/net/dev"])
        .output()
        .expect("read the remote's /proc/net/dev");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("vx100:"))
        .expect("vx100 in /proc/net/dev");
    // "vx100: rx_bytes rx_packets ..."
    line.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("rx packets")
}

fn describe(plane: &RunningDataPlane) -> String {
    format!(
        "drops {:?}; tunnel-GSO frames {:?}",
        plane.stats().all(),
        plane.tunnel_gso_frames()
    )
}

#[test]
fn tso_super_frames_reach_the_kernel_peer_as_tunnel_gso_packets() {
    if !(pipewright_testkit::netns() && pipewright_testkit::io_uring() && PING.require()) {
        return;
    }
    let host = host();
    let options = OnHostOptions {
        tunnel_gso: true,
        ..OnHostOptions::default()
    };
    let plane = match start_on_host(&host, &options) {
        Ok((plane, _, _)) => plane,
        Err(e) if e.to_string().contains("TUN_F_UDP_TUNNEL_GSO") => {
            if std::env::var("PIPEWRIGHT_REQUIRE_TUNNEL_GSO").as_deref() == Ok("1") {
                panic!("PIPEWRIGHT_REQUIRE_TUNNEL_GSO=1 but: {e}");
            }
            eprintln!("skipped: the kernel's tun refuses UDP tunnel GSO (needs Linux 6.17+): {e}");
            return;
        }
        Err(e) => panic!("start: {e}"),
    };
    let guest = host.vfs[0].guest_ns.clone();
    let ok = Command::new("ip")
        .args([
            "netns",
            "exec",
            &guest,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "10.100.0.1",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "ping through the tunnel-GSO underlay\n{}",
        describe(&plane)
    );

    let addr: SocketAddr = "10.100.0.1:7300".parse().unwrap();
    let listener = host
        .remote_ns()
        .unwrap()
        .run(move || TcpListener::bind(addr).unwrap())
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for b in &buf[..n] {
                assert_eq!(*b, pattern_byte(total), "byte {total}");
                total += 1;
            }
        }
        total
    });
    let rx_before = remote_vxlan_rx(&host);
    let frames_before = plane.tunnel_gso_frames().expect("tunnel GSO is on");
    let mut stream = host
        .guest_ns(0)
        .unwrap()
        .run(move || TcpStream::connect(addr))
        .unwrap()
        .expect("connect through the data plane");
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 1 << 16];
    while sent < SIZE {
        let n = chunk.len().min((SIZE - sent) as usize);
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern_byte(sent + i as u64);
        }
        stream.write_all(&chunk[..n]).unwrap();
        sent += n as u64;
    }
    drop(stream);
    let received = receiver.join().expect("receiver");
    assert_eq!(received, SIZE, "{}", describe(&plane));
    let decapsulated = remote_vxlan_rx(&host) - rx_before;
    let frames = plane.tunnel_gso_frames().unwrap() - frames_before;
    let segments = SIZE / 1448;
    eprintln!(
        "{SIZE} bytes: {frames} frames through the tunnel-GSO TAP, {decapsulated} packets decapsulated by the remote (the transfer is {segments} segments)"
    );
    assert!(frames > 0, "{}", describe(&plane));
    // One decapsulation per super-frame: far fewer than one per segment.
    assert!(
        decapsulated * 4 < segments,
        "{decapsulated} packets decapsulated for {segments} segments\n{}",
        describe(&plane)
    );
    plane.stop().expect("stop");
}
