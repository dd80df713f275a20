//! The NIC packet path as pipewright stages.
//!
//! Egress (VF → underlay): `egress-classify` (parse, anti-spoofing, rule match; ARP
//! answered in place) → `egress-route` → `egress-offload` (complete partial checksums,
//! TSO/USO) → `egress-encap` (outer header from the rule's template) → underlay.
//! Ingress (underlay → VF): `ingress-match` (outer parse and checks, rule match,
//! tenant isolation) → `ingress-decap` (strip, verify inner checksums) → VF.
//!
//! Every dropped frame is a typed [`NicDrop`] with a reason, counted per stage and
//! reason in [`NicStats`] and the `metrics` facade.

mod egress;
mod ingress;
mod stats;

pub(crate) use egress::egress_with;
pub use egress::{egress, Classified, EgressConfig, EgressPorts, EgressVerdict, ToEncap};
pub use ingress::{ingress, Matched};
pub use stats::{Copies, Direction, Gro, NicDrop, NicStats};
