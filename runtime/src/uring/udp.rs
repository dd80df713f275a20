//! UDP on the worker's io_uring: a multishot `recvmsg` into a provided-buffer ring
//! (one submission receives until the buffers run out), with UDP GRO so the kernel
//! can hand over several datagrams of one flow in one buffer; and sends as `sendmsg`
//! operations submitted together, with UDP GSO (`UDP_SEGMENT`) so one operation sends
//! a run of equal-size datagrams.

// Unsafe here: `sendmsg`/`recvmsg` headers and socket options through libc and io_uring.
#![allow(unsafe_code)]

use std::future::poll_fn;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use io_uring::{opcode, types};

use super::bufring::BufRing;
use super::driver::{driver, Op, StreamOp};

/// Room for one `int` control message (UDP_GRO / UDP_SEGMENT), 8-byte aligned.
const CMSG_ROOM: usize = 32;
const SOL_UDP: i32 = 17;
const UDP_SEGMENT: i32 = 103;
const UDP_GRO: i32 = 104;

/// Sizing of a [`UdpRing`]'s receive side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpConfig {
    /// Provided buffers (a power of two): receives in the kernel's hands at once.
    pub buffers: u16,
    /// Bytes per buffer; with GRO, up to 64 KiB of coalesced datagrams fit one.
    pub buffer_size: usize,
    /// Ask the kernel to coalesce datagrams of a flow (UDP_GRO).
    pub gro: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            buffers: 256,
            buffer_size: 2048,
            gro: false,
        }
    }
}

/// One received buffer: a datagram, or with GRO several datagrams of `segment_size`
/// bytes each (the last may be shorter), all from `from`.
#[derive(Debug)]
pub struct Received<'a> {
    /// The sender.
    pub from: SocketAddr,
    /// The bytes.
    pub data: &'a [u8],
    /// With GRO: the size of each coalesced datagram in `data`.
    pub segment_size: Option<u16>,
}

impl Received<'_> {
    /// The datagrams in this buffer (one, or several with GRO).
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        let seg = self
            .segment_size
            .map_or(self.data.len(), usize::from)
            .max(1);
        // An empty datagram is a datagram too (and `chunks` yields nothing for it).
        let empty = self.data.is_empty().then_some(self.data);
        self.data.chunks(seg).chain(empty)
    }
}

/// Counters of a [`UdpRing`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Buffers received.
    pub received: u64,
    /// Datagrams received (more than `received` with GRO).
    pub datagrams: u64,
    /// Datagrams cut short because a buffer was too small (dropped).
    pub truncated: u64,
    /// Times the kernel ran out of provided buffers (the receive was re-armed).
    pub out_of_buffers: u64,
    /// Receive completions with another error.
    pub errors: u64,
}

/// What the multishot receive points into: its `msghdr` and its buffers.
struct RecvMem {
    msghdr: libc::msghdr,
    ring: BufRing,
}

/// A UDP socket driven by the current worker's io_uring. Must be created and used on
/// one worker (it is `!Send`); create it inside the async stage that uses it.
pub struct UdpRing {
    socket: UdpSocket,
    mem: Rc<RecvMem>,
    group: u16,
    recv: Option<StreamOp>,
    completions: Vec<(i32, u32)>,
    counters: UdpCounters,
}

impl std::fmt::Debug for UdpRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpRing")
            .field("socket", &self.socket)
            .field("counters", &self.counters)
            .finish()
    }
}

