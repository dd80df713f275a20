//! pipewright ↔ pipewright over Geneve and over PWT (the proprietary tunnel): two
//! data-plane namespaces, each with its own underlay address, joined by one underlay
//! veth ([`Host::join_underlay`]); one guest behind each data plane, on the same VNI /
//! tenant. Guest A is a TAP VF (TSO super-frames segmented in user space, sent with
//! UDP GSO), guest B a veth VF carried by AF_XDP. The rule tables are written by hand
//! for each side: IPv4 for the overlay subnet is encapsulated to the other data plane,
//! broadcast ARP is answered from the table, unicast ARP crosses the tunnel, and only
//! the other data plane's tunnel on this VNI is delivered to the guest.
//!
//! Proven for both tunnels: ping both ways and a 20 MB TCP transfer each way with its
//! content checked; every datagram arrived on the tunnel's own port (all three tunnel
//! ports are open), nothing was dropped by the data planes, and the kernel dropped no
//! datagram of the underlay sockets (`RcvbufErrors`). For Geneve, the underlay veth
//! is captured with tshark (inside A's data-plane namespace) while the traffic flows,
//! and the capture is decoded by tshark: apart from the underlay's own ARP and the
//! capture's start probes, every frame is UDP to 6081 decoded as Geneve version 0
//! with our VNI and protocol type 0x6558 (Ethernet); outer IP and MAC addresses are
//! the data planes' underlay ends and inner ones the guests', consistently per
//! direction; both IPv4 header checksums verify; the inner ICMP echoes (checksums
//! verified) and the inner TCP segments of both transfers are there, the payload of
//! both transfers in full unless tshark reports dropped frames. tshark has no PWT
//! dissector: for PWT the data planes' counters show that the traffic arrived on the
//! PWT port and on no other, on a tenant id wider than 24 bits.
//!
//! Needs root and network namespaces (SKIP line otherwise, failure with
//! `PIPEWRIGHT_REQUIRE_NETNS=1`); the capture needs tshark (SKIP of the capture part
//! otherwise, failure with `PIPEWRIGHT_REQUIRE_TSHARK=1`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use pipewright_nic::dataplane::{DataPlane, RunningDataPlane, UnderlayConfig};
use pipewright_nic::host::{netns_or_skip, Host, Namespace, UnderlaySpec, VfKind, VfSpec};
use pipewright_nic::port::xsk::XdpMode;
use pipewright_nic::port::{AfXdpPort, VfPort};
use pipewright_nic::rules::{
    EgressAction, EgressRule, EgressTable, IngressAction, IngressRule, IngressTable, TrapAction,
    Versioned, VfIdentity,
};
use pipewright_nic::tunnel::{DecapConfig, TunnelKind, TunnelSpec};
use pipewright_nic::wire::MacAddr;

const GUEST_A: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 1);
const GUEST_B: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 2);
const MAC_A: MacAddr = MacAddr([2, 0, 0, 0x61, 0, 1]);
const MAC_B: MacAddr = MacAddr([2, 0, 0, 0x61, 0, 2]);
const UL_A: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 1);
const UL_B: Ipv4Addr = Ipv4Addr::new(192, 168, 61, 2);
/// Bytes sent each way over TCP.
const SIZE: u64 = 20 << 20;
const TCP_PORT: u16 = 7200;
/// TCP payload per segment (1500 less IPv4, TCP and the timestamp option).
const MSS: u64 = 1448;
/// Datagrams that show a capture has started (to the discard port of B's underlay).
const PROBE: &[u8] = b"pipewright capture probe";
const PROBE_PORT: u16 = 9;

/// Whether tshark runs; otherwise a SKIP line (or a failure when required).
fn tshark_or_skip(test: &str) -> bool {
    match Command::new(tshark_bin()).arg("-v").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            if std::env::var("PIPEWRIGHT_REQUIRE_TSHARK").as_deref() == Ok("1") {
                panic!("{test}: tshark not found and PIPEWRIGHT_REQUIRE_TSHARK=1");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIP {test} (capture part): tshark not found; install it (apt-get install \
                 tshark) or set TSHARK=/path/to/tshark"
            );
            false
        }
    }
}

