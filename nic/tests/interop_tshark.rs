//! Interop: frames encapsulated by [`EncapTemplate`] are decoded correctly by an
//! independent decoder, tshark (Wireshark's CLI), plus golden byte checks of the
//! tunnel headers against the layouts in RFC 7348 (VXLAN) and RFC 8926 (Geneve).
//!
//! The tshark test skips (with a message) when tshark is not installed, unless
//! `PIPEWRIGHT_REQUIRE_TSHARK=1` is set (set it in CI: a missing tshark then fails
//! the test instead of skipping it). Set `TSHARK=/path/to/tshark` to use another
//! binary.
#![cfg(not(loom))]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Duration;

use pcap_file::pcap::{PcapPacket, PcapWriter};
use pipewright_nic::tunnel::{flow_hash, EncapTemplate, TunnelKind, TunnelOption, TunnelSpec};
use pipewright_nic::wire::*;
use pipewright_nic::Frame;

// ---------------------------------------------------------------- inner frames

const IN_MAC_A: MacAddr = MacAddr([0x02, 0x10, 0, 0, 0, 0x0a]);
const IN_MAC_B: MacAddr = MacAddr([0x02, 0x10, 0, 0, 0, 0x0b]);
const TCP_PAYLOAD: &[u8] = b"pipewright inner TCP payload, 40 bytes..";
const UDP_PAYLOAD: &[u8] = b"inner udp datagram";

/// What tshark must find in the inner frame.
#[derive(Debug, Clone)]
enum InnerKind {
    Tcp4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
    },
    Udp4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
    },
    Udp6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        sport: u16,
        dport: u16,
    },
    Arp {
        sender: Ipv4Addr,
        target: Ipv4Addr,
    },
}

#[derive(Debug, Clone)]
struct Inner {
    name: &'static str,
    bytes: Vec<u8>,
    kind: InnerKind,
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let r = EthernetRepr {
        dst: IN_MAC_B,
        src: IN_MAC_A,
        vlan: None,
        inner_vlan: None,
        ethertype,
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut EthernetFrame::new_unchecked(&mut b[..]))
        .unwrap();
    b.extend_from_slice(payload);
    b
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let r = Ipv4Repr {
        src,
        dst,
        protocol,
        ttl: 63,
        tos: 0,
        ident: 0x4242,
        dont_frag: true,
        payload_len: l4.len(),
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut Ipv4Packet::new_unchecked(&mut b[..])).unwrap();
    b[r.header_len()..].copy_from_slice(l4);
    b
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4: &[u8]) -> Vec<u8> {
    let r = Ipv6Repr {
        src,
        dst,
        next_header,
        hop_limit: 63,
        traffic_class: 0,
        flow_label: 0x12345,
        payload_len: l4.len(),
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut Ipv6Packet::new_unchecked(&mut b[..])).unwrap();
    b[r.header_len()..].copy_from_slice(l4);
    b
}

fn udp(sport: u16, dport: u16, payload: &[u8], addrs: (IpAddr, IpAddr)) -> Vec<u8> {
    let r = UdpRepr {
        src_port: sport,
        dst_port: dport,
        payload_len: payload.len(),
    };
    let mut b = vec![0; r.buffer_len()];
    r.emit(&mut UdpPacket::new_unchecked(&mut b[..])).unwrap();
    let mut p = UdpPacket::new_unchecked(&mut b[..]);
    p.payload_mut().copy_from_slice(payload);
    match addrs {
        (IpAddr::V4(s), IpAddr::V4(d)) => p.fill_checksum_v4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => p.fill_checksum_v6(s, d),
        _ => unreachable!("mixed address families"),
    }
    b
}

fn inner_tcp4() -> Inner {
    let (src, dst) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2));
    let (sport, dport) = (40_001, 40_443);
    let r = TcpRepr {
        src_port: sport,
        dst_port: dport,
        seq: 1000,
        ack: 2000,
        flags: TcpFlags::ACK | TcpFlags::PSH,
        window: 65_000,
        urgent: 0,
    };
    let mut t = vec![0; r.buffer_len() + TCP_PAYLOAD.len()];
    r.emit(&mut TcpPacket::new_unchecked(&mut t[..])).unwrap();
    let mut p = TcpPacket::new_unchecked(&mut t[..]);
    p.payload_mut().copy_from_slice(TCP_PAYLOAD);
    p.fill_checksum_v4(src, dst);
    Inner {
        name: "ipv4/tcp",
        bytes: eth(ethertype::IPV4, &ipv4(src, dst, ip_proto::TCP, &t)),
        kind: InnerKind::Tcp4 {
            src,
            dst,
            sport,
            dport,
        },
    }
}

