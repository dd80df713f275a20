//! The underlay on an AF_XDP socket: encapsulated frames leave and arrive as whole
//! Ethernet frames through an AF_XDP socket on the underlay interface, with no
//! per-packet system call, skb or route lookup in the data plane's path.
//!
//! - Receive: the socket's XDP program redirects UDP datagrams to the tunnel ports
//!   (IPv4 without options and unfragmented, IPv6 with UDP as first next header) to
//!   the socket; everything else (ARP, neighbour discovery, the host's own traffic)
//!   passes to the kernel. Frames go to ingress as they arrived: `parse_outer` checks
//!   the outer IP and UDP checksums the kernel would have checked.
//! - Transmit: egress already wrote the outer Ethernet/IP/UDP headers; this sink sets
//!   the outer source MAC to the interface's and the destination MAC to the outer
//!   destination's entry in the kernel's neighbour table, then hands the burst to the
//!   socket's TX ring (one `sendto` kick per burst in copy mode, none when the driver
//!   polls). The next hop is the gateway of the longest matching route of the
//!   kernel's main table through the interface (the destination itself when it is on
//!   the link), its MAC the kernel's neighbour entry (IPv4 ARP or IPv6 neighbour
//!   discovery): both tables are read through netlink (`rtnetlink`) on a miss at most
//!   every [`MISS_REFRESH`] and otherwise every [`REFRESH`]. Only if netlink fails
//!   (no socket in this namespace) is `/proc/thread-self/net/arp` read instead: IPv4,
//!   on-link next hops only. A frame whose next hop is not known yet is sent through
//!   an ordinary UDP socket instead, counted in [`UnderlayCounters::kernel_path`]; the
//!   kernel resolves the neighbour on that send, and later frames take the socket.
//!
//! Copies: the VF port copies a frame out of its UMEM into a pool frame, and this
//! underlay copies the encapsulated frame into its own UMEM (and the reverse on
//! receive): one copy per AF_XDP socket crossed, none per system call. A shared UMEM
//! between the VF and the underlay socket is not done.

use rustc_hash::FxHashMap as HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_runtime::{Burst, Failures, Outbox, Stage};

use super::underlay::outer_dst;
use super::vf::{lock, SharedPort};
use crate::host::{Netlink, Route};
use crate::pipeline::NicStats;
use crate::port::XdpMode;
use crate::{Frame, FramePool};

/// How often the neighbour table is re-read after a miss, at most.
pub const MISS_REFRESH: Duration = Duration::from_millis(10);
/// How often the neighbour table is re-read anyway (a neighbour's MAC may change).
pub const REFRESH: Duration = Duration::from_secs(1);

/// Which underlay the data plane uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UnderlayKind {
    /// io_uring UDP sockets bound to the underlay address (the default): works on any
    /// interface, in any namespace, with the kernel's routing, GSO and GRO; costs a
    /// system call per send batch and the kernel's UDP path per datagram. A TAP VF's
    /// TSO super-frames stay whole to it and leave as `UDP_SEGMENT` sends whose
    /// payload is sliced from the frame (no payload copy), and received TCP segments
    /// are coalesced into super-frames for a TAP VF (GRO; one copy per byte): choose it
    /// for bulk TCP.
    #[default]
    Udp,
    /// An AF_XDP socket on the underlay interface: the data plane writes whole outer
    /// frames itself (next hop and its MAC from the kernel's routing and neighbour
    /// tables, through netlink). Choose it for packet rate and latency on a directly
    /// attached underlay link; needs root and an interface with XDP. Super-frames are
    /// cut in egress (a copy there, one into the socket's UMEM).
    AfXdp(AfXdpUnderlay),
}

/// Settings of the AF_XDP underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfXdpUnderlay {
    /// The underlay interface (carrying the underlay address).
    pub ifname: String,
    /// Where its XDP program runs.
    pub xdp_mode: XdpMode,
    /// The interface queue to bind.
    pub queue: u32,
}

impl AfXdpUnderlay {
    /// Native XDP on queue 0 of `ifname`.
    pub fn new(ifname: &str) -> Self {
        Self {
            ifname: ifname.to_string(),
            xdp_mode: XdpMode::Native,
            queue: 0,
        }
    }
}

