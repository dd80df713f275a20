//! The host harness builds real topologies (network namespaces, veths, a TAP, kernel
//! vxlan devices) through netlink and removes them again; `ip` checks the result as
//! an independent observer, and real packets cross the underlay.
//!
//! Needs root; without it every test prints a SKIP line (and fails instead when
//! `PIPEWRIGHT_REQUIRE_NETNS=1`).
// Raw ICMP sockets (an echo sent and awaited without the `ping` program).
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pipewright_nic::host::{
    Host, HostError, Namespace, Netlink, UnderlaySpec, VfKind, VfSpec, VniSpec,
};
use pipewright_nic::port::VfPort;
use pipewright_nic::wire::MacAddr;
use pipewright_nic::{FramePool, DEFAULT_HEADROOM};

/// A prefix unique to this process and call, so tests run in parallel.
fn prefix(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "pwh{}{tag}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn has_ip() -> bool {
    Command::new("ip").arg("-V").output().is_ok()
}

/// Namespaces named `PREFIX-...` as `ip netns list` shows them.
fn listed(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = if has_ip() {
        ip(&["netns", "list"])
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    } else {
        Namespace::list().unwrap()
    };
    names.retain(|n| n.starts_with(&format!("{prefix}-")));
    names
}

const G0_MAC: MacAddr = MacAddr([2, 0, 0, 0, 1, 1]);
const G1_MAC: MacAddr = MacAddr([2, 0, 0, 0, 2, 1]);

fn two_vf_host(p: &str) -> Host {
    Host::builder(p)
        .vf(VfSpec {
            gateway: Some("10.71.0.1".parse().unwrap()),
            mtu: 1450,
            ..VfSpec::new(100, G0_MAC, "10.71.0.2/24".parse().unwrap(), VfKind::Veth)
        })
        .vf(VfSpec::new(
            200,
            G1_MAC,
            "10.72.0.2/24".parse().unwrap(),
            VfKind::Tap,
        ))
        .underlay(UnderlaySpec::new(
            "10.79.0.1/30".parse().unwrap(),
            "10.79.0.2/30".parse().unwrap(),
            1600,
        ))
        .remote_vni(VniSpec::new(100, "10.71.0.1/24".parse().unwrap()))
        .remote_vni(VniSpec {
            neighbours: vec![("10.72.0.2".parse().unwrap(), G1_MAC)],
            ..VniSpec::new(200, "10.72.0.1/24".parse().unwrap())
        })
        .build()
        .expect("build host")
}

fn assert_has(out: &str, want: &str) {
    assert!(out.contains(want), "expected {want:?} in:\n{out}");
}

