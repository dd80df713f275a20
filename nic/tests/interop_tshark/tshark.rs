//! Running tshark and parsing its field output.

use crate::frames::Case;

// ---------------------------------------------------------------- tshark

/// Fields asked of tshark, one column each; repeated fields (outer and inner) come
/// back joined with `;`.
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
pub(crate) use pipewright_testkit::tshark::num;

/// Runs tshark on `pcap`, one row per frame: field name -> every occurrence.
pub(crate) fn tshark_fields(pcap: &std::path::Path) -> Vec<pipewright_testkit::tshark::Row> {
    pipewright_testkit::tshark::fields(
        pcap,
        FIELDS,
        &[
            "-o",
            "udp.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            // No sequence analysis: the lone TCP segments would be "ACKed unseen" warnings.
            "-o",
            "tcp.analyze_sequence_numbers:FALSE",
        ],
    )
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