fn tshark_bin() -> String {
    std::env::var("TSHARK").unwrap_or_else(|_| "tshark".to_owned())
}

/// A unique namespace prefix: pid and a counter (the names stay short).
fn prefix(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "pwp{}{tag}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The two sides: A (TAP guest) and B (veth guest, AF_XDP), their data planes joined
/// by one underlay veth.
fn pair(tag: &str) -> (Host, Host) {
    let p = prefix(tag);
    let host = |side: &str, mac, ip: Ipv4Addr, kind| {
        Host::builder(&format!("{p}{side}"))
            .vf(VfSpec::new(0, mac, Ipv4Net::new(ip, 24).unwrap(), kind))
            .build()
            .expect("build a host")
    };
    let mut a = host("a", MAC_A, GUEST_A, VfKind::Tap);
    let mut b = host("b", MAC_B, GUEST_B, VfKind::Veth);
    Host::join_underlay(
        &mut a,
        &mut b,
        &UnderlaySpec::new(
            Ipv4Net::new(UL_A, 30).unwrap(),
            Ipv4Net::new(UL_B, 30).unwrap(),
            1600,
        ),
    )
    .expect("join the data planes' underlay");
    (a, b)
}

/// The rule tables of `host`'s data plane, whose guest talks to `peer` (the other
/// guest's address and MAC) through the other data plane.
fn tables(
    host: &Host,
    kind: TunnelKind,
    vni: u32,
    peer: (Ipv4Addr, MacAddr),
) -> (EgressTable, IngressTable) {
    let ul = host.underlay.as_ref().expect("joined");
    let vf = &host.vfs[0];
    let (local, remote) = (IpAddr::V4(ul.dp_ip.addr()), IpAddr::V4(ul.remote_ip.addr()));
    let spec = Arc::new(TunnelSpec {
        kind,
        vni,
        outer_src: local,
        outer_dst: remote,
        udp_dst_port: kind.default_port(),
        df: true,
        ttl: 64,
        outer_src_mac: ul.dp_mac.0,
        outer_dst_mac: ul.remote_mac.0,
        options: vec![],
    });
    let subnet = Ipv4Net::new(vf.guest_ip.network(), vf.guest_ip.prefix_len()).unwrap();
    let rule = |id, dst_mac, dst_prefix, ethertype, action| EgressRule {
        id,
        vf: vf.vf,
        dst_mac,
        dst_prefix,
        vlan: None,
        ethertype: Some(ethertype),
        action,
    };
    let egress = EgressTable::builder()
        .underlay_mtu(ul.mtu as usize)
        .vf(VfIdentity {
            vf: vf.vf,
            mac: vf.guest_mac.0,
            ips: vec![IpAddr::V4(vf.guest_ip.addr())],
            vlan: None,
        })
        .neighbour(vf.vf, peer.0, peer.1 .0)
        // IPv4 for the overlay subnet: to the other data plane.
        .rule(rule(
            1,
            None,
            Some(IpNet::V4(subnet)),
            0x0800,
            EgressAction::Encap(spec.clone()),
        ))
        // Broadcast ARP requests: answered from the neighbour entry.
        .rule(rule(
            2,
            Some([0xff; 6]),
            None,
            0x0806,
            EgressAction::Trap(TrapAction::AnswerArp),
        ))
        // Unicast ARP (replies, reachability probes): across the tunnel.
        .rule(rule(3, None, None, 0x0806, EgressAction::Encap(spec)))
        .build()
        .expect("egress table");
    let ingress = IngressTable::builder()
        .vf(vf.vf, vf.guest_mac.0)
        .rule(IngressRule {
            id: 100,
            kind,
            vni,
            outer_dst: local,
            outer_src: Some(remote),
            udp_dst_port: Some(kind.default_port()),
            inner_dst_mac: None,
            action: IngressAction::Deliver { vf: vf.vf },
        })
        .build()
        .expect("ingress table");
    (egress, ingress)
}

/// Opens the host's VF port and starts its data plane (in its namespace), receiving
/// on the ports of all three built-in tunnels (only `kind`'s may see traffic).
fn start(host: &Host, kind: TunnelKind, vni: u32, peer: (Ipv4Addr, MacAddr)) -> RunningDataPlane {
    let (egress, ingress) = tables(host, kind, vni, peer);
    let vf = &host.vfs[0];
    let port: Box<dyn VfPort> = match vf.kind {
        VfKind::Tap => Box::new(host.open_tap(0).expect("open the TAP VF")),
        VfKind::Veth => {
            let name = vf.vf_ifname.clone();
            let port = host
                .dp_ns()
                .run(move || {
                    AfXdpPort::builder(&name)
                        .vf(0)
                        .mode(XdpMode::Native)
                        .build()
                })
                .unwrap()
                .expect("open the AF_XDP VF");
            Box::new(port)
        }
    };
    let local = IpAddr::V4(host.underlay.as_ref().unwrap().dp_ip.addr());
    host.dp_ns()
        .run(move || {
            DataPlane::builder()
                .vf(port)
                .underlay(UnderlayConfig::new(local))
                .rx_port(TunnelKind::Vxlan.default_port())
                .rx_port(TunnelKind::Geneve.default_port())
                .rx_port(TunnelKind::Pwt.default_port())
                .decap(DecapConfig::default())
                .egress(Versioned::new(egress))
                .ingress(Versioned::new(ingress))
                .start()
        })
        .unwrap()
        .expect("start the data plane")
}

fn ping(ns: &str, to: Ipv4Addr) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2",
        ])
        .arg(to.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// Sends `SIZE` patterned bytes from `from` (a namespace) to `to:port` (listening in
/// `to_ns`); the receiver checks every byte. Returns Mbit/s.
fn tcp_transfer(from: &Namespace, to_ns: &Namespace, to: Ipv4Addr, port: u16) -> f64 {
    let addr = SocketAddr::new(IpAddr::V4(to), port);
    let listener = to_ns.run(move || TcpListener::bind(addr).unwrap()).unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (mut total, mut sum) = (0u64, 0u64);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s.read(&mut buf).expect("receive (20 s timeout)");
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
    let start = Instant::now();
    let sent_sum = from
        .run(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            let (mut sent, mut sum) = (0u64, 0u64);
            let mut chunk = vec![0u8; 1 << 16];
            while sent < SIZE {
                let n = chunk.len().min((SIZE - sent) as usize);
                for (k, b) in chunk[..n].iter_mut().enumerate() {
                    *b = pattern_byte(sent + k as u64);
                    sum = sum.wrapping_add(u64::from(*b));
                }
                s.write_all(&chunk[..n]).expect("send (20 s timeout)");
                sent += n as u64;
            }
            sum
        })
        .unwrap();
    let (total, sum) = receiver.join().expect("receiver");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, SIZE, "every byte arrived");
    assert_eq!(sum, sent_sum, "content checksum");
    SIZE as f64 * 8.0 / secs / 1e6
}

