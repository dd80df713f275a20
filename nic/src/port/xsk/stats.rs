//! Counters of the AF_XDP port beyond [`PortCounters`](crate::port::PortCounters).

/// Port-specific counters on top of [`PortCounters`](crate::port::PortCounters) (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskCounters {
    /// `send_burst` calls that stopped early because the TX ring was full.
    pub tx_ring_full: u64,
    /// `send_burst` calls that stopped early because every UMEM frame was in flight.
    pub tx_no_frame: u64,
    /// Refills that left fill-ring slots empty for want of free UMEM frames.
    pub fill_ring_empty: u64,
    /// Received frames dropped for exceeding [`AfXdpPort::max_frame`](super::AfXdpPort::max_frame).
    pub rx_too_large: u64,
    /// Frames refused by `send_burst` for exceeding [`AfXdpPort::max_frame`](super::AfXdpPort::max_frame).
    pub tx_too_large: u64,
    /// RX descriptors pointing outside the UMEM or chained too long (dropped).
    pub rx_bad_desc: u64,
    /// `sendto` kicks issued to make the kernel process the TX ring.
    pub tx_kicks: u64,
    /// Kicks answered `EBUSY`: the device dropped a frame (also counted in `dropped`).
    pub tx_device_drops: u64,
    /// `recvfrom` wake-ups of the kernel's RX path (fill ring flagged need-wakeup).
    pub rx_wakeups: u64,
}

/// The kernel's view of the socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskKernelStats {
    /// Frames dropped for reasons other than the two below (e.g. larger than a UMEM
    /// frame without multi-buffer).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring had no buffer for an arriving frame.
    pub rx_fill_ring_empty: u64,
    /// Invalid RX descriptors.
    pub rx_invalid_descs: u64,
    /// Invalid TX descriptors (rejected by the kernel).
    pub tx_invalid_descs: u64,
    /// Times the kernel found the TX ring empty when asked to send.
    pub tx_ring_empty: u64,
}
