//! Rule changes while a TCP transfer runs: a guest behind pipewright (TAP VF) sends
//! 100 MB to the remote namespace behind the kernel's `vxlan` device while a control
//! thread keeps publishing new versions of the egress and ingress tables: each
//! version swaps the IPv4 encap rule and the ingress deliver rule for equivalent ones
//! with new ids, and adds or removes unrelated rules (a drop rule for another prefix,
//! a drop rule for another VNI). The transfer completes with its content checked, and
//! the counters add up, on the final (drained) snapshot of the data plane:
//!
//! ```text
//! egress:  Σ vf*-rx items_out  = egress-classify items_in
//!          egress-classify items_in = egress-offload items_in   (for encapsulation)
//!                                   + egress-to-vf items_in     (ARP answered to the VF)
//!                                   + NicStats drops of egress-classify
//!          Σ packets of every Encap rule of every version      = egress-offload items_in
//!          Σ packets of every AnswerArp rule of every version  = egress-to-vf items_in
//!                                                               + ARP drops of classify
//!          egress-encap items_in = egress-offload items_out (TSO segments),
//!          egress-encap items_out = underlay-tx items_in, no send failed, no drop
//! ingress: underlay-rx-4789 items_out = ingress-match items_in
//!                                     = ingress-decap items_in + NicStats of ingress-match
//!          Σ packets of every Deliver rule of every version    = ingress-decap items_in
//!          vf-tx items_in = ingress-decap items_out + egress-to-vf items_out
//! ```
//!
//! (Sources take no input: what a VF source received is its `items_out`.)
//!
//! Needs root and network namespaces (SKIP line otherwise, failure with
//! `PIPEWRIGHT_REQUIRE_NETNS=1`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use pipewright_nic::dataplane::{DataPlane, RunningDataPlane, UnderlayConfig};
use pipewright_nic::host::{Host, UnderlaySpec, VfKind, VfSpec, VniSpec};
use pipewright_nic::pipeline::NicStats;
use pipewright_nic::rules::{
    EgressAction, EgressRule, EgressTable, IngressAction, IngressRule, IngressTable, RuleId,
    TrapAction, Versioned, VfIdentity,
};
use pipewright_nic::tunnel::{TunnelKind, TunnelSpec};
use pipewright_nic::wire::MacAddr;
use pipewright_testkit::PING;

const VNI: u32 = 100;
const SIZE: u64 = 100 << 20;

/// A unique namespace prefix: pid and a counter (as a letter), so that even
/// `PREFIX-remote` stays within 15 characters.
fn prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) % 26;
    format!(
        "pr{}{}",
        std::process::id() % 100_000,
        char::from(b'a' + n as u8)
    )
}

/// What kind of rule an id is, for adding up counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Encap,
    AnswerArp,
    Drop,
    Deliver,
}

