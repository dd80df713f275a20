//! Running tshark and parsing its field output.

use std::collections::HashMap;
use std::process::Command;

use crate::frames::Case;

// ---------------------------------------------------------------- tshark

/// Fields asked of tshark, one column each; repeated fields (outer and inner) come
/// back joined with [`AGG`].
pub(crate) const FIELDS: &[&str] = &[
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
pub(crate) const AGG: char = ';';

pub(crate) fn tshark_bin() -> String {
    std::env::var("TSHARK").unwrap_or_else(|_| "tshark".to_owned())
}

/// Runs tshark on `pcap`, one row per frame: field name -> every occurrence.
pub(crate) fn tshark_fields(pcap: &std::path::Path) -> Vec<HashMap<&'static str, Vec<String>>> {
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
pub(crate) fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// Negative controls, appended after the real frames: corrupted copies that tshark
/// must flag, proving the checksum and malformation checks above are live.
pub(crate) fn controls(cases: &[Case<'_>]) -> Vec<(&'static str, Vec<u8>)> {
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
