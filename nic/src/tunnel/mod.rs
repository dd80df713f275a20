//! Stateless tunnels: which kinds exist and how a rule describes one.

use std::net::IpAddr;

mod decap;
mod encap;
mod kinds;

pub(crate) use decap::inner_offset;
pub use decap::{parse_outer, strip_outer, DecapConfig, DecapError, Outer};
pub use encap::{flow_hash, EncapError, EncapTemplate, MAX_OUTER_LEN};
pub use kinds::{builtin, Geneve, Pwt, Tunnel, Vxlan};

/// A tunnel encapsulation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    /// VXLAN (RFC 7348), 24-bit VNI, UDP 4789.
    Vxlan,
    /// Geneve (RFC 8926), 24-bit VNI and TLV options, UDP 6081.
    Geneve,
    /// pipewright's own stateless tunnel (see `wire::pwt`), 32-bit tenant id, UDP 7470.
    Pwt,
    /// A tunnel added by the user (an `impl Tunnel`), by a number of their choosing.
    Custom(u16),
}

impl TunnelKind {
    /// The IANA (or our) default UDP destination port; 0 for custom tunnels, whose
    /// port must be configured.
    pub fn default_port(self) -> u16 {
        match self {
            TunnelKind::Vxlan => 4789,
            TunnelKind::Geneve => 6081,
            TunnelKind::Pwt => 7470,
            TunnelKind::Custom(_) => 0,
        }
    }

    /// Largest virtual network / tenant identifier.
    pub fn max_vni(self) -> u32 {
        match self {
            TunnelKind::Vxlan | TunnelKind::Geneve => (1 << 24) - 1,
            TunnelKind::Pwt | TunnelKind::Custom(_) => u32::MAX,
        }
    }

    /// Lowercase name, for metrics and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "vxlan",
            TunnelKind::Geneve => "geneve",
            TunnelKind::Pwt => "pwt",
            TunnelKind::Custom(_) => "custom",
        }
    }
}

/// One Geneve option carried by every packet of a tunnel (class, type, data).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TunnelOption {
    /// Option class.
    pub class: u16,
    /// Option type (high bit = critical).
    #[serde(rename = "type")]
    pub kind: u8,
    /// Option data, a multiple of 4 bytes, at most 124.
    pub data: Vec<u8>,
}

/// How to encapsulate: everything an outer header template is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// Tunnel kind.
    pub kind: TunnelKind,
    /// VNI (VXLAN, Geneve) or tenant id (PWT).
    pub vni: u32,
    /// Outer source address (our VTEP).
    pub outer_src: IpAddr,
    /// Outer destination address (the remote VTEP).
    pub outer_dst: IpAddr,
    /// Outer UDP destination port.
    pub udp_dst_port: u16,
    /// Set the outer IPv4 don't-fragment bit.
    pub df: bool,
    /// Outer TTL / hop limit.
    pub ttl: u8,
    /// Outer source MAC (our underlay interface).
    pub outer_src_mac: [u8; 6],
    /// Outer destination MAC (the underlay next hop).
    pub outer_dst_mac: [u8; 6],
    /// Geneve options (ignored by other kinds).
    pub options: Vec<TunnelOption>,
}
