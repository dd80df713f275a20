//! A whole test host: data-plane namespace, guest namespaces with their VFs, an
//! underlay to a remote namespace with kernel vxlan devices.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{ethtool, HostError, Namespace, Netlink};
use crate::port::TapPort;
use crate::wire::MacAddr;

/// The UDP port of the remote's vxlan devices.
const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN over IPv4 adds (outer Ethernet + IPv4 + UDP + VXLAN).
const VXLAN_OVERHEAD: u32 = 50;
/// The guest's interface name in its namespace.
const GUEST_IF: &str = "eth0";
/// The underlay interface name (both ends, each in its namespace).
const UNDERLAY_IF: &str = "ul0";

/// How a VF reaches its guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfKind {
    /// A veth pair: the guest end in the guest namespace, the VF end (for an AF_XDP
    /// port) in the data-plane namespace.
    Veth,
    /// A TAP device: the netdevice is the guest's interface (in the guest
    /// namespace), the VF end is its file descriptor ([`Host::open_tap`]).
    Tap,
}

/// One VF to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfSpec {
    /// The vNIC id the data plane's rules use for it.
    pub vnic: u32,
    /// The guest interface's MAC.
    pub guest_mac: MacAddr,
    /// The guest's address and prefix.
    pub guest_ip: Ipv4Net,
    /// MTU of both ends.
    pub mtu: u32,
    /// Veth or TAP.
    pub kind: VfKind,
    /// A default route via this address (on-link), if any; otherwise only the
    /// prefix's on-link route exists.
    pub gateway: Option<Ipv4Addr>,
}

impl VfSpec {
    /// A VF with MTU 1500 and no default route.
    pub fn new(vnic: u32, guest_mac: MacAddr, guest_ip: Ipv4Net, kind: VfKind) -> Self {
        Self {
            vnic,
            guest_mac,
            guest_ip,
            mtu: 1500,
            kind,
            gateway: None,
        }
    }
}

/// The underlay link between the data plane and the remote tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlaySpec {
    /// The data plane's underlay address (the local tunnel endpoint).
    pub dp_ip: Ipv4Net,
    /// The remote namespace's address (the kernel vxlan devices' local address).
    pub remote_ip: Ipv4Net,
    /// MTU of the underlay veth.
    pub mtu: u32,
}

impl UnderlaySpec {
    /// An underlay with these addresses and MTU.
    pub fn new(dp_ip: Ipv4Net, remote_ip: Ipv4Net, mtu: u32) -> Self {
        Self {
            dp_ip,
            remote_ip,
            mtu,
        }
    }
}

/// One kernel vxlan device in the remote namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VniSpec {
    /// The VNI.
    pub vni: u32,
    /// The overlay address on the vxlan device (what a guest pings "behind the
    /// kernel vxlan").
    pub overlay_ip: Ipv4Net,
    /// Permanent neighbour entries on the vxlan device (guest IP → guest MAC), so
    /// the remote answers without resolving over the tunnel first.
    pub neighbours: Vec<(Ipv4Addr, MacAddr)>,
}

impl VniSpec {
    /// A VNI with an overlay address and no static neighbours.
    pub fn new(vni: u32, overlay_ip: Ipv4Net) -> Self {
        Self {
            vni,
            overlay_ip,
            neighbours: Vec::new(),
        }
    }
}

/// A built VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfInfo {
    /// The VF number (its position in the builder).
    pub vf: u16,
    /// The vNIC id from the spec.
    pub vnic: u32,
    /// Veth or TAP.
    pub kind: VfKind,
    /// The guest's namespace.
    pub guest_ns: String,
    /// The guest's interface name.
    pub guest_ifname: String,
    /// Its index in the guest namespace.
    pub guest_ifindex: u32,
    /// Its MAC.
    pub guest_mac: MacAddr,
    /// Its address.
    pub guest_ip: Ipv4Net,
    /// MTU.
    pub mtu: u32,
    /// Where the VF end is: the data-plane namespace for a veth; for a TAP the
    /// guest namespace, where the device is attached by name.
    pub vf_ns: String,
    /// The VF end's interface name (the veth end, or the TAP device).
    pub vf_ifname: String,
    /// Its index in `vf_ns`.
    pub vf_ifindex: u32,
    /// The veth VF end's MAC (`None` for a TAP, whose only MAC is the guest's).
    pub vf_mac: Option<MacAddr>,
}

