//! Egress and ingress rule tables: matching, anti-spoofing, tenant isolation, TOML.
#![cfg(not(loom))]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pipewright_nic::rules::{
    ConfigError, EgressAction, EgressDecision, EgressDrop, EgressKey, EgressRule, EgressTable,
    IngressAction, IngressDecision, IngressDrop, IngressKey, IngressRule, IngressTable, RuleError,
    RuleFile, TrapAction, VfIdentity,
};
use pipewright_nic::tunnel::{TunnelKind, TunnelSpec};

const VF1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const VF2_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const BCAST: [u8; 6] = [0xff; 6];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spec(vni: u32, remote: &str) -> Arc<TunnelSpec> {
    Arc::new(TunnelSpec {
        kind: TunnelKind::Vxlan,
        vni,
        outer_src: ip("192.168.0.1"),
        outer_dst: ip(remote),
        udp_dst_port: 4789,
        df: true,
        ttl: 64,
        outer_src_mac: [2, 0xaa, 0, 0, 0, 1],
        outer_dst_mac: [2, 0xaa, 0, 0, 0, 2],
        options: vec![],
    })
}

fn rule(id: u32, vf: u16, prefix: Option<&str>, action: EgressAction) -> EgressRule {
    EgressRule {
        id,
        vf,
        dst_mac: None,
        dst_prefix: prefix.map(|p| p.parse().unwrap()),
        vlan: None,
        ethertype: None,
        action,
    }
}

fn table() -> EgressTable {
    EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: VF1_MAC,
            ips: vec![ip("10.0.0.1")],
            vlan: None,
        })
        .vf(VfIdentity {
            vf: 2,
            mac: VF2_MAC,
            ips: vec![ip("10.1.0.1")],
            vlan: Some(7),
        })
        .neighbour(1, Ipv4Addr::new(10, 0, 0, 9), [2, 0, 0, 0, 0, 9])
        .rule(rule(
            1,
            1,
            Some("10.0.0.0/16"),
            EgressAction::Encap(spec(100, "192.168.0.2")),
        ))
        .rule(rule(
            2,
            1,
            Some("10.0.5.0/24"),
            EgressAction::Encap(spec(100, "192.168.0.3")),
        ))
        .rule(rule(3, 1, Some("10.0.5.7/32"), EgressAction::Drop))
        .rule(EgressRule {
            ethertype: Some(0x0806),
            ..rule(4, 1, None, EgressAction::Trap(TrapAction::AnswerArp))
        })
        .rule(EgressRule {
            dst_mac: Some(BCAST),
            ..rule(
                5,
                1,
                None,
                EgressAction::Trap(TrapAction::Flood(spec(100, "192.168.0.2"))),
            )
        })
        .rule(rule(
            6,
            2,
            Some("0.0.0.0/0"),
            EgressAction::Encap(spec(200, "192.168.0.4")),
        ))
        .build()
        .unwrap()
}

fn key(vf: u16, src_mac: [u8; 6], src: &str, dst: &str) -> EgressKey {
    EgressKey {
        vf,
        src_mac,
        dst_mac: [2, 0, 0, 0, 0, 0x99],
        vlan: None,
        ethertype: 0x0800,
        src_ip: Some(ip(src)),
        dst_ip: Some(ip(dst)),
    }
}

fn encap_target(d: EgressDecision<'_>) -> Option<(u32, IpAddr)> {
    match d {
        EgressDecision::Encap { rule, spec, .. } => Some((rule, spec.outer_dst)),
        _ => None,
    }
}

#[test]
fn longest_prefix_wins() {
    let t = table();
    assert_eq!(
        encap_target(t.classify(&key(1, VF1_MAC, "10.0.0.1", "10.0.1.1"))),
        Some((1, ip("192.168.0.2")))
    );
    assert_eq!(
        encap_target(t.classify(&key(1, VF1_MAC, "10.0.0.1", "10.0.5.1"))),
        Some((2, ip("192.168.0.3")))
    );
    assert!(matches!(
        t.classify(&key(1, VF1_MAC, "10.0.0.1", "10.0.5.7")),
        EgressDecision::RuleDrop { rule: 3, .. }
    ));
    assert!(matches!(
        t.classify(&key(1, VF1_MAC, "10.0.0.1", "172.16.0.1")),
        EgressDecision::Drop(EgressDrop::NoRule)
    ));
}