impl UdpRing {
    /// Takes over `socket` (made non-blocking), registers its receive buffers with the
    /// current worker's ring, and arms the multishot receive.
    pub fn new(socket: UdpSocket, config: UdpConfig) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        if config.gro {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt with a valid fd and a pointer to a live c_int of the
            // size passed.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    SOL_UDP,
                    UDP_GRO,
                    (&on as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::other(format!(
                    "enable UDP_GRO: {}",
                    io::Error::last_os_error()
                )));
            }
        }
        let ring = BufRing::new(config.buffers, config.buffer_size)?;
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut msghdr: libc::msghdr = unsafe { zeroed() };
        msghdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msghdr.msg_controllen = CMSG_ROOM as _;
        let mem = Rc::new(RecvMem { msghdr, ring });
        let d = driver()?;
        let group = d.borrow_mut().next_buffer_group();
        // SAFETY: the ring memory lives in `mem`, which this `UdpRing` and every receive
        // operation using the group keep alive; it is unregistered before it is freed.
        unsafe {
            d.borrow().submitter().register_buf_ring_with_flags(
                mem.ring.ring_addr(),
                mem.ring.entries(),
                group,
                0,
            )?;
        }
        let mut this = Self {
            socket,
            mem,
            group,
            recv: None,
            completions: Vec::new(),
            counters: UdpCounters::default(),
        };
        this.arm()?;
        Ok(this)
    }

    fn arm(&mut self) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(self.socket.as_raw_fd()),
            &self.mem.msghdr as *const libc::msghdr,
            self.group,
        )
        .build();
        // SAFETY: the entry points at `mem.msghdr` (inside an `Rc`, so it does
        // not move) and selects buffers of `mem.ring`; the op keeps an `Rc` of `mem`
        // until its last completion.
        self.recv =
            Some(unsafe { StreamOp::start(entry, Box::new(self.mem.clone()), Some(self.group))? });
        Ok(())
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Counters so far.
    pub fn counters(&self) -> UdpCounters {
        self.counters
    }

    /// Waits until at least one buffer has arrived, then calls `on_buffer` for every
    /// buffer that has (each is provided back to the kernel right after). Returns how
    /// many buffers were delivered. Errors are counted, not returned, unless the
    /// receive cannot be re-armed.
    pub async fn recv_burst<F>(&mut self, mut on_buffer: F) -> io::Result<usize>
    where
        F: FnMut(Received<'_>),
    {
        loop {
            let mut completions = std::mem::take(&mut self.completions);
            completions.clear();
            let live = {
                let recv = self.recv.as_mut().expect("armed");
                poll_fn(|cx| recv.poll_completions(cx, &mut completions)).await
            };
            let delivered = self.deliver(completions, live, &mut on_buffer)?;
            if delivered > 0 {
                return Ok(delivered);
            }
        }
    }

    /// Like [`recv_burst`](UdpRing::recv_burst), but never waits: delivers the buffers
    /// that have already arrived (`Ok(0)` when none has), for a stage that polls its
    /// socket between other work (busy-polling, or a burst that gathers from several
    /// sources).
    pub fn try_recv_burst<F>(&mut self, mut on_buffer: F) -> io::Result<usize>
    where
        F: FnMut(Received<'_>),
    {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        let live = self
            .recv
            .as_mut()
            .expect("armed")
            .take_completions(&mut completions);
        self.deliver(completions, live, &mut on_buffer)
    }

    /// Hands the buffers of `completions` to `on_buffer`, gives them back to the kernel
    /// and re-arms the receive if the kernel ended it; how many were delivered.
    fn deliver<F>(
        &mut self,
        completions: Vec<(i32, u32)>,
        live: bool,
        on_buffer: &mut F,
    ) -> io::Result<usize>
    where
        F: FnMut(Received<'_>),
    {
        let mut delivered = 0;
        let mut used = Vec::with_capacity(completions.len());
        for &(result, flags) in &completions {
            if result < 0 {
                if -result == libc::ENOBUFS {
                    self.counters.out_of_buffers += 1;
                } else {
                    self.counters.errors += 1;
                }
                continue;
            }
            let Some(bid) = io_uring::cqueue::buffer_select(flags) else {
                self.counters.errors += 1;
                continue;
            };
            used.push(bid);
            let bytes = self.mem.ring.filled(bid, result as usize);
            let Ok(out) = types::RecvMsgOut::parse(bytes, &self.mem.msghdr) else {
                self.counters.errors += 1;
                continue;
            };
            if out.is_payload_truncated() || out.is_control_data_truncated() {
                self.counters.truncated += 1;
                continue;
            }
            let Some(from) = sockaddr(out.name_data()) else {
                self.counters.errors += 1;
                continue;
            };
            let received = Received {
                from,
                data: out.payload_data(),
                segment_size: gro_segment(out.control_data()),
            };
            self.counters.received += 1;
            self.counters.datagrams += received.datagrams().count() as u64;
            on_buffer(received);
            delivered += 1;
        }
        self.mem.ring.give_back(used);
        self.completions = completions;
        if !live || self.recv.as_ref().is_some_and(|r| r.ended()) {
            // The kernel stopped the multishot receive (out of buffers, or an
            // error): start another over the buffers just given back.
            self.recv = None;
            self.arm()?;
        }
        Ok(delivered)
    }

    /// Sends `payload` to `to`; with `segment_size`, as GSO: the kernel cuts it into
    /// datagrams of that size (the last may be shorter), at most 64 of them. Several
    /// `send` futures awaited together (e.g. `join_all`) go to the kernel in one
    /// submission. Returns bytes sent and the payload's buffer.
    pub async fn send(
        &self,
        to: SocketAddr,
        payload: Vec<u8>,
        segment_size: Option<u16>,
    ) -> (io::Result<usize>, Vec<u8>) {
        let whole = [(0, 0..payload.len())];
        let (result, mut parts) = self
            .send_vectored(to, vec![payload], &whole, segment_size)
            .await;
        (result, parts.pop().unwrap_or_default())
    }

    /// Sends the concatenation of `slices` to `to` in one `sendmsg`, without copying
    /// them together: each `(part, range)` is bytes `range` of `parts[part]`. With
    /// `segment_size`, as GSO (see [`send`](Self::send)): a run of datagrams, each cut
    /// from the concatenation, so per-datagram headers can sit in small buffers and
    /// the payload slices point into one large received frame. The op owns `parts`
    /// until the kernel is done with them; they come back with the result.
    ///
    /// A slice out of range, or more than [`MAX_SLICES`] of them, is an
    /// `InvalidInput` error before anything is sent.
    ///
    /// ```no_run
    /// # async fn example(ring: &pipewright_runtime::uring::UdpRing, to: std::net::SocketAddr) {
    /// let header = vec![0u8; 8];
    /// let frame = vec![7u8; 3000];
    /// // Two 1,008-byte datagrams: the same header before each half of the frame.
    /// let slices = [(0, 0..8), (1, 0..1000), (0, 0..8), (1, 1000..2000)];
    /// let (sent, _parts) = ring.send_vectored(to, vec![header, frame], &slices, Some(1008)).await;
    /// assert_eq!(sent.unwrap(), 2016);
    /// # }
    /// ```
    pub async fn send_vectored<B>(
        &self,
        to: SocketAddr,
        parts: Vec<B>,
        slices: &[(usize, Range<usize>)],
        segment_size: Option<u16>,
    ) -> (io::Result<usize>, Vec<B>)
    where
        B: AsRef<[u8]> + 'static,
    {
        if slices.len() > MAX_SLICES {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a vectored send takes at most {MAX_SLICES} slices, got {}: send in several calls",
                    slices.len()
                ),
            );
            return (Err(e), parts);
        }
        let mut iov = Vec::with_capacity(slices.len());
        for (part, range) in slices {
            let Some(bytes) = parts.get(*part).map(AsRef::as_ref) else {
                let e = io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "slice names part {part}, but only {} parts were given",
                        parts.len()
                    ),
                );
                return (Err(e), parts);
            };
            let Some(piece) = bytes.get(range.clone()) else {
                let e = io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "slice {range:?} is outside part {part} of {} bytes",
                        bytes.len()
                    ),
                );
                return (Err(e), parts);
            };
            iov.push(libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: piece.len(),
            });
        }
        let mut msg = Box::new(SendMem {
            // SAFETY: an all-zero msghdr/sockaddr_storage are valid values.
            msghdr: unsafe { zeroed() },
            // SAFETY: as above.
            addr: unsafe { zeroed() },
            iov,
            cmsg: [0u64; CMSG_ROOM / 8],
            parts,
        });
        let addr_len = write_sockaddr(&mut msg.addr, to);
        let m = &mut *msg;
        m.msghdr.msg_name = (&mut m.addr as *mut libc::sockaddr_storage).cast();
        m.msghdr.msg_namelen = addr_len;
        m.msghdr.msg_iov = m.iov.as_mut_ptr();
        m.msghdr.msg_iovlen = m.iov.len() as _;
        if let Some(seg) = segment_size {
            // SAFETY: `cmsg` has room for a cmsghdr plus one u16 (CMSG_SPACE(2) <=
            // CMSG_ROOM) and is 8-byte aligned as cmsghdr requires.
            unsafe {
                let hdr = m.cmsg.as_mut_ptr().cast::<libc::cmsghdr>();
                (*hdr).cmsg_level = SOL_UDP;
                (*hdr).cmsg_type = UDP_SEGMENT;
                (*hdr).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                libc::CMSG_DATA(hdr).cast::<u16>().write_unaligned(seg);
                m.msghdr.msg_control = hdr.cast();
                m.msghdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
            }
        }
        let entry = opcode::SendMsg::new(types::Fd(self.socket.as_raw_fd()), &m.msghdr).build();
        // SAFETY: every pointer in the entry points into `msg`, a Box the op owns until
        // done: the msghdr, its name and control fields, the iovec array (a Vec's heap
        // buffer) and the bytes of `parts`. Those bytes are what `AsRef` returned for
        // parts stored in the `parts` Vec, whose buffer never moves or reallocates,
        // and nothing else can reach the parts while the op owns them.
        match unsafe { Op::new(entry, msg) } {
            Ok(op) => {
                let (r, msg) = op.await;
                (r.map(|n| n as usize), msg.parts)
            }
            Err((e, msg)) => (Err(e), msg.parts),
        }
    }
}

