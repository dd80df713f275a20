//! The underlay on io_uring UDP sockets.
//!
//! Transmit: egress emits whole outer frames (Ethernet, IP, UDP, tunnel header, inner
//! frame). The sink sends each frame's UDP payload from a small pool of sockets, picked
//! by the frame's outer UDP source port (the flow's entropy), so one flow stays on one
//! socket and its order is kept. Runs of frames of one flow with one payload size (a
//! guest's stream of equal datagrams) go out as one GSO send. A TSO super-frame kept
//! whole (one outer header) goes out as GSO runs without a payload copy: a vectored
//! send whose per-segment headers sit in a small buffer and whose payload slices point
//! into the frame.
//!
//! Receive: a multishot receive (with `UDP_GRO`) on the tunnel's port. The kernel has
//! already checked the outer IP and UDP headers; the source writes an outer header in
//! front of each datagram again so that one decapsulation path (`parse_outer`) serves
//! both this socket underlay and raw-frame underlays. A GRO buffer's consecutive
//! segments of one inner TCP flow (checksums verified) are coalesced into one TSO
//! super-frame (`offload::gro`), which a TAP VF takes whole with a virtio-net GSO header; the
//! kernel fills GRO buffers when the underlay interface has GRO on (a NIC's default;
//! on a veth, `ethtool -K <if> gro on`).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use pipewright_runtime::uring::{Received, UdpConfig, UdpRing};
use pipewright_runtime::{
    AsyncSource, AsyncStage, Burst, Failures, Outbox, SourceState, WorkerLocal,
};

use super::activity::Activity;
use super::xdp_underlay::UnderlayKind;
use super::Stop;
use crate::offload::{gro, SuperFrame};
use crate::pipeline::{Direction, NicStats};
use crate::tunnel::{inner_offset, DecapConfig};
use crate::wire::{ethertype, ip_proto, Ipv4Packet, Ipv6Packet, UdpPacket};
use crate::{Frame, FramePool};

/// Most datagrams the kernel accepts in one GSO send.
const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send (a UDP datagram's limit, less headers).
const MAX_GSO_BYTES: usize = 65_000;

/// Where an outer frame goes: its destination and the UDP payload's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OuterDst {
    pub(crate) to: SocketAddr,
    pub(crate) src_port: u16,
    pub(crate) payload_off: usize,
    pub(crate) payload_len: usize,
}

/// Reads the destination of an encapsulated frame (Ethernet + IPv4/IPv6 + UDP).
pub(crate) fn outer_dst(data: &[u8]) -> Option<OuterDst> {
    let (to, src_port, payload_off, udp_len) = outer_addr(data)?;
    let len = usize::from(udp_len).checked_sub(8)?;
    if payload_off + len > data.len() {
        return None;
    }
    Some(OuterDst {
        to,
        src_port,
        payload_off,
        payload_len: len,
    })
}

/// The destination, UDP source port, UDP payload offset and UDP length field of an
/// encapsulated frame, the length unchecked (a super-frame's describes one segment).
fn outer_addr(data: &[u8]) -> Option<(SocketAddr, u16, usize, u16)> {
    let ethertype = u16::from_be_bytes([*data.get(12)?, *data.get(13)?]);
    let (ip, udp_off) = match ethertype {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(data.get(14..)?).ok()?;
            if ip.protocol() != ip_proto::UDP {
                return None;
            }
            (IpAddr::V4(ip.dst_addr()), 14 + ip.header_len())
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(data.get(14..)?).ok()?;
            if ip.next_header() != ip_proto::UDP {
                return None;
            }
            (IpAddr::V6(ip.dst_addr()), 14 + 40)
        }
        _ => return None,
    };
    let udp = UdpPacket::new_checked(data.get(udp_off..)?).ok()?;
    Some((
        SocketAddr::new(ip, udp.dst_port()),
        udp.src_port(),
        udp_off + 8,
        udp.len(),
    ))
}