#[test]
fn builds_the_topology_and_tears_it_down() {
    if !pipewright_testkit::netns() {
        return;
    }
    let p = prefix("b");
    let host = two_vf_host(&p);
    let (dp, g0, g1, remote) = (
        format!("{p}-dp"),
        format!("{p}-g0"),
        format!("{p}-g1"),
        format!("{p}-remote"),
    );
    let mut names = listed(&p);
    names.sort();
    assert_eq!(
        names,
        vec![dp.clone(), g0.clone(), g1.clone(), remote.clone()]
    );

    // What the Host reports.
    assert_eq!(host.dp_ns().name(), dp);
    assert_eq!(host.vfs.len(), 2);
    let (v0, v1) = (&host.vfs[0], &host.vfs[1]);
    assert_eq!((v0.vf, v0.vnic, v0.kind), (0, 100, VfKind::Veth));
    assert_eq!((v1.vf, v1.vnic, v1.kind), (1, 200, VfKind::Tap));
    assert_eq!(
        (v0.vf_ns.as_str(), v0.vf_ifname.as_str()),
        (dp.as_str(), "vf0")
    );
    assert_eq!(
        (v1.vf_ns.as_str(), v1.vf_ifname.as_str()),
        (g1.as_str(), "eth0")
    );
    let ul = host.underlay.as_ref().unwrap();
    assert_eq!(host.vnis.len(), 2);

    if has_ip() {
        // Guest 0: veth end with address, MAC, MTU, up, default route.
        let link = ip(&["-n", &g0, "link", "show", "eth0"]);
        assert_has(&link, "mtu 1450");
        assert_has(&link, "link/ether 02:00:00:00:01:01");
        assert_has(&link, ",UP");
        assert_has(
            &ip(&["-n", &g0, "-o", "addr", "show", "eth0"]),
            "inet 10.71.0.2/24",
        );
        let routes = ip(&["-n", &g0, "route"]);
        assert_has(&routes, "default via 10.71.0.1 dev eth0");
        assert_has(&routes, "onlink");
        // Its VF end in the data-plane namespace.
        let vf0 = ip(&["-n", &dp, "link", "show", "vf0"]);
        assert_has(&vf0, "mtu 1450");
        assert_has(&vf0, ",UP");
        assert_has(&vf0, &format!("link/ether {}", v0.vf_mac.unwrap()));
        assert_has(&vf0, &format!("link-netns {g0}"));
        // Guest 1: a persistent TAP with a vnet header, addressed and up.
        let tap = ip(&["-n", &g1, "-d", "link", "show", "eth0"]);
        assert_has(&tap, "tun type tap pi off vnet_hdr on persist on");
        assert_has(&tap, "link/ether 02:00:00:00:02:01");
        assert_has(&tap, ",UP");
        assert_has(
            &ip(&["-n", &g1, "-o", "addr", "show", "eth0"]),
            "inet 10.72.0.2/24",
        );
        // Underlay.
        let ul_dp = ip(&["-n", &dp, "addr", "show", "ul0"]);
        assert_has(&ul_dp, "mtu 1600");
        assert_has(&ul_dp, "inet 10.79.0.1/30");
        assert_has(&ul_dp, &format!("link/ether {}", ul.dp_mac));
        let ul_r = ip(&["-n", &remote, "addr", "show", "ul0"]);
        assert_has(&ul_r, "inet 10.79.0.2/30");
        assert_has(&ul_r, &format!("link/ether {}", ul.remote_mac));
        // Kernel vxlan devices.
        for (v, addr) in host.vnis.iter().zip(["10.71.0.1/24", "10.72.0.1/24"]) {
            let d = ip(&["-n", &remote, "-d", "addr", "show", &v.ifname]);
            assert_has(
                &d,
                &format!(
                    "vxlan id {} remote 10.79.0.1 local 10.79.0.2 dev ul0",
                    v.vni
                ),
            );
            assert_has(&d, "dstport 4789 nolearning");
            assert_has(&d, "mtu 1550");
            assert_has(&d, &format!("inet {addr}"));
            assert_has(&d, &format!("link/ether {}", v.mac));
        }
        assert_has(
            &ip(&["-n", &remote, "neigh", "show", "dev", "vx200"]),
            "10.72.0.2 lladdr 02:00:00:00:02:01 PERMANENT",
        );
        // Nothing leaked into the root namespace.
        let root = ip(&["-o", "link"]);
        assert!(
            !root.contains("vf0") && !root.contains("ul0@"),
            "root ns:\n{root}"
        );
    } else {
        eprintln!("note: `ip` not installed; checked through netlink only");
    }
    // The same facts through our own netlink handle.
    let nl = Netlink::open(host.remote_ns().unwrap()).unwrap();
    let vx = nl.link("vx100").unwrap();
    assert!(vx.up);
    assert_eq!((vx.mtu, vx.mac), (1550, host.vnis[0].mac));
    assert!(matches!(
        nl.link("nope0"),
        Err(HostError::NoSuchLink { .. })
    ));
    drop(nl);

    drop(host);
    assert!(listed(&p).is_empty(), "left behind: {:?}", listed(&p));
}

/// ICMP echo from inside `ns` to `dst` over a raw socket (the kernel at `dst`
/// answers); true if a reply came back.
fn ping(ns: &Namespace, dst: Ipv4Addr) -> bool {
    ns.run(move || {
        // SAFETY: a raw ICMP socket, used only through the fd below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let id = (std::process::id() & 0xffff) as u16;
        let mut req = [
            8u8,
            0,
            0,
            0,
            (id >> 8) as u8,
            id as u8,
            0,
            1,
            b'p',
            b'w',
            b'h',
            b'h',
        ];
        let sum = !fold(
            req.chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum(),
        );
        req[2..4].copy_from_slice(&sum.to_be_bytes());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ok = false;
        // SAFETY: valid pointers and lengths for each call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            'outer: while Instant::now() < deadline {
                libc::sendto(
                    fd,
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                let mut buf = [0u8; 1500];
                loop {
                    let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                    if n < 0 {
                        break;
                    }
                    let ihl = usize::from(buf[0] & 0xf) * 4;
                    let icmp = &buf[ihl..n as usize];
                    if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                        ok = icmp[8..] == req[8..];
                        break 'outer;
                    }
                }
            }
            libc::close(fd);
        }
        ok
    })
    .unwrap()
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn traffic_crosses_the_underlay() {
    if !pipewright_testkit::netns() {
        return;
    }
    let p = prefix("u");
    let host = Host::builder(&p)
        .underlay(UnderlaySpec::new(
            "10.79.1.1/30".parse().unwrap(),
            "10.79.1.2/30".parse().unwrap(),
            1500,
        ))
        .build()
        .unwrap();
    let remote = host.remote_ns().unwrap();
    assert!(
        ping(host.dp_ns(), "10.79.1.2".parse().unwrap()),
        "dp -> remote ping"
    );
    assert!(
        ping(remote, "10.79.1.1".parse().unwrap()),
        "remote -> dp ping"
    );

    // And UDP, sockets opened in each namespace and used from here.
    let rx = remote
        .run(|| UdpSocket::bind("10.79.1.2:9999"))
        .unwrap()
        .unwrap();
    let tx = host
        .dp_ns()
        .run(|| UdpSocket::bind("10.79.1.1:0"))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tx.send_to(b"over the underlay", "10.79.1.2:9999").unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = rx.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"over the underlay");
    assert_eq!(from.ip(), "10.79.1.1".parse::<std::net::IpAddr>().unwrap());
}