/// Counters of the AF_XDP underlay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnderlayCounters {
    /// Frames sent through the AF_XDP socket.
    pub xsk_tx: u64,
    /// Frames received through it.
    pub xsk_rx: u64,
    /// Frames sent through the kernel's UDP socket because their next hop's MAC was
    /// not known.
    pub kernel_path: u64,
    /// Frame bytes the socket copied between its UMEM and the frames (both ways).
    pub copied_bytes: u64,
}

/// The IPv4 neighbours of `ifname` in `/proc/net/arp` text: complete entries only
/// (flag `ATF_COM`), lines that do not parse are skipped.
pub fn parse_proc_arp(text: &str, ifname: &str) -> Vec<(Ipv4Addr, [u8; 6])> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ip, _hw, flags, mac, _mask, dev] = f[..] else {
            continue;
        };
        if dev != ifname {
            continue;
        }
        let complete =
            u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|fl| fl & 0x2 != 0);
        let (Ok(ip), Some(mac)) = (ip.parse::<Ipv4Addr>(), parse_mac(mac)) else {
            continue;
        };
        if complete && mac != [0; 6] {
            out.push((ip, mac));
        }
    }
    out
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The next hops' MACs and when to re-read them: sans-I/O (the caller reads the
/// tables and the clock).
#[derive(Debug, Default)]
pub struct NeighbourCache {
    entries: HashMap<IpAddr, [u8; 6]>,
    /// Routes through the interface, longest prefix first.
    routes: Vec<Route>,
    read_at: Option<Duration>,
}

impl NeighbourCache {
    /// The MAC of the next hop towards `ip` (see [`NeighbourCache::next_hop`]), if
    /// known.
    pub fn get(&self, ip: IpAddr) -> Option<[u8; 6]> {
        self.entries.get(&self.next_hop(ip)).copied()
    }

    /// The next hop towards `ip`: the gateway of the longest route containing it, or
    /// `ip` itself when that route is on the link or no route contains it.
    pub fn next_hop(&self, ip: IpAddr) -> IpAddr {
        self.routes
            .iter()
            .find(|r| route_contains(r, ip))
            .and_then(|r| r.gateway)
            .unwrap_or(ip)
    }

    /// Replaces the routes with a fresh read of the table.
    pub fn replace_routes(&mut self, routes: impl IntoIterator<Item = Route>) {
        self.routes = routes.into_iter().collect();
        self.routes.sort_by_key(|r| std::cmp::Reverse(r.prefix));
    }

    /// Whether to re-read the table at `now` (time since any fixed point), given
    /// whether a lookup just missed.
    pub fn should_refresh(&self, now: Duration, missed: bool) -> bool {
        match self.read_at {
            None => true,
            Some(at) => {
                let age = now.saturating_sub(at);
                age >= REFRESH || (missed && age >= MISS_REFRESH)
            }
        }
    }

    /// Replaces the entries with a fresh read of the table made at `now`.
    pub fn replace(&mut self, now: Duration, entries: impl IntoIterator<Item = (IpAddr, [u8; 6])>) {
        self.entries = entries.into_iter().collect();
        self.read_at = Some(now);
    }
}

