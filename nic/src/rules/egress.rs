//! The egress rule table: traffic from a VF, matched by VF, addresses, VLAN and
//! EtherType, then encapsulated, trapped to the control path, or dropped.

use rustc_hash::FxHashMap as HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;

use super::counters::RuleCounters;
use super::lpm::Lpm;
use super::{RuleError, RuleId};
use crate::tunnel::{builtin, EncapError, EncapTemplate, Tunnel, TunnelSpec};

/// Who a VF is: a VF may only send as itself (anti-spoofing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfIdentity {
    /// The VF number.
    pub vf: u16,
    /// Its MAC address: the only source MAC it may use.
    pub mac: [u8; 6],
    /// Its addresses: the only source IPs it may use.
    pub ips: Vec<IpAddr>,
    /// Its VLAN, if it is on one: frames with another tag (or untagged) are spoofed.
    pub vlan: Option<u16>,
}

/// What to do with a packet on the control path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrapAction {
    /// Answer ARP requests locally from the table's neighbour entries.
    AnswerArp,
    /// Flood (broadcast, unknown unicast, ARP) to the remote VTEP in this tunnel.
    Flood(Arc<TunnelSpec>),
}

/// What a matching egress rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressAction {
    /// Encapsulate and send to the underlay.
    Encap(Arc<TunnelSpec>),
    /// Hand to the control path.
    Trap(TrapAction),
    /// Drop (and count).
    Drop,
}

/// One egress rule; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// Unique id (counters follow it across table versions).
    pub id: RuleId,
    /// The VF whose traffic it applies to.
    pub vf: u16,
    /// Destination MAC.
    pub dst_mac: Option<[u8; 6]>,
    /// Destination IP prefix (longest prefix wins).
    pub dst_prefix: Option<IpNet>,
    /// VLAN id.
    pub vlan: Option<u16>,
    /// EtherType (of the inner frame, after any VLAN tag).
    pub ethertype: Option<u16>,
    /// What to do.
    pub action: EgressAction,
}

/// The fields of a VF frame that egress rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressKey {
    /// The VF it came from.
    pub vf: u16,
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// EtherType after any VLAN tag.
    pub ethertype: u16,
    /// Source IP (IPv4/IPv6 frames; the sender address of ARP).
    pub src_ip: Option<IpAddr>,
    /// Destination IP (IPv4/IPv6 frames only).
    pub dst_ip: Option<IpAddr>,
}

/// Why egress dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressDrop {
    /// The VF has no identity in this table.
    UnknownVf,
    /// Source MAC, IP or VLAN is not the VF's own.
    Spoofed,
    /// No rule matched.
    NoRule,
}

impl EgressDrop {
    /// Label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            EgressDrop::UnknownVf => "unknown_vf",
            EgressDrop::Spoofed => "spoofed",
            EgressDrop::NoRule => "no_rule",
        }
    }
}

/// The outcome of classifying one egress packet.
#[derive(Debug, Clone, Copy)]
pub enum EgressDecision<'t> {
    /// Encapsulate with `spec`.
    Encap {
        /// The matching rule.
        rule: RuleId,
        /// The tunnel.
        spec: &'t TunnelSpec,
        /// Its prebuilt outer header.
        template: &'t Arc<EncapTemplate>,
        /// The rule's counters.
        counters: &'t RuleCounters,
    },
    /// Answer an ARP request from the neighbour entries.
    AnswerArp {
        /// The matching rule.
        rule: RuleId,
        /// The rule's counters.
        counters: &'t RuleCounters,
    },
    /// Flood to the remote VTEP.
    Flood {
        /// The matching rule.
        rule: RuleId,
        /// The tunnel.
        spec: &'t TunnelSpec,
        /// Its prebuilt outer header.
        template: &'t Arc<EncapTemplate>,
        /// The rule's counters.
        counters: &'t RuleCounters,
    },
    /// A rule said drop (its counters count the drops).
    RuleDrop {
        /// The matching rule.
        rule: RuleId,
        /// The rule's counters.
        counters: &'t RuleCounters,
    },
    /// Dropped before any rule applied.
    Drop(EgressDrop),
}

#[derive(Debug, Clone)]
struct VfRules {
    identity: VfIdentity,
    /// Rules with a destination prefix, by prefix; each list in rule-id order.
    by_prefix: Lpm<Vec<usize>>,
    /// Rules without one, in rule-id order.
    any_dst: Vec<usize>,
    neighbours: HashMap<Ipv4Addr, [u8; 6]>,
}

