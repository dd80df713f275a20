//! What one NBD client may hold of the gateway: a connection that chooses no export
//! is closed at the handshake deadline, the connections served at once are capped,
//! and a client that pipelines large requests waits for its byte budget instead of
//! making the server hold all of them. Each on both transmission paths (the cache
//! called per request, and the request pipeline), with a real socket and a raw client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pipewright_cache::nbd::{NbdServer, NbdStats};
use pipewright_cache::pipeline;
use pipewright_cache::{Cache, CacheConfig, FileBackend};
use pipewright_runtime::Plan;

const MIB: usize = 1 << 20;
const VOLUME: usize = 32 * MIB;

/// The volume's initial byte at `i`.
fn pattern(i: usize) -> u8 {
    (i / 4096) as u8 ^ 0x5a
}

struct Served {
    addr: std::net::SocketAddr,
    stats: Arc<NbdStats>,
    rt: tokio::runtime::Runtime,
    _pipeline: Option<pipewright_runtime::Running>,
    _dir: tempfile::TempDir,
}

/// A gateway over one 32 MiB volume `disk`, its server shaped by `limits`.
fn serve(via_pipeline: bool, limits: impl FnOnce(NbdServer) -> NbdServer) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let vdir = dir.path().join("volumes");
    std::fs::create_dir(&vdir).unwrap();
    let image: Vec<u8> = (0..VOLUME).map(pattern).collect();
    std::fs::write(vdir.join("disk"), image).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = CacheConfig::new(dir.path().join("cache"), 48);
    cfg.chunk_size = 1 << 20;
    let cache = rt
        .block_on(Cache::open(cfg, Arc::new(FileBackend::new(&vdir).unwrap())))
        .unwrap();
    let (server, running) = if via_pipeline {
        let (running, path) = pipeline::start(cache.clone(), Plan::spread(2)).unwrap();
        (NbdServer::with_pipeline(cache, path), Some(running))
    } else {
        (NbdServer::new(cache), None)
    };
    let server = limits(server);
    let stats = server.stats().clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(server.serve(listener));
    Served {
        addr,
        stats,
        rt,
        _pipeline: running,
        _dir: dir,
    }
}

fn connect_raw(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// The newstyle handshake, export `disk` by `NBD_OPT_EXPORT_NAME`.
fn connect(addr: std::net::SocketAddr) -> TcpStream {
    connect_with(addr, None, None)
}

/// The handshake on a socket whose receive buffer is `recv_buffer` bytes (fixed: no
/// autotuning), if given, from address `from` if given.
fn connect_with(
    addr: std::net::SocketAddr,
    recv_buffer: Option<usize>,
    from: Option<std::net::IpAddr>,
) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(n) = recv_buffer {
        sock.set_recv_buffer_size(n).unwrap();
    }
    if let Some(ip) = from {
        sock.bind(&std::net::SocketAddr::new(ip, 0).into()).unwrap();
    }
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    let mut opt = Vec::new();
    opt.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&4u32.to_be_bytes());
    opt.extend_from_slice(b"disk");
    s.write_all(&opt).unwrap();
    let mut export = [0u8; 10];
    s.read_exact(&mut export).unwrap();
    assert_eq!(
        u64::from_be_bytes(export[..8].try_into().unwrap()),
        VOLUME as u64
    );
    s
}

fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut r = Vec::with_capacity(28);
    r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

/// A simple reply's (error, cookie).
fn reply(s: &mut TcpStream) -> (u32, u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
    (
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        u64::from_be_bytes(h[8..].try_into().unwrap()),
    )
}

/// Reads until the server closes the connection (a bounded wait: the read timeout).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Whether a new connection is served (greeted) again, once the server has taken back
/// the place of one that ended (it does so when it sees the close: tried for 30 s).
fn served_again(addr: std::net::SocketAddr) -> bool {
    (0..3000).any(|_| {
        let mut s = connect_raw(addr);
        let mut hello = [0u8; 18];
        let greeted = s.read_exact(&mut hello).is_ok();
        if !greeted {
            std::thread::sleep(Duration::from_millis(10));
        }
        greeted
    })
}

#[test]
fn a_connection_that_chooses_no_export_is_closed_at_the_deadline() {
    for via_pipeline in [false, true] {
        // Seconds: the well-behaved client's handshake (a few loopback round trips)
        // must fit in it however loaded the machine is.
        let g = serve(via_pipeline, |s| {
            s.handshake_deadline(Duration::from_secs(3))
        });
        // A client that completes its handshake first...
        let mut c = connect(g.addr);
        // ...then one that connects, reads the greeting, then says nothing.
        let mut silent = connect_raw(g.addr);
        let mut hello = [0u8; 18];
        silent.read_exact(&mut hello).unwrap();
        assert!(
            closed_by_server(&mut silent),
            "a silent client kept its connection"
        );
        assert_eq!(g.stats.handshake_timeouts.load(Ordering::Relaxed), 1);
        // The silent connection came after the other one, so the other one's deadline
        // has passed too: a client that completed its handshake is not bound by it.
        c.write_all(&request(0, 7, 0, 4096)).unwrap();
        assert_eq!(reply(&mut c), (0, 7));
        let mut data = vec![0u8; 4096];
        c.read_exact(&mut data).unwrap();
        assert_eq!(g.stats.handshake_timeouts.load(Ordering::Relaxed), 1);
        drop(g.rt);
    }
}

