//! The test topology (a veth pair across two fresh network namespaces), the port
//! and guest-side sockets, and the frames the tests send.

// setns and AF_PACKET sockets on the guest side of the veth.
#![allow(unsafe_code)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use pipewright_nic::port::VfPort;
use pipewright_nic::port::{AfXdpPort, XdpMode};
use pipewright_nic::wire::checksum;
use pipewright_nic::{Frame, FramePool};

pub(crate) const PORT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub(crate) const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub(crate) const PORT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub(crate) const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Runs `ip` with the whitespace-separated arguments of `args`; panics on failure.
pub(crate) fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ip {args}: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a veth pair; deleted on drop (also when a test panics).
pub(crate) struct Topo {
    pub(crate) h: String,
    pub(crate) g: String,
}

impl Topo {
    pub(crate) fn new(test: &str, mtu: u32) -> Topo {
        let base = format!("pwx{}-{test}", std::process::id());
        let (h, g) = (format!("{base}-h"), format!("{base}-g"));
        let (pm, gm) = (mac_str(&PORT_MAC), mac_str(&GUEST_MAC));
        ip(&format!("netns add {h}"));
        let t = Topo { h, g }; // from here on, dropping cleans up
        let (h, g) = (&t.h, &t.g);
        ip(&format!("netns add {g}"));
        for ns in [h, g] {
            ip(&format!("-n {ns} link set lo up"));
            // No IPv6 chatter (DAD, router solicitations) on the wire under test.
            // Written through /proc in the namespace: `sysctl` (procps) is not on
            // every machine.
            let off =
                "for c in all default; do echo 1 > /proc/sys/net/ipv6/conf/$c/disable_ipv6; done";
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "sh", "-c", off])
                .output()
                .expect("run ip netns exec");
            assert!(
                out.status.success(),
                "disable IPv6 in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ip(&format!(
            "-n {h} link add xp0 address {pm} mtu {mtu} type veth \
             peer name xg0 address {gm} mtu {mtu} netns {g}"
        ));
        ip(&format!("-n {h} addr add 10.77.0.1/24 dev xp0"));
        ip(&format!("-n {g} addr add 10.77.0.2/24 dev xg0"));
        ip(&format!("-n {h} link set xp0 up"));
        ip(&format!("-n {g} link set xg0 up"));
        // The port's end answers no ARP while XDP owns it: static neighbours.
        ip(&format!("-n {g} neigh add 10.77.0.1 lladdr {pm} dev xg0"));
        ip(&format!("-n {h} neigh add 10.77.0.2 lladdr {gm} dev xp0"));
        t
    }

    /// True while an XDP program is attached to the port's end.
    pub(crate) fn xdp_attached(&self) -> bool {
        ip(&format!("-n {} -d link show xp0", self.h)).contains("prog/xdp")
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.h, &self.g] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub(crate) fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Moves the calling thread into the named network namespace.
pub(crate) fn enter(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread inside `ns` and returns its result.
pub(crate) fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

pub(crate) fn open_port(t: &Topo, mode: XdpMode, sg: bool) -> AfXdpPort {
    in_ns(&t.h, || {
        AfXdpPort::builder("xp0")
            .queue(0)
            .vf(7)
            .mode(mode)
            .multi_buffer(sg)
            .max_frame(6000)
            .build()
    })
    .unwrap_or_else(|e| panic!("build port ({mode:?}, sg {sg}): {e}"))
}

/// Waits until `fd` is readable or `ms` passed.
pub(crate) fn wait_readable(port: &AfXdpPort, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: port.rx_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Receives until `n` frames passing `keep` arrived (others are ignored) or 10 s passed.
pub(crate) fn recv_n(
    port: &mut AfXdpPort,
    pool: &FramePool,
    n: usize,
    keep: impl Fn(&Frame) -> bool,
) -> Vec<Frame> {
    let (mut got, mut burst) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < n && Instant::now() < deadline {
        wait_readable(port, 100);
        port.recv_burst(pool, &mut burst, 64).expect("recv_burst");
        got.extend(burst.drain(..).filter(|f| keep(f)));
    }
    got
}

/// An AF_PACKET socket in `ns` and the index of `xg0` there (for sending exact frames).
pub(crate) fn packet_socket(ns: &str) -> (OwnedFd, i32) {
    in_ns(ns, || {
        // SAFETY: plain socket(2); protocol 0 means the socket receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        let err = std::io::Error::last_os_error();
        assert!(fd >= 0, "AF_PACKET socket: {err}");
        // SAFETY: a fresh descriptor nothing else owns; a NUL-terminated name.
        unsafe {
            (
                OwnedFd::from_raw_fd(fd),
                libc::if_nametoindex(c"xg0".as_ptr()) as i32,
            )
        }
    })
}

pub(crate) fn packet_send((fd, ifindex): &(OwnedFd, i32), frame: &[u8]) {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_ifindex = *ifindex;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: valid buffer and sockaddr_ll of the given sizes.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        r,
        frame.len() as isize,
        "AF_PACKET send: {}",
        std::io::Error::last_os_error()
    );
}

/// Ethernet + IPv4 + UDP with valid IP and UDP checksums: port end 10.77.0.1:4000 to
/// guest 10.77.0.2:7000, or (`!to_guest`) guest :5000 to port end :9000.
pub(crate) fn udp_frame(to_guest: bool, payload: &[u8]) -> Vec<u8> {
    let (dst, src, sip, dip, ports) = if to_guest {
        (GUEST_MAC, PORT_MAC, PORT_IP, GUEST_IP, [4000u16, 7000])
    } else {
        (PORT_MAC, GUEST_MAC, GUEST_IP, PORT_IP, [5000, 9000])
    };
    let udp_len = 8 + payload.len() as u16;
    let ip_len = 20 + udp_len;
    let mut f = [
        &dst[..],
        &src,
        &[8, 0, 0x45, 0],
        &ip_len.to_be_bytes(),
        &[0, 0, 0x40, 0, 64, 17, 0, 0],
        &sip.octets(),
        &dip.octets(),
        &ports[0].to_be_bytes(),
        &ports[1].to_be_bytes(),
        &udp_len.to_be_bytes(),
        &[0, 0],
        payload,
    ]
    .concat();
    let c = checksum::finish(checksum::sum(&f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let pseudo = checksum::pseudo_v4(sip, dip, 17, udp_len);
    let c = checksum::finish(checksum::combine(pseudo, checksum::sum(&f[34..])));
    f[40..42].copy_from_slice(&if c == 0 { 0xffff } else { c }.to_be_bytes());
    f
}

pub(crate) fn to_guest(payload: &[u8]) -> Vec<u8> {
    udp_frame(true, payload)
}

pub(crate) fn from_guest(payload: &[u8]) -> Vec<u8> {
    udp_frame(false, payload)
}

/// UDP destination port of an Ethernet/IPv4/UDP frame.
pub(crate) fn dport(f: &Frame) -> Option<u16> {
    let d = f.data();
    (d.len() >= 42 && d[12..14] == [8, 0] && d[23] == 17)
        .then(|| u16::from_be_bytes([d[36], d[37]]))
}
