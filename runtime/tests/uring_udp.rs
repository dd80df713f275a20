//! UDP on io_uring over real loopback sockets: the multishot receive delivers every
//! datagram byte-exact (also after running out of provided buffers), GRO hands over
//! coalesced runs with their segment size, and GSO sends arrive as separate datagrams.
#![cfg(not(loom))]

use std::collections::HashSet;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_runtime::uring::{UdpConfig, UdpRing};

/// Runs `f` on a current-thread runtime with a LocalSet, as a worker does.
fn on_worker<F: std::future::Future<Output = T>, T>(f: F) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

fn big_receive_buffer(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let size = 64 << 20;
    // Forcing past rmem_max needs CAP_NET_ADMIN; without it, ask for what is allowed.
    if setsockopt(socket, sockopt::RcvBufForce, &size).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &size);
    }
}

/// A ring on a loopback socket with `buffers` receive buffers of 2 KiB, without GRO,
/// and a socket buffer that holds a whole run: a loss would be the kernel's (the
/// socket overflowing while we are slow), not the ring's.
fn loopback_ring(buffers: u16) -> UdpRing {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    big_receive_buffer(&socket);
    UdpRing::new(
        socket,
        UdpConfig {
            buffers,
            buffer_size: 2048,
            gro: false,
        },
    )
    .unwrap()
}

/// A ring on a loopback socket with the default receive side, used to send.
fn sender_ring() -> UdpRing {
    UdpRing::new(
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpConfig::default(),
    )
    .unwrap()
}

/// Flow control for a sender thread: waits until fewer than `window` of the `sent`
/// datagrams are still unseen by the receiver (`seen` counts them), so the sender never
/// outruns the receiver into the kernel dropping datagrams. False if the receiver saw
/// nothing new for 60 s: it stopped (its own hang guard says why), so stop sending.
fn wait_for_room(seen: &AtomicU32, sent: u32, window: u32) -> bool {
    let mut last = seen.load(Ordering::Acquire);
    let mut since = Instant::now();
    while sent.saturating_sub(last) >= window {
        std::thread::sleep(Duration::from_micros(50));
        let now = seen.load(Ordering::Acquire);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_secs(60) {
            return false;
        }
    }
    true
}

/// A thread sending datagrams `0..n` (datagram `i` of `len(i)` bytes) to `to` from a
/// socket of its own, at most `window` ahead of what the receiver counted in
/// `received`; it returns the socket's address.
fn paced_sender(
    to: std::net::SocketAddr,
    n: u32,
    window: u32,
    received: &Arc<AtomicU32>,
    len: fn(u32) -> usize,
) -> std::thread::JoinHandle<std::net::SocketAddr> {
    let received = received.clone();
    std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..n {
            if !wait_for_room(&received, i, window) {
                break;
            }
            s.send_to(&payload(i, len(i)), to).unwrap();
        }
        s.local_addr().unwrap()
    })
}

fn payload(i: u32, len: usize) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.extend((0..len.saturating_sub(4)).map(|k| (k as u32 ^ i) as u8));
    p
}

