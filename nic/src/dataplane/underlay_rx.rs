//! The receive half of the io_uring UDP underlay: a multishot receive (with `UDP_GRO`)
//! on the tunnel's port; see the module docs of `underlay` for the whole picture.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use pipewright_runtime::uring::{Received, UdpConfig, UdpRing};
use pipewright_runtime::{AsyncSource, Outbox, SourceState, WorkerLocal};

use super::activity::Activity;
use super::underlay::UnderlayConfig;
use super::Stop;
use crate::offload::gro;
use crate::pipeline::{Direction, NicStats};
use crate::tunnel::{inner_offset, DecapConfig};
use crate::wire::{ethertype, ip_proto, Ipv4Packet, UdpPacket};
use crate::{Frame, FramePool};

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
        // Datagrams and bytes received, for the busy-poll's sparse-traffic test.
        let seen = std::cell::Cell::new((0usize, 0usize));
        let on_buffer = |r: Received<'_>| {
            let mut copied = 0;
            let datagrams: Vec<&[u8]> = r.datagrams().collect();
            let (n, bytes) = seen.get();
            seen.set((
                n + datagrams.len(),
                bytes + datagrams.iter().map(|d| d.len()).sum::<usize>(),
            ));
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
                let (datagrams, bytes) = seen.get();
                activity.saw_packets(datagrams, bytes);
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
    use crate::dataplane::underlay::outer_dst;
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
}
