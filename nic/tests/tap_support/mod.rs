//! Shared by the TAP port tests: a guest namespace on a TAP, waiting for frames,
//! and hand-built Ethernet/IPv4/UDP/TCP frames with full or partial checksums.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pipewright_nic::host::{Namespace, Netlink};
use pipewright_nic::port::{TapPort, VfPort};
use pipewright_nic::wire::{checksum, MacAddr};
use pipewright_nic::{Frame, FramePool, DEFAULT_HEADROOM};

pub(crate) const GUEST_MAC: MacAddr = MacAddr([0x02, 0x47, 0, 0, 0, 2]);
pub(crate) const PEER_MAC: MacAddr = MacAddr([0x02, 0x47, 0, 0, 0, 1]);
pub(crate) const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 75, 0, 2);
pub(crate) const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 75, 0, 1);
pub(crate) const VF: u16 = 3;

/// A guest: a namespace whose only NIC is the TAP `tap0` (10.75.0.2/24, MAC
/// GUEST_MAC, IPv6 off), with PEER_IP a permanent neighbour at PEER_MAC; and the
/// port on that TAP. Fields drop in order: the port, then the namespace.
pub(crate) struct Guest {
    pub(crate) port: TapPort,
    pub(crate) ns: Namespace,
}

pub(crate) fn guest(tag: &str) -> Guest {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "pwt{}{tag}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let ns = Namespace::create(&name).expect("create namespace");
    let port = ns
        .run(|| {
            for c in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{c}/disable_ipv6"), "1");
            }
            TapPort::create("tap0", VF)
        })
        .unwrap()
        .expect("create TAP");
    let nl = Netlink::open(&ns).unwrap();
    let tap = nl.link("tap0").unwrap();
    nl.set_link(tap.index, Some(1500), Some(GUEST_MAC), true)
        .unwrap();
    nl.add_addr(tap.index, "10.75.0.2/24".parse().unwrap())
        .unwrap();
    nl.add_neighbour(tap.index, PEER_IP, PEER_MAC).unwrap();
    let lo = nl.link("lo").unwrap();
    nl.set_link(lo.index, None, None, true).unwrap();
    Guest { port, ns }
}

pub(crate) fn pool() -> FramePool {
    FramePool::new(DEFAULT_HEADROOM, 2048, 256)
}

/// Waits on the port's rx fd (up to `ms`), then receives a burst.
pub(crate) fn recv(port: &mut TapPort, pool: &FramePool, out: &mut Vec<Frame>, ms: i32) -> usize {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    {
        let mut pfd = [PollFd::new(port.rx_fd(), PollFlags::POLLIN)];
        let _ = poll(
            &mut pfd,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
    }
    port.recv_burst(pool, out, 64).expect("recv_burst")
}

/// Receives until a frame matches `want`, for up to 5 s, calling `poke` between
/// waits (to make the guest send again).
pub(crate) fn recv_matching(
    port: &mut TapPort,
    pool: &FramePool,
    mut poke: impl FnMut(),
    want: impl Fn(&Frame) -> bool,
) -> Frame {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        poke();
        recv(port, pool, &mut got, 100);
        if let Some(i) = got.iter().position(&want) {
            return got.swap_remove(i);
        }
        got.clear();
    }
    panic!("no matching frame from the guest within 5 s");
}

pub(crate) fn ipv4_frame(
    dst: MacAddr,
    src: MacAddr,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    proto: u8,
    ident: u16,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend(dst.0);
    f.extend(src.0);
    f.extend([0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&sip.octets());
    ip[16..20].copy_from_slice(&dip.octets());
    let c = checksum::finish(checksum::sum(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    f.extend(l4);
    f
}

/// Fills the L4 checksum at `at` in `l4`: the full checksum, or (partial) only the
/// pseudo-header sum the way a guest leaves it for the device.
pub(crate) fn fill_l4_csum(
    l4: &mut [u8],
    at: usize,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    proto: u8,
    partial: bool,
) {
    l4[at..at + 2].fill(0);
    let pseudo = checksum::pseudo_v4(sip, dip, proto, l4.len() as u16);
    let c = if partial {
        checksum::fold(pseudo)
    } else {
        checksum::finish(checksum::combine(pseudo, checksum::sum(l4)))
    };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

pub(crate) fn udp_to_guest(payload: &[u8], partial: bool, sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(sport.to_be_bytes());
    l4.extend(dport.to_be_bytes());
    l4.extend(((8 + payload.len()) as u16).to_be_bytes());
    l4.extend([0, 0]);
    l4.extend(payload);
    fill_l4_csum(&mut l4, 6, PEER_IP, GUEST_IP, 17, partial);
    ipv4_frame(GUEST_MAC, PEER_MAC, PEER_IP, GUEST_IP, 17, 0x1234, &l4)
}

// TCP, for playing the peer by hand.

pub(crate) const PEER_ISN: u32 = 0x1000_0000;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const ACK: u8 = 0x10;
pub(crate) const PSH: u8 = 0x08;

pub(crate) fn tcp_to_guest(
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    opts: &[u8],
    payload: &[u8],
    partial: bool,
) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(5001u16.to_be_bytes());
    l4.extend(dport.to_be_bytes());
    l4.extend(seq.to_be_bytes());
    l4.extend(ack.to_be_bytes());
    l4.push((((20 + opts.len()) / 4) as u8) << 4);
    l4.push(flags);
    l4.extend(65535u16.to_be_bytes());
    l4.extend([0, 0, 0, 0]);
    l4.extend(opts);
    l4.extend(payload);
    fill_l4_csum(&mut l4, 16, PEER_IP, GUEST_IP, 6, partial);
    ipv4_frame(GUEST_MAC, PEER_MAC, PEER_IP, GUEST_IP, 6, 0, &l4)
}

pub(crate) fn pattern(len: usize, k: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * k) % 251) as u8).collect()
}
