//! The AF_XDP port on real veth pairs, each end in its own fresh network namespace
//! (`pwx<pid>-<test>-h` holds the port's end `xp0`, `...-g` the guest's end `xg0`).
//! Needs root, network namespaces and AF_XDP; without them every test prints one skip
//! line, or fails when `PIPEWRIGHT_REQUIRE_NETNS=1` (`PIPEWRIGHT_REQUIRE_AF_XDP=1`). Tests run in parallel: names are unique per test.
//!
//! Kernel behaviours seen on veth (Linux 6.18), which the tests pin down:
//! - native (driver) and generic XDP both work; AF_XDP binds in copy mode only
//!   (zero-copy: `EOPNOTSUPP`, reported as a setup error naming the fix);
//! - the TX ring is always flagged need-wakeup in copy mode (every send is a `sendto`
//!   kick), the fill ring never is;
//! - multi-buffer (`XDP_USE_SG`) works in copy mode in both XDP modes: a 5000-byte frame
//!   arrives as chained descriptors and goes out as a chain;
//! - native XDP with a single-buffer program is refused (`ERANGE`) while the veth
//!   peer's MTU is above what one page holds (4000 here); multi-buffer or generic works;
//! - without multi-buffer, frames longer than a UMEM frame less 256 bytes of headroom
//!   are dropped by the kernel and show up in `XDP_STATISTICS.rx_dropped`;
//! - a closed socket holds its queue for a moment (the kernel releases it
//!   asynchronously), so binding again at once can see `EBUSY`; the builder retries;
//! - a guest blasting 100k datagrams with no flow control lost none (the port kept up);
//!   the bulk test still paces with a credit window so "nothing lost" does not depend
//!   on timing.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pipewright_nic::port::{AfXdpPort, BindMode, XdpMode};
use pipewright_nic::port::{PortError, VfPort};
use pipewright_nic::{Frame, FramePool, DEFAULT_HEADROOM};

/// Returns from the test (after one skip line) unless root, network namespaces and
/// AF_XDP sockets are available; fails instead under `PIPEWRIGHT_REQUIRE_NETNS=1` /
/// `PIPEWRIGHT_REQUIRE_AF_XDP=1`.
macro_rules! require_netns {
    () => {
        if !(pipewright_testkit::netns() && pipewright_testkit::af_xdp()) {
            return;
        }
    };
}

mod topo;
use topo::*;

fn rx_byte_exact(mode: XdpMode, test: &str) {
    let t = Topo::new(test, 1500);
    let mut port = open_port(&t, mode, false);
    assert!(port.tx_needs_wakeup(), "copy mode flags TX need-wakeup");
    let sent = vec![
        from_guest(b"hello port"),
        from_guest(&[0x5a; 1000]),
        // A broadcast ARP request and an odd-length frame of an unknown ethertype.
        [
            &[0xff; 6][..],
            &GUEST_MAC,
            &[8, 6, 0, 1, 8, 0, 6, 4, 0, 1],
            &GUEST_MAC,
            &[10, 77, 0, 2],
            &[0; 6],
            &[10, 77, 0, 1],
        ]
        .concat(),
        [&PORT_MAC[..], &GUEST_MAC, &[0x88, 0xb5], &[0xa7; 47]].concat(),
    ];
    let pkt = packet_socket(&t.g);
    for f in &sent {
        packet_send(&pkt, f);
    }
    let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 256);
    let got = recv_n(&mut port, &pool, sent.len(), |f| {
        sent.iter().any(|s| s == f.data())
    });
    let got: Vec<&[u8]> = got.iter().map(|f| f.data()).collect();
    assert_eq!(
        got,
        sent.iter().map(|s| &s[..]).collect::<Vec<_>>(),
        "byte-exact, in order"
    );
    let c = port.counters();
    assert!(c.rx_frames >= 4 && c.rx_bytes >= sent.iter().map(|s| s.len() as u64).sum::<u64>());
    packet_send(&pkt, &sent[0]);
    let f = recv_n(&mut port, &pool, 1, |f| f.data() == &sent[0][..])
        .pop()
        .expect("one more");
    assert_eq!(f.meta.vf, 7);
    assert!(
        f.headroom() >= DEFAULT_HEADROOM,
        "received frames keep the pool's headroom"
    );
    eprintln!(
        "{mode:?}: kernel stats {:?}, fill need-wakeup {}",
        port.kernel_stats().unwrap(),
        port.fill_needs_wakeup()
    );
}