/// The tables of generation `gen`: the IPv4 encap rule is `100 + gen` and the deliver
/// rule `1100 + gen` (equivalent rules under new ids); odd generations add unrelated
/// drop rules (another prefix; another VNI), even ones remove them again. The ARP
/// rules keep their ids, and (inherited from `previous`) their counters, across
/// versions.
fn tables(
    host: &Host,
    gen: u32,
    previous: Option<(Arc<EgressTable>, Arc<IngressTable>)>,
) -> (EgressTable, IngressTable) {
    let ul = host.underlay.as_ref().unwrap();
    let vf = &host.vfs[0];
    let vni = &host.vnis[0];
    let (local, remote) = (IpAddr::V4(ul.dp_ip.addr()), IpAddr::V4(ul.remote_ip.addr()));
    let spec = Arc::new(TunnelSpec {
        kind: TunnelKind::Vxlan,
        vni: VNI,
        outer_src: local,
        outer_dst: remote,
        udp_dst_port: TunnelKind::Vxlan.default_port(),
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
    let mut egress = EgressTable::builder()
        .underlay_mtu(ul.mtu as usize)
        .vf(VfIdentity {
            vf: vf.vf,
            mac: vf.guest_mac.0,
            ips: vec![IpAddr::V4(vf.guest_ip.addr())],
            vlan: None,
        })
        .neighbour(vf.vf, vni.overlay_ip.addr(), vni.mac.0)
        .rule(rule(
            100 + gen,
            None,
            Some(IpNet::V4(subnet)),
            0x0800,
            EgressAction::Encap(spec.clone()),
        ))
        .rule(rule(
            2,
            Some([0xff; 6]),
            None,
            0x0806,
            EgressAction::Trap(TrapAction::AnswerArp),
        ))
        .rule(rule(3, None, None, 0x0806, EgressAction::Encap(spec)));
    let deliver = IngressRule {
        id: 1100 + gen,
        kind: TunnelKind::Vxlan,
        vni: VNI,
        outer_dst: local,
        outer_src: Some(remote),
        udp_dst_port: None,
        inner_dst_mac: None,
        action: IngressAction::Deliver { vf: vf.vf },
    };
    let mut ingress = IngressTable::builder()
        .vf(vf.vf, vf.guest_mac.0)
        .rule(deliver.clone());
    if gen % 2 == 1 {
        egress = egress.rule(rule(
            50,
            None,
            Some("10.250.0.0/24".parse().unwrap()),
            0x0800,
            EgressAction::Drop,
        ));
        ingress = ingress.rule(IngressRule {
            id: 50,
            vni: 999,
            action: IngressAction::Drop,
            ..deliver
        });
    }
    if let Some((e, i)) = previous {
        egress = egress.inherit_counters(e);
        ingress = ingress.inherit_counters(i);
    }
    (egress.build().unwrap(), ingress.build().unwrap())
}

/// Every rule counter of a table version, by the counter's address (a rule kept
/// across versions shares one counter): kind and packets.
type Counted = HashMap<usize, (RuleId, Kind, u64)>;

fn count_egress(table: &EgressTable, into: &mut Counted) {
    for r in table.rules() {
        let kind = match r.action {
            EgressAction::Encap(_) => Kind::Encap,
            EgressAction::Trap(TrapAction::AnswerArp) => Kind::AnswerArp,
            EgressAction::Drop => Kind::Drop,
            EgressAction::Trap(TrapAction::Flood(_)) => unreachable!("no flood rule"),
        };
        let c = table.counters(r.id).unwrap();
        into.insert(std::ptr::from_ref(c) as usize, (r.id, kind, c.packets()));
    }
}

fn count_ingress(table: &IngressTable, into: &mut Counted) {
    for r in table.rules() {
        let kind = match r.action {
            IngressAction::Deliver { .. } => Kind::Deliver,
            IngressAction::Drop => Kind::Drop,
        };
        let c = table.counters(r.id).unwrap();
        into.insert(std::ptr::from_ref(c) as usize, (r.id, kind, c.packets()));
    }
}

fn sum(counted: &Counted, kind: Kind) -> u64 {
    counted
        .values()
        .filter(|(_, k, _)| *k == kind)
        .map(|(_, _, n)| n)
        .sum()
}

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

fn describe(plane: &RunningDataPlane) -> String {
    let mut out = String::new();
    for s in &plane.snapshot().stages {
        out += &format!(
            "  {:<20} in {:>8} out {:>8} dropped {:?}\n",
            s.name, s.items_in, s.items_out, s.dropped
        );
    }
    out + &format!("  nic drops {:?}", plane.stats().all())
}

#[test]
fn rule_changes_during_a_100mb_transfer_lose_nothing_and_counters_add_up() {
    if !(pipewright_testkit::netns() && pipewright_testkit::io_uring() && PING.require()) {
        return;
    }
    let host = Host::builder(&prefix())
        .vf(VfSpec::new(
            VNI,
            MacAddr([2, 0, 0, 0x62, 0, 2]),
            "10.62.0.2/24".parse().unwrap(),
            VfKind::Tap,
        ))
        .underlay(UnderlaySpec::new(
            "192.168.62.1/30".parse().unwrap(),
            "192.168.62.2/30".parse().unwrap(),
            1600,
        ))
        .remote_vni(VniSpec::new(VNI, "10.62.0.1/24".parse().unwrap()))
        .build()
        .expect("build the host");
    let (e0, i0) = tables(&host, 0, None);
    let (egress, ingress) = (Versioned::new(e0), Versioned::new(i0));
    let port = host.open_tap(0).expect("open the TAP VF");
    let local = IpAddr::V4(host.underlay.as_ref().unwrap().dp_ip.addr());
    let (e, i) = (egress.clone(), ingress.clone());
    let plane = host
        .dp_ns()
        .run(move || {
            DataPlane::builder()
                .vf(Box::new(port))
                .underlay(UnderlayConfig::new(local))
                .egress(e)
                .ingress(i)
                .start()
        })
        .unwrap()
        .expect("start the data plane");
    // Every version's counters, read at the end (old versions keep theirs).
    let mut versions_e = vec![egress.current().1];
    let mut versions_i = vec![ingress.current().1];

    let g0 = host.vfs[0].guest_ns.clone();
    let remote_ip = host.vnis[0].overlay_ip.addr();
    let pinged = Command::new("ip")
        .args([
            "netns", "exec", &g0, "ping", "-c", "3", "-i", "0.2", "-W", "2",
        ])
        .arg(remote_ip.to_string())
        .output()
        .unwrap();
    assert!(
        pinged.status.success(),
        "the guest pings the remote\n{}",
        describe(&plane)
    );

    // The transfer: guest -> remote, content checked by the receiver.
    let addr = SocketAddr::new(IpAddr::V4(remote_ip), 7400);
    let listener = host
        .remote_ns()
        .unwrap()
        .run(move || TcpListener::bind(addr).unwrap())
        .unwrap();
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
    let done = Arc::new(AtomicBool::new(false));
    // Versions published so far: the sender waits for one per tenth of the transfer,
    // so at least ten land during it however fast the path is.
    let published = Arc::new(AtomicUsize::new(0));
    let sender = {
        let guest = host.guest_ns(0).unwrap().name().to_string();
        let done = done.clone();
        let published = published.clone();
        std::thread::spawn(move || {
            let ns = pipewright_nic::host::Namespace::open(&guest).unwrap();
            let sum = ns
                .run(move || {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                    let (mut sent, mut sum) = (0u64, 0u64);
                    let mut chunk = vec![0u8; 1 << 16];
                    while sent < SIZE {
                        // Past the first tenth, one more version than tenths begun:
                        // ten before the last tenth is sent.
                        let tenth = (sent * 10 / SIZE) as usize;
                        let want = if tenth == 0 { 0 } else { tenth + 1 };
                        while published.load(Ordering::Acquire) < want {
                            std::thread::sleep(Duration::from_millis(1));
                        }
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
            done.store(true, Ordering::Release);
            sum
        })
    };

    // Meanwhile: a new version of both tables every 20 ms.
    let start = Instant::now();
    let mut gen = 0;
    let mut published_during = 0;
    while !done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
        gen += 1;
        let previous = (egress.current().1, ingress.current().1);
        let (e, i) = tables(&host, gen, Some(previous));
        egress.publish(e);
        ingress.publish(i);
        versions_e.push(egress.current().1);
        versions_i.push(ingress.current().1);
        if !done.load(Ordering::Acquire) {
            published_during += 1;
        }
        published.fetch_add(1, Ordering::Release);
    }
    let sent_sum = sender.join().expect("sender");
    let (total, received_sum) = receiver.join().expect("receiver");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, SIZE, "every byte arrived\n{}", describe(&plane));
    assert_eq!(received_sum, sent_sum, "content checksum");
    eprintln!(
        "100 MB in {secs:.2} s ({:.0} Mbit/s) while {published_during} versions of each \
         table were published",
        SIZE as f64 * 8.0 / secs / 1e6
    );
    assert!(published_during >= 10, "only {published_during} updates");

    let stats = plane.stats().clone();
    let report = plane.stop().expect("data plane stops");
    assert!(report.completed, "drained");
    check_counters(&report.snapshot, &stats, &versions_e, &versions_i);
}

/// Checks the identities of the module docs on the final snapshot.
fn check_counters(
    snapshot: &pipewright_runtime::Snapshot,
    stats: &NicStats,
    versions_e: &[Arc<EgressTable>],
    versions_i: &[Arc<IngressTable>],
) {
    let stage = |name: &str| {
        snapshot
            .stage(name)
            .unwrap_or_else(|| panic!("no stage {name} in {snapshot}"))
    };
    let drops_at = |st: &str| -> u64 {
        stats
            .all()
            .iter()
            .filter(|(s, _, _)| *s == st)
            .map(|(_, _, n)| n)
            .sum()
    };
    let table = format!("{snapshot}\nnic drops {:?}", stats.all());
    let mut egress_rules = Counted::new();
    for t in versions_e {
        count_egress(t, &mut egress_rules);
    }
    let mut ingress_rules = Counted::new();
    for t in versions_i {
        count_ingress(t, &mut ingress_rules);
    }

    // Egress.
    let vf_rx: u64 = snapshot
        .stages
        .iter()
        .filter(|s| s.name.starts_with("vf") && s.name.ends_with("-rx"))
        .map(|s| s.items_out)
        .sum();
    let classify = stage("egress-classify");
    let offload = stage("egress-offload");
    let to_vf = stage("egress-to-vf");
    let encap = stage("egress-encap");
    let underlay_tx = stage("underlay-tx");
    let classify_drops = drops_at("egress-classify");
    let arp_drops: u64 = stats
        .all()
        .iter()
        .filter(|(s, r, _)| *s == "egress-classify" && r.starts_with("arp"))
        .map(|(_, _, n)| n)
        .sum();
    eprintln!(
        "egress: vf rx {vf_rx} = encapsulate {} + answered to the VF {} + dropped {classify_drops} \
         (NicStats {:?}); {} TSO segments encapsulated, {} sent",
        offload.items_in,
        to_vf.items_in,
        stats.all(),
        encap.items_in,
        underlay_tx.items_in,
    );
    assert_eq!(vf_rx, classify.items_in, "{table}");
    assert_eq!(
        classify.items_in,
        offload.items_in + to_vf.items_in + classify_drops,
        "{table}"
    );
    assert_eq!(classify.dropped_total(), classify_drops, "{table}");
    assert_eq!(
        sum(&egress_rules, Kind::Encap),
        offload.items_in,
        "encap rules of all versions: {egress_rules:?}"
    );
    assert_eq!(
        sum(&egress_rules, Kind::AnswerArp),
        to_vf.items_in + arp_drops,
        "ARP rules: {egress_rules:?}"
    );
    assert_eq!(
        sum(&egress_rules, Kind::Drop),
        0,
        "nothing hit the drop rule"
    );
    assert_eq!(encap.items_in, offload.items_out, "{table}");
    assert_eq!(
        encap.items_out + drops_at("egress-encap"),
        encap.items_in,
        "{table}"
    );
    assert_eq!(underlay_tx.items_in, encap.items_out, "{table}");
    assert_eq!(underlay_tx.dropped_total(), 0, "no send failed: {table}");
    // The swaps took effect mid-transfer: several encap rule ids carried it.
    let used = egress_rules
        .values()
        .filter(|(id, k, n)| *k == Kind::Encap && *id >= 100 && *n > 0)
        .count();
    assert!(
        used >= 3,
        "only {used} encap rule versions matched: {egress_rules:?}"
    );

    // Ingress.
    let underlay_rx = stage("underlay-rx-4789");
    let matched = stage("ingress-match");
    let decap = stage("ingress-decap");
    let vf_tx = stage("vf-tx");
    eprintln!(
        "ingress: underlay rx {} = delivered {} + dropped {}; vf-tx {} (of which {} ARP answers)",
        underlay_rx.items_out,
        decap.items_in,
        drops_at("ingress-match"),
        vf_tx.items_in,
        to_vf.items_out,
    );
    assert_eq!(underlay_rx.items_out, matched.items_in, "{table}");
    assert_eq!(
        matched.items_in,
        decap.items_in + drops_at("ingress-match"),
        "{table}"
    );
    assert_eq!(
        sum(&ingress_rules, Kind::Deliver),
        decap.items_in,
        "deliver rules of all versions: {ingress_rules:?}"
    );
    assert_eq!(
        decap.items_out + drops_at("ingress-decap"),
        decap.items_in,
        "{table}"
    );
    assert_eq!(vf_tx.items_in, decap.items_out + to_vf.items_out, "{table}");
    let used = ingress_rules
        .values()
        .filter(|(_, k, n)| *k == Kind::Deliver && *n > 0)
        .count();
    assert!(
        used >= 3,
        "only {used} deliver rule versions matched: {ingress_rules:?}"
    );
    // Nothing at all was dropped on this path.
    assert_eq!(stats.total(), 0, "{table}");
}
