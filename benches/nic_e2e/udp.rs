//! `udp-64B-pps`: a `sendmmsg` generator in the guest namespace, delivered packets
//! counted at the remote's kernel vxlan device.
//!
//! Each generator thread owns one UDP socket (its own source port) and sends batches
//! of [`BATCH`] datagrams of [`PAYLOAD`] bytes, round-robin over [`FLOWS`] destination
//! ports, as fast as the kernel takes them (veth has no qdisc: what the path cannot
//! take is dropped at the VF end, not queued). The remote binds a socket on every
//! destination port (so no ICMP port-unreachable flows back) but does not read them:
//! a packet counts as delivered when the remote's vxlan device has decapsulated it
//! and handed it to the IP stack (`rx_packets` of `vx<VNI>`); the UDP layer's
//! `InDatagrams + RcvbufErrors` is shown next to it as a cross-check.
// sendmmsg(2) with its message headers: no safe wrapper keeps the batch allocation-free.
#![allow(unsafe_code)]

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pipewright_nic::dataplane::RunningDataPlane;

use crate::probe::{dev_rx_packets, udp_snmp, Sample};
use crate::topo::Path;

/// UDP payload bytes (inner frame 106 bytes, 156 on the underlay).
pub const PAYLOAD: usize = 64;
/// Datagrams per `sendmmsg`.
const BATCH: usize = 64;
/// Destination ports per generator thread (flows = threads x FLOWS).
const FLOWS: u16 = 4;
const BASE_PORT: u16 = 9000;

/// The generator threads; stopped and joined on drop.
pub struct Generator {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Generator {
    pub fn start(path: &Path<'_>, threads: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for t in 0..threads {
            let ip = path.guest_ip;
            let sock = path.guest.run(move || UdpSocket::bind((ip, 0)))??;
            let (stop, sent, dst) = (stop.clone(), sent.clone(), path.remote_ip);
            let h = std::thread::Builder::new()
                .name(format!("nic_e2e-gen{t}"))
                .spawn(move || send_loop(&sock, dst, &stop, &sent))
                .context("spawn a generator thread")?;
            handles.push(h);
        }
        Ok(Self {
            stop,
            sent,
            threads: handles,
        })
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

fn send_loop(sock: &UdpSocket, dst: Ipv4Addr, stop: &AtomicBool, sent: &AtomicU64) {
    let payload = [0x5au8; PAYLOAD];
    let addrs: Vec<libc::sockaddr_in> = (0..FLOWS)
        .map(|f| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: (BASE_PORT + f).to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        })
        .collect();
    let mut iovs = [libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD,
    }; BATCH];
    // SAFETY: an all-zero mmsghdr is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (i, (m, iov)) in msgs.iter_mut().zip(iovs.iter_mut()).enumerate() {
        m.msg_hdr.msg_name = &addrs[i % addrs.len()] as *const _ as *mut libc::c_void;
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let fd = sock.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: every header points at live addresses, iovecs and the payload.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, 0) };
        if n > 0 {
            sent.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            // ENOBUFS and the like: the path is saturated; let it drain.
            std::thread::yield_now();
        }
    }
}

/// Delivered packets per second over `window` after `warmup`, with one analysis line
/// (and the data plane's stage table when `plane` is given) returned for stderr.
pub fn measure(
    path: &Path<'_>,
    plane: Option<&RunningDataPlane>,
    threads: usize,
    warmup: Duration,
    window: Duration,
) -> Result<(f64, String)> {
    let mut sinks = Vec::new();
    for f in 0..FLOWS {
        let ip = path.remote_ip;
        sinks.push(
            path.remote
                .run(move || UdpSocket::bind((ip, BASE_PORT + f)))??,
        );
    }
    let generator = Generator::start(path, threads)?;
    std::thread::sleep(warmup);
    let t0 = Instant::now();
    let (c0, u0, g0) = (
        dev_rx_packets(path.remote, path.remote_vx)?,
        udp_snmp(path.remote)?,
        generator.sent(),
    );
    let s0 = Sample::take(plane);
    std::thread::sleep(window);
    let s1 = Sample::take(plane);
    let secs = t0.elapsed().as_secs_f64();
    let (c1, u1, g1) = (
        dev_rx_packets(path.remote, path.remote_vx)?,
        udp_snmp(path.remote)?,
        generator.sent(),
    );
    drop(generator);
    drop(sinks);
    let delivered = c1 - c0;
    let udp = |m: &std::collections::BTreeMap<String, u64>| {
        m.get("InDatagrams").unwrap_or(&0) + m.get("RcvbufErrors").unwrap_or(&0)
    };
    let mut detail = format!(
        "delivered {:.0} pps, offered {:.0} pps (generator {threads} thr), remote UDP layer {:.0}/s; {}",
        delivered as f64 / secs,
        (g1 - g0) as f64 / secs,
        // Every packet is counted twice there: the outer datagram to 4789, then the inner.
        (udp(&u1) - udp(&u0)) as f64 / 2.0 / secs,
        s0.cpu_line(&s1, delivered),
    );
    if plane.is_some() {
        detail += "\n";
        detail += &s0.stage_table(&s1);
    }
    Ok((delivered as f64 / secs, detail))
}