/// An immutable egress rule table; replace it whole through
/// [`Versioned`](super::Versioned).
#[derive(Debug, Clone)]
pub struct EgressTable {
    rules: Vec<EgressRule>,
    counters: Vec<Arc<RuleCounters>>,
    templates: Vec<Option<Arc<EncapTemplate>>>,
    vfs: HashMap<u16, VfRules>,
}

impl EgressTable {
    /// Starts a table.
    pub fn builder() -> EgressTableBuilder {
        EgressTableBuilder::default()
    }

    /// Classifies one packet. No allocation; a few hash probes.
    #[inline]
    pub fn classify(&self, key: &EgressKey) -> EgressDecision<'_> {
        let Some(vf) = self.vfs.get(&key.vf) else {
            return EgressDecision::Drop(EgressDrop::UnknownVf);
        };
        let id = &vf.identity;
        let ip_ok = key
            .src_ip
            .is_none_or(|ip| ip.is_unspecified() || id.ips.contains(&ip));
        if key.src_mac != id.mac || !ip_ok || key.vlan != id.vlan {
            return EgressDecision::Drop(EgressDrop::Spoofed);
        }
        let matches = |i: &usize| self.fields_match(&self.rules[*i], key);
        let by_prefix = key.dst_ip.and_then(|dst| {
            vf.by_prefix
                .find_map(dst, |l| l.iter().copied().find(matches))
        });
        match by_prefix.or_else(|| vf.any_dst.iter().copied().find(matches)) {
            Some(i) => self.decide(i),
            None => EgressDecision::Drop(EgressDrop::NoRule),
        }
    }

    #[inline]
    fn fields_match(&self, rule: &EgressRule, key: &EgressKey) -> bool {
        rule.dst_mac.is_none_or(|m| m == key.dst_mac)
            && rule.vlan.is_none_or(|v| Some(v) == key.vlan)
            && rule.ethertype.is_none_or(|e| e == key.ethertype)
    }

    fn decide(&self, i: usize) -> EgressDecision<'_> {
        let rule = &self.rules[i];
        let counters = &*self.counters[i];
        let template = self.templates[i].as_ref();
        match (&rule.action, template) {
            (EgressAction::Encap(spec), Some(template)) => EgressDecision::Encap {
                rule: rule.id,
                spec,
                template,
                counters,
            },
            (EgressAction::Trap(TrapAction::Flood(spec)), Some(template)) => {
                EgressDecision::Flood {
                    rule: rule.id,
                    spec,
                    template,
                    counters,
                }
            }
            (EgressAction::Trap(TrapAction::AnswerArp), _) => EgressDecision::AnswerArp {
                rule: rule.id,
                counters,
            },
            (EgressAction::Drop, _) => EgressDecision::RuleDrop {
                rule: rule.id,
                counters,
            },
            (EgressAction::Encap(_) | EgressAction::Trap(TrapAction::Flood(_)), None) => {
                unreachable!("build() makes a template for every tunnel rule")
            }
        }
    }

    /// The MAC of `ip` as seen from `vf` (for answering ARP), if the table knows it.
    pub fn neighbour(&self, vf: u16, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.vfs.get(&vf)?.neighbours.get(&ip).copied()
    }

    /// The identity of `vf`.
    pub fn identity(&self, vf: u16) -> Option<&VfIdentity> {
        self.vfs.get(&vf).map(|v| &v.identity)
    }

    /// Counters of rule `id`.
    pub fn counters(&self, id: RuleId) -> Option<&RuleCounters> {
        self.rules
            .iter()
            .position(|r| r.id == id)
            .map(|i| &*self.counters[i])
    }

    /// Every rule, in id order.
    pub fn rules(&self) -> &[EgressRule] {
        &self.rules
    }
}

impl std::fmt::Debug for EgressTableBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressTableBuilder")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// Builds an [`EgressTable`].
#[derive(Default)]
pub struct EgressTableBuilder {
    vfs: Vec<VfIdentity>,
    rules: Vec<EgressRule>,
    neighbours: Vec<(u16, Ipv4Addr, [u8; 6])>,
    previous: Option<Arc<EgressTable>>,
    mtu: Option<usize>,
    tunnels: Vec<Arc<dyn Tunnel>>,
}

impl EgressTableBuilder {
    /// Declares a VF and who it is.
    pub fn vf(mut self, identity: VfIdentity) -> Self {
        self.vfs.push(identity);
        self
    }