/// The most slices one [`UdpRing::send_vectored`] takes (the kernel's `UIO_MAXIOV`).
pub const MAX_SLICES: usize = 1024;

impl Drop for UdpRing {
    fn drop(&mut self) {
        match self.recv.take() {
            // Still armed: cancelled by the op's drop; the group is unregistered (and
            // the memory freed) after the kernel's last completion.
            Some(op) if !op.ended() => drop(op),
            done => {
                drop(done);
                if let Ok(d) = driver() {
                    let _ = d.borrow().submitter().unregister_buf_ring(self.group);
                }
            }
        }
    }
}

/// What a send points into; owned by the operation until it completes.
struct SendMem<B> {
    msghdr: libc::msghdr,
    addr: libc::sockaddr_storage,
    iov: Vec<libc::iovec>,
    cmsg: [u64; CMSG_ROOM / 8],
    parts: Vec<B>,
}

fn write_sockaddr(storage: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                (storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                (storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The sender's address from the name bytes of a received message.
fn sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    match family as i32 {
        libc::AF_INET if name.len() >= 8 => {
            let port = u16::from_be_bytes([name[2], name[3]]);
            let ip = std::net::Ipv4Addr::new(name[4], name[5], name[6], name[7]);
            Some(SocketAddr::from((ip, port)))
        }
        libc::AF_INET6 if name.len() >= 24 => {
            let port = u16::from_be_bytes([name[2], name[3]]);
            let ip: [u8; 16] = name[8..24].try_into().ok()?;
            Some(SocketAddr::from((std::net::Ipv6Addr::from(ip), port)))
        }
        _ => None,
    }
}

/// The UDP_GRO segment size among received control messages, if present.
fn gro_segment(control: &[u8]) -> Option<u16> {
    let hdr = size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + hdr <= control.len() {
        let len = usize::from_ne_bytes(control[at..at + 8].try_into().ok()?);
        let level = i32::from_ne_bytes(control[at + 8..at + 12].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[at + 12..at + 16].try_into().ok()?);
        if len < hdr || at + len > control.len() {
            return None;
        }
        if level == SOL_UDP && kind == UDP_GRO && len >= hdr + 2 {
            let data = &control[at + hdr..at + len];
            // The kernel writes an int; its low 16 bits are the segment size.
            let value = if data.len() >= 4 {
                i32::from_ne_bytes(data[..4].try_into().ok()?) as u16
            } else {
                u16::from_ne_bytes(data[..2].try_into().ok()?)
            };
            return Some(value);
        }
        at += len.div_ceil(8) * 8;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_addresses_parse_from_sockaddr_bytes() {
        // SAFETY: an all-zero sockaddr_storage is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        for addr in ["10.1.2.3:4789", "[fd00::5]:6081"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let len = write_sockaddr(&mut storage, addr) as usize;
            // SAFETY: (test) reading the bytes of a local, initialised struct.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&storage as *const libc::sockaddr_storage).cast::<u8>(),
                    len,
                )
            };
            assert_eq!(sockaddr(bytes), Some(addr));
        }
        assert_eq!(sockaddr(&[1, 2]), None);
    }

    #[test]
    fn garbage_control_data_yields_no_segment_size() {
        assert_eq!(gro_segment(&[0xff; 40]), None);
        assert_eq!(gro_segment(&[]), None);
    }
}