fn inner_udp4() -> Inner {
    let (src, dst) = (Ipv4Addr::new(10, 2, 0, 1), Ipv4Addr::new(10, 2, 0, 2));
    let (sport, dport) = (41_000, 41_001);
    let u = udp(sport, dport, UDP_PAYLOAD, (src.into(), dst.into()));
    Inner {
        name: "ipv4/udp",
        bytes: eth(ethertype::IPV4, &ipv4(src, dst, ip_proto::UDP, &u)),
        kind: InnerKind::Udp4 {
            src,
            dst,
            sport,
            dport,
        },
    }
}

fn inner_udp6() -> Inner {
    let (src, dst): (Ipv6Addr, Ipv6Addr) =
        ("fd00:1::1".parse().unwrap(), "fd00:2::2".parse().unwrap());
    let (sport, dport) = (42_000, 42_001);
    let u = udp(sport, dport, UDP_PAYLOAD, (src.into(), dst.into()));
    Inner {
        name: "ipv6/udp",
        bytes: eth(ethertype::IPV6, &ipv6(src, dst, ip_proto::UDP, &u)),
        kind: InnerKind::Udp6 {
            src,
            dst,
            sport,
            dport,
        },
    }
}

fn inner_arp() -> Inner {
    let (sender, target) = (Ipv4Addr::new(10, 3, 0, 1), Ipv4Addr::new(10, 3, 0, 2));
    let r = ArpRepr {
        op: ArpOp::Request,
        sender_mac: IN_MAC_A,
        sender_ip: sender,
        target_mac: MacAddr::ZERO,
        target_ip: target,
    };
    let mut b = vec![0; ARP_LEN];
    r.emit(&mut ArpPacket::new_unchecked(&mut b[..])).unwrap();
    let mut bytes = eth(ethertype::ARP, &b);
    bytes[0..6].copy_from_slice(&MacAddr::BROADCAST.octets());
    Inner {
        name: "arp",
        bytes,
        kind: InnerKind::Arp { sender, target },
    }
}

fn inners() -> Vec<Inner> {
    vec![inner_tcp4(), inner_udp4(), inner_udp6(), inner_arp()]
}

// ---------------------------------------------------------------- tunnels

const OUTER_SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const OUTER_DST4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const OUTER_SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x10);
const OUTER_DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x20);
const OUTER_TTL: u8 = 17;

fn spec(kind: TunnelKind, v6: bool, vni: u32, options: Vec<TunnelOption>) -> TunnelSpec {
    let (outer_src, outer_dst): (IpAddr, IpAddr) = if v6 {
        (OUTER_SRC6.into(), OUTER_DST6.into())
    } else {
        (OUTER_SRC4.into(), OUTER_DST4.into())
    };
    TunnelSpec {
        kind,
        vni,
        outer_src,
        outer_dst,
        udp_dst_port: kind.default_port(),
        df: true,
        ttl: OUTER_TTL,
        outer_src_mac: [0x02, 0xee, 0, 0, 0, 0x01],
        outer_dst_mac: [0x02, 0xee, 0, 0, 0, 0x02],
        options,
    }
}

fn critical_option() -> TunnelOption {
    TunnelOption {
        class: 0x0102,
        kind: 0x80,
        data: vec![0xde, 0xad, 0xbe, 0xef],
    }
}

fn plain_option() -> TunnelOption {
    TunnelOption {
        class: 0xffff,
        kind: 0x01,
        data: vec![0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
    }
}

struct Tunnel {
    name: &'static str,
    spec: TunnelSpec,
}

fn tunnels() -> Vec<Tunnel> {
    vec![
        Tunnel {
            name: "vxlan/ipv4",
            spec: spec(TunnelKind::Vxlan, false, 5001, vec![]),
        },
        Tunnel {
            name: "vxlan/ipv6",
            spec: spec(TunnelKind::Vxlan, true, 0xfe_dcba, vec![]),
        },
        Tunnel {
            name: "geneve/ipv4",
            spec: spec(TunnelKind::Geneve, false, 0x00_abcd, vec![]),
        },
        Tunnel {
            name: "geneve+opt/ipv4",
            spec: spec(
                TunnelKind::Geneve,
                false,
                0x12_3456,
                vec![critical_option()],
            ),
        },
        Tunnel {
            name: "geneve+2opts/ipv6",
            spec: spec(
                TunnelKind::Geneve,
                true,
                0xff_fffe,
                vec![critical_option(), plain_option()],
            ),
        },
    ]
}

/// One encapsulated frame and what it was built from.
struct Case<'a> {
    tunnel: &'a Tunnel,
    inner: &'a Inner,
    ip_id: u16,
    bytes: Vec<u8>,
}

fn encapsulate(template: &EncapTemplate, inner: &[u8], ip_id: u16) -> Vec<u8> {
    let mut f = Frame::from_bytes(inner);
    template.encap(&mut f, ip_id, flow_hash(inner)).unwrap();
    assert_eq!(f.len(), inner.len() + template.overhead());
    f.data().to_vec()
}