#[test]
fn a_vf_cannot_send_as_anyone_else() {
    let t = table();
    // Another VF's MAC, an address it does not own, a MAC it does not own with its IP.
    for k in [
        key(1, VF2_MAC, "10.0.0.1", "10.0.1.1"),
        key(1, VF1_MAC, "10.0.0.2", "10.0.1.1"),
        key(1, VF1_MAC, "10.1.0.1", "10.0.1.1"),
        key(1, [2, 0, 0, 0, 0, 3], "10.0.0.1", "10.0.1.1"),
    ] {
        assert!(
            matches!(t.classify(&k), EgressDecision::Drop(EgressDrop::Spoofed)),
            "{k:?}"
        );
    }
    // VF 2 must send tagged with its own VLAN: untagged or another tag is spoofing.
    let mut k = key(2, VF2_MAC, "10.1.0.1", "8.8.8.8");
    assert!(matches!(
        t.classify(&k),
        EgressDecision::Drop(EgressDrop::Spoofed)
    ));
    k.vlan = Some(8);
    assert!(matches!(
        t.classify(&k),
        EgressDecision::Drop(EgressDrop::Spoofed)
    ));
    k.vlan = Some(7);
    assert_eq!(encap_target(t.classify(&k)), Some((6, ip("192.168.0.4"))));
    // An unknown VF number gets nothing.
    assert!(matches!(
        t.classify(&key(9, VF1_MAC, "10.0.0.1", "10.0.1.1")),
        EgressDecision::Drop(EgressDrop::UnknownVf)
    ));
}

#[test]
fn arp_and_broadcast_go_to_the_control_path() {
    let t = table();
    let mut arp = key(1, VF1_MAC, "10.0.0.1", "10.0.0.9");
    arp.ethertype = 0x0806;
    arp.dst_ip = None;
    arp.dst_mac = BCAST;
    assert!(matches!(
        t.classify(&arp),
        EgressDecision::AnswerArp { rule: 4, .. }
    ));
    assert_eq!(
        t.neighbour(1, Ipv4Addr::new(10, 0, 0, 9)),
        Some([2, 0, 0, 0, 0, 9])
    );
    assert_eq!(
        t.neighbour(2, Ipv4Addr::new(10, 0, 0, 9)),
        None,
        "neighbours are per VF"
    );
    let mut bcast = key(1, VF1_MAC, "10.0.0.1", "10.255.255.255");
    bcast.dst_ip = None;
    bcast.dst_mac = BCAST;
    assert!(matches!(
        t.classify(&bcast),
        EgressDecision::Flood { rule: 5, .. }
    ));
}

fn ingress() -> IngressTable {
    let r = |id, vni, vf| IngressRule {
        id,
        kind: TunnelKind::Vxlan,
        vni,
        outer_dst: ip("192.168.0.1"),
        outer_src: None,
        udp_dst_port: Some(4789),
        inner_dst_mac: None,
        action: IngressAction::Deliver { vf },
    };
    IngressTable::builder()
        .vf(1, VF1_MAC)
        .vf(2, VF2_MAC)
        .rule(r(1, 100, 1))
        .rule(r(2, 200, 2))
        .rule(IngressRule {
            outer_src: Some(ip("192.168.0.66")),
            action: IngressAction::Drop,
            ..r(0, 200, 2)
        })
        .build()
        .unwrap()
}

fn ikey(vni: u32, dst_mac: [u8; 6]) -> IngressKey {
    IngressKey {
        kind: TunnelKind::Vxlan,
        vni,
        outer_src: ip("192.168.0.2"),
        outer_dst: ip("192.168.0.1"),
        udp_dst_port: 4789,
        inner_dst_mac: dst_mac,
    }
}