/// Configuration of the underlay.
#[derive(Debug, Clone)]
pub struct UnderlayConfig {
    /// The data plane's underlay address (sockets bind to it).
    pub local: IpAddr,
    /// Sending sockets (flows are spread over them by source port).
    pub tx_sockets: usize,
    /// Provided buffers per receiving socket.
    pub rx_buffers: u16,
    /// Bytes per receive buffer (GRO coalesces up to 64 KiB into one).
    pub rx_buffer_size: usize,
    /// Coalesce received datagrams (UDP GRO).
    pub gro: bool,
    /// Send runs of equal datagrams with UDP GSO.
    pub gso: bool,
    /// Kernel receive buffer of each receiving socket, in bytes (`SO_RCVBUF`; with
    /// `CAP_NET_ADMIN` past `net.core.rmem_max`). The kernel's default (about 200 KiB)
    /// overflows, and the kernel drops datagrams unseen by the data plane, as soon as
    /// a peer sends a few GSO runs while the receive worker is busy.
    pub rx_socket_buffer: usize,
    /// io_uring UDP sockets (default) or an AF_XDP socket on the underlay interface;
    /// see [`UnderlayKind`] for when to choose which. The socket sizing fields above
    /// apply to the UDP underlay only.
    pub kind: UnderlayKind,
}

impl UnderlayConfig {
    /// Defaults for an underlay address.
    pub fn new(local: IpAddr) -> Self {
        Self {
            local,
            tx_sockets: 4,
            rx_buffers: 256,
            rx_buffer_size: 65_536,
            gro: true,
            gso: true,
            rx_socket_buffer: 4 << 20,
            kind: UnderlayKind::Udp,
        }
    }
}

/// Sends encapsulated frames; see the module docs.
pub struct UnderlayTx {
    config: UnderlayConfig,
    sockets: Vec<UdpSocket>,
    rings: WorkerLocal<Vec<UdpRing>>,
    pool: Arc<FramePool>,
    stats: NicStats,
    spare: Vec<Vec<u8>>,
}

impl std::fmt::Debug for UnderlayTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnderlayTx")
            .field("local", &self.config.local)
            .field("sockets", &self.config.tx_sockets)
            .finish()
    }
}

impl UnderlayTx {
    /// Binds the sending sockets now (so a bad address fails at setup); their rings
    /// are created on the worker that runs the stage.
    pub(crate) fn bind(
        config: UnderlayConfig,
        pool: Arc<FramePool>,
        stats: NicStats,
    ) -> std::io::Result<Self> {
        let sockets = (0..config.tx_sockets.max(1))
            .map(|_| UdpSocket::bind(SocketAddr::new(config.local, 0)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            config,
            sockets,
            rings: WorkerLocal::new(),
            pool,
            stats,
            spare: Vec::new(),
        })
    }