#[test]
fn rx_byte_exact_native() {
    require_netns!();
    rx_byte_exact(XdpMode::Native, "rxn");
}

#[test]
fn rx_byte_exact_generic() {
    require_netns!();
    rx_byte_exact(XdpMode::Generic, "rxg");
}

/// Lines of `/proc/net/snmp` for UDP in `ns` -> InCsumErrors.
fn udp_csum_errors(ns: &str) -> u64 {
    in_ns(ns, || {
        let s = std::fs::read_to_string("/proc/net/snmp").expect("snmp");
        let rows: Vec<&str> = s.lines().filter(|l| l.starts_with("Udp:")).collect();
        let (names, vals) = (rows[0].split_whitespace(), rows[1].split_whitespace());
        names
            .zip(vals)
            .find(|(n, _)| *n == "InCsumErrors")
            .map_or(0, |(_, v)| v.parse().unwrap())
    })
}

#[test]
fn tx_reaches_guest_socket() {
    require_netns!();
    let t = Topo::new("tx", 1500);
    let mut port = open_port(&t, XdpMode::Native, false);
    let sock = in_ns(&t.g, || {
        UdpSocket::bind("10.77.0.2:7000").expect("bind guest")
    });
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 64);
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1 + 300 * i as usize]).collect();
    let mut frames: Vec<Frame> = payloads
        .iter()
        .map(|p| Frame::from_bytes(&to_guest(p)))
        .collect();
    assert_eq!(port.send_burst(&mut frames, &pool).expect("send"), 5);
    assert!(frames.is_empty(), "all taken");
    let mut buf = [0u8; 2048];
    for p in &payloads {
        let (n, from) = sock.recv_from(&mut buf).expect("guest receives the frame");
        assert_eq!(&buf[..n], &p[..]);
        assert_eq!(from, "10.77.0.1:4000".parse().unwrap());
    }
    assert_eq!(udp_csum_errors(&t.g), 0, "checksums valid");
    let c = port.counters();
    assert_eq!((c.tx_frames, c.dropped), (5, 0));
    assert!(port.xsk_counters().tx_kicks >= 1);
}

