//! Switching the data plane between a worker per side and running to completion on
//! one worker while it runs: after each switch every stage is where the layout says
//! (all on one worker for `Workers::One`, whose worker busy-polls through the
//! runtime), the stages on the one worker process the traffic, and guests behind a
//! TAP VF and an AF_XDP VF still reach the remote's kernel vxlan devices (ARP, ICMP,
//! a fixed number of UDP datagrams echoed back). On both underlays. A data plane
//! started with a fixed layout refuses to switch, with a typed error.
//!
//! Needs root and network namespaces (SKIP line otherwise, failure with
//! `PIPEWRIGHT_REQUIRE_NETNS=1`; AF_XDP: `PIPEWRIGHT_REQUIRE_AF_XDP=1`).

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_nic::dataplane::{
    start_on_host, OnHostOptions, RunningDataPlane, SwitchError, Workers, WorkersPolicy,
};
use pipewright_nic::host::{Host, UnderlaySpec, VfKind, VfSpec, VniSpec};
use pipewright_nic::wire::MacAddr;
use pipewright_testkit::PING;

/// UDP datagrams echoed back per check.
const DATAGRAMS: u64 = 200;

fn host(tag: &str) -> Host {
    static N: AtomicUsize = AtomicUsize::new(0);
    let prefix = format!(
        "pws{}{tag}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    Host::builder(&prefix)
        .vf(VfSpec::new(
            100,
            MacAddr([2, 0, 0, 0, 1, 2]),
            "10.100.0.2/24".parse().unwrap(),
            VfKind::Tap,
        ))
        .vf(VfSpec::new(
            200,
            MacAddr([2, 0, 0, 0, 2, 2]),
            "10.200.0.2/24".parse().unwrap(),
            VfKind::Veth,
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
            "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", to,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Sends [`DATAGRAMS`] numbered datagrams one at a time from the guest of VF `vf` to
/// an echo socket in the remote namespace; returns how many distinct ones came back.
///
/// A reply that comes late (after the client gave up waiting for it) is still counted
/// when it shows up, and never taken for the reply to a later datagram: the client
/// matches replies by number and keeps reading past older ones. The echo thread runs
/// until the client is done, however long the gaps between datagrams.
fn echo(host: &Host, vf: usize, guest_ip: &str, remote_ip: &str) -> u64 {
    let remote_ip: std::net::Ipv4Addr = remote_ip.parse().unwrap();
    let guest_ip: std::net::Ipv4Addr = guest_ip.parse().unwrap();
    let server = host
        .remote_ns()
        .unwrap()
        .run(move || UdpSocket::bind((remote_ip, 7100)))
        .unwrap()
        .expect("bind the echo socket");
    // The timeout only lets the echo thread look at `done`.
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let echo = std::thread::spawn({
        let done = done.clone();
        move || {
            let mut buf = [0u8; 256];
            while !done.load(Ordering::Acquire) {
                if let Ok((len, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..len], from);
                }
            }
        }
    });
    let client = host
        .guest_ns(vf)
        .unwrap()
        .run(move || UdpSocket::bind((guest_ip, 0)))
        .unwrap()
        .expect("bind the client");
    client.connect((remote_ip, 7100)).unwrap();
    // How long to wait for one datagram's reply before sending the next one (a reply
    // later than that still counts, see above): only a lost datagram waits this long.
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut back = vec![false; DATAGRAMS as usize];
    let mut buf = [0u8; 256];
    // A data plane that forwards nothing fails after this many waits in a row, not
    // after one per datagram.
    let (mut unanswered, give_up) = (0, 10);
    for i in 0..DATAGRAMS {
        client.send(&i.to_le_bytes()).unwrap();
        // Read until datagram i's reply, counting (late) replies to earlier ones.
        let mut answered = false;
        while let Ok(8) = client.recv(&mut buf) {
            let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
            if seq < DATAGRAMS {
                back[seq as usize] = true;
            }
            if seq == i {
                answered = true;
                break;
            }
        }
        unanswered = if answered { 0 } else { unanswered + 1 };
        if unanswered == give_up {
            break;
        }
    }
    done.store(true, Ordering::Release);
    let _ = echo.join();
    back.iter().filter(|b| **b).count() as u64
}

/// Where the layout puts each stage now: (stage, worker).
fn workers_of(plane: &RunningDataPlane) -> Vec<(String, usize)> {
    plane
        .snapshot()
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.worker))
        .collect()
}

/// Waits until every stage is where `want` says (moves happen at the stages' next
/// burst boundary); panics with the placement if that does not happen.
fn wait_for_placement(plane: &RunningDataPlane, want: impl Fn(&str) -> usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = workers_of(plane);
        if now.iter().all(|(name, w)| *w == want(name)) {
            return;
        }
        assert!(Instant::now() < deadline, "stages did not move: {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn underlay_side(name: &str) -> bool {
    name.starts_with("ingress") || name == "vf-tx"
}

fn items_in(plane: &RunningDataPlane, stage: &str) -> u64 {
    plane.snapshot().stage(stage).map_or(0, |s| s.items_in)
}

/// Both guests reach the remote, and the underlay side's stages processed the
/// replies (counted at `ingress-decap`).
fn traffic_passes(host: &Host, plane: &RunningDataPlane, when: &str) {
    let before = items_in(plane, "ingress-decap");
    assert!(
        ping(&host.vfs[0].guest_ns, "10.100.0.1"),
        "{when}: TAP guest ping"
    );
    assert!(
        ping(&host.vfs[1].guest_ns, "10.200.0.1"),
        "{when}: AF_XDP guest ping"
    );
    let tap = echo(host, 0, "10.100.0.2", "10.100.0.1");
    let xdp = echo(host, 1, "10.200.0.2", "10.200.0.1");
    eprintln!("{when}: {tap}/{DATAGRAMS} (TAP) and {xdp}/{DATAGRAMS} (AF_XDP) datagrams echoed");
    // Late replies count (see `echo`): only datagrams really lost count against it.
    assert!(
        tap >= DATAGRAMS * 9 / 10,
        "{when}: TAP guest {tap}/{DATAGRAMS}"
    );
    assert!(
        xdp >= DATAGRAMS * 9 / 10,
        "{when}: AF_XDP guest {xdp}/{DATAGRAMS}"
    );
    let decapsulated = items_in(plane, "ingress-decap") - before;
    assert!(
        decapsulated >= tap + xdp,
        "{when}: {decapsulated} frames decapsulated for {} echoes",
        tap + xdp
    );
}

#[test]
fn switching_workers_while_running_keeps_traffic_flowing_udp_underlay() {
    switch("u", false);
}

#[test]
fn switching_workers_while_running_keeps_traffic_flowing_afxdp_underlay() {
    switch("x", true);
}

fn switch(tag: &str, afxdp_underlay: bool) {
    if !(pipewright_testkit::netns()
        && pipewright_testkit::af_xdp()
        && pipewright_testkit::io_uring()
        && PING.require())
    {
        return;
    }
    let host = host(tag);
    let window = Duration::from_micros(150);
    let options = OnHostOptions {
        afxdp_underlay,
        switchable: true,
        workers: Workers::Two,
        busy_poll: Some(window),
        ..OnHostOptions::default()
    };
    let (plane, _, _) = start_on_host(&host, &options).expect("start");
    assert!(plane.is_switchable());
    assert_eq!(plane.workers(), Workers::Two);
    // Two: the underlay side's sync stages on worker 1, the rest on worker 0; only
    // the receive sources poll (the runtime's window is zero).
    wait_for_placement(&plane, |s| usize::from(underlay_side(s)));
    assert_eq!(plane.running().busy_poll(), Duration::ZERO);
    traffic_passes(&host, &plane, "two workers");
    // The rate a WorkersPolicy observes counts both directions' frames.
    let received = plane.received_frames();
    assert!(received >= 4 * DATAGRAMS, "{received} frames received");
    let mut policy = WorkersPolicy::new(plane.workers());
    let calm = (0..policy.hold).filter_map(|_| policy.observe(0.0)).last();
    assert_eq!(
        calm,
        Some(Workers::One),
        "a calm data plane runs to completion"
    );

    plane
        .set_workers(Workers::One)
        .expect("switch to one worker");
    assert_eq!(plane.workers(), Workers::One);
    wait_for_placement(&plane, |_| 0);
    assert_eq!(plane.running().busy_poll(), window, "the worker busy-polls");
    traffic_passes(&host, &plane, "one worker");
    // Still all on worker 0 after the traffic.
    assert!(workers_of(&plane).iter().all(|(_, w)| *w == 0));
    // The window follows set_busy_poll while running to completion.
    plane.set_busy_poll(Duration::from_micros(80));
    assert_eq!(plane.running().busy_poll(), Duration::from_micros(80));

    plane
        .set_workers(Workers::Two)
        .expect("switch back to two workers");
    wait_for_placement(&plane, |s| usize::from(underlay_side(s)));
    assert_eq!(plane.running().busy_poll(), Duration::ZERO);
    traffic_passes(&host, &plane, "two workers again");
    let report = plane.stop().expect("stop");
    eprintln!("switch test: completed {}", report.completed);

    // A fixed layout refuses, and says how to get a switchable one.
    let fixed = OnHostOptions {
        afxdp_underlay,
        workers: Workers::One,
        ..OnHostOptions::default()
    };
    let (plane, _, _) = start_on_host(&host, &fixed).expect("start a fixed data plane");
    assert!(!plane.is_switchable());
    assert!(workers_of(&plane).iter().all(|(_, w)| *w == 0));
    let e = plane.set_workers(Workers::Two).unwrap_err();
    assert!(matches!(e, SwitchError::Fixed), "{e}");
    assert!(e.to_string().contains("switchable"), "{e}");
    traffic_passes(&host, &plane, "fixed one worker");
    plane.stop().expect("stop");
}