    fn rings(&mut self) -> std::io::Result<&[UdpRing]> {
        let sockets = &mut self.sockets;
        let rings = self.rings.get_or_try_init(|| {
            // Sending sockets receive nothing of interest: one small buffer each.
            let config = UdpConfig {
                buffers: 1,
                buffer_size: 2048,
                gro: false,
            };
            sockets
                .drain(..)
                .map(|s| UdpRing::new(s, config))
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        Ok(rings)
    }
}

impl UnderlayTx {
    /// Adds the sends of an encapsulated super-frame (`meta.outer_len` bytes of outer
    /// header in front of a TSO/USO frame): GSO runs of its segments, each segment's
    /// headers (the tunnel header, then its patched inner headers) written into a
    /// small buffer and its payload a slice of the frame itself — no payload copy on
    /// egress. The frame is shared by the run's sends until the kernel is done.
    fn push_super(
        &mut self,
        frame: Frame,
        gso: crate::Gso,
        sends: &mut Vec<Send>,
        open: &mut [Option<usize>],
    ) -> Result<(), (&'static str, Frame)> {
        let data = frame.data();
        let outer = usize::from(frame.meta.outer_len);
        let Some((to, src_port, payload_off, _)) = outer_addr(data) else {
            return Err(("not-encapsulated", frame));
        };
        if payload_off > outer || outer > data.len() {
            return Err(("not-encapsulated", frame));
        }
        let (prefix, inner) = data[payload_off..].split_at(outer - payload_off);
        let cut = match SuperFrame::parse(inner, gso) {
            Ok(cut) => cut,
            Err(e) => return Err((e.reason(), frame)),
        };
        let stride = prefix.len() + cut.hdr_len + cut.size;
        let Ok(segment) = u16::try_from(stride) else {
            return Err(("segment-too-large", frame));
        };
        let per_send = (MAX_GSO_BYTES / stride).clamp(1, MAX_GSO_SEGMENTS);
        let socket = usize::from(src_port) % open.len();
        let count = cut.count();
        let mut copied = 0;
        let mut runs = Vec::new();
        let mut i = 0;
        while i < count {
            let n = per_send.min(count - i);
            let mut headers = self.spare.pop().unwrap_or_default();
            headers.clear();
            let mut slices = Vec::with_capacity(2 * n);
            for k in i..i + n {
                let at = headers.len();
                headers.extend_from_slice(prefix);
                let payload = cut.append_headers(inner, k, &mut headers);
                slices.push((0, at..headers.len()));
                slices.push((1, outer + payload.start..outer + payload.end));
            }
            copied += headers.len();
            runs.push((headers, slices, n));
            i += n;
        }
        let frame = Arc::new(frame);
        for (headers, slices, n) in runs {
            sends.push(Send {
                to,
                socket,
                payload: headers,
                segment: Some(segment),
                datagrams: n,
                frame: Some((frame.clone(), slices)),
            });
        }
        // The socket's runs end here: what follows starts a new one.
        open[socket] = None;
        // Only the headers were copied.
        self.stats.count_copy(Direction::Egress, copied);
        Ok(())
    }
}

/// One send: a destination, a socket, the payload (one datagram or a GSO run).
struct Send {
    to: SocketAddr,
    socket: usize,
    /// The datagrams; for a vectored send, the headers its slices point into.
    payload: Vec<u8>,
    segment: Option<u16>,
    datagrams: usize,
    /// A vectored send: the super-frame its payload slices point into, and the slices
    /// (part 0: `payload`, part 1: the frame's data).
    frame: Option<(Arc<Frame>, Slices)>,
}

/// The slices of a vectored send: (part, byte range of that part).
type Slices = Vec<(usize, std::ops::Range<usize>)>;

/// A part of a vectored send: a buffer of headers, or a super-frame's data.
enum Part {
    Bytes(Vec<u8>),
    Frame(Arc<Frame>),
}

impl AsRef<[u8]> for Part {
    fn as_ref(&self) -> &[u8] {
        match self {
            Part::Bytes(b) => b,
            Part::Frame(f) => f.data(),
        }
    }
}

// The data plane's own ports: not listed among the framework trait's implementors.
#[doc(hidden)]
impl AsyncStage for UnderlayTx {
    type In = Frame;
    type Out = ();
    type Error = std::io::Error;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Frame>,
        _out: &mut Outbox<'_, ()>,
        failures: &mut Failures<'_, std::io::Error>,
    ) {
        let sockets = self.config.tx_sockets.max(1);
        let gso = self.config.gso;
        let mut sends: Vec<Send> = Vec::new();
        // Each socket's latest send: the GSO run its next datagram may extend. Frames
        // of one flow always use one socket, and a socket's sends go to the kernel in
        // order, so extending the socket's latest send keeps every flow's order while
        // flows interleaved in the burst still form runs.
        let mut open: Vec<Option<usize>> = vec![None; sockets];
        let mut used = Vec::new();
        let mut copied = 0;
        while let Some(frame) = burst.pop() {
            if let (Some(gso), 1..) = (frame.meta.gso, frame.meta.outer_len) {
                if let Err((reason, frame)) = self.push_super(frame, gso, &mut sends, &mut open) {
                    self.stats.drop_frame("underlay-tx", reason);
                    used.push(frame);
                }
                continue;
            }
            let Some(dst) = outer_dst(frame.data()) else {
                self.stats.drop_frame("underlay-tx", "not-encapsulated");
                used.push(frame);
                continue;
            };
            let payload = &frame.data()[dst.payload_off..dst.payload_off + dst.payload_len];
            copied += payload.len();
            let socket = usize::from(dst.src_port) % sockets;
            // Extend the socket's latest send when this datagram continues its GSO run:
            // same destination, same size as its segments (the last may be shorter, and
            // then closes the run).
            let extend = gso
                && open[socket].map(|i| &sends[i]).is_some_and(|s| {
                    let seg = s.segment.map_or(s.payload.len(), usize::from);
                    s.to == dst.to
                        && s.socket == socket
                        && s.payload.len() % seg == 0
                        && payload.len() <= seg
                        && s.datagrams < MAX_GSO_SEGMENTS
                        && s.payload.len() + payload.len() <= MAX_GSO_BYTES
                });
            if extend {
                let s = &mut sends[open[socket].expect("checked")];
                if s.segment.is_none() {
                    s.segment = Some(s.payload.len() as u16);
                }
                s.payload.extend_from_slice(payload);
                s.datagrams += 1;
            } else {
                let mut buf = self.spare.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(payload);
                sends.push(Send {
                    to: dst.to,
                    socket,
                    payload: buf,
                    segment: None,
                    datagrams: 1,
                    frame: None,
                });
                open[socket] = Some(sends.len() - 1);
            }
            used.push(frame);
        }
        self.stats.count_copy(Direction::Egress, copied);
        self.pool.give_back(used);
        let rings = match self.rings() {
            Ok(r) => r,
            Err(e) => {
                for _ in &sends {
                    failures.push(std::io::Error::new(e.kind(), e.to_string()));
                }
                return;
            }
        };
        let held: Vec<Arc<Frame>> = sends
            .iter()
            .filter_map(|s| s.frame.as_ref().map(|(f, _)| f.clone()))
            .collect();
        let pending = sends.into_iter().map(|s| {
            let ring = &rings[s.socket];
            async move {
                // A run of one is a plain datagram (GSO of one segment is refused by
                // some kernels for sizes above the MTU).
                let segment = s.segment.filter(|_| s.datagrams > 1);
                match s.frame {
                    None => {
                        let (result, buf) = ring.send(s.to, s.payload, segment).await;
                        (result, Some(buf), s.datagrams)
                    }
                    Some((frame, slices)) => {
                        let parts = vec![Part::Bytes(s.payload), Part::Frame(frame)];
                        let (result, mut parts) =
                            ring.send_vectored(s.to, parts, &slices, segment).await;
                        parts.truncate(1);
                        let buf = match parts.pop() {
                            Some(Part::Bytes(b)) => Some(b),
                            _ => None,
                        };
                        (result, buf, s.datagrams)
                    }
                }
            }
        });
        for (result, buf, datagrams) in futures::future::join_all(pending).await {
            if let Err(e) = result {
                for _ in 0..datagrams {
                    failures.push(std::io::Error::new(e.kind(), e.to_string()));
                }
            }
            if let Some(buf) = buf.filter(|_| self.spare.len() < 256) {
                self.spare.push(buf);
            }
        }
        // Every send is done: the super-frames' buffers go back to the pool (a frame
        // shared by several sends is held here once per send; its last one unwraps).
        self.pool
            .give_back(held.into_iter().filter_map(|f| Arc::try_unwrap(f).ok()));
    }
}

/// Receives tunnelled datagrams on one port; see the module docs.
pub struct UnderlayRx {
    socket: Option<UdpSocket>,
    ring: WorkerLocal<UdpRing>,
    config: UnderlayConfig,
    local: SocketAddr,
    pool: Arc<FramePool>,
    stats: NicStats,
    stop: Stop,
    activity: Activity,
    /// Which tunnel each port carries: GRO needs each datagram's tunnel header length.
    decap: DecapConfig,
}

impl std::fmt::Debug for UnderlayRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnderlayRx")
            .field("local", &self.local)
            .finish()
    }
}