// ---------------------------------------------------------------- tshark

/// Fields asked of tshark, one column each; repeated fields (outer and inner) come
/// back joined with [`AGG`].
const FIELDS: &[&str] = &[
    "frame.number",
    "frame.protocols",
    "eth.src",
    "eth.dst",
    "eth.type",
    "ip.src",
    "ip.dst",
    "ip.len",
    "ip.id",
    "ip.ttl",
    "ip.flags.df",
    "ip.checksum.status",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.plen",
    "ipv6.nxt",
    "ipv6.hlim",
    "udp.srcport",
    "udp.dstport",
    "udp.length",
    "udp.checksum.status",
    "vxlan.flag_i",
    "vxlan.vni",
    "geneve.version",
    "geneve.flags.oam",
    "geneve.flags.critical",
    "geneve.proto_type",
    "geneve.vni",
    "geneve.option.class",
    "geneve.option.type",
    "geneve.option.length",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.len",
    "tcp.checksum.status",
    "tcp.payload",
    "data.data",
    "arp.opcode",
    "arp.src.proto_ipv4",
    "arp.dst.proto_ipv4",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
];
const AGG: char = ';';

fn tshark_bin() -> String {
    std::env::var("TSHARK").unwrap_or_else(|_| "tshark".to_owned())
}

/// Runs tshark on `pcap`, one row per frame: field name -> every occurrence.
fn tshark_fields(pcap: &std::path::Path) -> Vec<HashMap<&'static str, Vec<String>>> {
    let mut cmd = Command::new(tshark_bin());
    // An empty personal configuration: no user preference changes what is checked.
    cmd.env("WIRESHARK_CONFIG_DIR", pcap.parent().unwrap())
        .arg("-r")
        .arg(pcap)
        .args(["-n", "-T", "fields"])
        .args(["-E", "separator=/t", "-E", "occurrence=a", "-E", "quote=n"])
        .args(["-E", &format!("aggregator={AGG}")])
        .args(["-o", "ip.check_checksum:TRUE"])
        .args(["-o", "udp.check_checksum:TRUE"])
        .args(["-o", "tcp.check_checksum:TRUE"])
        // No sequence analysis: the lone TCP segments would be "ACKed unseen" warnings.
        .args(["-o", "tcp.analyze_sequence_numbers:FALSE"]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tshark failed ({}):\n{}\n{stdout}",
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
                        c.split(AGG).map(str::to_owned).collect()
                    };
                    (*f, v)
                })
                .collect()
        })
        .collect()
}

