//! AF_XDP port: a VF on a real interface (a veth in the tests) through an AF_XDP
//! socket, with its own XDP program loaded over raw `bpf(2)`.
//!
//! The port owns one UMEM (an anonymous mapping cut into 2 or 4 KiB frames), the four
//! rings of its socket, an XSKMAP holding the socket at the bound queue's index, and
//! the redirect program attached through a BPF link. Dropping the port closes the link
//! (which detaches the program, so traffic goes back to the kernel stack), the socket
//! and the mappings.
//!
//! Receiving copies each frame out of the UMEM into a [`Frame`] from the caller's pool
//! (so the pipeline can grow headers in its headroom) and gives the UMEM frame straight
//! back to the fill ring; sending copies into free UMEM frames, reaping completions
//! first. Kernel behaviours seen on veth (Linux 6.18) are recorded in
//! `nic/tests/port_afxdp.rs`.
//!
//! All `unsafe` code is in `sys` (system calls, mappings), `ring` (the shared rings)
//! and `umem` (frame memory).

mod config;
mod prog;
mod ring;
mod setup;
mod stats;
mod sys;
mod umem;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

pub use config::{AfXdpBuilder, BindMode, XdpMode};
pub use stats::{XskCounters, XskKernelStats};

use crate::port::{PortCounters, PortError, VfPort};
use crate::{Frame, FramePool};
use ring::Ring;
use umem::Umem;

/// Longest descriptor chain accepted for one frame before it is treated as malformed.
const MAX_CHAIN: u32 = 32;
/// Kicks per `send_burst` at most (the kernel sends a bounded batch per kick).
const MAX_KICKS: usize = 64;

/// A VF port on an AF_XDP socket.
///
/// ```no_run
/// use pipewright_nic::port::{AfXdpPort, XdpMode};
/// use pipewright_nic::port::VfPort;
/// use pipewright_nic::{FramePool, DEFAULT_HEADROOM};
///
/// // Needs root: loads an XDP program on veth0 and binds queue 0.
/// let mut port = AfXdpPort::builder("veth0")
///     .queue(0)
///     .vf(3)
///     .frames(4096)
///     .frame_size(2048)
///     .mode(XdpMode::Native)
///     .build()?;
/// let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 1024);
/// let mut frames = Vec::new();
/// let n = port.recv_burst(&pool, &mut frames, 64)?; // 0 at once if nothing waits
/// port.send_burst(&mut frames, &pool)?;            // echo them back
/// # let _ = n;
/// # Ok::<(), pipewright_nic::port::PortError>(())
/// ```
#[derive(Debug)]
pub struct AfXdpPort {
    // Field order is drop order: detach the program first, then the socket and memory.
    _link: OwnedFd,
    _prog: OwnedFd,
    _xskmap: OwnedFd,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    fd: OwnedFd,
    umem: Umem,
    ifname: String,
    ifindex: u32,
    queue: u32,
    vf: u16,
    mode: XdpMode,
    multi_buffer: bool,
    max_frame: usize,
    fill_target: u32,
    scratch: Vec<u8>,
    counters: PortCounters,
    xsk: XskCounters,
}

impl AfXdpPort {
    /// A builder for a port on the interface `ifname` (in the calling thread's network
    /// namespace when [`build`](AfXdpBuilder::build) runs).
    pub fn builder(ifname: &str) -> AfXdpBuilder {
        AfXdpBuilder::new(ifname)
    }