/// What each stage did and dropped, for failure messages.
fn describe(name: &str, plane: &RunningDataPlane) -> String {
    let mut out = format!("{name}:\n");
    for s in &plane.snapshot().stages {
        out += &format!(
            "  {:<20} in {:>8} out {:>8} dropped {:?}\n",
            s.name, s.items_in, s.items_out, s.dropped
        );
    }
    out += &format!(
        "  nic drops {:?}\n  ports {:?}\n",
        plane.stats().all(),
        plane.port_counters()
    );
    out
}

/// Checks that the data plane received at least `min` datagrams on the tunnel port of
/// `kind`, none on the other tunnels' ports, and dropped nothing; returns the count.
fn received_only(name: &str, plane: &RunningDataPlane, kind: TunnelKind, min: u64) -> u64 {
    let snapshot = plane.snapshot();
    let rx = |k: TunnelKind| {
        snapshot
            .stage(&format!("underlay-rx-{}", k.default_port()))
            .expect("an underlay-rx stage per tunnel port")
            .items_out
    };
    let got = rx(kind);
    assert!(
        got >= min,
        "{name} received {got} < {min} datagrams on {kind:?}'s port\n{}",
        describe(name, plane)
    );
    for other in [TunnelKind::Vxlan, TunnelKind::Geneve, TunnelKind::Pwt] {
        if other != kind {
            assert_eq!(rx(other), 0, "{name}: traffic on {other:?}'s port");
        }
    }
    assert_eq!(plane.stats().total(), 0, "{}", describe(name, plane));
    got
}

