//! A data plane on a [`Host`] built by the harness: rule tables that join each VF to
//! the kernel vxlan device of its VNI in the remote namespace, the VF ports opened
//! (TAP, or AF_XDP on the veth's data-plane end), and the pipeline started inside the
//! data-plane namespace.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};

use super::{
    AfXdpUnderlay, DataPlane, DataPlaneError, RunningDataPlane, UnderlayConfig, UnderlayKind,
};
use crate::host::{Host, HostError, VfKind};
use crate::port::XdpMode;
use crate::port::{AfXdpPort, PortError, VfPort};
use crate::rules::{
    EgressAction, EgressRule, EgressTable, IngressAction, IngressRule, IngressTable, RuleError,
    TrapAction, Versioned, VfIdentity,
};
use crate::tunnel::{TunnelKind, TunnelSpec};

/// Why a data plane could not be started on a host.
#[derive(Debug, thiserror::Error)]
pub enum OnHostError {
    /// The host has no underlay (build it with `.underlay(..)`).
    #[error("the host has no underlay link; build it with HostBuilder::underlay")]
    NoUnderlay,
    /// A VF's VNI has no kernel vxlan device in the remote namespace.
    #[error("VF {vf} is on VNI {vni}, which has no remote vxlan device; add it with HostBuilder::remote_vni")]
    NoRemoteVni {
        /// The VF.
        vf: u16,
        /// Its VNI.
        vni: u32,
    },
    /// The rules derived from the host are invalid.
    #[error("rules: {0}")]
    Rules(#[from] RuleError),
    /// A harness step failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A port could not be opened.
    #[error("VF {vf}: {source}")]
    Port {
        /// The VF.
        vf: u16,
        /// Why.
        #[source]
        source: PortError,
    },
    /// The data plane did not start.
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
}

/// How to run the data plane on a host.
#[derive(Debug, Clone)]
pub struct OnHostOptions {
    /// Tunnel to the remote (the harness's remote peer speaks VXLAN).
    pub kind: TunnelKind,
    /// XDP attach mode for veth VFs.
    pub xdp_mode: XdpMode,
    /// Burst size of every stage.
    pub burst: usize,
    /// The underlay: io_uring UDP sockets (false, the default) or an AF_XDP socket on
    /// the host's underlay veth (true, in `xdp_mode`).
    pub afxdp_underlay: bool,
    /// The busy-poll window ([`super::DEFAULT_BUSY_POLL`] unless set).
    pub busy_poll: Option<std::time::Duration>,
    /// How many workers (see [`super::Workers`]; default [`super::Workers::Two`]).
    pub workers: super::Workers,
    /// Whether the workers can change while running (see
    /// [`super::DataPlaneBuilder::switchable`]; default false).
    pub switchable: bool,
    /// Hand super-frames to the kernel as UDP-tunnel GSO packets (see
    /// [`UnderlayConfig::tunnel_gso`]; default false).
    pub tunnel_gso: bool,
}

impl Default for OnHostOptions {
    fn default() -> Self {
        Self {
            kind: TunnelKind::Vxlan,
            xdp_mode: XdpMode::Native,
            burst: super::DEFAULT_BURST,
            afxdp_underlay: false,
            busy_poll: None,
            workers: super::Workers::Two,
            switchable: false,
            tunnel_gso: false,
        }
    }
}

/// The egress and ingress tables joining every VF of `host` to the remote vxlan
/// device of its VNI: VF traffic for the VNI's subnet is encapsulated to the remote
/// VTEP, ARP requests for the remote's overlay address are answered from the table,
/// and tunnelled traffic from the remote on the VNI is delivered to the VF. Guests
/// are held to their own MAC and IP (spoofed frames are dropped and counted).
pub fn tables_for_host(
    host: &Host,
    kind: TunnelKind,
) -> Result<(EgressTable, IngressTable), OnHostError> {
    let underlay = host.underlay.as_ref().ok_or(OnHostError::NoUnderlay)?;
    let local = IpAddr::V4(underlay.dp_ip.addr());
    let remote = IpAddr::V4(underlay.remote_ip.addr());
    let mut egress = EgressTable::builder().underlay_mtu(underlay.mtu as usize);
    let mut ingress = IngressTable::builder();
    let mut id = 0;
    for vf in &host.vfs {
        let vni = host
            .vnis
            .iter()
            .find(|v| v.vni == vf.vnic)
            .ok_or(OnHostError::NoRemoteVni {
                vf: vf.vf,
                vni: vf.vnic,
            })?;
        let spec = Arc::new(TunnelSpec {
            kind,
            vni: vf.vnic,
            outer_src: local,
            outer_dst: remote,
            udp_dst_port: kind.default_port(),
            df: true,
            ttl: 64,
            outer_src_mac: underlay.dp_mac.0,
            outer_dst_mac: underlay.remote_mac.0,
            options: vec![],
        });
        egress = egress
            .vf(VfIdentity {
                vf: vf.vf,
                mac: vf.guest_mac.0,
                ips: vec![IpAddr::V4(vf.guest_ip.addr())],
                vlan: None,
            })
            .neighbour(vf.vf, vni.overlay_ip.addr(), vni.mac.0);
        let subnet = Ipv4Net::new(vf.guest_ip.network(), vf.guest_ip.prefix_len())
            .expect("a network of a valid prefix is valid");
        id += 1;
        egress = egress.rule(EgressRule {
            id,
            vf: vf.vf,
            dst_mac: None,
            dst_prefix: Some(IpNet::V4(subnet)),
            vlan: None,
            ethertype: Some(0x0800),
            action: EgressAction::Encap(spec.clone()),
        });
        // Broadcast ARP requests are answered from the table; unicast ARP (the guest's
        // replies to the remote, its reachability probes) crosses the tunnel.
        id += 1;
        egress = egress.rule(EgressRule {
            id,
            vf: vf.vf,
            dst_mac: Some([0xff; 6]),
            dst_prefix: None,
            vlan: None,
            ethertype: Some(0x0806),
            action: EgressAction::Trap(TrapAction::AnswerArp),
        });
        id += 1;
        egress = egress.rule(EgressRule {
            id,
            vf: vf.vf,
            dst_mac: None,
            dst_prefix: None,
            vlan: None,
            ethertype: Some(0x0806),
            action: EgressAction::Encap(spec.clone()),
        });
        ingress = ingress.vf(vf.vf, vf.guest_mac.0).rule(IngressRule {
            id: id + 1000,
            kind,
            vni: vf.vnic,
            outer_dst: local,
            outer_src: Some(remote),
            udp_dst_port: None,
            inner_dst_mac: None,
            action: IngressAction::Deliver { vf: vf.vf },
        });
    }
    Ok((egress.build()?, ingress.build()?))
}

/// Opens the VF ports of `host` and starts a data plane in its data-plane namespace
/// with the rules of [`tables_for_host`] (returned too, for live changes).
pub fn start_on_host(
    host: &Host,
    options: &OnHostOptions,
) -> Result<
    (
        RunningDataPlane,
        Versioned<EgressTable>,
        Versioned<IngressTable>,
    ),
    OnHostError,
> {
    let (egress, ingress) = tables_for_host(host, options.kind)?;
    let (egress, ingress) = (Versioned::new(egress), Versioned::new(ingress));
    let underlay = host.underlay.as_ref().ok_or(OnHostError::NoUnderlay)?;
    let mut ports: Vec<Box<dyn VfPort>> = Vec::new();
    for (i, vf) in host.vfs.iter().enumerate() {
        match vf.kind {
            VfKind::Tap => ports.push(Box::new(host.open_tap(i)?)),
            VfKind::Veth => {
                let (name, n, mode) = (vf.vf_ifname.clone(), vf.vf, options.xdp_mode);
                let port = host
                    .dp_ns()
                    .run(move || AfXdpPort::builder(&name).vf(n).mode(mode).build())?
                    .map_err(|source| OnHostError::Port { vf: n, source })?;
                ports.push(Box::new(port));
            }
        }
    }
    let local = IpAddr::V4(underlay.dp_ip.addr());
    let (e, i, burst) = (egress.clone(), ingress.clone(), options.burst);
    let mut config = UnderlayConfig::new(local);
    config.tunnel_gso = options.tunnel_gso;
    if options.afxdp_underlay {
        config.kind = UnderlayKind::AfXdp(AfXdpUnderlay {
            xdp_mode: options.xdp_mode,
            ..AfXdpUnderlay::new(&underlay.ifname)
        });
    }
    let (busy_poll, workers, switchable) = (options.busy_poll, options.workers, options.switchable);
    let running = host.dp_ns().run(move || {
        let mut builder = DataPlane::builder()
            .underlay(config)
            .egress(e)
            .ingress(i)
            .burst(burst)
            .workers(workers)
            .switchable(switchable);
        if let Some(window) = busy_poll {
            builder = builder.busy_poll(window);
        }
        for port in ports {
            builder = builder.vf(port);
        }
        // Workers are spawned from this thread, which is in the data-plane namespace:
        // they inherit it, so the underlay sockets live there.
        builder.start()
    })??;
    Ok((running, egress, ingress))
}
