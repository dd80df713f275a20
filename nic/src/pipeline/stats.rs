use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    copies: Arc<CopyCounts>,
    gro: Arc<GroCounts>,
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

    /// Counts `bytes` copied in user space going `direction` (see [`Copies`]).
    pub(crate) fn count_copy(&self, direction: Direction, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let (counter, label) = match direction {
            Direction::Egress => (&self.copies.egress, "egress"),
            Direction::Ingress => (&self.copies.ingress, "ingress"),
        };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
        metrics::counter!("pipewright_nic_copied_bytes_total", "direction" => label)
            .increment(bytes as u64);
    }

    /// Bytes copied so far, by direction.
    pub fn copies(&self) -> Copies {
        Copies {
            egress: self.copies.egress.load(Ordering::Relaxed),
            ingress: self.copies.ingress.load(Ordering::Relaxed),
        }
    }

    /// Counts one super-frame coalesced on receive from `segments` datagrams.
    pub(crate) fn count_gro(&self, segments: usize) {
        self.gro.frames.fetch_add(1, Ordering::Relaxed);
        self.gro
            .segments
            .fetch_add(segments as u64, Ordering::Relaxed);
        metrics::counter!("pipewright_nic_gro_frames_total").increment(1);
        metrics::counter!("pipewright_nic_gro_segments_total").increment(segments as u64);
    }

    /// Receive coalescing so far (see [`Gro`]).
    pub fn gro(&self) -> Gro {
        Gro {
            frames: self.gro.frames.load(Ordering::Relaxed),
            segments: self.gro.segments.load(Ordering::Relaxed),
        }
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

/// Which way copied bytes were going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a VF to the underlay.
    Egress,
    /// From the underlay to a VF.
    Ingress,
}

/// Bytes the data plane copied in user space, by direction: every `memcpy` of frame
/// bytes (headers and payload) the stages make, not the kernel's own copies into and
/// out of its sockets. Divided by the bytes carried, it gives copies per byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Copies {
    /// Bytes copied on the way from VFs to the underlay.
    pub egress: u64,
    /// Bytes copied on the way from the underlay to VFs.
    pub ingress: u64,
}

#[derive(Debug, Default)]
struct CopyCounts {
    egress: AtomicU64,
    ingress: AtomicU64,
}

/// Receive coalescing (GRO) on the socket underlay: TCP segments from the underlay
/// delivered to VFs as super-frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gro {
    /// Super-frames built.
    pub frames: u64,
    /// Datagrams (segments) they were built from.
    pub segments: u64,
}

#[derive(Debug, Default)]
struct GroCounts {
    frames: AtomicU64,
    segments: AtomicU64,
}
