//! Checking tshark's field output against what each frame was built from.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pipewright_nic::tunnel::TunnelKind;
use pipewright_nic::wire::*;

use crate::frames::{Case, InnerKind, TCP_PAYLOAD, UDP_PAYLOAD};
use crate::tshark::num;

/// Expert-info severities (epan/proto.h); tshark prints them as numbers.
pub(crate) const PI_WARN: u64 = 0x0060_0000;
pub(crate) const PI_ERROR: u64 = 0x0080_0000;

pub(crate) fn severity(s: &str) -> u64 {
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
pub(crate) fn csum_status(s: &str) -> &'static str {
    match s {
        "0" | "Bad" => "Bad",
        "1" | "Good" => "Good",
        "2" | "Unverified" => "Unverified",
        "3" | "Not present" => "Not present",
        "4" | "Illegal" => "Illegal",
        _ => panic!("unknown checksum status {s:?}"),
    }
}

pub(crate) fn flag(s: &str) -> bool {
    match s {
        "1" | "True" | "true" => true,
        "0" | "False" | "false" => false,
        _ => panic!("not a boolean: {s:?}"),
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Collects mismatches for one tshark row instead of stopping at the first.
pub(crate) struct Check<'a> {
    pub(crate) what: String,
    pub(crate) row: &'a HashMap<&'static str, Vec<String>>,
    pub(crate) failures: &'a mut Vec<String>,
}

impl Check<'_> {
    pub(crate) fn all(&self, field: &str) -> &[String] {
        self.row.get(field).map_or(&[], |v| &v[..])
    }

    /// Every occurrence of `field`, outer first, mapped through `f`, must be `want`.
    pub(crate) fn eq<T: PartialEq + std::fmt::Debug>(
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

    pub(crate) fn ok(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            let m = msg();
            self.failures.push(format!("{}: {m}", self.what));
        }
    }
}

pub(crate) fn check_frame(case: &Case<'_>, c: &mut Check<'_>) {
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

pub(crate) fn check_control(i: usize, c: &mut Check<'_>) {
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