    /// Adds a rule.
    pub fn rule(mut self, rule: EgressRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Adds a neighbour entry (IP -> MAC) that `vf` may resolve by ARP.
    pub fn neighbour(mut self, vf: u16, ip: Ipv4Addr, mac: [u8; 6]) -> Self {
        self.neighbours.push((vf, ip, mac));
        self
    }

    /// Registers a tunnel implemented outside this crate, for rules whose spec names
    /// its [`TunnelKind::Custom`](crate::tunnel::TunnelKind::Custom) kind.
    pub fn tunnel(mut self, tunnel: Arc<dyn Tunnel>) -> Self {
        self.tunnels.push(tunnel);
        self
    }

    /// The underlay's IP MTU (default 1500): encapsulated packets larger than this are
    /// dropped, never fragmented.
    pub fn underlay_mtu(mut self, mtu: usize) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Keeps the counters of rules that `previous` also has (same id), so counts
    /// survive a table update.
    pub fn inherit_counters(mut self, previous: Arc<EgressTable>) -> Self {
        self.previous = Some(previous);
        self
    }

    /// Validates and builds.
    pub fn build(mut self) -> Result<EgressTable, RuleError> {
        super::counters::sort_unique(&mut self.rules, |r| r.id)?;
        let mut vfs: HashMap<u16, VfRules> = self
            .vfs
            .into_iter()
            .map(|identity| {
                (
                    identity.vf,
                    VfRules {
                        identity,
                        by_prefix: Lpm::default(),
                        any_dst: Vec::new(),
                        neighbours: HashMap::default(),
                    },
                )
            })
            .collect();
        for (i, rule) in self.rules.iter().enumerate() {
            if let EgressAction::Encap(spec) | EgressAction::Trap(TrapAction::Flood(spec)) =
                &rule.action
            {
                validate_spec(rule.id, spec)?;
            }
            let vf = vfs.get_mut(&rule.vf).ok_or(RuleError::UnknownVf {
                rule: rule.id,
                vf: rule.vf,
            })?;
            match rule.dst_prefix {
                Some(prefix) => vf.by_prefix.entry(prefix.trunc(), Vec::new).push(i),
                None => vf.any_dst.push(i),
            }
        }
        for (vf, ip, mac) in self.neighbours {
            vfs.get_mut(&vf)
                .ok_or(RuleError::UnknownVf { rule: 0, vf })?
                .neighbours
                .insert(ip, mac);
        }
        let previous_ids: Option<Vec<RuleId>> = self
            .previous
            .as_ref()
            .map(|p| p.rules.iter().map(|r| r.id).collect());
        let counters = super::counters::carried(
            self.rules.iter().map(|r| r.id),
            previous_ids
                .as_deref()
                .zip(self.previous.as_ref().map(|p| &p.counters[..])),
        );
        let mtu = self.mtu.unwrap_or(1500);
        let templates = self
            .rules
            .iter()
            .map(|r| match &r.action {
                EgressAction::Encap(spec) | EgressAction::Trap(TrapAction::Flood(spec)) => {
                    builtin(spec.kind)
                        .or_else(|| self.tunnels.iter().find(|t| t.kind() == spec.kind).cloned())
                        .ok_or(EncapError::UnknownTunnel(spec.kind))
                        .and_then(|tunnel| EncapTemplate::with_tunnel(spec, tunnel, mtu))
                        // Frames carry `DEFAULT_HEADROOM` bytes in front of them: an outer
                        // header that does not fit would drop every packet of the rule.
                        .and_then(|t| {
                            if t.overhead() > crate::DEFAULT_HEADROOM {
                                Err(EncapError::NoHeadroom {
                                    need: t.overhead(),
                                    have: crate::DEFAULT_HEADROOM,
                                })
                            } else {
                                Ok(t)
                            }
                        })
                        .map(|t| Some(Arc::new(t)))
                        .map_err(|error| RuleError::Template { rule: r.id, error })
                }
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EgressTable {
            rules: self.rules,
            counters,
            templates,
            vfs,
        })
    }
}

pub(crate) fn validate_spec(rule: RuleId, spec: &TunnelSpec) -> Result<(), RuleError> {
    if spec.vni > spec.kind.max_vni() {
        return Err(RuleError::VniRange {
            rule,
            vni: spec.vni,
            kind: spec.kind.as_str(),
            max: spec.kind.max_vni(),
        });
    }
    if spec.outer_src.is_ipv4() != spec.outer_dst.is_ipv4() {
        return Err(RuleError::MixedFamilies(rule));
    }
    if spec
        .options
        .iter()
        .any(|o| o.data.len() % 4 != 0 || o.data.len() > 124)
    {
        return Err(RuleError::BadOption(rule));
    }
    Ok(())
}
