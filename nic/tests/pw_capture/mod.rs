//! The Geneve capture of `dataplane_pw_to_pw`: tshark run in a namespace while traffic
//! flows, the file decoded with tshark, and every frame's fields checked.

use super::*;

/// A tshark capture running in a namespace; interrupted (by its pid) when stopped or
/// dropped.
pub(crate) struct Capture {
    child: Child,
    file: PathBuf,
    /// tshark's messages (stderr), line by line.
    said: std::sync::mpsc::Receiver<(bool, String)>,
}

impl Capture {
    /// Starts `tshark -i ifname -w file` inside `ns` and waits until it captures:
    /// tshark says "Capturing on" a little before packets are written, so `probe` (a
    /// datagram sent across the interface) is repeated until the file grows.
    pub(crate) fn start(ns: &str, ifname: &str, dir: &Path, probe: impl Fn()) -> Capture {
        let file = dir.join("underlay.pcapng");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(pipewright_testkit::tshark::bin())
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
    pub(crate) fn stop(mut self) -> (PathBuf, String) {
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

    pub(crate) fn interrupt(&self) {
        // The pid of a child we spawned and have not reaped.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
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

pub(crate) const FIELDS: &[&str] = &[
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

pub(crate) use pipewright_testkit::tshark::Row;
use pipewright_testkit::tshark::{good, num};

/// Decodes `file` with tshark: one row per frame, field -> every occurrence (outer
/// first, then inner).
pub(crate) fn decode(file: &Path) -> Vec<Row> {
    pipewright_testkit::tshark::fields(file, FIELDS, &["-d", "udp.port==6081,geneve"])
}

/// What the Geneve capture showed.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) frames: usize,
    pub(crate) underlay_arp: usize,
    pub(crate) probes: usize,
    pub(crate) geneve: usize,
    pub(crate) echo_requests: usize,
    pub(crate) echo_replies: usize,
    pub(crate) tcp_data_ab: usize,
    pub(crate) tcp_data_ba: usize,
    pub(crate) tcp_bytes_ab: u64,
    pub(crate) tcp_bytes_ba: u64,
}

/// Checks every frame of the underlay capture; returns what was seen, or the list of
/// disagreements.
pub(crate) fn check_capture(rows: &[Row], vni: u32, a_ul_mac: MacAddr, b_ul_mac: MacAddr) -> Seen {
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