/// tshark prints integers in decimal or, for hex-based fields, as `0x...`.
fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// Negative controls, appended after the real frames: corrupted copies that tshark
/// must flag, proving the checksum and malformation checks above are live.
fn controls(cases: &[Case<'_>]) -> Vec<(&'static str, Vec<u8>)> {
    let find = |name: &str| {
        cases
            .iter()
            .find(|c| c.tunnel.name == name)
            .unwrap()
            .bytes
            .clone()
    };
    let mut bad_ip_csum = find("vxlan/ipv4");
    bad_ip_csum[14 + 10] ^= 0x5a;
    let mut bad_udp6_csum = find("vxlan/ipv6");
    bad_udp6_csum[14 + 40 + 6] ^= 0x5a;
    let mut bad_geneve_optlen = find("geneve+opt/ipv4");
    bad_geneve_optlen[14 + 20 + 8] = 0x3f; // 252 bytes of options claimed
    vec![
        ("bad outer IPv4 checksum", bad_ip_csum),
        ("bad outer UDP/IPv6 checksum", bad_udp6_csum),
        ("Geneve options overrun", bad_geneve_optlen),
    ]
}

#[test]
fn tshark_decodes_encapsulated_frames() {
    if Command::new(tshark_bin()).arg("-v").output().is_err() {
        if std::env::var_os("PIPEWRIGHT_REQUIRE_TSHARK").is_some_and(|v| v == "1") {
            panic!("tshark not found and PIPEWRIGHT_REQUIRE_TSHARK=1");
        }
        eprintln!(
            "SKIPPED: tshark not found; .ci/run installs it with apt-get install tshark \
             (set TSHARK=/path/to/tshark to use another binary)"
        );
        return;
    }
    let tunnels = tunnels();
    let inners = inners();
    let mut cases = Vec::new();
    for t in &tunnels {
        let template = EncapTemplate::new(&t.spec, 1500).unwrap();
        for inner in &inners {
            let ip_id = 0x1000 + cases.len() as u16;
            let bytes = encapsulate(&template, &inner.bytes, ip_id);
            cases.push(Case {
                tunnel: t,
                inner,
                ip_id,
                bytes,
            });
        }
    }
    let controls = controls(&cases);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encap.pcap");
    let mut w = PcapWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    let frames = cases
        .iter()
        .map(|c| &c.bytes)
        .chain(controls.iter().map(|c| &c.1));
    for (i, bytes) in frames.enumerate() {
        let ts = Duration::from_millis(1_700_000_000_000 + i as u64);
        w.write_packet(&PcapPacket::new(ts, bytes.len() as u32, bytes))
            .unwrap();
    }
    drop(w);

    let rows = tshark_fields(&path);
    assert_eq!(
        rows.len(),
        cases.len() + controls.len(),
        "one row per frame"
    );

    let mut failures = Vec::new();
    for (i, (case, row)) in cases.iter().zip(&rows).enumerate() {
        let mut c = Check {
            what: format!(
                "frame {} ({} in {})",
                i + 1,
                case.inner.name,
                case.tunnel.name
            ),
            row,
            failures: &mut failures,
        };
        check_frame(case, &mut c);
    }
    for (i, ((what, _), row)) in controls.iter().zip(&rows[cases.len()..]).enumerate() {
        let mut c = Check {
            what: format!("control frame {} ({what})", cases.len() + i + 1),
            row,
            failures: &mut failures,
        };
        check_control(i, &mut c);
    }
    assert!(
        failures.is_empty(),
        "tshark disagrees with the encapsulation:\n{}",
        failures.join("\n")
    );
}

/// Expert-info severities (epan/proto.h); tshark prints them as numbers.
const PI_WARN: u64 = 0x0060_0000;
const PI_ERROR: u64 = 0x0080_0000;

fn severity(s: &str) -> u64 {
    match s {
        "Chat" => 0x0020_0000,
        "Note" => 0x0040_0000,
        "Warning" | "Warn" => PI_WARN,
        "Error" => PI_ERROR,
        n => num(n),
    }
}

/// A proto_checksum status (epan/proto.h `proto_checksum_enum_e`), printed as a
/// number by tshark 4.0 and possibly by name elsewhere.
fn csum_status(s: &str) -> &'static str {
    match s {
        "0" | "Bad" => "Bad",
        "1" | "Good" => "Good",
        "2" | "Unverified" => "Unverified",
        "3" | "Not present" => "Not present",
        "4" | "Illegal" => "Illegal",
        _ => panic!("unknown checksum status {s:?}"),
    }
}

fn flag(s: &str) -> bool {
    match s {
        "1" | "True" | "true" => true,
        "0" | "False" | "false" => false,
        _ => panic!("not a boolean: {s:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Collects mismatches for one tshark row instead of stopping at the first.
struct Check<'a> {
    what: String,
    row: &'a HashMap<&'static str, Vec<String>>,
    failures: &'a mut Vec<String>,
}

impl Check<'_> {
    fn all(&self, field: &str) -> &[String] {
        self.row.get(field).map_or(&[], |v| &v[..])
    }

    /// Every occurrence of `field`, outer first, mapped through `f`, must be `want`.
    fn eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        field: &str,
        f: impl Fn(&str) -> T,
        want: &[T],
    ) {
        let got: Vec<T> = self.all(field).iter().map(|s| f(s)).collect();
        if got != want {
            self.failures.push(format!(
                "{}: {field}: tshark says {got:?}, expected {want:?}",
                self.what
            ));
        }
    }

    fn ok(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            let m = msg();
            self.failures.push(format!("{}: {m}", self.what));
        }
    }
}