#[test]
fn connections_beyond_the_maximum_are_refused_and_counted() {
    let g = serve(false, |s| s.max_connections(2));
    let a = connect(g.addr);
    let _b = connect(g.addr);
    let mut third = connect_raw(g.addr);
    assert!(
        closed_by_server(&mut third),
        "a third connection was served"
    );
    assert_eq!(g.stats.refused_connections.load(Ordering::Relaxed), 1);
    // A connection that ends gives its place back.
    drop(a);
    assert!(
        served_again(g.addr),
        "the place of a closed connection was not given back"
    );
}

/// One peer address holds at most its share of the connections: one more from it is
/// refused and counted, while another address (127.0.0.2, also loopback) is served.
#[test]
fn connections_beyond_a_peers_share_are_refused_while_other_peers_are_served() {
    let g = serve(false, |s| s.max_connections(8).max_connections_per_peer(2));
    let here: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let a = connect_with(g.addr, None, Some(here));
    let _b = connect_with(g.addr, None, Some(here));
    let mut third = connect_raw(g.addr);
    assert!(
        closed_by_server(&mut third),
        "a third connection from one peer was served"
    );
    assert_eq!(g.stats.refused_connections.load(Ordering::Relaxed), 1);
    let mut other = connect_with(g.addr, None, Some("127.0.0.2".parse().unwrap()));
    other.write_all(&request(0, 9, 0, 4096)).unwrap();
    assert_eq!(reply(&mut other), (0, 9));
    let mut data = vec![0u8; 4096];
    other.read_exact(&mut data).unwrap();
    assert_eq!(data, (0..4096).map(pattern).collect::<Vec<_>>());
    // A connection that ends gives its peer's place back.
    drop(a);
    assert!(served_again(g.addr), "the peer's place was not given back");
}

/// A client that pipelines four 16 MiB reads and four 4 MiB writes without reading
/// its replies (its receive buffer is small, so read data cannot drain into the
/// kernel): under a 32 MiB budget the server takes two reads and then waits, holding
/// no more; once the client reads, every request is answered with the right bytes.
#[test]
fn pipelined_large_requests_wait_for_the_byte_budget_and_all_complete() {
    const READ: usize = 16 * MIB;
    const WRITE: usize = 4 * MIB;
    for via_pipeline in [false, true] {
        let g = serve(via_pipeline, |s| s.max_in_flight_bytes(32 << 20));
        let mut c = connect_with(g.addr, Some(64 << 10), None);
        c.set_nodelay(true).unwrap();
        let mut writer = c.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            // The four reads in one segment: the server parses them in one pass, so
            // the third meets the budget before any reply could block the connection.
            let reads: Vec<u8> = (0..4u64)
                .flat_map(|i| request(0, i, 0, READ as u32))
                .collect();
            writer.write_all(&reads).unwrap();
            for i in 0..4u64 {
                let offset = (READ + i as usize * WRITE) as u64;
                writer
                    .write_all(&request(1, 10 + i, offset, WRITE as u32))
                    .unwrap();
                writer.write_all(&vec![i as u8 + 1; WRITE]).unwrap();
            }
        });
        // Bounded wait for the server to reach its budget (it must: the first read's
        // 16 MiB cannot all leave while the client reads nothing).
        let waited = (0..6000).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            g.stats.budget_waits.load(Ordering::Relaxed) > 0
        });
        assert!(
            waited,
            "64 MiB of reads were all taken under a 32 MiB budget"
        );
        let mut answered = Vec::new();
        for _ in 0..8 {
            let (err, cookie) = reply(&mut c);
            assert_eq!(err, 0, "request {cookie} failed");
            if cookie < 4 {
                let mut data = vec![0u8; READ];
                c.read_exact(&mut data).unwrap();
                assert!(
                    data.iter().enumerate().all(|(i, &b)| b == pattern(i)),
                    "read {cookie} returned other bytes"
                );
            }
            answered.push(cookie);
        }
        sender.join().unwrap();
        answered.sort_unstable();
        assert_eq!(answered, vec![0, 1, 2, 3, 10, 11, 12, 13]);
        for i in 0..4usize {
            let offset = (READ + i * WRITE) as u64;
            c.write_all(&request(0, 100, offset, WRITE as u32)).unwrap();
            assert_eq!(reply(&mut c), (0, 100));
            let mut data = vec![0u8; WRITE];
            c.read_exact(&mut data).unwrap();
            assert!(data.iter().all(|&b| b == i as u8 + 1), "write {i}");
        }
        drop(g.rt);
    }
}
