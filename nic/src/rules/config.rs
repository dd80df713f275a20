//! Rule tables from TOML.
//!
//! ```toml
//! [[vf]]
//! vf = 1
//! mac = "02:00:00:00:00:01"
//! ips = ["10.0.0.1"]
//!
//! [[neighbour]]
//! vf = 1
//! ip = "10.0.0.2"
//! mac = "02:00:00:00:00:02"
//!
//! [[egress]]
//! id = 10
//! vf = 1
//! dst_prefix = "10.0.0.0/24"
//! action = "encap"
//! tunnel = { kind = "vxlan", vni = 100, outer_src = "192.168.0.1", outer_dst = "192.168.0.2", outer_src_mac = "02:aa:00:00:00:01", outer_dst_mac = "02:aa:00:00:00:02" }
//!
//! [[ingress]]
//! id = 20
//! kind = "vxlan"
//! vni = 100
//! outer_dst = "192.168.0.1"
//! action = "deliver"
//! vf = 1
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    EgressAction, EgressRule, EgressTable, IngressAction, IngressRule, IngressTable, RuleError,
    RuleId, TrapAction, VfIdentity,
};
use crate::tunnel::{TunnelKind, TunnelOption, TunnelSpec};

/// Why a rule file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid TOML, or a field of the wrong shape.
    #[error("rule file: {0}")]
    Toml(#[from] toml::de::Error),
    /// A MAC address that is not six colon-separated hex bytes.
    #[error(
        "rule file: `{0}` is not a MAC address (expected six hex bytes like 02:00:00:00:00:01)"
    )]
    Mac(String),
    /// An action that needs a field that is missing.
    #[error("rule file: rule {rule}: action `{action}` needs `{field}`")]
    Missing {
        /// The rule.
        rule: RuleId,
        /// Its action.
        action: String,
        /// The missing field.
        field: &'static str,
    },
    /// An unknown action.
    #[error("rule file: rule {rule}: unknown action `{action}` (egress: encap, answer-arp, flood, drop; ingress: deliver, drop)")]
    Action {
        /// The rule.
        rule: RuleId,
        /// The action given.
        action: String,
    },
    /// The rules themselves are inconsistent.
    #[error("rule file: {0}")]
    Rules(#[from] RuleError),
    /// A VLAN id that does not fit the 12 bits of an 802.1Q tag.
    #[error("rule file: {what}: VLAN id {vlan} is not a VLAN id (0 to 4095)")]
    Vlan {
        /// Which entry ("VF 3", "egress rule 7").
        what: String,
        /// The id given.
        vlan: u16,
    },
}

/// A VLAN id from the file, checked to fit an 802.1Q tag (a larger one could never
/// match a frame, so every frame of that VF would be dropped as spoofed).
fn vlan_id(vlan: Option<u16>, what: impl FnOnce() -> String) -> Result<Option<u16>, ConfigError> {
    match vlan {
        Some(v) if v > 0x0fff => Err(ConfigError::Vlan {
            what: what(),
            vlan: v,
        }),
        other => Ok(other),
    }
}