fn check_frame(case: &Case<'_>, c: &mut Check<'_>) {
    let spec = &case.tunnel.spec;
    let len = case.bytes.len();
    let outer_v6 = spec.outer_dst.is_ipv6();
    let outer_ip_len = if outer_v6 { 40 } else { 20 };
    let tunnel = spec.kind.as_str();
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };

    // The whole stack, outer to inner, is recognised.
    let (outer_l3, outer_ty) = if outer_v6 {
        ("ipv6", ethertype::IPV6)
    } else {
        ("ip", ethertype::IPV4)
    };
    let (inner_stack, inner_ty) = match case.inner.kind {
        InnerKind::Tcp4 { .. } => ("ip:tcp", ethertype::IPV4),
        InnerKind::Udp4 { .. } => ("ip:udp", ethertype::IPV4),
        InnerKind::Udp6 { .. } => ("ipv6:udp", ethertype::IPV6),
        InnerKind::Arp { .. } => ("arp", ethertype::ARP),
    };
    let stack = format!("eth:ethertype:{outer_l3}:udp:{tunnel}:eth:ethertype:{inner_stack}");
    let protocols = c.all("frame.protocols").join("");
    c.ok(protocols.starts_with(&stack), || {
        format!("frame.protocols {protocols:?} does not start with {stack:?}")
    });

    // Ethernet, outer then inner.
    let inner_eth = EthernetFrame::new_checked(&case.inner.bytes[..]).unwrap();
    c.eq("eth.type", num, &[u64::from(outer_ty), u64::from(inner_ty)]);
    c.eq(
        "eth.src",
        str::to_owned,
        &[mac(spec.outer_src_mac), mac(inner_eth.src().octets())],
    );
    c.eq(
        "eth.dst",
        str::to_owned,
        &[mac(spec.outer_dst_mac), mac(inner_eth.dst().octets())],
    );

    // IPv4 and IPv6 headers: (outer if that family) then (inner if that family).
    let mut v4: Vec<(Ipv4Addr, Ipv4Addr, usize, u16, u8)> = Vec::new();
    let mut v6: Vec<(Ipv6Addr, Ipv6Addr, usize, u8, u8)> = Vec::new();
    match (spec.outer_src, spec.outer_dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => v4.push((src, dst, len - 14, case.ip_id, spec.ttl)),
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            v6.push((src, dst, len - 54, ip_proto::UDP, spec.ttl))
        }
        _ => unreachable!(),
    }
    let inner_l3_len = case.inner.bytes.len() - 14;
    match case.inner.kind {
        InnerKind::Tcp4 { src, dst, .. } | InnerKind::Udp4 { src, dst, .. } => {
            v4.push((src, dst, inner_l3_len, 0x4242, 63))
        }
        InnerKind::Udp6 { src, dst, .. } => {
            v6.push((src, dst, inner_l3_len - 40, ip_proto::UDP, 63))
        }
        InnerKind::Arp { .. } => {}
    }
    let ip4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let ip6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    c.eq("ip.src", ip4, &v4.iter().map(|v| v.0).collect::<Vec<_>>());
    c.eq("ip.dst", ip4, &v4.iter().map(|v| v.1).collect::<Vec<_>>());
    c.eq(
        "ip.len",
        num,
        &v4.iter().map(|v| v.2 as u64).collect::<Vec<_>>(),
    );
    c.eq(
        "ip.id",
        num,
        &v4.iter().map(|v| u64::from(v.3)).collect::<Vec<_>>(),
    );
    c.eq(
        "ip.ttl",
        num,
        &v4.iter().map(|v| u64::from(v.4)).collect::<Vec<_>>(),
    );
    c.eq("ip.flags.df", flag, &vec![true; v4.len()]);
    c.eq("ip.checksum.status", csum_status, &vec!["Good"; v4.len()]);
    c.eq("ipv6.src", ip6, &v6.iter().map(|v| v.0).collect::<Vec<_>>());
    c.eq("ipv6.dst", ip6, &v6.iter().map(|v| v.1).collect::<Vec<_>>());
    c.eq(
        "ipv6.plen",
        num,
        &v6.iter().map(|v| v.2 as u64).collect::<Vec<_>>(),
    );
    c.eq(
        "ipv6.nxt",
        num,
        &v6.iter().map(|v| u64::from(v.3)).collect::<Vec<_>>(),
    );
    c.eq(
        "ipv6.hlim",
        num,
        &v6.iter().map(|v| u64::from(v.4)).collect::<Vec<_>>(),
    );

    // UDP: the outer datagram, then the inner one if any. The outer source port is
    // flow entropy from the dynamic range; the outer checksum is zero (allowed, RFC
    // 7348 section 5 / RFC 8926 section 3.3) over IPv4 and mandatory over IPv6.
    let outer_udp_len = len - 14 - outer_ip_len;
    let outer_csum = if outer_v6 { "Good" } else { "Not present" };
    let mut sports = vec![None];
    let mut dports = vec![u64::from(spec.udp_dst_port)];
    let mut lens = vec![outer_udp_len as u64];
    let mut csums = vec![outer_csum];
    match case.inner.kind {
        InnerKind::Udp4 { sport, dport, .. } | InnerKind::Udp6 { sport, dport, .. } => {
            sports.push(Some(u64::from(sport)));
            dports.push(u64::from(dport));
            lens.push((8 + UDP_PAYLOAD.len()) as u64);
            csums.push("Good");
        }
        _ => {}
    }
    let outer_sport = c.all("udp.srcport").first().map(|p| num(p));
    c.ok(
        outer_sport.is_some_and(|p| (49152..=65535).contains(&p)),
        || format!("outer UDP source port {outer_sport:?} not in 49152..=65535"),
    );
    sports[0] = outer_sport;
    c.eq("udp.srcport", |p| Some(num(p)), &sports);
    c.eq("udp.dstport", num, &dports);
    c.eq("udp.length", num, &lens);
    c.eq("udp.checksum.status", csum_status, &csums);

    // The tunnel header.
    let vni = u64::from(spec.vni);
    match spec.kind {
        TunnelKind::Vxlan => {
            c.eq("vxlan.flag_i", flag, &[true]);
            c.eq("vxlan.vni", num, &[vni]);
            c.eq("geneve.vni", num, &[]);
        }
        TunnelKind::Geneve => {
            let critical = spec.options.iter().any(|o| o.kind & 0x80 != 0);
            c.eq("vxlan.vni", num, &[]);
            c.eq("geneve.version", num, &[0]);
            c.eq("geneve.flags.oam", flag, &[false]);
            c.eq("geneve.flags.critical", flag, &[critical]);
            c.eq("geneve.proto_type", num, &[u64::from(ethertype::TEB)]);
            c.eq("geneve.vni", num, &[vni]);
            let classes: Vec<u64> = spec.options.iter().map(|o| u64::from(o.class)).collect();
            let types: Vec<u64> = spec.options.iter().map(|o| u64::from(o.kind)).collect();
            c.eq("geneve.option.class", num, &classes);
            c.eq("geneve.option.type", num, &types);
            // Option lengths in bytes (header included); tshark 4.0 first prints the
            // whole options area's length under the same field name.
            let per: Vec<u64> = spec
                .options
                .iter()
                .map(|o| 4 + o.data.len() as u64)
                .collect();
            let total: u64 = per.iter().sum();
            let got: Vec<u64> = c
                .all("geneve.option.length")
                .iter()
                .map(|s| num(s))
                .collect();
            let got_per = match got.split_first() {
                Some((&t, rest)) if got.len() == per.len() + 1 && t == total => rest,
                _ => &got[..],
            };
            c.ok(got_per == per, || {
                format!(
                    "geneve.option.length: tshark says {got:?}, expected {per:?} (total {total})"
                )
            });
        }
        TunnelKind::Pwt | TunnelKind::Custom(_) => unreachable!("tshark has no dissector for it"),
    }

    // The inner packet.
    match case.inner.kind {
        InnerKind::Tcp4 { sport, dport, .. } => {
            c.eq("tcp.srcport", num, &[u64::from(sport)]);
            c.eq("tcp.dstport", num, &[u64::from(dport)]);
            c.eq("tcp.len", num, &[TCP_PAYLOAD.len() as u64]);
            c.eq("tcp.checksum.status", csum_status, &["Good"]);
            c.eq("tcp.payload", str::to_owned, &[hex(TCP_PAYLOAD)]);
        }
        InnerKind::Udp4 { .. } | InnerKind::Udp6 { .. } => {
            c.eq("tcp.srcport", num, &[]);
            c.eq("data.data", str::to_owned, &[hex(UDP_PAYLOAD)]);
        }
        InnerKind::Arp { sender, target } => {
            c.eq("arp.opcode", num, &[1]);
            c.eq("arp.src.proto_ipv4", ip4, &[sender]);
            c.eq("arp.dst.proto_ipv4", ip4, &[target]);
        }
    }

    // Nothing malformed, no warnings or errors.
    c.eq("_ws.malformed", str::to_owned, &[]);
    let worst = c
        .all("_ws.expert.severity")
        .iter()
        .map(|s| severity(s))
        .max();
    let messages = c.all("_ws.expert.message").join(" | ");
    c.ok(worst.is_none_or(|w| w < PI_WARN), || {
        format!(
            "expert info at severity {:#x}: {messages}",
            worst.unwrap_or(0)
        )
    });
}

