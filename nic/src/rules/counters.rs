use std::sync::atomic::{AtomicU64, Ordering};

/// Packet and byte counters of one rule, shared by every table version that has the
/// rule and by every worker matching against it.
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
