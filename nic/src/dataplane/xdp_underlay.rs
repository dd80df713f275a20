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
//!   polls). The neighbour table is read from `/proc/thread-self/net/arp` (the
//!   documented fallback to netlink; IPv4 only), on a miss at most every
//!   [`MISS_REFRESH`] and otherwise every [`REFRESH`]. A frame whose next hop is not
//!   known yet (an IPv6 underlay, a routed or unresolved destination) is sent through
//!   an ordinary UDP socket instead, counted in [`UnderlayCounters::kernel_path`]; the
//!   kernel resolves the neighbour on that send, and later frames take the socket.
//!   The outer destination must be on the underlay's link (no gateway lookup).
//!
//! Copies: the VF port copies a frame out of its UMEM into a pool frame, and this
//! underlay copies the encapsulated frame into its own UMEM (and the reverse on
//! receive): one copy per AF_XDP socket crossed, none per system call. A shared UMEM
//! between the VF and the underlay socket is not done.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_runtime::{Burst, Failures, Outbox, Stage};

use super::underlay::outer_dst;
use super::vf::{lock, SharedPort};
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
    /// system call per send batch and the kernel's UDP path per datagram.
    #[default]
    Udp,
    /// An AF_XDP socket on the underlay interface: the data plane writes whole outer
    /// frames itself (next hop MAC from the kernel's neighbour table). Choose it for
    /// packet rate and latency on a directly attached underlay link; needs root, an
    /// interface with XDP, and an IPv4 next hop on the link.
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
/// table and the clock).
#[derive(Debug, Default)]
pub struct NeighbourCache {
    entries: HashMap<IpAddr, [u8; 6]>,
    read_at: Option<Duration>,
}

impl NeighbourCache {
    /// The MAC of `ip`, if known.
    pub fn get(&self, ip: IpAddr) -> Option<[u8; 6]> {
        self.entries.get(&ip).copied()
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
    neighbours: NeighbourCache,
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
        Ok(Self {
            port,
            ifname: ifname.to_string(),
            own_mac,
            fallback,
            neighbours: NeighbourCache::default(),
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
        // The worker thread is in the data plane's namespace: thread-self, not self
        // (the process's main thread may be in another).
        let text = std::fs::read_to_string("/proc/thread-self/net/arp").unwrap_or_default();
        let entries = parse_proc_arp(&text, &self.ifname);
        self.neighbours
            .replace(now, entries.into_iter().map(|(ip, m)| (IpAddr::V4(ip), m)));
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
        let mut mac = self.neighbours.get(dst.to.ip());
        if mac.is_none() {
            self.refresh_neighbours(true);
            mac = self.neighbours.get(dst.to.ip());
        }
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