/// The built underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayInfo {
    /// Interface name on both sides.
    pub ifname: String,
    /// Index in the data-plane namespace.
    pub dp_ifindex: u32,
    /// MAC of the data-plane end.
    pub dp_mac: MacAddr,
    /// Address of the data-plane end.
    pub dp_ip: Ipv4Net,
    /// Index in the remote namespace.
    pub remote_ifindex: u32,
    /// MAC of the remote end (the outer destination MAC of encapsulated frames).
    pub remote_mac: MacAddr,
    /// Address of the remote end.
    pub remote_ip: Ipv4Net,
    /// MTU.
    pub mtu: u32,
}

/// A built kernel vxlan device in the remote namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VniInfo {
    /// The VNI.
    pub vni: u32,
    /// Device name.
    pub ifname: String,
    /// Index in the remote namespace.
    pub ifindex: u32,
    /// The device's MAC (the inner source MAC of what it sends).
    pub mac: MacAddr,
    /// Its overlay address.
    pub overlay_ip: Ipv4Net,
    /// Its MTU (underlay MTU less 50).
    pub mtu: u32,
    /// UDP destination port.
    pub port: u16,
}

/// Collects the topology to build; see [`Host::builder`].
#[derive(Debug, Clone)]
pub struct HostBuilder {
    prefix: String,
    vfs: Vec<VfSpec>,
    underlay: Option<UnderlaySpec>,
    vnis: Vec<VniSpec>,
}

/// A built topology. Dropping it deletes all its namespaces (and so every link in
/// them); [`Host::teardown`] does the same and reports errors.
///
/// Namespaces: `PREFIX-dp` (data plane: veth VF ends `vf<i>`, underlay `ul0`),
/// `PREFIX-g<i>` (guest i: `eth0`), `PREFIX-remote` (underlay `ul0`, vxlan devices
/// `vx<VNI>`).
#[derive(Debug)]
pub struct Host {
    /// The prefix of every namespace name.
    pub prefix: String,
    /// The VFs, in builder order (index = VF number).
    pub vfs: Vec<VfInfo>,
    /// The underlay, if one was asked for.
    pub underlay: Option<UnderlayInfo>,
    /// The remote's vxlan devices.
    pub vnis: Vec<VniInfo>,
    dp: Namespace,
    remote: Option<Namespace>,
    guests: Vec<Namespace>,
}

impl Host {
    /// Starts a topology whose namespaces are named `PREFIX-...`.
    pub fn builder(prefix: &str) -> HostBuilder {
        HostBuilder {
            prefix: prefix.to_string(),
            vfs: Vec::new(),
            underlay: None,
            vnis: Vec::new(),
        }
    }