/// Whether `ip` is in the route's prefix (same family only).
fn route_contains(r: &Route, ip: IpAddr) -> bool {
    match (r.dst, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let bits = u32::from(r.prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let bits = u32::from(r.prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// Shared counters of the AF_XDP underlay (tx side; rx is the port's).
#[derive(Debug, Default)]
pub(crate) struct TxCounters {
    pub(crate) kernel_path: AtomicU64,
}

/// Sends encapsulated frames through the AF_XDP socket; see the module docs.
pub(crate) struct XdpUnderlayTx {
    port: SharedPort,
    ifname: String,
    own_mac: [u8; 6],
    fallback: UdpSocket,
    /// The interface's index, for the netlink dumps.
    ifindex: u32,
    /// Opened on the first refresh (on the worker, in the data plane's namespace);
    /// `Err` once it failed: the `/proc` fallback from then on.
    netlink: Option<Result<Netlink, ()>>,
    neighbours: NeighbourCache,
    /// The last destination looked up and its next hop's MAC (cleared on a refresh).
    last: Option<(IpAddr, [u8; 6])>,
    epoch: Instant,
    pool: Arc<FramePool>,
    stats: NicStats,
    counters: Arc<TxCounters>,
    batch: Vec<Frame>,
}

impl std::fmt::Debug for XdpUnderlayTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpUnderlayTx")
            .field("ifname", &self.ifname)
            .finish()
    }
}

impl XdpUnderlayTx {
    /// A sink on `port` (the underlay's AF_XDP port on `ifname`, whose MAC is
    /// `own_mac`); `local` is the underlay address the kernel-path socket binds to.
    pub(crate) fn new(
        port: SharedPort,
        ifname: &str,
        own_mac: [u8; 6],
        local: IpAddr,
        pool: Arc<FramePool>,
        stats: NicStats,
        counters: Arc<TxCounters>,
    ) -> std::io::Result<Self> {
        let fallback = UdpSocket::bind(SocketAddr::new(local, 0))?;
        fallback.set_nonblocking(true)?;
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(std::io::Error::from)?;
        Ok(Self {
            ifindex,
            netlink: None,
            port,
            ifname: ifname.to_string(),
            own_mac,
            fallback,
            neighbours: NeighbourCache::default(),
            last: None,
            epoch: Instant::now(),
            pool,
            stats,
            counters,
            batch: Vec::new(),
        })
    }

    fn refresh_neighbours(&mut self, missed: bool) {
        let now = self.epoch.elapsed();
        if !self.neighbours.should_refresh(now, missed) {
            return;
        }
        self.last = None;
        if let Some((entries, routes)) = self.read_netlink() {
            self.neighbours.replace_routes(routes);
            self.neighbours
                .replace(now, entries.into_iter().map(|(ip, m)| (ip, m.0)));
            return;
        }
        // The fallback. The worker thread is in the data plane's namespace:
        // thread-self, not self (the process's main thread may be in another).
        let text = std::fs::read_to_string("/proc/thread-self/net/arp").unwrap_or_default();
        let entries = parse_proc_arp(&text, &self.ifname);
        self.neighbours.replace_routes([]);
        self.neighbours
            .replace(now, entries.into_iter().map(|(ip, m)| (IpAddr::V4(ip), m)));
    }

    /// The interface's neighbours and routes through netlink, `None` if it fails.
    #[allow(clippy::type_complexity)]
    fn read_netlink(&mut self) -> Option<(Vec<(IpAddr, crate::wire::MacAddr)>, Vec<Route>)> {
        let netlink = self.netlink.get_or_insert_with(|| {
            Netlink::open_here().map_err(|error| {
                tracing::warn!(target: "pipewright", %error, "AF_XDP underlay: no netlink socket; reading /proc/net/arp (IPv4, on-link next hops only)");
            })
        });
        let netlink = netlink.as_ref().ok()?;
        let read = netlink
            .neighbours(self.ifindex)
            .and_then(|n| Ok((n, netlink.routes(self.ifindex)?)));
        match read {
            Ok(tables) => Some(tables),
            Err(error) => {
                tracing::warn!(target: "pipewright", %error, "AF_XDP underlay: netlink dump failed; reading /proc/net/arp");
                None
            }
        }
    }

    /// Sends a frame whose next hop is unknown through the kernel; false if even that
    /// failed.
    fn send_through_kernel(&mut self, frame: &Frame) -> bool {
        let Some(dst) = outer_dst(frame.data()) else {
            return false;
        };
        let payload = &frame.data()[dst.payload_off..dst.payload_off + dst.payload_len];
        self.counters.kernel_path.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("nic_underlay_kernel_path_total").increment(1);
        self.fallback.send_to(payload, dst.to).is_ok()
    }

    /// Puts `frame` in the batch for the socket with its MACs set, or sends it
    /// through the kernel (its buffer then goes to `used`).
    fn take(&mut self, mut frame: Frame, used: &mut Vec<Frame>) {
        let Some(dst) = outer_dst(frame.data()) else {
            self.stats.drop_frame("underlay-tx", "not-encapsulated");
            used.push(frame);
            return;
        };
        let to = dst.to.ip();
        // Frames of a burst mostly go to one VTEP: the last answer first (the route
        // scan and hash lookup showed in the profile).
        let mut mac = match self.last {
            Some((ip, mac)) if ip == to => Some(mac),
            _ => self.neighbours.get(to),
        };
        if mac.is_none() {
            self.refresh_neighbours(true);
            mac = self.neighbours.get(to);
        }
        self.last = mac.map(|m| (to, m));
        match mac {
            Some(mac) => {
                let data = frame.data_mut();
                data[..6].copy_from_slice(&mac);
                data[6..12].copy_from_slice(&self.own_mac);
                self.batch.push(frame);
            }
            None => {
                if !self.send_through_kernel(&frame) {
                    self.stats.drop_frame("underlay-tx", "kernel-path-error");
                }
                used.push(frame);
            }
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut port = lock(&self.port);
        for _ in 0..3 {
            match port.send_burst(&mut self.batch, &self.pool) {
                Ok(_) if self.batch.is_empty() => return,
                Ok(_) => std::thread::yield_now(),
                Err(error) => {
                    // One frame (too large for the UMEM) was dropped by the port.
                    tracing::debug!(target: "pipewright", %error, "underlay send failed");
                    self.stats.drop_frame("underlay-tx", "port-error");
                }
            }
        }
        for _ in self.batch.drain(..) {
            self.stats.drop_frame("underlay-tx", "ring-full");
        }
    }
}

// The data plane's own ports: not listed among the framework trait's implementors.
#[doc(hidden)]
impl Stage for XdpUnderlayTx {
    type In = Frame;
    type Out = ();
    type Error = std::convert::Infallible;

    fn process(&mut self, frame: Frame, _out: &mut Outbox<'_, ()>) -> Result<(), Self::Error> {
        self.refresh_neighbours(false);
        let mut used = Vec::new();
        self.take(frame, &mut used);
        self.pool.give_back(used);
        self.flush();
        Ok(())
    }

    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Frame>,
        _out: &mut Outbox<'_, ()>,
        _failures: &mut Failures<'_, Self::Error>,
    ) {
        self.refresh_neighbours(false);
        let mut used = Vec::new();
        while let Some(frame) = burst.pop() {
            self.take(frame, &mut used);
        }
        self.pool.give_back(used);
        self.flush();
    }
}

/// The MAC address of `ifname` in the calling thread's network namespace.
pub(crate) fn interface_mac(ifname: &str) -> std::io::Result<[u8; 6]> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    for a in addrs {
        if a.interface_name != ifname {
            continue;
        }
        if let Some(mac) = a
            .address
            .as_ref()
            .and_then(|s| s.as_link_addr())
            .and_then(|l| l.addr())
        {
            return Ok(mac);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no link-layer address for {ifname:?} in this namespace"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ARP: &str =
        "IP address       HW type     Flags       HW address            Mask     Device
192.168.77.2     0x1         0x2         02:aa:00:00:00:02     *        ul0
192.168.77.3     0x1         0x0         00:00:00:00:00:00     *        ul0
10.0.0.9         0x1         0x2         02:bb:00:00:00:09     *        eth0
";

    #[test]
    fn complete_entries_of_the_interface_only() {
        let n = parse_proc_arp(ARP, "ul0");
        assert_eq!(
            n,
            vec![(Ipv4Addr::new(192, 168, 77, 2), [2, 0xaa, 0, 0, 0, 2])]
        );
        assert!(parse_proc_arp(ARP, "nothing").is_empty());
    }

    #[test]
    fn refresh_on_start_on_a_miss_after_a_pause_and_periodically() {
        let mut c = NeighbourCache::default();
        assert!(c.should_refresh(Duration::ZERO, false));
        c.replace(Duration::from_secs(5), []);
        assert!(!c.should_refresh(Duration::from_secs(5), true));
        assert!(c.should_refresh(Duration::from_secs(5) + MISS_REFRESH, true));
        assert!(!c.should_refresh(Duration::from_secs(5) + MISS_REFRESH, false));
        assert!(c.should_refresh(Duration::from_secs(5) + REFRESH, false));
    }

    fn route(dst: &str, prefix: u8, gateway: Option<&str>) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            prefix,
            gateway: gateway.map(|g| g.parse().unwrap()),
        }
    }

    #[test]
    fn next_hop_is_the_gateway_of_the_longest_matching_route() {
        let mut c = NeighbourCache::default();
        c.replace_routes([
            route("0.0.0.0", 0, Some("192.168.77.254")),
            route("192.168.77.0", 24, None),
            route("10.1.0.0", 16, Some("192.168.77.3")),
            route("10.1.2.0", 24, Some("192.168.77.4")),
            route("::", 0, Some("fd00::1")),
            route("fd00::", 64, None),
        ]);
        let hop = |ip: &str| c.next_hop(ip.parse().unwrap()).to_string();
        assert_eq!(hop("192.168.77.2"), "192.168.77.2");
        assert_eq!(hop("10.1.9.9"), "192.168.77.3");
        assert_eq!(hop("10.1.2.9"), "192.168.77.4");
        assert_eq!(hop("8.8.8.8"), "192.168.77.254");
        assert_eq!(hop("fd55::1"), "fd00::1");
        assert_eq!(hop("fd00::9"), "fd00::9");
        c.replace(
            Duration::ZERO,
            [("192.168.77.3".parse().unwrap(), [2, 0, 0, 0, 0, 3])],
        );
        assert_eq!(c.get("10.1.9.9".parse().unwrap()), Some([2, 0, 0, 0, 0, 3]));
        assert_eq!(c.get("8.8.8.8".parse().unwrap()), None);
        // Without routes (the /proc fallback) every destination is its own next hop.
        c.replace_routes([]);
        assert_eq!(c.get("10.1.9.9".parse().unwrap()), None);
        assert_eq!(
            c.get("192.168.77.3".parse().unwrap()),
            Some([2, 0, 0, 0, 0, 3])
        );
    }

    proptest! {
        #[test]
        fn next_hop_is_a_longest_prefix_match(
            routes in proptest::collection::vec((any::<u32>(), 0u8..=32, proptest::option::of(any::<u32>())), 0..12),
            probe in any::<u32>(),
            near in 0usize..12,
        ) {
            // Probe near a route's prefix half the time, so matches happen.
            let ip = routes.get(near).map_or(probe, |r| r.0 ^ (probe >> 20));
            let routes: Vec<Route> = routes
                .iter()
                .map(|&(dst, prefix, gw)| Route {
                    dst: IpAddr::V4(Ipv4Addr::from(dst)),
                    prefix,
                    gateway: gw.map(|g| IpAddr::V4(Ipv4Addr::from(g))),
                })
                .collect();
            let mut c = NeighbourCache::default();
            c.replace_routes(routes.clone());
            // Brute force: the first route of the longest prefix containing ip
            // (bit by bit), in table order.
            let contains = |r: &Route| {
                let IpAddr::V4(d) = r.dst else { return false };
                (0..u32::from(r.prefix)).all(|b| {
                    let bit = 31 - b;
                    (u32::from(d) >> bit) & 1 == (ip >> bit) & 1
                })
            };
            let best = routes
                .iter()
                .filter(|r| contains(r))
                .fold(None::<&Route>, |best, r| match best {
                    Some(b) if b.prefix >= r.prefix => Some(b),
                    _ => Some(r),
                });
            let ip = IpAddr::V4(Ipv4Addr::from(ip));
            let want = best.and_then(|r| r.gateway).unwrap_or(ip);
            prop_assert_eq!(c.next_hop(ip), want);
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in "\\PC{0,400}", dev in "[a-z0-9]{1,4}") {
            for (_, mac) in parse_proc_arp(&text, &dev) {
                prop_assert_ne!(mac, [0u8; 6]);
            }
        }

        #[test]
        fn written_entries_read_back(entries in proptest::collection::vec((any::<u32>(), any::<[u8; 6]>(), any::<bool>()), 0..20)) {
            let mut text = String::from("IP address       HW type     Flags       HW address            Mask     Device\n");
            let mut want = Vec::new();
            for (ip, mac, complete) in &entries {
                let ip = Ipv4Addr::from(*ip);
                let m = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
                text.push_str(&format!("{ip} 0x1 {} {m} * ul0\n", if *complete { "0x2" } else { "0x0" }));
                if *complete && *mac != [0; 6] {
                    want.push((ip, *mac));
                }
            }
            prop_assert_eq!(parse_proc_arp(&text, "ul0"), want);
        }
    }
}
