//! An rtnetlink connection bound to one network namespace, driven by a small
//! current-thread tokio runtime of its own so callers stay synchronous.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::{LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use tokio::runtime::Runtime;

use super::{HostError, Namespace};
use crate::wire::MacAddr;

/// What the kernel says about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface name.
    pub name: String,
    /// Interface index (in its namespace).
    pub index: u32,
    /// Hardware address (zero for links without one).
    pub mac: MacAddr,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
}

/// A netlink (`NETLINK_ROUTE`) connection opened inside a namespace: every request
/// acts on that namespace, whichever thread makes it.
pub struct Netlink {
    rt: Option<Runtime>,
    handle: rtnetlink::Handle,
    ns: String,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("ns", &self.ns).finish()
    }
}

impl Netlink {
    /// Opens a connection inside `ns` (the socket is created on a thread in it).
    pub fn open(ns: &Namespace) -> Result<Self, HostError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| HostError::io("start the netlink runtime", e))?;
        let (conn, handle) = ns
            .run(|| {
                let _in_rt = rt.enter();
                rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
            })?
            .map_err(|e| HostError::io(format!("open a netlink socket in {}", ns.name()), e))?;
        rt.spawn(conn);
        Ok(Self {
            rt: Some(rt),
            handle,
            ns: ns.name().to_string(),
        })
    }

    /// The namespace this connection acts on.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Runs a request to completion (on a helper thread if the caller is itself
    /// inside a tokio runtime, where blocking on another one would panic).
    fn block<T, F>(&self, step: impl FnOnce() -> String, fut: F) -> Result<T, HostError>
    where
        T: Send,
        F: Future<Output = Result<T, rtnetlink::Error>> + Send,
    {
        let rt = self.rt.as_ref().expect("runtime lives until drop");
        let r = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| match s.spawn(|| rt.block_on(fut)).join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            })
        } else {
            rt.block_on(fut)
        };
        r.map_err(|e| netlink_error(format!("{} (in netns {})", step(), self.ns), e))
    }

    /// Looks an interface up by name.
    pub fn link(&self, name: &str) -> Result<LinkState, HostError> {
        let req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let found = self.block(|| format!("look up link {name}"), async move {
            futures::pin_mut!(req);
            req.try_next().await
        });
        match found {
            Ok(Some(msg)) => Ok(link_state(&msg)),
            Ok(None) => Err(self.no_such(name)),
            Err(HostError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Err(self.no_such(name))
            }
            Err(e) => Err(e),
        }
    }

    /// All interfaces of the namespace.
    pub fn links(&self) -> Result<Vec<LinkState>, HostError> {
        let req = self.handle.link().get().execute();
        let msgs: Vec<LinkMessage> =
            self.block(
                || "list links".into(),
                async move { req.try_collect().await },
            )?;
        Ok(msgs.iter().map(link_state).collect())
    }

    fn no_such(&self, name: &str) -> HostError {
        HostError::NoSuchLink {
            ns: self.ns.clone(),
            name: name.to_string(),
        }
    }

    /// Sets MTU and/or MAC (when given) and brings the link up or down.
    pub fn set_link(
        &self,
        index: u32,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
        up: bool,
    ) -> Result<(), HostError> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        if let Some(mac) = mac {
            b = b.address(mac.0.to_vec());
        }
        b = if up { b.up() } else { b.down() };
        let req = self.handle.link().set(b.build()).execute();
        self.block(
            || format!("configure link #{index} (mtu {mtu:?}, mac {mac:?}, up {up})"),
            req,
        )
    }

    /// Creates veth pair `name` (here) / `peer` (created directly in `peer_ns`), both
    /// with `mtu`, the peer with `peer_mac` if given. Neither end is brought up.
    pub fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &Namespace,
        mtu: u32,
        peer_mac: Option<MacAddr>,
    ) -> Result<(), HostError> {
        let ns_file = peer_ns.file()?;
        let mut p = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&ns_file));
        if let Some(mac) = peer_mac {
            p = p.address(mac.0.to_vec());
        }
        let msg = LinkVeth::new(name, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())))
            .build();
        let req = self.handle.link().add(msg).execute();
        let r = self.block(
            || {
                format!(
                    "create veth {name} <-> {peer} (in netns {})",
                    peer_ns.name()
                )
            },
            req,
        );
        drop(ns_file); // kept open until the kernel has moved the peer
        r
    }

    /// Creates a kernel vxlan device: VNI `vni`, from `local` to the single remote
    /// `remote` on UDP `port`, no learning, over link `dev`, with `mtu`, up.
    #[allow(clippy::too_many_arguments)]
    pub fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        port: u16,
        dev: u32,
        mtu: u32,
    ) -> Result<(), HostError> {
        let msg = LinkVxlan::new(name, vni)
            .local(local)
            .remote(remote)
            .port(port)
            .learning(false)
            .dev(dev)
            .mtu(mtu)
            .up()
            .build();
        let req = self.handle.link().add(msg).execute();
        self.block(
            || format!("create vxlan {name} (vni {vni}, {local} -> {remote}:{port}) — is the vxlan module available?"),
            req,
        )
    }

    /// Adds an IPv4 address to a link.
    pub fn add_addr(&self, index: u32, addr: Ipv4Net) -> Result<(), HostError> {
        let req = self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute();
        self.block(|| format!("add address {addr} to link #{index}"), req)
    }

    /// Adds a default route via `gateway` out of link `index` (on-link: the gateway
    /// need not be in the link's subnet).
    pub fn add_default_route(&self, index: u32, gateway: Ipv4Addr) -> Result<(), HostError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .onlink()
            .build();
        let req = self.handle.route().add(msg).execute();
        self.block(
            || format!("add default route via {gateway} on link #{index}"),
            req,
        )
    }

    /// Adds a permanent neighbour (ARP) entry.
    pub fn add_neighbour(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<(), HostError> {
        let req = self
            .handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute();
        self.block(
            || format!("add neighbour {ip} lladdr {mac} on link #{index}"),
            req,
        )
    }
}