    /// Removes what a previous run with this prefix left behind (it crashed, or
    /// its `Host` was leaked): every namespace `PREFIX-dp`, `PREFIX-remote`,
    /// `PREFIX-g<N>`, and with them their links. Returns the names removed.
    pub fn clean_stale(prefix: &str) -> Result<Vec<String>, HostError> {
        check_prefix(prefix)?;
        let mut removed = Vec::new();
        for name in Namespace::list()? {
            let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
                continue;
            };
            let ours = rest == "dp"
                || rest == "remote"
                || rest
                    .strip_prefix('g')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if ours {
                Namespace::remove(&name)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// The data-plane namespace.
    pub fn dp_ns(&self) -> &Namespace {
        &self.dp
    }

    /// The remote namespace, if there is an underlay.
    pub fn remote_ns(&self) -> Option<&Namespace> {
        self.remote.as_ref()
    }

    /// Guest `i`'s namespace.
    pub fn guest_ns(&self, i: usize) -> Option<&Namespace> {
        self.guests.get(i)
    }

    /// Opens VF `i`'s TAP port (attaching to the device inside its namespace).
    pub fn open_tap(&self, i: usize) -> Result<TapPort, HostError> {
        let vf = self
            .vfs
            .get(i)
            .ok_or_else(|| HostError::Spec(format!("no VF {i}")))?;
        if vf.kind != VfKind::Tap {
            return Err(HostError::Spec(format!("VF {i} is a veth, not a TAP")));
        }
        let step = || format!("open TAP {} in {}", vf.vf_ifname, vf.vf_ns);
        self.guests[i]
            .run(|| TapPort::open_existing(&vf.vf_ifname, vf.vf))?
            .map_err(|source| HostError::Port {
                step: step(),
                source,
            })
    }

    /// Joins the data-plane namespaces of two hosts built without an underlay by one
    /// underlay veth (`ul0` on both sides): `spec.dp_ip` on `a`'s end,
    /// `spec.remote_ip` on `b`'s. Each host's [`Host::underlay`] is then filled in from
    /// its own side (for `b`, `dp_*` is `b`'s end and `remote_*` is `a`'s), so two data
    /// planes can tunnel to each other (pipewright ↔ pipewright). Transmit checksum
    /// offload is turned off on both ends, as on the remote's end of a normal
    /// underlay, so that captured frames carry complete checksums. The link goes away
    /// with either host.
    pub fn join_underlay(a: &mut Host, b: &mut Host, spec: &UnderlaySpec) -> Result<(), HostError> {
        if a.underlay.is_some() || b.underlay.is_some() || a.remote.is_some() || b.remote.is_some()
        {
            return Err(HostError::Spec(
                "join_underlay: both hosts must be built without an underlay".into(),
            ));
        }
        let a_nl = Netlink::open(&a.dp)?;
        let b_nl = Netlink::open(&b.dp)?;
        a_nl.add_veth(UNDERLAY_IF, UNDERLAY_IF, &b.dp, spec.mtu, None)?;
        let a_end = a_nl.link(UNDERLAY_IF)?;
        let b_end = b_nl.link(UNDERLAY_IF)?;
        a_nl.add_addr(a_end.index, spec.dp_ip)?;
        b_nl.add_addr(b_end.index, spec.remote_ip)?;
        a_nl.set_link(a_end.index, None, None, true)?;
        b_nl.set_link(b_end.index, None, None, true)?;
        for ns in [&a.dp, &b.dp] {
            // GRO stays off here (unlike a host's underlay to its remote): a capture
            // on `ul0` then sees each received datagram, not the kernel's coalesced
            // buffers.
            ns.run(|| ethtool::tx_checksum_off(UNDERLAY_IF))??;
        }
        a.underlay = Some(UnderlayInfo {
            ifname: UNDERLAY_IF.into(),
            dp_ifindex: a_end.index,
            dp_mac: a_end.mac,
            dp_ip: spec.dp_ip,
            remote_ifindex: b_end.index,
            remote_mac: b_end.mac,
            remote_ip: spec.remote_ip,
            mtu: spec.mtu,
        });
        b.underlay = Some(UnderlayInfo {
            ifname: UNDERLAY_IF.into(),
            dp_ifindex: b_end.index,
            dp_mac: b_end.mac,
            dp_ip: spec.remote_ip,
            remote_ifindex: a_end.index,
            remote_mac: a_end.mac,
            remote_ip: spec.dp_ip,
            mtu: spec.mtu,
        });
        Ok(())
    }

    /// Deletes every namespace, reporting the first failure.
    pub fn teardown(mut self) -> Result<(), HostError> {
        let mut first = Ok(());
        let all = self
            .guests
            .drain(..)
            .chain(self.remote.take())
            .collect::<Vec<_>>();
        for ns in all {
            let r = ns.delete();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl HostBuilder {
    /// Adds a VF (its number is its position).
    pub fn vf(mut self, spec: VfSpec) -> Self {
        self.vfs.push(spec);
        self
    }

    /// Adds the underlay link and the remote namespace.
    pub fn underlay(mut self, spec: UnderlaySpec) -> Self {
        self.underlay = Some(spec);
        self
    }

    /// Adds a kernel vxlan device to the remote namespace (needs an underlay).
    pub fn remote_vni(mut self, spec: VniSpec) -> Self {
        self.vnis.push(spec);
        self
    }

    /// Adds several vxlan devices at once.
    pub fn remote_peer(mut self, vnis: impl IntoIterator<Item = VniSpec>) -> Self {
        self.vnis.extend(vnis);
        self
    }

    /// Builds the topology, after removing any stale one with the same prefix. On
    /// failure, what was built is deleted again.
    pub fn build(self) -> Result<Host, HostError> {
        check_prefix(&self.prefix)?;
        if !self.vnis.is_empty() && self.underlay.is_none() {
            return Err(HostError::Spec(
                "remote vxlan devices need an underlay (HostBuilder::underlay)".into(),
            ));
        }
        if self.vfs.len() > usize::from(u16::MAX) {
            return Err(HostError::Spec("too many VFs".into()));
        }
        Host::clean_stale(&self.prefix)?;
        let p = &self.prefix;
        let dp = new_ns(&format!("{p}-dp"))?;
        let remote = match self.underlay {
            Some(_) => Some(new_ns(&format!("{p}-remote"))?),
            None => None,
        };
        let mut guests = Vec::with_capacity(self.vfs.len());
        for i in 0..self.vfs.len() {
            guests.push(new_ns(&format!("{p}-g{i}"))?);
        }
        let mut host = Host {
            prefix: self.prefix.clone(),
            vfs: Vec::new(),
            underlay: None,
            vnis: Vec::new(),
            dp,
            remote,
            guests,
        };
        let dp_nl = Netlink::open(&host.dp)?;
        for (i, spec) in self.vfs.iter().enumerate() {
            let info = build_vf(&dp_nl, &host.dp, &host.guests[i], i as u16, spec)?;
            if info.kind == VfKind::Veth {
                // An AF_XDP port carries no offload metadata (unlike a VF descriptor or
                // a TAP's vnet header): the guest must hand over complete checksums.
                let ifname = info.guest_ifname.clone();
                host.guests[i].run(move || ethtool::tx_checksum_off(&ifname))??;
            }
            host.vfs.push(info);
        }
        if let (Some(ul), Some(remote)) = (&self.underlay, &host.remote) {
            let r_nl = Netlink::open(remote)?;
            dp_nl.add_veth(UNDERLAY_IF, UNDERLAY_IF, remote, ul.mtu, None)?;
            let d = dp_nl.link(UNDERLAY_IF)?;
            let r = r_nl.link(UNDERLAY_IF)?;
            dp_nl.add_addr(d.index, ul.dp_ip)?;
            r_nl.add_addr(r.index, ul.remote_ip)?;
            dp_nl.set_link(d.index, None, None, true)?;
            r_nl.set_link(r.index, None, None, true)?;
            // GRO on the data plane's end, as a NIC's driver has it.
            host.dp.run(|| {
                ethtool::gro_on(UNDERLAY_IF)?;
                debug_assert!(ethtool::gro(UNDERLAY_IF)?);
                Ok::<_, HostError>(())
            })??;
            // Complete inner checksums in the remote's kernel, as a real NIC would on
            // the wire (see `ethtool`).
            remote.run(|| {
                ethtool::tx_checksum_off(UNDERLAY_IF)?;
                debug_assert!(!ethtool::tx_checksum(UNDERLAY_IF)?);
                Ok::<_, HostError>(())
            })??;
            for v in &self.vnis {
                host.vnis.push(build_vni(&r_nl, r.index, ul, v)?);
            }
            host.underlay = Some(UnderlayInfo {
                ifname: UNDERLAY_IF.into(),
                dp_ifindex: d.index,
                dp_mac: d.mac,
                dp_ip: ul.dp_ip,
                remote_ifindex: r.index,
                remote_mac: r.mac,
                remote_ip: ul.remote_ip,
                mtu: ul.mtu,
            });
        }
        Ok(host)
    }
}

fn build_vf(
    dp_nl: &Netlink,
    dp: &Namespace,
    guest: &Namespace,
    vf: u16,
    spec: &VfSpec,
) -> Result<VfInfo, HostError> {
    let g_nl = Netlink::open(guest)?;
    let (vf_ns, vf_ifname, vf_ifindex, vf_mac) = match spec.kind {
        VfKind::Veth => {
            let name = format!("vf{vf}");
            dp_nl.add_veth(&name, GUEST_IF, guest, spec.mtu, Some(spec.guest_mac))?;
            let end = dp_nl.link(&name)?;
            dp_nl.set_link(end.index, None, None, true)?;
            (dp.name().to_string(), name, end.index, Some(end.mac))
        }
        VfKind::Tap => {
            guest
                .run(|| -> Result<(), crate::port::PortError> {
                    TapPort::create(GUEST_IF, vf)?.set_persistent(true)
                })?
                .map_err(|source| HostError::Port {
                    step: format!("create TAP {GUEST_IF} in {}", guest.name()),
                    source,
                })?;
            let idx = g_nl.link(GUEST_IF)?.index;
            (guest.name().to_string(), GUEST_IF.to_string(), idx, None)
        }
    };
    let g = g_nl.link(GUEST_IF)?;
    g_nl.set_link(g.index, Some(spec.mtu), Some(spec.guest_mac), true)?;
    g_nl.add_addr(g.index, spec.guest_ip)?;
    if let Some(gw) = spec.gateway {
        g_nl.add_default_route(g.index, gw)?;
    }
    Ok(VfInfo {
        vf,
        vnic: spec.vnic,
        kind: spec.kind,
        guest_ns: guest.name().to_string(),
        guest_ifname: GUEST_IF.into(),
        guest_ifindex: g.index,
        guest_mac: spec.guest_mac,
        guest_ip: spec.guest_ip,
        mtu: spec.mtu,
        vf_ns,
        vf_ifname,
        vf_ifindex,
        vf_mac,
    })
}

fn build_vni(
    r_nl: &Netlink,
    ul_index: u32,
    ul: &UnderlaySpec,
    v: &VniSpec,
) -> Result<VniInfo, HostError> {
    let name = format!("vx{}", v.vni);
    let mtu = ul.mtu.saturating_sub(VXLAN_OVERHEAD);
    r_nl.add_vxlan(
        &name,
        v.vni,
        ul.remote_ip.addr(),
        ul.dp_ip.addr(),
        VXLAN_PORT,
        ul_index,
        mtu,
    )?;
    let dev = r_nl.link(&name)?;
    r_nl.add_addr(dev.index, v.overlay_ip)?;
    for (ip, mac) in &v.neighbours {
        r_nl.add_neighbour(dev.index, *ip, *mac)?;
    }
    Ok(VniInfo {
        vni: v.vni,
        ifname: name,
        ifindex: dev.index,
        mac: dev.mac,
        overlay_ip: v.overlay_ip,
        mtu,
        port: VXLAN_PORT,
    })
}

/// A namespace with loopback up and IPv6 off (so guests send no router
/// solicitations, MLD reports or DAD probes into the data plane).
fn new_ns(name: &str) -> Result<Namespace, HostError> {
    let ns = Namespace::create(name)?;
    ns.run(|| -> Result<(), HostError> {
        for conf in ["all", "default"] {
            let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
            // A kernel without IPv6 has no such file: nothing to disable.
            if std::path::Path::new(&path).exists() {
                std::fs::write(&path, "1")
                    .map_err(|e| HostError::io(format!("write {path}"), e))?;
            }
        }
        Ok(())
    })??;
    let nl = Netlink::open(&ns)?;
    let lo = nl.link("lo")?;
    nl.set_link(lo.index, None, None, true)?;
    Ok(ns)
}

fn check_prefix(prefix: &str) -> Result<(), HostError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(HostError::Spec(format!(
            "bad prefix {prefix:?}: 1 to 64 of [A-Za-z0-9._] (no '-', which separates the \
             role)"
        )))
    }
}