impl UnderlayRx {
    /// Binds the tunnel port now (a port in use fails at setup).
    pub(crate) fn bind(
        config: UnderlayConfig,
        port: u16,
        pool: Arc<FramePool>,
        stats: NicStats,
        stop: Stop,
        activity: Activity,
        decap: DecapConfig,
    ) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(config.local, port))?;
        set_rcvbuf(&socket, config.rx_socket_buffer)?;
        let local = socket.local_addr()?;
        Ok(Self {
            socket: Some(socket),
            ring: WorkerLocal::new(),
            config,
            local,
            pool,
            stats,
            stop,
            activity,
            decap,
        })
    }
}

/// Sets the kernel receive buffer of `socket` to `bytes`: `SO_RCVBUFFORCE` (not capped
/// by `net.core.rmem_max`, needs `CAP_NET_ADMIN`), else `SO_RCVBUF` (capped).
fn set_rcvbuf(socket: &UdpSocket, bytes: usize) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::RcvBufForce, &bytes)
        .or_else(|_| setsockopt(socket, sockopt::RcvBuf, &bytes))
        .map_err(std::io::Error::from)
}

/// Writes Ethernet + IP + UDP headers for a datagram from `from` to `local` in front
/// of `payload`, into `frame`.
#[cfg(test)]
fn rebuild_outer(frame: &mut Frame, from: SocketAddr, local: SocketAddr, payload: &[u8]) -> bool {
    rebuild_outer_parts(frame, from, local, &[payload])
}