fn check_control(i: usize, c: &mut Check<'_>) {
    let worst = c
        .all("_ws.expert.severity")
        .iter()
        .map(|s| severity(s))
        .max();
    c.ok(worst == Some(PI_ERROR), || {
        format!("tshark raised no error (worst severity {worst:?})")
    });
    match i {
        0 => c.eq("ip.checksum.status", csum_status, &["Bad", "Good"]),
        1 => c.eq("udp.checksum.status", csum_status, &["Bad"]),
        _ => {
            let malformed = !c.all("_ws.malformed").is_empty()
                || c.all("_ws.expert.message")
                    .iter()
                    .any(|m| m.contains("Malformed"));
            c.ok(malformed, || "not reported malformed".to_owned());
        }
    }
}

// ---------------------------------------------------------------- golden bytes

/// Bytes from hex, whitespace ignored.
fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap())
        .collect()
}

/// RFC 1071 the slow way, a carry fold after every 16-bit word: independent of
/// `wire::checksum`.
fn rfc1071(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for w in data.chunks(2) {
        s += u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0));
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn golden_spec(kind: TunnelKind, vni: u32, options: Vec<TunnelOption>) -> TunnelSpec {
    TunnelSpec {
        outer_src: Ipv4Addr::new(192, 168, 0, 1).into(),
        outer_dst: Ipv4Addr::new(192, 168, 0, 199).into(),
        ttl: 64,
        ..spec(kind, false, vni, options)
    }
}