/// The kernel's count of datagrams dropped for a full socket receive buffer in `ns`
/// (`Udp: RcvbufErrors` of `/proc/net/snmp`): the underlay sockets must not lose any
/// unseen by the data plane's counters.
fn udp_rcvbuf_errors(ns: &Namespace) -> u64 {
    let snmp = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .unwrap()
        .expect("read /proc/thread-self/net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .expect("RcvbufErrors");
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Ping both ways, then 20 MB of TCP each way; returns the two speeds (A→B, B→A).
fn traffic(a: &Host, b: &Host, pa: &RunningDataPlane, pb: &RunningDataPlane) -> (f64, f64) {
    let both = || format!("{}{}", describe("A", pa), describe("B", pb));
    assert!(
        ping(&a.vfs[0].guest_ns, GUEST_B),
        "guest A pings guest B\n{}",
        both()
    );
    assert!(
        ping(&b.vfs[0].guest_ns, GUEST_A),
        "guest B pings guest A\n{}",
        both()
    );
    let ga = a.guest_ns(0).unwrap();
    let gb = b.guest_ns(0).unwrap();
    let ab = tcp_transfer(ga, gb, GUEST_B, TCP_PORT);
    let ba = tcp_transfer(gb, ga, GUEST_A, TCP_PORT + 1);
    for (h, name) in [(a, "A"), (b, "B")] {
        assert_eq!(
            udp_rcvbuf_errors(h.dp_ns()),
            0,
            "{name}'s underlay socket overflowed\n{}",
            both()
        );
    }
    (ab, ba)
}

fn stop(name: &str, plane: RunningDataPlane) {
    let drops = plane.stats().all();
    let report = plane.stop().expect("data plane stops");
    eprintln!("{name}: drops {drops:?}; completed {}", report.completed);
}

// ---------------------------------------------------------------- capture

/// A tshark capture running in a namespace; interrupted (by its pid) when stopped or
/// dropped.
struct Capture {
    child: Child,
    file: PathBuf,
    /// tshark's messages (stderr), line by line.
    said: std::sync::mpsc::Receiver<(bool, String)>,
}

impl Capture {
    /// Starts `tshark -i ifname -w file` inside `ns` and waits until it captures:
    /// tshark says "Capturing on" a little before packets are written, so `probe` (a
    /// datagram sent across the interface) is repeated until the file grows.
    fn start(ns: &str, ifname: &str, dir: &Path, probe: impl Fn()) -> Capture {
        let file = dir.join("underlay.pcapng");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(tshark_bin())
            .args(["-i", ifname, "-n", "-q", "-s", "256"])
            // A safety stop, should the test die before interrupting it.
            .args(["-a", "duration:120"])
            .arg("-w")
            .arg(&file)
            .env("WIRESHARK_CONFIG_DIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tshark");
        // `ip netns exec` execs tshark in place: the child's pid is tshark's.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let capturing = line.contains("Capturing on");
                let _ = tx.send((capturing, line));
            }
        });
        let capture = Capture {
            child,
            file,
            said: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match capture.said.recv_timeout(left) {
                Ok((true, _)) => break,
                Ok((false, line)) => said.push(line),
                Err(_) => panic!("tshark did not start capturing: {said:?}"),
            }
        }
        let size = |f: &Path| std::fs::metadata(f).map_or(0, |m| m.len());
        // The file's header blocks first, then packets.
        while size(&capture.file) == 0 {
            assert!(Instant::now() < deadline, "tshark wrote no file: {said:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        let empty = size(&capture.file);
        while size(&capture.file) <= empty {
            assert!(
                Instant::now() < deadline,
                "tshark wrote no packet: {said:?}"
            );
            probe();
            std::thread::sleep(Duration::from_millis(100));
        }
        capture
    }

    /// Interrupts tshark (it writes out what it has) and returns the file and what
    /// tshark said last (how many packets it captured and dropped).
    fn stop(mut self) -> (PathBuf, String) {
        // tshark lags behind the traffic and loses what it has not read when
        // interrupted: wait until its file stops growing first.
        let deadline = Instant::now() + Duration::from_secs(20);
        let size = |f: &Path| std::fs::metadata(f).map_or(0, |m| m.len());
        let mut last = size(&self.file);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            let now = size(&self.file);
            if now == last {
                break;
            }
            last = now;
        }
        self.interrupt();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.child.try_wait().expect("wait for tshark") {
                Some(status) => {
                    assert!(
                        status.success() || status.code().is_none(),
                        "tshark: {status}"
                    );
                    break;
                }
                None if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    panic!("tshark did not stop");
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        // Until tshark's stderr closes (it has exited), or 2 s of silence.
        let mut said = Vec::new();
        while let Ok((_, line)) = self.said.recv_timeout(Duration::from_secs(2)) {
            said.push(line);
        }
        (self.file.clone(), said.join(" / "))
    }

    fn interrupt(&self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const FIELDS: &[&str] = &[
    "frame.number",
    "frame.len",
    "frame.cap_len",
    "eth.src",
    "eth.dst",
    "eth.type",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.checksum.status",
    "udp.srcport",
    "udp.dstport",
    "udp.length",
    "geneve.version",
    "geneve.proto_type",
    "geneve.vni",
    "icmp.type",
    "icmp.checksum.status",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.len",
    "arp.opcode",
    "_ws.malformed",
];

type Row = HashMap<&'static str, Vec<String>>;

/// Decodes `file` with tshark: one row per frame, field -> every occurrence (outer
/// first, then inner).
fn decode(file: &Path) -> Vec<Row> {
    let mut cmd = Command::new(tshark_bin());
    cmd.env("WIRESHARK_CONFIG_DIR", file.parent().unwrap())
        .arg("-r")
        .arg(file)
        .args(["-n", "-T", "fields", "-d", "udp.port==6081,geneve"])
        .args(["-E", "separator=/t", "-E", "occurrence=a", "-E", "quote=n"])
        .args(["-E", "aggregator=;"])
        .args(["-o", "ip.check_checksum:TRUE"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark -r");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tshark -r failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), FIELDS.len(), "tshark row: {line}");
            FIELDS
                .iter()
                .zip(cols)
                .map(|(f, c)| {
                    let v = if c.is_empty() {
                        vec![]
                    } else {
                        c.split(';').map(str::to_owned).collect()
                    };
                    (*f, v)
                })
                .collect()
        })
        .collect()
}

/// A checksum status (epan/proto.h `proto_checksum_enum_e`) that says "good": tshark
/// prints it as a number, some versions by name.
fn good(status: &str) -> bool {
    matches!(status, "1" | "Good")
}

fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// What the Geneve capture showed.
#[derive(Debug, Default)]
struct Seen {
    frames: usize,
    underlay_arp: usize,
    probes: usize,
    geneve: usize,
    echo_requests: usize,
    echo_replies: usize,
    tcp_data_ab: usize,
    tcp_data_ba: usize,
    tcp_bytes_ab: u64,
    tcp_bytes_ba: u64,
}

/// Checks every frame of the underlay capture; returns what was seen, or the list of
/// disagreements.
fn check_capture(rows: &[Row], vni: u32, a_ul_mac: MacAddr, b_ul_mac: MacAddr) -> Seen {
    let mut seen = Seen::default();
    let mut bad = Vec::new();
    let get = |r: &Row, f: &str| r.get(f).cloned().unwrap_or_default();
    for r in rows {
        seen.frames += 1;
        let n = get(r, "frame.number").join(",");
        let mut fail = |msg: String| bad.push(format!("frame {n}: {msg}"));
        if !get(r, "_ws.malformed").is_empty() {
            fail("tshark calls it malformed".into());
        }
        let eth_types = get(r, "eth.type");
        if eth_types.first().map(String::as_str) == Some("0x0806") {
            // The underlay's own ARP between the two data-plane namespaces.
            seen.underlay_arp += 1;
            continue;
        }
        let udp_dst = get(r, "udp.dstport");
        let outer_proto = get(r, "ip.proto");
        if udp_dst == [PROBE_PORT.to_string()]
            || (outer_proto.first().map(String::as_str) == Some("1")
                && get(r, "geneve.vni").is_empty())
        {
            // The capture's start probes, and B's "port unreachable" answers.
            seen.probes += 1;
            continue;
        }
        if udp_dst.first().map(String::as_str) != Some("6081") {
            fail(format!(
                "not Geneve: udp.dstport {udp_dst:?}, eth.type {eth_types:?}"
            ));
            continue;
        }
        seen.geneve += 1;
        // Outer and inner addresses, per direction.
        let ip_src = get(r, "ip.src");
        let ip_dst = get(r, "ip.dst");
        let eth_src = get(r, "eth.src");
        let eth_dst = get(r, "eth.dst");
        let a_to_b = ip_src.first().map(String::as_str) == Some(&UL_A.to_string());
        let (ul, guests, macs, ul_macs) = if a_to_b {
            (
                (UL_A, UL_B),
                (GUEST_A, GUEST_B),
                (MAC_A, MAC_B),
                (a_ul_mac, b_ul_mac),
            )
        } else {
            (
                (UL_B, UL_A),
                (GUEST_B, GUEST_A),
                (MAC_B, MAC_A),
                (b_ul_mac, a_ul_mac),
            )
        };
        let want_ip = |x: Ipv4Addr, y: Ipv4Addr| vec![x.to_string(), y.to_string()];
        if ip_src != want_ip(ul.0, guests.0) || ip_dst != want_ip(ul.1, guests.1) {
            fail(format!(
                "ip.src {ip_src:?} ip.dst {ip_dst:?}: want outer {ul:?}, inner {guests:?}"
            ));
        }
        let want_mac = |x: MacAddr, y: MacAddr| vec![x.to_string(), y.to_string()];
        if eth_src != want_mac(ul_macs.0, macs.0) || eth_dst != want_mac(ul_macs.1, macs.1) {
            fail(format!(
                "eth.src {eth_src:?} eth.dst {eth_dst:?}: want outer {ul_macs:?}, inner {macs:?}"
            ));
        }
        if eth_types != ["0x0800", "0x0800"] {
            fail(format!("eth.type {eth_types:?}"));
        }
        let vnis = get(r, "geneve.vni");
        if vnis.len() != 1 || num(&vnis[0]) != u64::from(vni) {
            fail(format!("geneve.vni {vnis:?}, want {vni}"));
        }
        if get(r, "geneve.version") != ["0"] {
            fail(format!("geneve.version {:?}", get(r, "geneve.version")));
        }
        let proto = get(r, "geneve.proto_type");
        if proto.len() != 1 || num(&proto[0]) != 0x6558 {
            fail(format!(
                "geneve.proto_type {proto:?}, want 0x6558 (Ethernet)"
            ));
        }
        // Both IPv4 headers' checksums, as tshark verifies them.
        let csums = get(r, "ip.checksum.status");
        if csums.len() != 2 || !csums.iter().all(|c| good(c)) {
            fail(format!("ip.checksum.status {csums:?}"));
        }
        let protos = get(r, "ip.proto");
        match protos.get(1).map(String::as_str) {
            Some("1") => {
                let t = get(r, "icmp.type");
                let c = get(r, "icmp.checksum.status");
                if c.len() != 1 || !good(&c[0]) {
                    fail(format!("icmp.checksum.status {c:?}"));
                }
                match (t.first().map(String::as_str), a_to_b) {
                    (Some("8"), true) => seen.echo_requests += 1,
                    (Some("0"), false) => seen.echo_replies += 1,
                    // Guest B pings A too.
                    (Some("8"), false) | (Some("0"), true) => {}
                    other => fail(format!("icmp.type {other:?}")),
                }
            }
            Some("6") => {
                let len = get(r, "tcp.len").first().map_or(0, |l| num(l));
                let ports = (get(r, "tcp.srcport"), get(r, "tcp.dstport"));
                let (Some(sp), Some(dp)) = (ports.0.first(), ports.1.first()) else {
                    fail("TCP without ports".into());
                    continue;
                };
                let (sp, dp) = (num(sp) as u16, num(dp) as u16);
                let ours = [TCP_PORT, TCP_PORT + 1];
                if !ours.contains(&sp) && !ours.contains(&dp) {
                    fail(format!("TCP {sp} -> {dp}: not the transfer"));
                }
                if len > 0 && a_to_b && dp == TCP_PORT {
                    seen.tcp_data_ab += 1;
                    seen.tcp_bytes_ab += len;
                }
                if len > 0 && !a_to_b && dp == TCP_PORT + 1 {
                    seen.tcp_data_ba += 1;
                    seen.tcp_bytes_ba += len;
                }
            }
            other => fail(format!("inner ip.proto {other:?} ({protos:?})")),
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} frames disagree:\n{}",
        bad.len(),
        rows.len(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    seen
}

// ---------------------------------------------------------------- tests

#[test]
fn geneve_pipewright_to_pipewright_ping_tcp_and_tshark_capture() {
    const TEST: &str = "geneve_pipewright_to_pipewright";
    if !netns_or_skip(TEST) {
        return;
    }
    let capture = tshark_or_skip(TEST);
    let vni = 0x00_be_ef;
    let kind = TunnelKind::Geneve;
    let (a, b) = pair("g");
    let pa = start(&a, kind, vni, (GUEST_B, MAC_B));
    let pb = start(&b, kind, vni, (GUEST_A, MAC_A));
    let dir = tempfile::tempdir().unwrap();
    let running = capture.then(|| {
        let probe = a
            .dp_ns()
            .run(|| UdpSocket::bind((UL_A, 0)).unwrap())
            .unwrap();
        Capture::start(a.dp_ns().name(), "ul0", dir.path(), || {
            probe.send_to(PROBE, (UL_B, PROBE_PORT)).unwrap();
        })
    });

    let (ab, ba) = traffic(&a, &b, &pa, &pb);
    eprintln!("geneve: 20 MB A->B at {ab:.0} Mbit/s, B->A at {ba:.0} Mbit/s");
    // Each side received at least the other's transfer, one MSS per datagram.
    let min = SIZE.div_ceil(MSS);
    let got = (
        received_only("A", &pa, kind, min),
        received_only("B", &pb, kind, min),
    );
    eprintln!("geneve datagrams received: A {}, B {}", got.0, got.1);

    if let Some(running) = running {
        let (file, said) = running.stop();
        eprintln!("tshark: {said}");
        let rows = decode(&file);
        let ul = |h: &Host| h.underlay.as_ref().unwrap().dp_mac;
        let seen = check_capture(&rows, vni, ul(&a), ul(&b));
        eprintln!("geneve capture: {seen:?}");
        // Every frame was checked above; the capture must hold the pings and the
        // transfers (tshark may miss some frames under load: it says how many).
        assert!(
            seen.echo_requests >= 3 && seen.echo_replies >= 3,
            "the pings: {seen:?}"
        );
        assert!(
            seen.tcp_data_ab > 0 && seen.tcp_data_ba > 0,
            "the transfers: {seen:?}"
        );
        // Every byte of both transfers crossed this wire in Geneve, unless the
        // capture itself lost frames (tshark then says "dropped").
        if said.contains("dropped") {
            eprintln!("the capture lost frames: byte totals not checked");
        } else {
            assert!(
                seen.tcp_bytes_ab >= SIZE && seen.tcp_bytes_ba >= SIZE,
                "the transfers' payload in the capture: {seen:?}"
            );
        }
    }
    stop("A", pa);
    stop("B", pb);
}

#[test]
fn pwt_pipewright_to_pipewright_ping_and_tcp() {
    const TEST: &str = "pwt_pipewright_to_pipewright";
    if !netns_or_skip(TEST) {
        return;
    }
    // A tenant id beyond 24 bits: PWT carries 32.
    let tenant = 0x8000_1234;
    let kind = TunnelKind::Pwt;
    let (a, b) = pair("p");
    let pa = start(&a, kind, tenant, (GUEST_B, MAC_B));
    let pb = start(&b, kind, tenant, (GUEST_A, MAC_A));
    let (ab, ba) = traffic(&a, &b, &pa, &pb);
    eprintln!("pwt: 20 MB A->B at {ab:.0} Mbit/s, B->A at {ba:.0} Mbit/s");
    // Delivered on a 32-bit tenant id, over the PWT port only.
    let min = SIZE.div_ceil(MSS);
    let got = (
        received_only("A", &pa, kind, min),
        received_only("B", &pb, kind, min),
    );
    eprintln!("pwt datagrams received: A {}, B {}", got.0, got.1);
    stop("A", pa);
    stop("B", pb);
}