/// Writes Ethernet + IP + UDP headers for a datagram from `from` to `local` in front
/// of a payload that is the concatenation of `parts`, into `frame`.
fn rebuild_outer_parts(
    frame: &mut Frame,
    from: SocketAddr,
    local: SocketAddr,
    parts: &[&[u8]],
) -> bool {
    let payload_len: usize = parts.iter().map(|p| p.len()).sum();
    let udp_len = 8 + payload_len;
    let Ok(udp_len16) = u16::try_from(udp_len) else {
        return false;
    };
    let (l3_len, ethertype) = match from {
        SocketAddr::V4(_) => (20, ethertype::IPV4),
        SocketAddr::V6(_) => (40, ethertype::IPV6),
    };
    let total = 14 + l3_len + udp_len;
    let Some(buf) = frame.try_push_back(total) else {
        return false;
    };
    buf[..12].fill(0);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
    let udp_at = 14 + l3_len;
    buf[udp_at..udp_at + 2].copy_from_slice(&from.port().to_be_bytes());
    buf[udp_at + 2..udp_at + 4].copy_from_slice(&local.port().to_be_bytes());
    buf[udp_at + 4..udp_at + 6].copy_from_slice(&udp_len16.to_be_bytes());
    buf[udp_at + 6..udp_at + 8].fill(0);
    let mut at = udp_at + 8;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    match (from.ip(), local.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let ip = &mut buf[14..34];
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            ip[4..8].fill(0);
            ip[8] = 64;
            ip[9] = ip_proto::UDP;
            ip[10..12].fill(0);
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let Ok(mut packet) = Ipv4Packet::new_checked(&mut buf[14..]) else {
                return false;
            };
            packet.fill_checksum();
            // UDP checksum 0 over IPv4: "not computed"; the kernel verified it.
            true
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let ip = &mut buf[14..54];
            ip[0] = 0x60;
            ip[1..4].fill(0);
            ip[4..6].copy_from_slice(&udp_len16.to_be_bytes());
            ip[6] = ip_proto::UDP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            let Ok(mut udp) = UdpPacket::new_checked(&mut buf[54..]) else {
                return false;
            };
            udp.fill_checksum_v6(src, dst);
            true
        }
        _ => false,
    }
}

// The data plane's own ports: not listed among the framework trait's implementors.
#[doc(hidden)]
impl AsyncSource for UnderlayRx {
    type Out = Frame;

