use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A frame the NIC path dropped, and why (a short stable label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("dropped: {reason}")]
pub struct NicDrop {
    /// The reason label (`spoofed`, `no_rule`, `bad_checksum`, `truncated`, ...).
    pub reason: &'static str,
}

/// Drop counts by stage and reason, shared by the NIC stages of a pipeline.
#[derive(Debug, Clone, Default)]
pub struct NicStats {
    drops: Arc<Mutex<BTreeMap<(&'static str, &'static str), u64>>>,
}

impl NicStats {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one drop (the slow path: a lock and a labelled metric).
    pub(crate) fn drop_frame(&self, stage: &'static str, reason: &'static str) -> NicDrop {
        *self
            .drops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((stage, reason))
            .or_default() += 1;
        metrics::counter!("pipewright_nic_drops_total", "stage" => stage, "reason" => reason)
            .increment(1);
        NicDrop { reason }
    }

    /// Drops of one reason, over all stages.
    pub fn drops(&self, reason: &str) -> u64 {
        let drops = self.drops.lock().unwrap_or_else(|p| p.into_inner());
        drops
            .iter()
            .filter(|((_, r), _)| *r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every (stage, reason, count).
    pub fn all(&self) -> Vec<(&'static str, &'static str, u64)> {
        let drops = self.drops.lock().unwrap_or_else(|p| p.into_inner());
        drops.iter().map(|((s, r), n)| (*s, *r, *n)).collect()
    }

    /// Total drops.
    pub fn total(&self) -> u64 {
        self.drops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}
