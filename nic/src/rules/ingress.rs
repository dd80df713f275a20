//! The ingress rule table: tunnelled traffic from the underlay, matched by outer
//! addresses, port, tunnel kind and VNI (and optionally the inner destination MAC),
//! then delivered to exactly one VF or dropped.
//!
//! Tenant isolation is enforced here, not left to rule authors: a unicast inner frame
//! is delivered only if its destination MAC is the MAC of the VF the rule names.

use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::counters::RuleCounters;
use super::{RuleError, RuleId};
use crate::tunnel::TunnelKind;

/// What a matching ingress rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressAction {
    /// Decapsulate and deliver to this VF.
    Deliver {
        /// The VF.
        vf: u16,
    },
    /// Drop (and count).
    Drop,
}

/// One ingress rule; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressRule {
    /// Unique id.
    pub id: RuleId,
    /// Tunnel kind.
    pub kind: TunnelKind,
    /// VNI or tenant id.
    pub vni: u32,
    /// Outer destination address (our VTEP address).
    pub outer_dst: IpAddr,
    /// Outer source address (the remote VTEP).
    pub outer_src: Option<IpAddr>,
    /// Outer UDP destination port.
    pub udp_dst_port: Option<u16>,
    /// Inner destination MAC.
    pub inner_dst_mac: Option<[u8; 6]>,
    /// What to do.
    pub action: IngressAction,
}

/// The fields of a tunnelled packet that ingress rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressKey {
    /// Tunnel kind (from the UDP port and header).
    pub kind: TunnelKind,
    /// VNI or tenant id.
    pub vni: u32,
    /// Outer source address.
    pub outer_src: IpAddr,
    /// Outer destination address.
    pub outer_dst: IpAddr,
    /// Outer UDP destination port.
    pub udp_dst_port: u16,
    /// Inner destination MAC.
    pub inner_dst_mac: [u8; 6],
}

/// Why ingress dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressDrop {
    /// No rule for this kind, VNI and outer destination.
    UnknownVni,
    /// Rules exist for the VNI but none matched the rest.
    NoRule,
    /// The inner unicast destination is not the MAC of the VF the rule names.
    NotForVf,
}

impl IngressDrop {
    /// Label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            IngressDrop::UnknownVni => "unknown_vni",
            IngressDrop::NoRule => "no_rule",
            IngressDrop::NotForVf => "not_for_vf",
        }
    }
}

/// The outcome of classifying one ingress packet.
#[derive(Debug, Clone, Copy)]
pub enum IngressDecision<'t> {
    /// Deliver to `vf`.
    Deliver {
        /// The matching rule.
        rule: RuleId,
        /// The VF.
        vf: u16,
        /// The rule's counters.
        counters: &'t RuleCounters,
    },
    /// A rule said drop.
    RuleDrop {
        /// The matching rule.
        rule: RuleId,
        /// The rule's counters.
        counters: &'t RuleCounters,
    },
    /// Dropped: no delivery is allowed.
    Drop(IngressDrop),
}

/// An immutable ingress rule table.
#[derive(Debug, Clone)]
pub struct IngressTable {
    rules: Vec<IngressRule>,
    counters: Vec<Arc<RuleCounters>>,
    by_vni: HashMap<(TunnelKind, u32, IpAddr), Vec<usize>>,
    vf_macs: HashMap<u16, [u8; 6]>,
}

fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 1
}

impl IngressTable {
    /// Starts a table.
    pub fn builder() -> IngressTableBuilder {
        IngressTableBuilder::default()
    }

    /// Classifies one packet. No allocation; one hash probe.
    #[inline]
    pub fn classify(&self, key: &IngressKey) -> IngressDecision<'_> {
        let Some(candidates) = self.by_vni.get(&(key.kind, key.vni, key.outer_dst)) else {
            return IngressDecision::Drop(IngressDrop::UnknownVni);
        };
        let found = candidates.iter().copied().find(|i| {
            let r = &self.rules[*i];
            r.outer_src.is_none_or(|s| s == key.outer_src)
                && r.udp_dst_port.is_none_or(|p| p == key.udp_dst_port)
                && r.inner_dst_mac.is_none_or(|m| m == key.inner_dst_mac)
        });
        let Some(i) = found else {
            return IngressDecision::Drop(IngressDrop::NoRule);
        };
        let rule = &self.rules[i];
        let counters = &*self.counters[i];
        match rule.action {
            IngressAction::Drop => IngressDecision::RuleDrop {
                rule: rule.id,
                counters,
            },
            IngressAction::Deliver { vf } => {
                let own = self.vf_macs.get(&vf);
                if !is_group(&key.inner_dst_mac) && own != Some(&key.inner_dst_mac) {
                    return IngressDecision::Drop(IngressDrop::NotForVf);
                }
                IngressDecision::Deliver {
                    rule: rule.id,
                    vf,
                    counters,
                }
            }
        }
    }

    /// Counters of rule `id`.
    pub fn counters(&self, id: RuleId) -> Option<&RuleCounters> {
        self.rules
            .iter()
            .position(|r| r.id == id)
            .map(|i| &*self.counters[i])
    }

    /// Every rule, in id order.
    pub fn rules(&self) -> &[IngressRule] {
        &self.rules
    }
}

/// Builds an [`IngressTable`].
#[derive(Debug, Default)]
pub struct IngressTableBuilder {
    vf_macs: HashMap<u16, [u8; 6]>,
    rules: Vec<IngressRule>,
    previous: Option<Arc<IngressTable>>,
}

impl IngressTableBuilder {
    /// Declares a VF's MAC (deliveries to it must be for this MAC or a group address).
    pub fn vf(mut self, vf: u16, mac: [u8; 6]) -> Self {
        self.vf_macs.insert(vf, mac);
        self
    }

    /// Adds a rule.
    pub fn rule(mut self, rule: IngressRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Keeps counters of rules that `previous` also has.
    pub fn inherit_counters(mut self, previous: Arc<IngressTable>) -> Self {
        self.previous = Some(previous);
        self
    }

    /// Validates and builds.
    pub fn build(mut self) -> Result<IngressTable, RuleError> {
        super::counters::sort_unique(&mut self.rules, |r| r.id)?;
        let mut by_vni: HashMap<_, Vec<usize>> = HashMap::default();
        for (i, r) in self.rules.iter().enumerate() {
            if r.vni > r.kind.max_vni() {
                return Err(RuleError::VniRange {
                    rule: r.id,
                    vni: r.vni,
                    kind: r.kind.as_str(),
                    max: r.kind.max_vni(),
                });
            }
            if let IngressAction::Deliver { vf } = r.action {
                if !self.vf_macs.contains_key(&vf) {
                    return Err(RuleError::UnknownVf { rule: r.id, vf });
                }
            }
            by_vni
                .entry((r.kind, r.vni, r.outer_dst))
                .or_default()
                .push(i);
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
        Ok(IngressTable {
            rules: self.rules,
            counters,
            by_vni,
            vf_macs: self.vf_macs,
        })
    }
}