#[test]
fn multishot_receive_delivers_every_datagram_even_past_the_buffer_count() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    const N: u32 = 20_000;
    // Datagrams in flight at most: twice the buffers, so the receive can still run out
    // of them (and be re-armed), far below what the socket buffer holds.
    const WINDOW: u32 = 128;
    on_worker(async {
        let mut ring = loopback_ring(64);
        let to = ring.local_addr().unwrap();
        let received = Arc::new(AtomicU32::new(0));
        let sender = paced_sender(to, N, WINDOW, &received, |i| 64 + (i as usize % 900));
        let mut seen = HashSet::new();
        let mut from = None;
        while seen.len() < N as usize {
            // The deadline only turns a hang into a failure.
            let got = tokio::time::timeout(
                Duration::from_secs(30),
                ring.recv_burst(|r| {
                    for d in r.datagrams() {
                        let i = u32::from_be_bytes(d[..4].try_into().unwrap());
                        assert_eq!(d, payload(i, 64 + (i as usize % 900)));
                        assert!(seen.insert(i), "datagram {i} twice");
                    }
                    received.store(seen.len() as u32, Ordering::Release);
                    from = Some(r.from);
                }),
            )
            .await;
            match got {
                Ok(r) => {
                    r.unwrap();
                }
                Err(_) => panic!("stalled at {} of {N}: {:?}", seen.len(), ring.counters()),
            }
        }
        assert_eq!(from, Some(sender.join().unwrap()));
        let c = ring.counters();
        assert_eq!(c.datagrams, N as u64);
        assert_eq!(c.truncated + c.errors, 0, "{c:?}");
    });
}

#[test]
fn oversize_datagrams_are_counted_as_truncated_and_dropped() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    on_worker(async {
        let mut ring = UdpRing::new(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpConfig {
                buffers: 8,
                buffer_size: 512,
                gro: false,
            },
        )
        .unwrap();
        let to = ring.local_addr().unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&[1u8; 2000], to).unwrap();
        s.send_to(&[2u8; 100], to).unwrap();
        let mut got = Vec::new();
        while got.is_empty() {
            ring.recv_burst(|r| got.push(r.data.to_vec()))
                .await
                .unwrap();
        }
        assert_eq!(got, vec![vec![2u8; 100]]);
        assert_eq!(ring.counters().truncated, 1);
    });
}

#[test]
fn gso_send_arrives_as_separate_datagrams_and_gro_coalesces_them() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    on_worker(async {
        let rx = UdpRing::new(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpConfig {
                buffers: 16,
                buffer_size: 65536,
                gro: true,
            },
        );
        let mut rx = rx.unwrap();
        let to = rx.local_addr().unwrap();
        // A plain receiver sees GSO output as separate datagrams.
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let tx = sender_ring();
        let run: Vec<u8> = (0..10 * 1000).map(|i| (i / 1000) as u8).collect();
        let (sent, _) = tx
            .send(plain.local_addr().unwrap(), run.clone(), Some(1000))
            .await;
        assert_eq!(sent.unwrap(), run.len());
        let mut buf = [0u8; 2000];
        for k in 0..10u8 {
            let n = plain.recv(&mut buf).unwrap();
            assert_eq!(n, 1000);
            assert!(buf[..n].iter().all(|b| *b == k));
        }
        // The GRO receiver gets the same run back (coalesced into few buffers, each
        // carrying the segment size), and every datagram byte-exact in order.
        let sends = (0..4).map(|_| tx.send(to, run.clone(), Some(1000)));
        for (r, _) in futures::future::join_all(sends).await {
            assert_eq!(r.unwrap(), run.len());
        }
        let mut datagrams = Vec::new();
        let mut coalesced = 0;
        while datagrams.len() < 40 {
            rx.recv_burst(|r| {
                if r.segment_size.is_some() {
                    coalesced += 1;
                }
                datagrams.extend(r.datagrams().map(<[u8]>::to_vec));
            })
            .await
            .unwrap();
        }
        assert_eq!(datagrams.len(), 40);
        for (i, d) in datagrams.iter().enumerate() {
            assert_eq!(d.len(), 1000);
            assert!(d.iter().all(|b| *b == (i % 10) as u8), "datagram {i}");
        }
        assert!(coalesced > 0, "loopback GRO coalesced at least one run");
        assert_eq!(rx.counters().datagrams, 40);
    });
}