fn mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut out {
        let part = parts
            .next()
            .ok_or_else(|| ConfigError::Mac(s.to_string()))?;
        if part.len() != 2 {
            return Err(ConfigError::Mac(s.to_string()));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| ConfigError::Mac(s.to_string()))?;
    }
    if parts.next().is_some() {
        return Err(ConfigError::Mac(s.to_string()));
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VfEntry {
    vf: u16,
    mac: String,
    #[serde(default)]
    ips: Vec<IpAddr>,
    vlan: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NeighbourEntry {
    vf: u16,
    ip: Ipv4Addr,
    mac: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelEntry {
    kind: TunnelKind,
    vni: u32,
    outer_src: IpAddr,
    outer_dst: IpAddr,
    port: Option<u16>,
    #[serde(default = "yes")]
    df: bool,
    #[serde(default = "default_ttl")]
    ttl: u8,
    outer_src_mac: String,
    outer_dst_mac: String,
    #[serde(default)]
    options: Vec<TunnelOption>,
}

fn yes() -> bool {
    true
}

fn default_ttl() -> u8 {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressEntry {
    id: RuleId,
    vf: u16,
    dst_mac: Option<String>,
    dst_prefix: Option<IpNet>,
    vlan: Option<u16>,
    ethertype: Option<u16>,
    action: String,
    tunnel: Option<TunnelEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressEntry {
    id: RuleId,
    kind: TunnelKind,
    vni: u32,
    outer_dst: IpAddr,
    outer_src: Option<IpAddr>,
    port: Option<u16>,
    inner_dst_mac: Option<String>,
    action: String,
    vf: Option<u16>,
}

/// A parsed rule file: VF identities, neighbours, egress and ingress rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    vf: Vec<VfEntry>,
    #[serde(default)]
    neighbour: Vec<NeighbourEntry>,
    #[serde(default)]
    egress: Vec<EgressEntry>,
    #[serde(default)]
    ingress: Vec<IngressEntry>,
}

impl TunnelEntry {
    fn spec(&self) -> Result<TunnelSpec, ConfigError> {
        Ok(TunnelSpec {
            kind: self.kind,
            vni: self.vni,
            outer_src: self.outer_src,
            outer_dst: self.outer_dst,
            udp_dst_port: self.port.unwrap_or(self.kind.default_port()),
            df: self.df,
            ttl: self.ttl,
            outer_src_mac: mac(&self.outer_src_mac)?,
            outer_dst_mac: mac(&self.outer_dst_mac)?,
            options: self.options.clone(),
        })
    }
}

impl RuleFile {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Builds the egress table.
    pub fn egress_table(&self) -> Result<EgressTable, ConfigError> {
        let mut b = EgressTable::builder();
        for v in &self.vf {
            b = b.vf(VfIdentity {
                vf: v.vf,
                mac: mac(&v.mac)?,
                ips: v.ips.clone(),
                vlan: vlan_id(v.vlan, || format!("VF {}", v.vf))?,
            });
        }
        for n in &self.neighbour {
            b = b.neighbour(n.vf, n.ip, mac(&n.mac)?);
        }
        for e in &self.egress {
            let tunnel = |field| {
                e.tunnel
                    .as_ref()
                    .ok_or(ConfigError::Missing {
                        rule: e.id,
                        action: e.action.clone(),
                        field,
                    })
                    .and_then(TunnelEntry::spec)
                    .map(Arc::new)
            };
            let action = match e.action.as_str() {
                "encap" => EgressAction::Encap(tunnel("tunnel")?),
                "flood" => EgressAction::Trap(TrapAction::Flood(tunnel("tunnel")?)),
                "answer-arp" => EgressAction::Trap(TrapAction::AnswerArp),
                "drop" => EgressAction::Drop,
                other => {
                    return Err(ConfigError::Action {
                        rule: e.id,
                        action: other.to_string(),
                    })
                }
            };
            b = b.rule(EgressRule {
                id: e.id,
                vf: e.vf,
                dst_mac: e.dst_mac.as_deref().map(mac).transpose()?,
                dst_prefix: e.dst_prefix,
                vlan: vlan_id(e.vlan, || format!("egress rule {}", e.id))?,
                ethertype: e.ethertype,
                action,
            });
        }
        Ok(b.build()?)
    }

    /// Builds the ingress table.
    pub fn ingress_table(&self) -> Result<IngressTable, ConfigError> {
        let mut b = IngressTable::builder();
        for v in &self.vf {
            b = b.vf(v.vf, mac(&v.mac)?);
        }
        for r in &self.ingress {
            let action = match r.action.as_str() {
                "deliver" => IngressAction::Deliver {
                    vf: r.vf.ok_or(ConfigError::Missing {
                        rule: r.id,
                        action: r.action.clone(),
                        field: "vf",
                    })?,
                },
                "drop" => IngressAction::Drop,
                other => {
                    return Err(ConfigError::Action {
                        rule: r.id,
                        action: other.to_string(),
                    })
                }
            };
            b = b.rule(IngressRule {
                id: r.id,
                kind: r.kind,
                vni: r.vni,
                outer_dst: r.outer_dst,
                outer_src: r.outer_src,
                udp_dst_port: r.port,
                inner_dst_mac: r.inner_dst_mac.as_deref().map(mac).transpose()?,
                action,
            });
        }
        Ok(b.build()?)
    }
}
