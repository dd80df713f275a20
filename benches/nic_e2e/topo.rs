//! The two topologies, built side by side with the host harness (same addresses, each
//! in its own set of namespaces):
//!
//! ```text
//! ours: g0 eth0 ──veth── dp vf0 [AF_XDP] ─┐                               remote ul0
//!       g1 eth0 [TAP, vnet hdr] ──────────┴─ pipewright ── dp ul0 ──veth── vx100 10.100.0.1
//!                                             (io_uring UDP 4789)          vx200 10.200.0.1
//! peer: g0 eth0 ──veth── dp vf0 ─ br0 ─ vx100 (kernel vxlan) ── dp ul0 ──veth── remote ul0
//!                                                                          vx100 10.100.0.1
//! ```
//!
//! Guests are 10.100.0.2 (VNI 100) and, on ours only, 10.200.0.2 (VNI 200, the TAP VF).
//! The remote namespace and its kernel vxlan devices are the harness's, identical on
//! both sides; the only difference is what sits in the data-plane namespace.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pipewright_nic::dataplane::{start_on_host, OnHostOptions, RunningDataPlane, Workers};
use pipewright_nic::host::{Host, Namespace, Netlink, UnderlaySpec, VfKind, VfSpec, VniSpec};
use pipewright_nic::wire::MacAddr;

/// Fixed prefixes: a crashed run's namespaces are removed by the next run's build.
const OURS_PREFIX: &str = "pwe2eours";
const PEER_PREFIX: &str = "pwe2ekern";

pub const REMOTE_100: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
pub const GUEST_100: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
pub const REMOTE_200: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const GUEST_200: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const UNDERLAY_MTU: u32 = 1600;

/// One side's endpoints for a case: the guest namespace and addresses, the remote
/// namespace and the kernel vxlan device there that terminates the guest's VNI.
pub struct Path<'a> {
    pub guest: &'a Namespace,
    pub guest_ip: Ipv4Addr,
    pub remote: &'a Namespace,
    pub remote_ip: Ipv4Addr,
    pub remote_vx: &'static str,
}

fn net<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("valid prefix")
}

fn underlay() -> UnderlaySpec {
    UnderlaySpec::new(net("192.168.77.1/30"), net("192.168.77.2/30"), UNDERLAY_MTU)
}

/// The data plane's underlay in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// io_uring UDP sockets (case names without suffix).
    Udp,
    /// An AF_XDP socket on `ul0` (case names suffixed `-afxdp`).
    AfXdp,
}

impl Underlay {
    /// The case name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Underlay::Udp => "",
            Underlay::AfXdp => "-afxdp",
        }
    }
}

/// Pipewright on a harness host: VF 0 a veth opened as an AF_XDP port (VNI 100),
/// VF 1 a TAP with vnet header (VNI 200).
pub struct Ours {
    pub plane: Option<RunningDataPlane>,
    pub host: Host,
}

impl Ours {
    pub fn build() -> Result<Self> {
        let host = Host::builder(OURS_PREFIX)
            .vf(VfSpec::new(
                100,
                MacAddr([2, 0, 0, 0, 1, 2]),
                net("10.100.0.2/24"),
                VfKind::Veth,
            ))
            .vf(VfSpec::new(
                200,
                MacAddr([2, 0, 0, 0, 2, 2]),
                net("10.200.0.2/24"),
                VfKind::Tap,
            ))
            .underlay(underlay())
            .remote_vni(VniSpec::new(100, net("10.100.0.1/24")))
            .remote_vni(VniSpec::new(200, net("10.200.0.1/24")))
            .build()
            .context("build pipewright's host")?;
        let mut ours = Self { plane: None, host };
        ours.restart(Underlay::Udp, Workers::Two)?;
        Ok(ours)
    }

    /// Stops the data plane (if running) and starts it again on `underlay` with
    /// `workers` (the plan's choice for the traffic to come).
    pub fn restart(&mut self, underlay: Underlay, workers: Workers) -> Result<()> {
        self.restart_with(underlay, workers, false)
    }