#[test]
fn try_recv_burst_never_waits_and_delivers_what_has_arrived() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    const N: u32 = 5_000;
    // Datagrams in flight at most: twice the buffers (see below).
    const WINDOW: u32 = 64;
    on_worker(async {
        let mut ring = loopback_ring(32);
        // Nothing sent yet: returns at once with nothing.
        assert_eq!(
            ring.try_recv_burst(|_| panic!("nothing was sent")).unwrap(),
            0
        );
        let to = ring.local_addr().unwrap();
        let received = Arc::new(AtomicU32::new(0));
        let sender = paced_sender(to, N, WINDOW, &received, |_| 100);
        // Busy-poll, as a stage polling between other work does; past the 32
        // buffers the kernel ends the multishot receive and it is re-armed.
        let mut seen = HashSet::new();
        // The deadline (no datagram for 30 s) only turns a hang into a failure.
        let mut progress = Instant::now();
        while seen.len() < N as usize {
            let got = ring
                .try_recv_burst(|r| {
                    for d in r.datagrams() {
                        let i = u32::from_be_bytes(d[..4].try_into().unwrap());
                        assert_eq!(d, payload(i, 100));
                        assert!(seen.insert(i), "datagram {i} twice");
                    }
                    received.store(seen.len() as u32, Ordering::Release);
                })
                .unwrap();
            if got == 0 {
                tokio::task::yield_now().await;
            } else {
                progress = Instant::now();
            }
            assert!(
                progress.elapsed() < Duration::from_secs(30),
                "stalled at {} of {N}: {:?}",
                seen.len(),
                ring.counters()
            );
        }
        sender.join().unwrap();
        let c = ring.counters();
        assert_eq!(c.datagrams, N as u64);
        assert_eq!(c.truncated + c.errors, 0, "{c:?}");
    });
}

#[test]
fn a_vectored_gso_send_puts_each_header_before_its_slice_of_the_frame() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    on_worker(async {
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let tx = sender_ring();
        // A 5,000-byte "frame" cut into 1,000-byte payloads, each behind its own
        // 16-byte header held in a separate small buffer: no payload copy.
        let frame: Vec<u8> = (0..5000u32).map(|i| (i / 1000) as u8 + 100).collect();
        let headers: Vec<Vec<u8>> = (0..5u8).map(|k| vec![k; 16]).collect();
        let mut parts = headers;
        parts.push(frame);
        let slices: Vec<_> = (0..5)
            .flat_map(|k| [(k, 0..16), (5, k * 1000..(k + 1) * 1000)])
            .collect();
        let (sent, parts) = tx
            .send_vectored(plain.local_addr().unwrap(), parts, &slices, Some(1016))
            .await;
        assert_eq!(sent.unwrap(), 5 * 1016);
        assert_eq!(parts.len(), 6, "the parts come back");
        let mut buf = [0u8; 2000];
        for k in 0..5u8 {
            let n = plain.recv(&mut buf).unwrap();
            assert_eq!(n, 1016, "datagram {k}");
            assert!(buf[..16].iter().all(|b| *b == k), "header of datagram {k}");
            assert!(
                buf[16..n].iter().all(|b| *b == k + 100),
                "payload of datagram {k}"
            );
        }
    });
}

#[test]
fn a_vectored_send_with_a_bad_slice_is_refused_before_sending() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    on_worker(async {
        let tx = sender_ring();
        let to = "127.0.0.1:9".parse().unwrap();
        let (r, parts) = tx
            .send_vectored(to, vec![vec![0u8; 8]], &[(0, 4..12)], None)
            .await;
        let e = r.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("outside part 0"), "{e}");
        assert_eq!(parts.len(), 1);
        let (r, _) = tx
            .send_vectored(to, vec![vec![0u8; 8]], &[(1, 0..1)], None)
            .await;
        assert!(r.unwrap_err().to_string().contains("only 1 parts"));
        let many = vec![(0, 0..1); pipewright_runtime::uring::MAX_SLICES + 1];
        let (r, _) = tx.send_vectored(to, vec![vec![0u8; 8]], &many, None).await;
        assert!(r.unwrap_err().to_string().contains("at most"));
    });
}