#[test]
fn tenants_are_isolated() {
    let t = ingress();
    assert!(matches!(
        t.classify(&ikey(100, VF1_MAC)),
        IngressDecision::Deliver { vf: 1, .. }
    ));
    assert!(matches!(
        t.classify(&ikey(100, BCAST)),
        IngressDecision::Deliver { vf: 1, .. }
    ));
    // VNI 100 carrying a frame for VF 2's MAC must not reach VF 2 (nor VF 1).
    assert!(matches!(
        t.classify(&ikey(100, VF2_MAC)),
        IngressDecision::Drop(IngressDrop::NotForVf)
    ));
    // Unknown VNI, other tunnel kind, other outer destination, other port: never delivered.
    assert!(matches!(
        t.classify(&ikey(300, VF1_MAC)),
        IngressDecision::Drop(IngressDrop::UnknownVni)
    ));
    let mut k = ikey(100, VF1_MAC);
    k.kind = TunnelKind::Geneve;
    assert!(matches!(
        t.classify(&k),
        IngressDecision::Drop(IngressDrop::UnknownVni)
    ));
    let mut k = ikey(100, VF1_MAC);
    k.outer_dst = ip("192.168.0.9");
    assert!(matches!(
        t.classify(&k),
        IngressDecision::Drop(IngressDrop::UnknownVni)
    ));
    let mut k = ikey(100, VF1_MAC);
    k.udp_dst_port = 4790;
    assert!(matches!(
        t.classify(&k),
        IngressDecision::Drop(IngressDrop::NoRule)
    ));
    // A blocked remote VTEP.
    let mut k = ikey(200, VF2_MAC);
    k.outer_src = ip("192.168.0.66");
    assert!(matches!(
        t.classify(&k),
        IngressDecision::RuleDrop { rule: 0, .. }
    ));
}

#[test]
fn bad_tables_are_typed_errors() {
    let dup = EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: VF1_MAC,
            ips: vec![],
            vlan: None,
        })
        .rule(rule(1, 1, None, EgressAction::Drop))
        .rule(rule(1, 1, None, EgressAction::Drop))
        .build();
    assert_eq!(dup.unwrap_err(), RuleError::DuplicateId(1));
    let unknown = EgressTable::builder()
        .rule(rule(1, 4, None, EgressAction::Drop))
        .build();
    assert_eq!(
        unknown.unwrap_err(),
        RuleError::UnknownVf { rule: 1, vf: 4 }
    );
    let big_vni = EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: VF1_MAC,
            ips: vec![],
            vlan: None,
        })
        .rule(rule(
            1,
            1,
            None,
            EgressAction::Encap(spec(1 << 24, "192.168.0.2")),
        ))
        .build();
    assert!(matches!(
        big_vni.unwrap_err(),
        RuleError::VniRange {
            vni: 16_777_216,
            ..
        }
    ));
    let mut mixed = (*spec(1, "192.168.0.2")).clone();
    mixed.outer_dst = ip("fd00::1");
    let mixed = EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: VF1_MAC,
            ips: vec![],
            vlan: None,
        })
        .rule(rule(1, 1, None, EgressAction::Encap(Arc::new(mixed))))
        .build();
    assert_eq!(mixed.unwrap_err(), RuleError::MixedFamilies(1));
    // Geneve options that do not fit a frame's headroom would drop every packet of
    // the rule: refused when the table is built.
    let mut wide = (*spec(1, "192.168.0.2")).clone();
    wide.kind = pipewright_nic::tunnel::TunnelKind::Geneve;
    wide.udp_dst_port = 6081;
    wide.options = (0..2)
        .map(|i| pipewright_nic::tunnel::TunnelOption {
            class: 0x0101,
            kind: i,
            data: vec![0; 48],
        })
        .collect();
    let wide = EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: VF1_MAC,
            ips: vec![],
            vlan: None,
        })
        .rule(rule(1, 1, None, EgressAction::Encap(Arc::new(wide))))
        .build();
    assert!(matches!(
        wide.unwrap_err(),
        RuleError::Template {
            rule: 1,
            error: pipewright_nic::tunnel::EncapError::NoHeadroom {
                need: 154,
                have: 128
            }
        }
    ));
}