    /// [`Ours::restart`], with the socket underlay's tunnel GSO on or off.
    pub fn restart_with(
        &mut self,
        underlay: Underlay,
        workers: Workers,
        tunnel_gso: bool,
    ) -> Result<()> {
        if let Some(plane) = self.plane.take() {
            plane
                .stop_within(Duration::from_secs(2))
                .context("stop the data plane")?;
        }
        let mut options = OnHostOptions {
            afxdp_underlay: underlay == Underlay::AfXdp,
            workers,
            tunnel_gso,
            ..OnHostOptions::default()
        };
        // Experiments (not used by CI): force the plan's shape or the busy-poll window.
        match std::env::var("PIPEWRIGHT_NIC_E2E_WORKERS").as_deref() {
            Ok("one") => options.workers = Workers::One,
            Ok("two") => options.workers = Workers::Two,
            _ => {}
        }
        if let Some(us) = std::env::var("PIPEWRIGHT_NIC_E2E_BUSY_POLL_US")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            options.busy_poll = Some(Duration::from_micros(us));
        }
        let (plane, _, _) = start_on_host(&self.host, &options)
            .with_context(|| format!("start the data plane on the {underlay:?} underlay"))?;
        self.plane = Some(plane);
        ping(self.host.guest_ns(0).unwrap(), REMOTE_100).context("ours, AF_XDP VF")?;
        ping(self.host.guest_ns(1).unwrap(), REMOTE_200).context("ours, TAP VF")?;
        Ok(())
    }

    pub fn plane(&self) -> &RunningDataPlane {
        self.plane.as_ref().expect("running until drop")
    }

    /// Guest 0 (veth + AF_XDP port) to the remote's vx100.
    pub fn afxdp(&self) -> Path<'_> {
        Path {
            guest: self.host.guest_ns(0).unwrap(),
            guest_ip: GUEST_100,
            remote: self.host.remote_ns().unwrap(),
            remote_ip: REMOTE_100,
            remote_vx: "vx100",
        }
    }

    /// Guest 1 (TAP port) to the remote's vx200.
    pub fn tap(&self) -> Path<'_> {
        Path {
            guest: self.host.guest_ns(1).unwrap(),
            guest_ip: GUEST_200,
            remote: self.host.remote_ns().unwrap(),
            remote_ip: REMOTE_200,
            remote_vx: "vx200",
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        // Stop the workers (and close the AF_XDP/TAP fds) before the namespaces go.
        if let Some(plane) = self.plane.take() {
            if let Err(e) = plane.stop_within(Duration::from_secs(2)) {
                eprintln!("nic_e2e: data plane stop: {e}");
            }
        }
    }
}

/// The kernel's own tunnel on the same harness shape: the guest's veth end in the
/// data-plane namespace is bridged to a kernel vxlan device (VNI 100, 192.168.77.1 ->
/// 192.168.77.2:4789 over `ul0`), so the kernel encapsulates what pipewright would.
pub struct Peer {
    pub host: Host,
}

impl Peer {
    pub fn build() -> Result<Self> {
        let host = Host::builder(PEER_PREFIX)
            .vf(VfSpec::new(
                100,
                MacAddr([2, 0, 0, 0, 1, 2]),
                net("10.100.0.2/24"),
                VfKind::Veth,
            ))
            .underlay(underlay())
            .remote_vni(VniSpec::new(100, net("10.100.0.1/24")))
            .build()
            .context("build the kernel-vxlan host")?;
        let peer = Self { host };
        let dp = peer.host.dp_ns();
        let ul = peer.host.underlay.as_ref().expect("built with an underlay");
        let nl = Netlink::open(dp)?;
        nl.add_vxlan(
            "vx100",
            100,
            ul.dp_ip.addr(),
            ul.remote_ip.addr(),
            4789,
            ul.dp_ifindex,
            UNDERLAY_MTU - 50,
        )?;
        let dpn = dp.name().to_string();
        for args in [
            "link add br0 type bridge stp_state 0",
            "link set vf0 master br0",
            "link set vx100 master br0",
            "link set br0 up",
        ] {
            ip(&dpn, args)?;
        }
        // No netfilter on bridged frames (pipewright has none either).
        dp.run(|| {
            for f in ["iptables", "ip6tables", "arptables"] {
                let _ = std::fs::write(format!("/proc/sys/net/bridge/bridge-nf-call-{f}"), "0");
            }
        })?;
        // The harness turns checksum offload off on veth guests (an AF_XDP port needs
        // complete checksums); a kernel-vxlan guest keeps the defaults: TSO, GSO, csum.
        let g = peer.host.vfs[0].guest_ns.clone();
        let ok = Command::new("ip")
            .args(["netns", "exec", &g, "ethtool", "-K", "eth0"])
            .args(["tx", "on", "sg", "on", "tso", "on", "gso", "on"])
            .output()
            .context("run ethtool")?;
        if !ok.status.success() {
            bail!(
                "ethtool -K eth0 tx on in {g}: {}",
                String::from_utf8_lossy(&ok.stderr)
            );
        }
        ping(peer.host.guest_ns(0).unwrap(), REMOTE_100).context("kernel-vxlan")?;
        Ok(peer)
    }

    pub fn path(&self) -> Path<'_> {
        Path {
            guest: self.host.guest_ns(0).unwrap(),
            guest_ip: GUEST_100,
            remote: self.host.remote_ns().unwrap(),
            remote_ip: REMOTE_100,
            remote_vx: "vx100",
        }
    }
}

fn ip(ns: &str, args: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} {args}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Pings until the path answers (resolves ARP on both ends before anything is timed).
fn ping(guest: &Namespace, to: Ipv4Addr) -> Result<()> {
    let to = to.to_string();
    for _ in 0..3 {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                guest.name(),
                "ping",
                "-c",
                "2",
                "-i",
                "0.2",
            ])
            .args(["-W", "1", &to])
            .output()
            .context("run ping")?
            .status
            .success();
        if ok {
            return Ok(());
        }
    }
    bail!("{} cannot ping {to}", guest.name())
}
