//! Rule updates under concurrent traffic: every burst is classified against one whole
//! table version, and per-rule counters (carried across versions) add up exactly.
#![cfg(not(loom))]

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pipewright_nic::rules::{
    EgressAction, EgressDecision, EgressKey, EgressRule, EgressTable, Versioned, VfIdentity,
};
use pipewright_nic::tunnel::{TunnelKind, TunnelSpec};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn table(version: u32, previous: Option<Arc<EgressTable>>) -> EgressTable {
    let spec = |dst: &str| {
        Arc::new(TunnelSpec {
            kind: TunnelKind::Vxlan,
            vni: version % (1 << 24),
            outer_src: "192.168.0.1".parse().unwrap(),
            outer_dst: dst.parse().unwrap(),
            udp_dst_port: 4789,
            df: true,
            ttl: 64,
            outer_src_mac: [0; 6],
            outer_dst_mac: [0; 6],
            options: vec![],
        })
    };
    let rule = |id, prefix: &str, dst| EgressRule {
        id,
        vf: 1,
        dst_mac: None,
        dst_prefix: Some(prefix.parse().unwrap()),
        vlan: None,
        ethertype: None,
        action: EgressAction::Encap(spec(dst)),
    };
    let mut b = EgressTable::builder()
        .vf(VfIdentity {
            vf: 1,
            mac: MAC,
            ips: vec!["10.0.0.1".parse().unwrap()],
            vlan: None,
        })
        .rule(rule(1, "10.1.0.0/16", "192.168.0.2"))
        .rule(rule(2, "10.2.0.0/16", "192.168.0.3"));
    if let Some(p) = previous {
        b = b.inherit_counters(p);
    }
    b.build().unwrap()
}

#[test]
fn bursts_see_one_version_and_counters_add_up() {
    let shared = Versioned::new(table(0, None));
    let stop = Arc::new(AtomicBool::new(false));
    let classified = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let mut reader = shared.reader();
            let (stop, classified) = (stop.clone(), classified.clone());
            std::thread::spawn(move || {
                let keys: Vec<EgressKey> = (0..32u8)
                    .map(|i| EgressKey {
                        vf: 1,
                        src_mac: MAC,
                        dst_mac: [2, 0, 0, 0, 0, 2],
                        vlan: None,
                        ethertype: 0x0800,
                        src_ip: Some("10.0.0.1".parse().unwrap()),
                        dst_ip: Some(IpAddr::from([10, 1 + (i + r) % 2, 0, i])),
                    })
                    .collect();
                let mut bursts = 0u64;
                while !stop.load(Ordering::Relaxed) || bursts < 100 {
                    let table = reader.refresh();
                    let mut vni = None;
                    for key in &keys {
                        match table.classify(key) {
                            EgressDecision::Encap { spec, counters, .. } => {
                                counters.add(1, 64);
                                assert_eq!(
                                    *vni.get_or_insert(spec.vni),
                                    spec.vni,
                                    "a burst saw two table versions"
                                );
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    classified.fetch_add(keys.len() as u64, Ordering::Relaxed);
                    bursts += 1;
                }
            })
        })
        .collect();
    for version in 1..=300 {
        let (_, previous) = shared.current();
        shared.publish(table(version, Some(previous)));
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let (_, last) = shared.current();
    let counted = last.counters(1).unwrap().packets() + last.counters(2).unwrap().packets();
    assert_eq!(
        counted,
        classified.load(Ordering::Relaxed),
        "counters lost or double-counted packets"
    );
}
