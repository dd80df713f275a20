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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pipewright_runtime::uring::{UdpConfig, UdpRing};
use pipewright_runtime::{AsyncStage, Burst, Failures, Outbox, WorkerLocal};

use super::xdp_underlay::UnderlayKind;
use crate::offload::SuperFrame;
use crate::pipeline::{Direction, NicStats};
use crate::port::{tunnel_header, TunnelGsoTap};
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
    /// Hand TSO super-frames to the kernel whole, as UDP-tunnel GSO packets (Linux
    /// 6.17+; default false): every encapsulated frame is written to a TAP device
    /// created for it (`TUN_F_UDP_TUNNEL_GSO`, a virtio-net header with the outer and
    /// inner offsets), which the kernel forwards to the underlay interface as one skb;
    /// a kernel VXLAN peer then decapsulates a 64 KB super-frame once instead of
    /// every 1.5 KB datagram. Turns on IPv4 forwarding in the data plane's namespace
    /// (and `accept_local` on the TAP: the frames come from the local address).
    /// IPv4 outer headers only (others take the sockets). UDP underlay only.
    pub tunnel_gso: bool,
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
            tunnel_gso: false,
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
    tunnel: Option<TunnelTx>,
}

/// The tunnel-GSO TAP of an underlay ([`UnderlayConfig::tunnel_gso`]).
#[derive(Debug)]
struct TunnelTx {
    tap: TunnelGsoTap,
    mac: [u8; 6],
    head: Vec<u8>,
    frames: Arc<AtomicU64>,
}

/// Creates the tunnel-GSO TAP in the calling thread's namespace, brings it up and
/// lets the kernel forward what it receives to the underlay.
fn open_tunnel_tap(frames: Arc<AtomicU64>) -> std::io::Result<TunnelTx> {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "pwtg{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed) % 100
    );
    let tap = TunnelGsoTap::create(&name).map_err(std::io::Error::other)?;
    let netlink = crate::host::Netlink::open_here().map_err(std::io::Error::other)?;
    let link = netlink.link(&name).map_err(std::io::Error::other)?;
    netlink
        .set_link(link.index, None, None, true)
        .map_err(std::io::Error::other)?;
    let sysctl = |path: &str, value: &str| {
        std::fs::write(format!("/proc/sys/net/ipv4/{path}"), value).map_err(|e| {
            std::io::Error::new(e.kind(), format!("set net.ipv4.{path} = {value}: {e}"))
        })
    };
    sysctl("ip_forward", "1")?;
    sysctl(&format!("conf/{name}/accept_local"), "1")?;
    sysctl(&format!("conf/{name}/rp_filter"), "0")?;
    let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or_default();
    if all.trim() != "0" {
        return Err(std::io::Error::other(format!(
            "net.ipv4.conf.all.rp_filter is {} in the data plane's namespace: the kernel would drop the tunnel-GSO TAP's frames (their source is local); set it to 0 or turn tunnel_gso off",
            all.trim()
        )));
    }
    tracing::info!(target: "pipewright", tap = tap.name(), "tunnel GSO underlay transmit");
    Ok(TunnelTx {
        tap,
        mac: link.mac.0,
        head: Vec::with_capacity(256),
        frames,
    })
}

impl TunnelTx {
    /// Writes `frame` to the TAP: Ok(true) written, Ok(false) not for this path (the
    /// sockets take it), Err the kernel refused it.
    fn send(&mut self, frame: &Frame) -> std::io::Result<bool> {
        self.head.clear();
        let data = frame.data();
        let gso = frame.meta.gso.filter(|_| frame.meta.outer_len > 0);
        let used = match tunnel_header(
            data,
            usize::from(frame.meta.outer_len),
            gso,
            frame.meta.csum.is_some(),
            self.mac,
            &mut self.head,
        ) {
            Ok(used) => used,
            Err(why) => {
                // Not an error: the sockets send it (an IPv6 outer header, ...).
                metrics::counter!("pipewright_nic_tunnel_gso_fallback_total", "reason" => why.as_str())
                    .increment(1);
                return Ok(false);
            }
        };
        self.tap.write(&self.head, &data[used..])?;
        self.frames.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pipewright_nic_tunnel_gso_frames_total").increment(1);
        Ok(true)
    }
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
        tunnel_frames: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let sockets = (0..config.tx_sockets.max(1))
            .map(|_| UdpSocket::bind(SocketAddr::new(config.local, 0)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let tunnel = if config.tunnel_gso {
            Some(open_tunnel_tap(tunnel_frames)?)
        } else {
            None
        };
        Ok(Self {
            tunnel,
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
            if let Some(tunnel) = &mut self.tunnel {
                match tunnel.send(&frame) {
                    Ok(true) => {
                        used.push(frame);
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        failures.push(e);
                        used.push(frame);
                        continue;
                    }
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