#[test]
fn clean_stale_recovers_from_a_crashed_run() {
    if !pipewright_testkit::netns() {
        return;
    }
    let p = prefix("c");
    let leaked = two_vf_host(&p);
    std::mem::forget(leaked); // as if the process had died: nothing torn down
    assert_eq!(listed(&p).len(), 4);
    // The same prefix again: build removes the leftovers first.
    let host = two_vf_host(&p);
    assert_eq!(listed(&p).len(), 4);
    drop(host);
    assert!(listed(&p).is_empty());

    // clean_stale on its own, and it only touches this prefix's names.
    let other = format!("{p}x-dp"); // a different prefix that shares ours as a start
    let keep = Namespace::create(&other).unwrap();
    std::mem::forget(two_vf_host(&p));
    let mut removed = Host::clean_stale(&p).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        ["dp", "g0", "g1", "remote"]
            .map(|r| format!("{p}-{r}"))
            .to_vec()
    );
    assert!(Namespace::exists(&other));
    keep.delete().unwrap();
    assert!(!Namespace::exists(&other));
}

#[test]
fn namespaces_isolate_and_errors_say_what_failed() {
    if !pipewright_testkit::netns() {
        return;
    }
    let p = prefix("n");
    let name = format!("{p}-solo");
    let ns = Namespace::create(&name).unwrap();
    assert!(matches!(Namespace::create(&name), Err(HostError::NamespaceExists(n)) if n == name));
    // A fresh namespace holds only loopback; the same port binds in two namespaces.
    let links = Netlink::open(&ns).unwrap().links().unwrap();
    assert_eq!(
        links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["lo"]
    );
    let a = ns
        .run(|| UdpSocket::bind("127.0.0.1:4789"))
        .unwrap()
        .unwrap();
    let other = Namespace::create(&format!("{p}-solo2")).unwrap();
    let b = other
        .run(|| UdpSocket::bind("127.0.0.1:4789"))
        .unwrap()
        .unwrap();
    drop((a, b));
    // A panic inside propagates.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("intended panic inside the namespace (propagation test)"))
            .unwrap();
    }));
    assert!(caught.is_err());
    drop(ns);
    assert!(!Namespace::exists(&name));
    assert!(matches!(
        Namespace::open(&name),
        Err(HostError::NoSuchNamespace(_))
    ));

    // Spec errors come before anything is built.
    let e = Host::builder(&format!("{p}v"))
        .remote_vni(VniSpec::new(5, "10.9.0.1/24".parse().unwrap()))
        .build()
        .unwrap_err();
    assert!(matches!(e, HostError::Spec(_)), "{e}");
    assert!(e.to_string().contains("need an underlay"), "{e}");
    assert!(matches!(
        Host::builder("bad/prefix").build(),
        Err(HostError::Spec(_))
    ));
    assert!(matches!(
        Host::builder("has-dash").build(),
        Err(HostError::Spec(_))
    ));
    // A veth VF has no TAP to open.
    let host = Host::builder(&format!("{p}t"))
        .vf(VfSpec::new(
            1,
            G0_MAC,
            "10.73.0.2/24".parse().unwrap(),
            VfKind::Veth,
        ))
        .build()
        .unwrap();
    assert!(matches!(host.open_tap(0), Err(HostError::Spec(_))));
    assert!(matches!(host.open_tap(7), Err(HostError::Spec(_))));
    host.teardown().unwrap();
}

#[test]
fn tap_vf_reaches_its_guest() {
    if !pipewright_testkit::netns() {
        return;
    }
    let p = prefix("t");
    let host = Host::builder(&p)
        .vf(VfSpec::new(
            7,
            G1_MAC,
            "10.74.0.2/24".parse().unwrap(),
            VfKind::Tap,
        ))
        .build()
        .unwrap();
    let mut port = host.open_tap(0).unwrap();
    assert_eq!(port.vf(), 0);
    // The guest resolves a neighbour: its ARP request comes out of the VF.
    let guest = host.guest_ns(0).unwrap();
    let sock = guest
        .run(|| UdpSocket::bind("10.74.0.2:0"))
        .unwrap()
        .unwrap();
    let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 64);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let _ = sock.send_to(b"x", "10.74.0.9:7");
        port.recv_burst(&pool, &mut got, 8).unwrap();
        if got
            .iter()
            .any(|f| f.data().get(12..14) == Some(&[0x08, 0x06][..]))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let arp = got
        .iter()
        .find(|f| f.data().get(12..14) == Some(&[0x08, 0x06][..]))
        .expect("an ARP request from the guest");
    assert_eq!(&arp.data()[6..12], &G1_MAC.0);
    assert_eq!(arp.meta.vf, 0);
    drop(port);
    drop(host);
    assert!(listed(&p).is_empty());
}