#[test]
fn hundred_thousand_each_way() {
    require_netns!();
    const N: u64 = 100_000;
    const WINDOW: u64 = 128;
    let t = Topo::new("bulk", 1500);
    let mut port = open_port(&t, XdpMode::Native, false);
    let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 1024);

    // Guest -> port: a UDP socket in the guest; the port keeps up, so nothing is lost.
    let received = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&t.g);
            let sock = UdpSocket::bind("10.77.0.2:5000").unwrap();
            sock.connect("10.77.0.1:9000").unwrap();
            for seq in 0..N {
                while seq - received.load(Ordering::Acquire) >= WINDOW {
                    std::thread::sleep(Duration::from_micros(50));
                }
                sock.send(&seq.to_be_bytes()).expect("guest send");
            }
        });
        let (mut burst, mut next) = (Vec::new(), 0u64);
        let deadline = Instant::now() + Duration::from_secs(120);
        while next < N {
            assert!(
                Instant::now() < deadline,
                "stalled at {next}: {:?} {:?}",
                port.counters(),
                port.kernel_stats()
            );
            wait_readable(&port, 100);
            port.recv_burst(&pool, &mut burst, 64).expect("recv");
            for f in burst.drain(..).filter(|f| dport(f) == Some(9000)) {
                assert_eq!(f.data()[42..50], next.to_be_bytes(), "in order, none lost");
                next += 1;
            }
            received.store(next, Ordering::Release);
        }
    });
    let rx_rate = N as f64 / start.elapsed().as_secs_f64();

    // Port -> guest: crafted frames, a guest socket counts them.
    let sock = in_ns(&t.g, || UdpSocket::bind("10.77.0.2:7000").unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let delivered = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 64];
            for seq in 0..N {
                let n = sock.recv(&mut buf).expect("guest receive");
                assert_eq!(&buf[..n], &seq.to_be_bytes(), "in order, none lost");
                delivered.store(seq + 1, Ordering::Release);
            }
        });
        let (mut sent, mut frames) = (0u64, Vec::new());
        while sent < N || port.tx_pending() > 0 {
            let room = (WINDOW - (sent - delivered.load(Ordering::Acquire)))
                .min(N - sent)
                .min(64);
            for seq in sent..sent + room {
                let mut f = pool.take_one();
                let bytes = to_guest(&seq.to_be_bytes());
                f.reset_from(DEFAULT_HEADROOM, &bytes);
                frames.push(f);
            }
            sent += room;
            let taken = port.send_burst(&mut frames, &pool).expect("send");
            sent -= frames.len() as u64; // not taken: rebuilt next round
            pool.give_back(frames.drain(..));
            if taken == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    });
    let tx_rate = N as f64 / start.elapsed().as_secs_f64();
    let (c, x) = (port.counters(), port.xsk_counters());
    eprintln!("100k each way: rx {rx_rate:.0} frames/s, tx {tx_rate:.0} frames/s; {c:?}; {x:?}; kernel {:?}", port.kernel_stats().unwrap());
    assert!(c.rx_frames >= N, "rx counted");
    assert_eq!(c.tx_frames, N, "tx counted exactly");
    assert_eq!(c.dropped, 0);
    assert_eq!(udp_csum_errors(&t.g), 0);
}

#[test]
fn oversize_send_is_a_typed_error() {
    require_netns!();
    let t = Topo::new("bigtx", 1500);
    let mut port = open_port(&t, XdpMode::Native, false);
    assert_eq!(port.max_frame(), 2048 - 256);
    let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 64);
    let mut frames = vec![
        Frame::from_bytes(&to_guest(b"first")),
        Frame::from_bytes(&to_guest(&[1; 1800])),
        Frame::from_bytes(&to_guest(b"third")),
    ];
    match port.send_burst(&mut frames, &pool) {
        Err(PortError::FrameTooLarge {
            len: 1842,
            max: 1792,
        }) => {}
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(
        frames.len(),
        1,
        "the frame before was sent, the big one dropped"
    );
    assert_eq!(port.send_burst(&mut frames, &pool).expect("the rest"), 1);
    let c = port.counters();
    assert_eq!(
        (c.tx_frames, c.dropped, port.xsk_counters().tx_too_large),
        (2, 1, 1)
    );
}

#[test]
fn oversize_receive_is_dropped_and_counted() {
    require_netns!();
    let t = Topo::new("bigrx", 4000);
    // Native XDP on veth refuses a single-buffer program while the peer's MTU exceeds
    // a page's worth of frame: the attach error says so.
    let native = in_ns(&t.h, || AfXdpPort::builder("xp0").build());
    match native {
        Err(PortError::Io { ref source, .. }) if source.raw_os_error() == Some(libc::ERANGE) => {}
        other => panic!("expected ERANGE from the native attach, got {other:?}"),
    }
    let mut port = open_port(&t, XdpMode::Generic, false);
    let pkt = packet_socket(&t.g);
    packet_send(&pkt, &from_guest(&[9; 3000]));
    packet_send(&pkt, &from_guest(b"small"));
    let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 64);
    let got = recv_n(&mut port, &pool, 1, |f| dport(f) == Some(9000));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), 42 + 5, "only the small frame arrives");
    let k = port.kernel_stats().unwrap();
    assert!(
        k.rx_dropped >= 1,
        "the kernel counted the oversize drop: {k:?}"
    );
}

