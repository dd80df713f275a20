use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{RuleError, RuleId};

/// Packet and byte counters of one rule, shared by every table version that has the
/// rule and by every worker matching against it.
///
/// A rule counts the frames it matched, when it matched them (as tc and OVS flow
/// counters do): a frame dropped further on, for a bad inner checksum or an MTU it
/// exceeds, is counted here and in the data plane's drop counters. A TSO or GRO
/// super-frame counts once, as the data plane's stages count it (so a rule's count
/// adds up with theirs), and its bytes are all of its segments'.
#[derive(Debug, Default)]
pub struct RuleCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl RuleCounters {
    /// Counts `packets` packets of `bytes` bytes in total (call once per burst per rule).
    #[inline]
    pub fn add(&self, packets: u64, bytes: u64) {
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Packets counted.
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    /// Bytes counted.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Sorts rules by id and rejects a repeated id.
pub(crate) fn sort_unique<R>(rules: &mut [R], id: impl Fn(&R) -> RuleId) -> Result<(), RuleError> {
    rules.sort_by_key(|r| id(r));
    match rules.windows(2).find(|w| id(&w[0]) == id(&w[1])) {
        Some(w) => Err(RuleError::DuplicateId(id(&w[0]))),
        None => Ok(()),
    }
}

/// Counters for each of `ids`: the previous table's counters for ids it also had
/// (counts survive updates), fresh ones otherwise.
pub(crate) fn carried(
    ids: impl Iterator<Item = RuleId>,
    previous: Option<(&[RuleId], &[Arc<RuleCounters>])>,
) -> Vec<Arc<RuleCounters>> {
    ids.map(|id| {
        previous
            .and_then(|(old, counters)| {
                old.iter()
                    .position(|o| *o == id)
                    .map(|i| counters[i].clone())
            })
            .unwrap_or_default()
    })
    .collect()
}