impl Netlink {
    /// Opens a connection in the calling thread's namespace (a data plane worker's).
    pub fn open_here() -> Result<Self, HostError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| HostError::io("start the netlink runtime", e))?;
        let (conn, handle) = {
            let _in_rt = rt.enter();
            rtnetlink::new_connection()
                .map(|(conn, handle, _)| (conn, handle))
                .map_err(|e| HostError::io("open a netlink socket", e))?
        };
        rt.spawn(conn);
        Ok(Self {
            rt: Some(rt),
            handle,
            ns: "(this thread's)".to_string(),
        })
    }

    /// The kernel's resolved neighbours (IPv4 ARP and IPv6 ND entries with a
    /// link-layer address, not failed or incomplete) on link `index`.
    pub fn neighbours(&self, index: u32) -> Result<Vec<(IpAddr, MacAddr)>, HostError> {
        let req = self.handle.neighbours().get().execute();
        let all: Vec<NeighbourMessage> =
            self.block(|| "dump the neighbour table".to_string(), req.try_collect())?;
        Ok(all
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(neighbour_entry)
            .collect())
    }

    /// The main table's unicast routes (both families) through link `index`.
    pub fn routes(&self, index: u32) -> Result<Vec<Route>, HostError> {
        let mut out = Vec::new();
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let req = self.handle.route().get(msg).execute();
            let all: Vec<RouteMessage> =
                self.block(|| "dump the routing table".to_string(), req.try_collect())?;
            out.extend(all.iter().filter_map(|m| route_entry(m, index)));
        }
        Ok(out)
    }
}

/// A route: destinations in `dst/prefix` are reached through `gateway` (on link when
/// `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination prefix's address.
    pub dst: IpAddr,
    /// The prefix length (0 for a default route).
    pub prefix: u8,
    /// The next hop, or `None` for destinations on the link.
    pub gateway: Option<IpAddr>,
}

fn neighbour_entry(m: &NeighbourMessage) -> Option<(IpAddr, MacAddr)> {
    use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
    if matches!(
        m.header.state,
        NeighbourState::Failed | NeighbourState::Incomplete | NeighbourState::None
    ) {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6));
            }
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(l);
                mac = Some(MacAddr(m));
            }
            _ => {}
        }
    }
    let mac = mac.filter(|m| *m != MacAddr::ZERO)?;
    Some((ip?, mac))
}

fn route_entry(m: &RouteMessage, index: u32) -> Option<Route> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
    if m.header.kind != RouteType::Unicast {
        return None;
    }
    let (mut dst, mut gateway, mut oif, mut table) = (None, None, None, u32::from(m.header.table));
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = addr(d),
            RouteAttribute::Gateway(g) => gateway = addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    // The main table (RT_TABLE_MAIN), through this link.
    if table != 254 || oif != Some(index) {
        return None;
    }
    let dst = match (dst, m.header.address_family) {
        (Some(d), _) => d,
        (None, rtnetlink::packet_route::AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    Some(Route {
        dst,
        prefix: m.header.destination_prefix_length,
        gateway,
    })
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's context panics; hand it off.
        if let Some(rt) = self.rt.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                std::thread::spawn(move || drop(rt));
            }
        }
    }
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut st = LinkState {
        name: String::new(),
        index: msg.header.index,
        mac: MacAddr::ZERO,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => st.name = n.clone(),
            LinkAttribute::Mtu(m) => st.mtu = *m,
            LinkAttribute::Address(a) if a.len() == 6 => {
                st.mac.0.copy_from_slice(a);
            }
            _ => {}
        }
    }
    st
}

fn netlink_error(step: String, e: rtnetlink::Error) -> HostError {
    let source = match &e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    };
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => HostError::NeedsRoot { step },
        _ => HostError::Netlink { step, source },
    }
}