    async fn pull(&mut self, out: &mut Outbox<'_, Frame>, _max: usize) -> SourceState {
        let config = UdpConfig {
            buffers: self.config.rx_buffers,
            buffer_size: self.config.rx_buffer_size,
            gro: self.config.gro,
        };
        let socket = &mut self.socket;
        let ring = match self.ring.get_or_try_init(|| match socket.take() {
            Some(s) => UdpRing::new(s, config),
            None => Err(std::io::Error::other("the underlay socket is gone")),
        }) {
            Ok(ring) => ring,
            Err(error) => {
                tracing::error!(target: "pipewright", %error, local = %self.local, "cannot start the underlay receive");
                self.stats.drop_frame("underlay-rx", "socket-setup");
                return SourceState::Exhausted;
            }
        };
        let (pool, stats, local, decap) = (&self.pool, &self.stats, self.local, &self.decap);
        let gro = self.config.gro;
        let on_buffer = |r: Received<'_>| {
            let mut copied = 0;
            let datagrams: Vec<&[u8]> = r.datagrams().collect();
            // Runs of one TCP flow's segments become one super-frame (GRO); the rest
            // one frame per datagram.
            let runs = if gro && datagrams.len() > 1 {
                gro::plan_runs(&datagrams, |d| inner_offset(decap, local.port(), d))
            } else {
                (0..datagrams.len()).map(gro::Run::single).collect()
            };
            for gro::Run { range: run, merge } in runs {
                let Some((first, last_flags)) = merge else {
                    let datagram = datagrams[run.start];
                    let mut frame = pool.take_one();
                    if rebuild_outer_parts(&mut frame, r.from, local, &[datagram]) {
                        copied += datagram.len();
                        out.push(frame);
                    } else {
                        stats.drop_frame("underlay-rx", "too-large");
                        pool.give_back([frame]);
                    }
                    continue;
                };
                let mut parts = Vec::with_capacity(run.len());
                parts.push(datagrams[run.start]);
                parts.extend(
                    datagrams[run.start + 1..run.end]
                        .iter()
                        .map(|d| &d[first.data_off..]),
                );
                let mut frame = pool.take_large();
                if !rebuild_outer_parts(&mut frame, r.from, local, &parts) {
                    stats.drop_frame("underlay-rx", "too-large");
                    pool.give_back([frame]);
                    continue;
                }
                let payload_len = parts.iter().map(|p| p.len()).sum::<usize>();
                copied += payload_len;
                let at = frame.len() - payload_len;
                gro::finish_merged(&mut frame.data_mut()[at..], &first, last_flags);
                if let (IpAddr::V6(src), IpAddr::V6(dst)) = (r.from.ip(), local.ip()) {
                    // The outer checksum covered the headers before they were fixed.
                    if let Ok(mut udp) = UdpPacket::new_checked(&mut frame.data_mut()[54..]) {
                        udp.fill_checksum_v6(src, dst);
                    }
                }
                frame.meta.gso = Some(first.gso());
                stats.count_gro(run.len());
                out.push(frame);
            }
            stats.count_copy(Direction::Ingress, copied);
        };
        let recv = ring.recv_burst(on_buffer);
        let mut recv = std::pin::pin!(recv);
        let (stop, activity) = (&self.stop, &self.activity);
        let received = loop {
            if activity.hot() {
                // Busy-poll: each poll reaps the ring's completion queue directly.
                if let std::task::Poll::Ready(r) = futures::poll!(recv.as_mut()) {
                    break r;
                }
                if stop.is_stopped() {
                    return SourceState::Exhausted;
                }
                activity.pause().await;
                continue;
            }
            tokio::select! {
                received = recv.as_mut() => break received,
                () = stop.wait() => return SourceState::Exhausted,
                () = activity.woken() => continue,
            }
        };
        match received {
            Ok(_) => {
                activity.saw_packets();
                SourceState::Ready
            }
            Err(error) => {
                tracing::error!(target: "pipewright", %error, "underlay receive stopped");
                SourceState::Exhausted
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::parse_outer;

    #[test]
    fn rebuilt_outer_headers_parse_as_the_datagram_arrived() {
        // A VXLAN header (VNI 100) and a minimal inner Ethernet frame.
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 100, 0];
        payload.extend([0xaa; 6]);
        payload.extend([0xbb; 6]);
        payload.extend([0x08, 0x00]);
        payload.extend([0u8; 46]);
        let from: SocketAddr = "192.168.77.2:54321".parse().unwrap();
        let local: SocketAddr = "192.168.77.1:4789".parse().unwrap();
        let pool = FramePool::new(128, 2048, 4);
        let mut frame = pool.take_one();
        assert!(rebuild_outer(&mut frame, from, local, &payload));
        let outer = parse_outer(frame.data(), &DecapConfig::default()).unwrap();
        assert_eq!(outer.key.vni, 100);
        assert_eq!(outer.key.outer_src, from.ip());
        assert_eq!(outer.key.outer_dst, local.ip());
        assert_eq!(outer.inner_len, payload.len() - 8);
        let dst = outer_dst(frame.data()).unwrap();
        assert_eq!(dst.to, local);
        assert_eq!(dst.src_port, 54321);
        assert_eq!(&frame.data()[dst.payload_off..], &payload[..]);
    }

    #[test]
    fn receive_sockets_get_the_configured_buffer() {
        let config = UnderlayConfig::new("127.0.0.1".parse().unwrap());
        let pool = Arc::new(FramePool::new(128, 2048, 4));
        let rx = UnderlayRx::bind(
            config.clone(),
            0,
            pool,
            NicStats::new(),
            Stop::default(),
            Activity::new(std::time::Duration::ZERO),
            DecapConfig::default(),
        )
        .unwrap();
        let socket = rx.socket.as_ref().unwrap();
        let got = nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::RcvBuf)
            .expect("getsockopt(SO_RCVBUF)");
        // The kernel doubles what it grants; without CAP_NET_ADMIN it grants at most
        // net.core.rmem_max (with it, all that was asked).
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let granted = config.rx_socket_buffer.min(max);
        assert!(
            got >= 2 * granted,
            "SO_RCVBUF {got}, want at least 2 x {granted}"
        );
    }

    #[test]
    fn garbage_has_no_outer_destination() {
        assert_eq!(outer_dst(&[]), None);
        assert_eq!(outer_dst(&[0xff; 60]), None);
        let mut truncated = vec![0u8; 12];
        truncated.extend(ethertype::IPV4.to_be_bytes());
        truncated.extend([0x45, 0, 0, 200]);
        assert_eq!(outer_dst(&truncated), None);
    }
}