fn multi_buffer(mode: XdpMode, test: &str) {
    let t = Topo::new(test, 9000);
    let mut port = open_port(&t, mode, true);
    let pkt = packet_socket(&t.g);
    let sizes = [3000usize, 5000, 7000, 100];
    let sent: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| from_guest(&(0..n).map(|i| i as u8).collect::<Vec<_>>()))
        .collect();
    for f in &sent {
        packet_send(&pkt, f);
    }
    let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 64);
    let got = recv_n(&mut port, &pool, 3, |f| dport(f) == Some(9000));
    let lens: Vec<usize> = got.iter().map(Frame::len).collect();
    assert_eq!(lens, [3042, 5042, 142], "7042 > max_frame 6000 is dropped");
    for (g, s) in got.iter().zip([&sent[0], &sent[1], &sent[3]]) {
        assert!(g.data() == &s[..], "reassembled byte-exact");
    }
    assert_eq!(port.xsk_counters().rx_too_large, 1);
    // And a chain out: a 5000-byte frame to a guest socket.
    let sock = in_ns(&t.g, || UdpSocket::bind("10.77.0.2:7000").unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let mut frames = vec![Frame::from_bytes(&to_guest(&payload))];
    assert_eq!(port.send_burst(&mut frames, &pool).expect("send chain"), 1);
    let mut buf = vec![0u8; 9000];
    let n = sock
        .recv(&mut buf)
        .expect("guest receives the chained frame");
    assert!(buf[..n] == payload[..]);
    assert_eq!(udp_csum_errors(&t.g), 0);
}

#[test]
fn multi_buffer_native() {
    require_netns!();
    multi_buffer(XdpMode::Native, "sgn");
}

#[test]
fn multi_buffer_generic() {
    require_netns!();
    multi_buffer(XdpMode::Generic, "sgg");
}

#[test]
fn drop_detaches_the_program() {
    require_netns!();
    let t = Topo::new("det", 1500);
    assert!(!t.xdp_attached());
    let mut port = open_port(&t, XdpMode::Native, false);
    assert!(t.xdp_attached(), "program attached while the port lives");
    let host = in_ns(&t.h, || UdpSocket::bind("10.77.0.1:9100").unwrap());
    host.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let guest = in_ns(&t.g, || UdpSocket::bind("10.77.0.2:0").unwrap());
    guest.send_to(b"to the port", "10.77.0.1:9100").unwrap();
    let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 64);
    assert_eq!(
        recv_n(&mut port, &pool, 1, |f| dport(f) == Some(9100)).len(),
        1
    );
    let mut buf = [0u8; 64];
    assert!(
        host.recv(&mut buf).is_err(),
        "XDP took the frame from the kernel stack"
    );
    drop(port);
    assert!(!t.xdp_attached(), "dropping the port detached the program");
    guest.send_to(b"to the stack", "10.77.0.1:9100").unwrap();
    let n = host
        .recv(&mut buf)
        .expect("the kernel stack receives again");
    assert_eq!(&buf[..n], b"to the stack");
    // The queue can be bound again at once (the kernel frees it asynchronously; the
    // builder retries EBUSY for a while).
    let again = open_port(&t, XdpMode::Generic, false);
    assert!(t.xdp_attached());
    drop(again);
}

#[test]
fn zero_copy_on_veth_is_a_clear_error() {
    require_netns!();
    let t = Topo::new("zc", 1500);
    let r = in_ns(&t.h, || {
        AfXdpPort::builder("xp0")
            .bind_mode(BindMode::ZeroCopy)
            .build()
    });
    match r {
        Err(PortError::Setup(m)) => assert!(
            m.contains("zero-copy") && m.contains("BindMode::Copy"),
            "{m}"
        ),
        other => panic!("expected a setup error, got {other:?}"),
    }
    // Nothing stays attached after a failed build.
    assert!(!t.xdp_attached());
}

#[test]
fn missing_interface_and_bad_config_are_typed_errors() {
    let e = AfXdpPort::builder("pwx-no-such-if0").build().unwrap_err();
    assert!(
        matches!(e, PortError::NoSuchInterface(ref n) if n == "pwx-no-such-if0"),
        "{e}"
    );
    let e = AfXdpPort::builder("lo")
        .frame_size(3000)
        .build()
        .unwrap_err();
    assert!(matches!(e, PortError::Setup(_)), "{e}");
}
