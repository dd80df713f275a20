//! VF rule tables: what to do with traffic from a VF (egress) and for which VF traffic
//! from the underlay is meant (ingress).
//!
//! Tables are sans-I/O values: built in code ([`EgressTable::builder`],
//! [`IngressTable::builder`]) or from TOML ([`RuleFile`]), matched per packet with no
//! allocation, and replaced whole while traffic flows through [`Versioned`].

#[cfg(not(loom))]
mod config;
#[cfg(not(loom))]
mod counters;
#[cfg(not(loom))]
mod egress;
#[cfg(not(loom))]
mod ingress;
#[cfg(not(loom))]
mod lpm;
mod versioned;

#[cfg(not(loom))]
pub use config::{ConfigError, RuleFile};
#[cfg(not(loom))]
pub use counters::RuleCounters;
#[cfg(not(loom))]
pub use egress::{
    EgressAction, EgressDecision, EgressDrop, EgressKey, EgressRule, EgressTable,
    EgressTableBuilder, TrapAction, VfIdentity,
};
#[cfg(not(loom))]
pub use ingress::{
    IngressAction, IngressDecision, IngressDrop, IngressKey, IngressRule, IngressTable,
    IngressTableBuilder,
};
pub use versioned::{Reader, Versioned};

/// A rule's identifier, unique within its table and stable across table versions
/// (counters follow it).
pub type RuleId = u32;

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Two rules share an id.
    #[error("rule id {0} is used twice; ids must be unique within a table")]
    DuplicateId(RuleId),
    /// A rule names a VF that has no identity.
    #[error("rule {rule} is for VF {vf}, which has no identity (MAC and addresses); declare the VF first")]
    UnknownVf {
        /// The rule.
        rule: RuleId,
        /// The VF it names.
        vf: u16,
    },
    /// A VNI beyond the tunnel kind's range.
    #[error("rule {rule}: VNI {vni} does not fit a {kind} header (max {max})")]
    VniRange {
        /// The rule.
        rule: RuleId,
        /// The VNI.
        vni: u32,
        /// The tunnel kind.
        kind: &'static str,
        /// Its largest VNI.
        max: u32,
    },
    /// Outer source and destination addresses of different families.
    #[error("rule {0}: outer source and destination must both be IPv4 or both IPv6")]
    MixedFamilies(RuleId),
    /// A Geneve option whose data is not a multiple of 4 bytes or is too long.
    #[error("rule {0}: Geneve option data must be a multiple of 4 bytes and at most 124")]
    BadOption(RuleId),
    /// The outer header template could not be built.
    #[cfg(not(loom))]
    #[error("rule {rule}: {error}")]
    Template {
        /// The rule.
        rule: RuleId,
        /// Why.
        error: crate::tunnel::EncapError,
    },
}