    fn open(cfg: AfXdpBuilder) -> Result<Self, PortError> {
        cfg.validate()?;
        let name = &cfg.ifname;
        let cname = CString::new(name.as_str())
            .map_err(|_| PortError::Setup(format!("interface name {name:?} contains NUL")))?;
        let ifindex =
            sys::if_nametoindex(&cname).ok_or_else(|| PortError::NoSuchInterface(name.clone()))?;
        let at = format!("{name} queue {}", cfg.queue);

        let fd = sys::xsk_socket().map_err(|e| PortError::io("create AF_XDP socket", e))?;
        let mut umem = Umem::new(cfg.frames, cfg.frame_size).map_err(|e| {
            PortError::io(
                format!("map UMEM of {} x {} bytes", cfg.frames, cfg.frame_size),
                e,
            )
        })?;
        sys::umem_reg(fd.as_fd(), umem.mapping(), cfg.frame_size)
            .map_err(|e| PortError::io("register UMEM (XDP_UMEM_REG)", e))?;
        for (opt, what) in [
            (libc::XDP_UMEM_FILL_RING, "fill"),
            (libc::XDP_UMEM_COMPLETION_RING, "completion"),
            (libc::XDP_RX_RING, "RX"),
            (libc::XDP_TX_RING, "TX"),
        ] {
            sys::set_ring_size(fd.as_fd(), opt, cfg.ring_size)
                .map_err(|e| PortError::io(format!("size the {what} ring"), e))?;
        }
        let off = sys::mmap_offsets(fd.as_fd())
            .map_err(|e| PortError::io("read ring offsets (XDP_MMAP_OFFSETS)", e))?;
        let size = cfg.ring_size;
        let map_err = |what: &str| {
            let what = format!("mmap the {what} ring");
            move |e| PortError::io(what, e)
        };
        let pg_rx = libc::XDP_PGOFF_RX_RING as u64;
        let pg_tx = libc::XDP_PGOFF_TX_RING as u64;
        let rx = Ring::map(fd.as_fd(), pg_rx, &off.rx, size, false).map_err(map_err("RX"))?;
        let tx = Ring::map(fd.as_fd(), pg_tx, &off.tx, size, true).map_err(map_err("TX"))?;
        let pg_fill = libc::XDP_UMEM_PGOFF_FILL_RING;
        let pg_comp = libc::XDP_UMEM_PGOFF_COMPLETION_RING;
        let mut fill =
            Ring::map(fd.as_fd(), pg_fill, &off.fr, size, true).map_err(map_err("fill"))?;
        let comp =
            Ring::map(fd.as_fd(), pg_comp, &off.cr, size, false).map_err(map_err("completion"))?;

        let fill_target = size.min(cfg.frames / 2);
        for _ in 0..fill_target {
            let addr = umem.alloc().expect("frames >= 2 * ring_size");
            fill.push(addr);
        }
        fill.submit();

        // Program first: a failing attach leaves no socket bound to the queue. Until
        // the socket is in the map the program passes every frame to the stack.
        let (xskmap, prog, link) = setup::attach(&cfg, ifindex)?;
        setup::bind(&cfg, &fd, ifindex, &at)?;
        sys::map_update_u32(xskmap.as_fd(), cfg.queue, fd_u32(&fd))
            .map_err(|e| PortError::io("insert the socket into the XSKMAP", e))?;

        Ok(Self {
            _link: link,
            _prog: prog,
            _xskmap: xskmap,
            rx,
            tx,
            fill,
            comp,
            fd,
            umem,
            ifname: cfg.ifname.clone(),
            ifindex,
            queue: cfg.queue,
            vf: cfg.vf,
            mode: cfg.xdp_mode,
            multi_buffer: cfg.multi_buffer,
            max_frame: cfg.effective_max_frame(),
            fill_target,
            scratch: Vec::new(),
            counters: PortCounters::default(),
            xsk: XskCounters::default(),
        })
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index (in the namespace the port was built in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The bound queue.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Where the XDP program runs.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// True when multi-buffer frames are on.
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The largest frame the port carries in either direction.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Port-specific counters (ring full / fill ring empty / drops by reason).
    pub fn xsk_counters(&self) -> XskCounters {
        self.xsk
    }

    /// True when the kernel flagged the TX ring as needing a `sendto` kick (always the
    /// case in copy mode) — for tests and diagnostics.
    pub fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// True when the kernel flagged the fill ring as needing a wake-up.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// The kernel's statistics for the socket.
    pub fn kernel_stats(&self) -> Result<XskKernelStats, PortError> {
        let s = sys::statistics(self.fd.as_fd())
            .map_err(|e| PortError::io("read socket statistics (XDP_STATISTICS)", e))?;
        Ok(XskKernelStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            tx_ring_empty: s.tx_ring_empty_descs,
        })
    }

    /// TX descriptors the kernel has not taken yet. `send_burst` kicks the kernel a
    /// bounded number of times; call it again (with an empty vector) to push the rest.
    pub fn tx_pending(&mut self) -> u32 {
        self.tx.in_flight()
    }

    /// Moves completed TX frames back to the free stack.
    fn reap_completions(&mut self) {
        let n = self.comp.available(self.comp.size());
        for i in 0..n {
            let addr = self.comp.peek(i);
            self.umem.free(addr);
        }
        self.comp.advance(n);
        self.comp.release();
    }

    /// Tops the fill ring up to its target from the free stack.
    fn refill(&mut self) -> Result<(), PortError> {
        let want = self.fill_target.saturating_sub(self.fill.in_flight());
        let mut pushed = 0;
        while pushed < want {
            let Some(addr) = self.umem.alloc() else {
                self.xsk.fill_ring_empty += 1;
                break;
            };
            if !self.fill.push(addr) {
                self.umem.free(addr);
                break;
            }
            pushed += 1;
        }
        if pushed > 0 {
            self.fill.submit();
            if self.fill.needs_wakeup() {
                self.xsk.rx_wakeups += 1;
                if let Err(e) = sys::wake_rx(self.fd.as_fd()) {
                    if !transient(&e) {
                        return Err(PortError::io(format!("wake RX of {}", self.ifname), e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Kicks the kernel until it took the TX ring or stopped making progress.
    fn kick_tx(&mut self) -> Result<(), PortError> {
        let mut pending = self.tx.in_flight();
        for _ in 0..MAX_KICKS {
            if pending == 0 || !self.tx.needs_wakeup() {
                break;
            }
            self.xsk.tx_kicks += 1;
            match sys::kick_tx(self.fd.as_fd()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.xsk.tx_device_drops += 1;
                    self.counters.dropped += 1;
                }
                Err(e) if transient(&e) => {}
                Err(e) => return Err(PortError::io(format!("kick TX of {}", self.ifname), e)),
            }
            let now = self.tx.in_flight();
            if now >= pending {
                break; // no progress (socket send buffer full): retry on the next call
            }
            pending = now;
        }
        Ok(())
    }

    /// Copies the descriptor chain `first..first + n` into `frame`; false if a
    /// descriptor points outside the UMEM.
    fn assemble(&mut self, first: u32, n: u32, total: usize, frame: &mut Frame) -> bool {
        let headroom = frame.headroom();
        if n == 1 {
            let d = self.rx.peek(first);
            let Some(bytes) = self.umem.bytes(d.addr, d.len as usize) else {
                return false;
            };
            frame.reset_from(headroom, bytes);
            return true;
        }
        self.scratch.clear();
        self.scratch.reserve(total);
        for i in first..first + n {
            let d = self.rx.peek(i);
            let Some(bytes) = self.umem.bytes(d.addr, d.len as usize) else {
                return false;
            };
            self.scratch.extend_from_slice(bytes);
        }
        frame.reset_from(headroom, &self.scratch);
        true
    }
}

/// Errors a kick or wake-up may return that only mean "try again later".
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) | Some(libc::EINTR)
    )
}

fn fd_u32(fd: &OwnedFd) -> u32 {
    std::os::fd::AsRawFd::as_raw_fd(fd) as u32
}

impl VfPort for AfXdpPort {
    fn vf(&self) -> u16 {
        self.vf
    }

    fn recv_burst(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError> {
        let avail = self.rx.available(max.min(u32::MAX as usize) as u32);
        if avail == 0 || max == 0 {
            // Nothing to read; still top the fill ring up if an earlier refill ran short.
            self.refill()?;
            return Ok(0);
        }
        let start = out.len();
        pool.take((avail as usize).min(max), out);
        let (mut got, mut i) = (0usize, 0u32);
        while got < max && i < avail {
            // Find the end of the chain (XDP_PKT_CONTD on all but the last buffer).
            let (mut n, mut total) = (0u32, 0usize);
            let complete = loop {
                if i + n >= avail {
                    break false;
                }
                let d = self.rx.peek(i + n);
                n += 1;
                total += d.len as usize;
                if d.options & libc::XDP_PKT_CONTD == 0 {
                    break true;
                }
                if n >= MAX_CHAIN {
                    break true;
                }
            };
            if !complete {
                break; // the kernel publishes whole chains; take the rest next time
            }
            let chained_too_long = self.rx.peek(i + n - 1).options & libc::XDP_PKT_CONTD != 0;
            if chained_too_long {
                self.xsk.rx_bad_desc += 1;
                self.counters.dropped += 1;
            } else if total > self.max_frame {
                self.xsk.rx_too_large += 1;
                self.counters.dropped += 1;
            } else if self.assemble(i, n, total, &mut out[start + got]) {
                out[start + got].meta.vf = self.vf;
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += total as u64;
                self.counters.copied_bytes += total as u64;
                got += 1;
            } else {
                self.xsk.rx_bad_desc += 1;
                self.counters.dropped += 1;
            }
            for k in i..i + n {
                let addr = self.rx.peek(k).addr;
                self.umem.free(addr);
            }
            i += n;
        }
        self.rx.advance(i);
        self.rx.release();
        pool.give_back(out.drain(start + got..));
        self.refill()?;
        Ok(got)
    }

    fn send_burst(
        &mut self,
        frames: &mut Vec<Frame>,
        pool: &FramePool,
    ) -> Result<usize, PortError> {
        self.reap_completions();
        let chunk = self.umem.frame_size() as usize;
        let mut taken = 0;
        let mut too_large = None;
        for f in frames.iter() {
            let len = f.len();
            if len > self.max_frame {
                too_large = Some(len);
                break;
            }
            let need = len.div_ceil(chunk).max(1) as u32;
            if self.tx.free(need) < need {
                self.xsk.tx_ring_full += 1;
                break;
            }
            if self.umem.free_frames() < need as usize {
                self.xsk.tx_no_frame += 1;
                break;
            }
            let mut rest = f.data();
            for k in 0..need {
                let part = rest.len().min(chunk);
                let addr = self.umem.alloc().expect("checked free frames");
                self.umem
                    .bytes_mut(addr, part)
                    .expect("a whole frame fits its chunk")
                    .copy_from_slice(&rest[..part]);
                rest = &rest[part..];
                let options = if k + 1 < need { libc::XDP_PKT_CONTD } else { 0 };
                let pushed = self.tx.push(libc::xdp_desc {
                    addr,
                    len: part as u32,
                    options,
                });
                debug_assert!(pushed, "checked free TX slots");
            }
            self.counters.tx_frames += 1;
            self.counters.tx_bytes += len as u64;
            self.counters.copied_bytes += len as u64;
            taken += 1;
        }
        self.tx.submit();
        let kicked = self.kick_tx();
        pool.give_back(frames.drain(..taken));
        if let Some(len) = too_large {
            pool.give_back(frames.drain(..1));
            self.xsk.tx_too_large += 1;
            self.counters.dropped += 1;
            return Err(PortError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        kicked.map(|()| taken)
    }

    fn rx_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn counters(&self) -> PortCounters {
        // The kernel's own drops (read with one getsockopt; counters are not on the
        // hot path).
        let kernel_dropped = self
            .kernel_stats()
            .map_or(0, |k| k.rx_dropped + k.rx_ring_full);
        PortCounters {
            kernel_dropped,
            ..self.counters
        }
    }
}