const RULES: &str = r#"
[[vf]]
vf = 1
mac = "02:00:00:00:00:01"
ips = ["10.0.0.1"]

[[neighbour]]
vf = 1
ip = "10.0.0.2"
mac = "02:00:00:00:00:02"

[[egress]]
id = 10
vf = 1
dst_prefix = "10.0.0.0/24"
action = "encap"
tunnel = { kind = "geneve", vni = 100, outer_src = "192.168.0.1", outer_dst = "192.168.0.2", outer_src_mac = "02:aa:00:00:00:01", outer_dst_mac = "02:aa:00:00:00:02", options = [{ class = 0x0102, type = 0x80, data = [1, 2, 3, 4] }] }

[[egress]]
id = 11
vf = 1
ethertype = 0x0806
action = "answer-arp"

[[ingress]]
id = 20
kind = "geneve"
vni = 100
outer_dst = "192.168.0.1"
action = "deliver"
vf = 1
"#;

#[test]
fn rules_load_from_toml() {
    let file = RuleFile::parse(RULES).unwrap();
    let egress = file.egress_table().unwrap();
    match egress.classify(&key(1, VF1_MAC, "10.0.0.1", "10.0.0.2")) {
        EgressDecision::Encap { rule: 10, spec, .. } => {
            assert_eq!(spec.kind, TunnelKind::Geneve);
            assert_eq!(spec.udp_dst_port, 6081);
            assert_eq!(spec.options[0].data, vec![1, 2, 3, 4]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        egress.neighbour(1, Ipv4Addr::new(10, 0, 0, 2)),
        Some([2, 0, 0, 0, 0, 2])
    );
    let ingress = file.ingress_table().unwrap();
    let mut k = ikey(100, VF1_MAC);
    k.kind = TunnelKind::Geneve;
    k.udp_dst_port = 6081;
    assert!(matches!(
        ingress.classify(&k),
        IngressDecision::Deliver { vf: 1, .. }
    ));
}

#[test]
fn bad_rule_files_say_what_is_wrong() {
    let bad_mac = RULES.replace("02:00:00:00:00:01", "02:00:00:00:01");
    assert!(matches!(
        RuleFile::parse(&bad_mac).unwrap().egress_table(),
        Err(ConfigError::Mac(_))
    ));
    let bad_action = RULES.replace("\"answer-arp\"", "\"explode\"");
    let err = RuleFile::parse(&bad_action)
        .unwrap()
        .egress_table()
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown action `explode`"),
        "{err}"
    );
    let bad_vlan = RULES.replace("ips = [\"10.0.0.1\"]", "ips = [\"10.0.0.1\"]\nvlan = 5000");
    let err = RuleFile::parse(&bad_vlan)
        .unwrap()
        .egress_table()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Vlan { vlan: 5000, .. }), "{err}");
    assert!(err.to_string().contains("VF 1"), "{err}");
    let typo = RULES.replace("dst_prefix", "dst_prefx");
    assert!(matches!(RuleFile::parse(&typo), Err(ConfigError::Toml(_))));
    let no_vf = RULES.replace("action = \"deliver\"\nvf = 1", "action = \"deliver\"");
    assert!(matches!(
        RuleFile::parse(&no_vf).unwrap().ingress_table(),
        Err(ConfigError::Missing { field: "vf", .. })
    ));
}

#[test]
fn counters_survive_table_updates() {
    let first = Arc::new(table());
    if let EgressDecision::Encap { counters, .. } =
        first.classify(&key(1, VF1_MAC, "10.0.0.1", "10.0.1.1"))
    {
        counters.add(1, 100);
    }
    let second = EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: VF1_MAC,
            ips: vec![ip("10.0.0.1")],
            vlan: None,
        })
        .rule(rule(
            1,
            1,
            Some("10.0.0.0/8"),
            EgressAction::Encap(spec(100, "192.168.0.2")),
        ))
        .inherit_counters(first.clone())
        .build()
        .unwrap();
    assert_eq!(second.counters(1).unwrap().packets(), 1);
    assert_eq!(second.counters(1).unwrap().bytes(), 100);
}
