//! The AF_XDP underlay finds its next hops in the kernel's own tables through netlink:
//! IPv4 and IPv6 neighbours and routes (on the link and through gateways) are set up
//! with `ip` in a fresh namespace, read with `Netlink` and resolved with
//! `NeighbourCache`, and must agree with what `ip route get` and `ip neigh` say.
//!
//! Needs root and `ip` (iproute2); without them the test prints one skip line (and
//! fails instead when `PIPEWRIGHT_REQUIRE_NETNS=1`).

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use pipewright_nic::dataplane::NeighbourCache;
use pipewright_nic::host::{Namespace, Netlink};
use pipewright_testkit::IP;

fn ip(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The next hop `ip route get` reports: the `via` address, else the destination.
fn kernel_next_hop(ns: &str, dst: IpAddr) -> IpAddr {
    let out = ip(ns, &["route", "get", &dst.to_string()]);
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "via")
        .map_or(dst, |w| w[1].parse().expect("a via address"))
}

/// The MAC `ip neigh` lists for `addr` on `dev`, if any (not failed/incomplete).
fn kernel_neighbour(ns: &str, dev: &str, addr: IpAddr) -> Option<[u8; 6]> {
    let out = ip(ns, &["neigh", "show", &addr.to_string(), "dev", dev]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let mac = words.windows(2).find(|w| w[0] == "lladdr")?[1];
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(mac.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    Some(m)
}

#[test]
fn next_hops_through_netlink_agree_with_the_kernel() {
    if !(pipewright_testkit::netns() && IP.require()) {
        return;
    }
    let name = format!("pwnb{}", std::process::id());
    let ns = Namespace::create(&name).expect("create the namespace");
    let n = ns.name().to_string();
    for args in [
        &["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"][..],
        &["link", "set", "ul0", "up"],
        &["link", "set", "ul1", "up"],
        &["addr", "add", "192.168.90.1/24", "dev", "ul0"],
        &["addr", "add", "fd90::1/64", "dev", "ul0", "nodad"],
        &[
            "neigh",
            "add",
            "192.168.90.2",
            "lladdr",
            "02:00:00:00:90:02",
            "dev",
            "ul0",
            "nud",
            "permanent",
        ],
        &[
            "neigh",
            "add",
            "192.168.90.3",
            "lladdr",
            "02:00:00:00:90:03",
            "dev",
            "ul0",
            "nud",
            "stale",
        ],
        &[
            "neigh",
            "add",
            "fd90::2",
            "lladdr",
            "02:00:00:00:90:62",
            "dev",
            "ul0",
            "nud",
            "reachable",
        ],
        &[
            "route",
            "add",
            "10.9.0.0/16",
            "via",
            "192.168.90.2",
            "dev",
            "ul0",
        ],
        &[
            "route",
            "add",
            "10.9.7.0/24",
            "via",
            "192.168.90.3",
            "dev",
            "ul0",
        ],
        &[
            "route",
            "add",
            "default",
            "via",
            "192.168.90.3",
            "dev",
            "ul0",
        ],
        &["route", "add", "fd99::/48", "via", "fd90::2", "dev", "ul0"],
    ] {
        ip(&n, args);
    }
    let netlink = Netlink::open(&ns).expect("netlink in the namespace");
    let index = netlink.link("ul0").expect("ul0").index;
    let neighbours = netlink.neighbours(index).expect("dump neighbours");
    let routes = netlink.routes(index).expect("dump routes");
    eprintln!("neighbours {neighbours:?}\nroutes {routes:?}");
    let mut cache = NeighbourCache::default();
    cache.replace_routes(routes);
    cache.replace(Duration::ZERO, neighbours.iter().map(|(a, m)| (*a, m.0)));

    let dsts: [IpAddr; 9] = [
        "10.9.4.5".parse().unwrap(),   // the /16 via .2
        "10.9.7.200".parse().unwrap(), // the longer /24 via .3
        "192.168.90.2".parse().unwrap(),
        "192.168.90.77".parse().unwrap(), // on the link, no neighbour entry
        "192.168.90.9".parse().unwrap(),  // on the link, unresolved
        "203.0.113.5".parse().unwrap(),   // the default route via .3
        "fd99::7".parse().unwrap(),       // via fd90::2
        "fd90::2".parse().unwrap(),
        "fd90::99".parse().unwrap(), // on the link, unresolved
    ];
    let mut resolved = 0;
    for dst in dsts {
        let hop = kernel_next_hop(&n, dst);
        assert_eq!(cache.next_hop(dst), hop, "next hop towards {dst}");
        let mac = kernel_neighbour(&n, "ul0", hop);
        assert_eq!(
            cache.get(dst),
            mac,
            "MAC of the next hop {hop} towards {dst}"
        );
        resolved += usize::from(mac.is_some());
    }
    // Both families and both kinds of next hop resolved; the rest are misses.
    assert_eq!(resolved, 6, "destinations with a known next-hop MAC");
    drop(netlink);
    ns.delete().expect("remove the namespace");
}