/// The whole outer header of a VXLAN/IPv4 frame. The IPv4 header is the classic
/// worked example of the header checksum (total length 0x73, id 0, DF, TTL 64, UDP,
/// 192.168.0.1 -> 192.168.0.199: checksum 0xb861); the VXLAN header is RFC 7348
/// section 5: flags 0x08 (I), 24 reserved bits, VNI, 8 reserved bits.
#[test]
fn golden_vxlan_ipv4_outer_header() {
    let t = EncapTemplate::new(&golden_spec(TunnelKind::Vxlan, 0x12_3456, vec![]), 1500).unwrap();
    let inner = [0xa5; 0x73 - 20 - 8 - 8];
    let out = encapsulate(&t, &inner, 0);
    let want = unhex(
        "02ee00000002 02ee00000001 0800
         4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7
         0000 12b5 005f 0000
         0800 0000 1234 5600",
    );
    assert_eq!(t.overhead(), want.len());
    let mut got = out[..want.len()].to_vec();
    let sport = u16::from_be_bytes([got[34], got[35]]);
    assert!(
        sport >= 49152,
        "source port {sport} outside the dynamic range"
    );
    got[34..36].fill(0);
    assert_eq!(hex(&got), hex(&want));
    assert_eq!(&out[want.len()..], &inner[..]);
    assert_eq!(rfc1071(&out[14..34]), 0, "IPv4 header checksum verifies");
}

/// Geneve base header and options, RFC 8926 section 3.4: Ver (2 bits) = 0, Opt Len
/// (6 bits, 4-byte words), O, C (critical option present), Protocol Type 0x6558
/// (Transparent Ethernet Bridging), VNI, reserved; each option is Class (16), Type
/// (8, high bit = critical), 3 reserved bits, Length (5 bits, words of data), data.
#[test]
fn golden_geneve_headers() {
    let cases: [(Vec<TunnelOption>, &str); 4] = [
        (vec![], "00 00 6558 abcdef 00"),
        (
            vec![critical_option()],
            "02 40 6558 abcdef 00  0102 80 01 deadbeef",
        ),
        (
            vec![plain_option()],
            "03 00 6558 abcdef 00  ffff 01 02 1122334455667788",
        ),
        (
            vec![plain_option(), critical_option()],
            "05 40 6558 abcdef 00  ffff 01 02 1122334455667788  0102 80 01 deadbeef",
        ),
    ];
    let inner = inner_udp4().bytes;
    for (options, want) in cases {
        let want = unhex(want);
        let t =
            EncapTemplate::new(&golden_spec(TunnelKind::Geneve, 0xab_cdef, options), 1500).unwrap();
        assert_eq!(t.overhead(), 14 + 20 + 8 + want.len());
        let out = encapsulate(&t, &inner, 7);
        assert_eq!(hex(&out[42..42 + want.len()]), hex(&want));
        assert_eq!(&out[36..38], &6081u16.to_be_bytes(), "UDP destination port");
        let udp_len = u16::from_be_bytes([out[38], out[39]]);
        assert_eq!(
            usize::from(udp_len),
            8 + want.len() + inner.len(),
            "UDP length"
        );
        assert_eq!(&out[42 + want.len()..], &inner[..]);
        assert_eq!(rfc1071(&out[14..34]), 0, "IPv4 header checksum verifies");
    }
}

/// IPv6 outer header (RFC 8200 section 3) and its mandatory UDP checksum over the
/// pseudo-header (section 8.1), recomputed independently.
#[test]
fn golden_ipv6_outer_header_and_udp_checksum() {
    for kind in [TunnelKind::Vxlan, TunnelKind::Geneve, TunnelKind::Pwt] {
        let spec = spec(kind, true, 0x00_0102, vec![critical_option()]);
        let t = EncapTemplate::new(&spec, 1500).unwrap();
        for inner in inners() {
            let out = encapsulate(&t, &inner.bytes, 0);
            let plen = out.len() - 54;
            let mut want = unhex("86dd 6000 0000");
            want.extend((plen as u16).to_be_bytes());
            want.extend([17, OUTER_TTL]);
            want.extend(OUTER_SRC6.octets());
            want.extend(OUTER_DST6.octets());
            assert_eq!(hex(&out[12..54]), hex(&want), "{kind:?} {}", inner.name);
            assert_eq!(&out[58..60], &(plen as u16).to_be_bytes(), "UDP length");

            let mut pseudo = Vec::new();
            pseudo.extend(OUTER_SRC6.octets());
            pseudo.extend(OUTER_DST6.octets());
            pseudo.extend((plen as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, 17]);
            pseudo.extend(&out[54..]);
            let stored = u16::from_be_bytes([out[60], out[61]]);
            assert_ne!(stored, 0, "a zero UDP checksum is not allowed over IPv6");
            assert_eq!(rfc1071(&pseudo), 0, "{kind:?} {}: UDP checksum", inner.name);
        }
    }
}

// ---------------------------------------------------------------- PWT

/// tshark has no PWT dissector: our own decoder reads PWT frames back instead.
#[test]
fn pwt_frames_decode_with_our_wire_views() {
    for v6 in [false, true] {
        let spec = spec(TunnelKind::Pwt, v6, 0xdead_beef, vec![]);
        let t = EncapTemplate::new(&spec, 1500).unwrap();
        for inner in inners() {
            let out = encapsulate(&t, &inner.bytes, 9);
            let eth = EthernetFrame::new_checked(&out[..]).unwrap();
            let udp = if v6 {
                assert_eq!(eth.ethertype(), ethertype::IPV6);
                let ip = Ipv6Packet::new_checked(eth.into_payload()).unwrap();
                let r = Ipv6Repr::parse(&ip).unwrap();
                assert_eq!(
                    (r.src, r.dst, r.next_header),
                    (OUTER_SRC6, OUTER_DST6, ip_proto::UDP)
                );
                let u = UdpPacket::new_checked(ip.into_payload()).unwrap();
                assert!(u.verify_checksum_v6(OUTER_SRC6, OUTER_DST6));
                u
            } else {
                assert_eq!(eth.ethertype(), ethertype::IPV4);
                let ip = Ipv4Packet::new_checked(eth.into_payload()).unwrap();
                let r = Ipv4Repr::parse(&ip).unwrap(); // verifies the header checksum
                assert_eq!(
                    (r.src, r.dst, r.protocol),
                    (OUTER_SRC4, OUTER_DST4, ip_proto::UDP)
                );
                assert_eq!((r.ident, r.ttl, r.dont_frag), (9, OUTER_TTL, true));
                UdpPacket::new_checked(ip.into_payload()).unwrap()
            };
            let r = UdpRepr::parse(&udp).unwrap();
            assert_eq!(r.dst_port, PWT_PORT);
            assert!(r.src_port >= 49152);
            assert_eq!(r.payload_len, PWT_HEADER_LEN + inner.bytes.len());
            let p = PwtPacket::new_checked(udp.into_payload()).unwrap();
            let pr = PwtRepr::parse(&p).unwrap(); // verifies the PWT header checksum
            assert_eq!(p.version(), 1);
            assert_eq!(p.header_len(), PWT_HEADER_LEN);
            assert_eq!(pr.tenant_id, 0xdead_beef);
            assert_eq!(pr.protocol_type, ethertype::TEB);
            assert_eq!(pr.flags, 0);
            assert_eq!(pr.flow_entropy, flow_hash(&inner.bytes) as u16);
            assert_eq!(p.payload(), &inner.bytes[..], "{}", inner.name);
        }
    }
}

// ---------------------------------------------------------------- length limits

/// The outer IPv4 total length, IPv6 payload length and UDP length are 16-bit
/// fields: a frame that would overflow them is refused whatever the configured MTU,
/// never sent with a wrapped length.
#[test]
fn lengths_never_wrap_past_16_bits() {
    for v6 in [false, true] {
        let t = EncapTemplate::new(&spec(TunnelKind::Vxlan, v6, 1, vec![]), 1 << 20).unwrap();
        // Largest IP packet: 65535 bytes (IPv4 total length; IPv6 payload length + 40).
        let max_ip = if v6 { 65_535 + 40 } else { 65_535 };
        assert_eq!(t.max_inner_len(), max_ip + 14 - t.overhead());
        let fits = vec![0x5a; t.max_inner_len()];
        let out = encapsulate(&t, &fits, 1);
        assert_eq!(out.len() - 14, max_ip);
        let udp_at = if v6 { 54 } else { 34 };
        let udp_len = u16::from_be_bytes([out[udp_at + 4], out[udp_at + 5]]);
        assert_eq!(usize::from(udp_len), out.len() - udp_at);
        if v6 {
            assert_eq!(
                usize::from(u16::from_be_bytes([out[18], out[19]])),
                max_ip - 40
            );
        } else {
            assert_eq!(u16::from_be_bytes([out[16], out[17]]), 65_535);
            assert_eq!(rfc1071(&out[14..34]), 0);
        }

        let mut too_big = Frame::from_bytes(&vec![0x5a; t.max_inner_len() + 1]);
        assert_eq!(
            t.encap(&mut too_big, 1, 1),
            Err(pipewright_nic::tunnel::EncapError::TooBig {
                len: max_ip + 1,
                mtu: max_ip
            })
        );
    }
}
