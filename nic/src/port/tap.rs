//! TAP port: a VF on a Linux TAP device with a virtio-net header in front of every
//! frame, so the offload metadata a VF descriptor carries (GSO, partial checksum)
//! crosses the boundary in both directions.
//!
//! The roles: the TAP *netdevice* is the guest's NIC (its kernel stack sends and
//! receives there), the TAP *file descriptor* is the VF as the data plane sees it.
//! Frames the guest's kernel sends are read here with [`VfPort::recv_burst`]; frames
//! written with [`VfPort::send_burst`] arrive at the guest's stack.
//!
//! Setup: `/dev/net/tun` opened non-blocking with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
//! (single queue), a [`VNET_HDR_LEN`]-byte header (`virtio_net_hdr_v1`, the
//! mergeable-rx-buffers size; its `num_buffers` is written as 0 and ignored on
//! receive), and `TUNSETOFFLOAD` with `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 |
//! TUN_F_USO4 | TUN_F_USO6`, falling back to the first three on kernels without UDP
//! segmentation offload ([`TapPort::offloads`] says what was accepted). The header is
//! in the host's byte order (tun's default "legacy" mode).
//!
//! **Frame buffers.** A received frame is read straight into a frame from the pool
//! (one `readv` with the header, the pool frame's room and an overflow buffer of
//! [`MAX_FRAME_LEN`] owned by the port). A TSO super-frame larger than the pool's
//! frames spills into the overflow buffer; it is then copied into one of the pool's
//! large frames ([`FramePool::take_large`]), counted in
//! [`PortCounters::copied_bytes`], and the port reads its next frames straight into
//! large frames (no copy) for as long as super-frames keep coming. Large frames
//! return to the pool's own small free list, so a bulk stream allocates nothing.
//!
//! **Bad headers never panic.** A received header with an unknown GSO type, a GSO
//! type without a segment size, or a checksum position outside the frame, and a frame
//! to send whose [`FrameMeta`] is inconsistent the same ways (or
//! which the kernel rejects), are dropped and counted by [`TapDropReason`]
//! ([`TapPort::drops`]) and in [`PortCounters::dropped`], and reported to the
//! `pipewright_nic_port_drops_total` metric.
//!
//! ```no_run
//! use pipewright_nic::port::{TapPort, VfPort};
//! use pipewright_nic::{FramePool, DEFAULT_HEADROOM};
//!
//! let mut port = TapPort::create("pwtap0", 0)?; // bring it up / address it elsewhere
//! let pool = FramePool::new(DEFAULT_HEADROOM, 2048, 1024);
//! let mut frames = Vec::new();
//! // Wait for `port.rx_fd()` to become readable (poll, AsyncFd, io_uring), then:
//! let n = port.recv_burst(&pool, &mut frames, 32)?;
//! for f in &frames[..n] {
//!     println!("{} bytes, gso {:?}, csum {:?}", f.len(), f.meta.gso, f.meta.csum);
//! }
//! port.send_burst(&mut frames, &pool)?; // reflect them back to the guest
//! # Ok::<(), pipewright_nic::port::PortError>(())
//! ```
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{PortCounters, PortError, VfPort};
use crate::{Frame, FrameMeta, FramePool};

mod tunnel_gso;
mod vnet;

pub(crate) use tunnel_gso::{tunnel_header, TunnelGsoTap};

pub use vnet::{decode_vnet_hdr, encode_vnet_hdr, TapDropReason, MAX_FRAME_LEN, VNET_HDR_LEN};

const TUN_F_BASE: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
const TUN_F_USO: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// Drops by direction and reason (monotonic), plus the last reason seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapDrops {
    /// Received frames whose virtio-net header was malformed.
    pub rx_malformed: u64,
    /// Received frames too large or too short to read.
    pub rx_bad_read: u64,
    /// Frames to send whose metadata could not be expressed as a valid header.
    pub tx_bad_meta: u64,
    /// Frames to send larger than [`MAX_FRAME_LEN`].
    pub tx_too_large: u64,
    /// Frames the kernel refused or could not deliver (interface down).
    pub tx_rejected: u64,
    /// The most recent reason.
    pub last: Option<TapDropReason>,
}

/// The offloads the kernel accepted with `TUNSETOFFLOAD`: what the guest's stack may
/// hand us (and what we may hand it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapOffloads {
    /// Partial checksums (`TUN_F_CSUM`).
    pub csum: bool,
    /// TCP/IPv4 segmentation (`TUN_F_TSO4`).
    pub tso4: bool,
    /// TCP/IPv6 segmentation (`TUN_F_TSO6`).
    pub tso6: bool,
    /// UDP segmentation, IPv4 and IPv6 (`TUN_F_USO4 | TUN_F_USO6`).
    pub uso: bool,
}

/// A VF port on a TAP device: one queue, virtio-net headers carrying the offload
/// metadata; TSO/USO/checksum offloads as the kernel grants them ([`TapOffloads`]).
pub struct TapPort {
    /// The TAP queue's descriptor (a `File` for its vectored reads and writes).
    file: File,
    name: String,
    vf: u16,
    offloads: TapOffloads,
    overflow: Box<[u8]>,
    /// The last frame read was a super-frame: read the next into a large frame.
    expect_large: bool,
    counters: PortCounters,
    drops: TapDrops,
}

impl fmt::Debug for TapPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TapPort")
            .field("name", &self.name)
            .field("vf", &self.vf)
            .field("fd", &self.file.as_raw_fd())
            .field("offloads", &self.offloads)
            .field("counters", &self.counters)
            .field("drops", &self.drops)
            .finish()
    }
}

impl TapPort {
    /// Creates TAP device `name` in the calling thread's network namespace and opens
    /// it as VF `vf`. Fails if an interface of that name exists. The device lives as
    /// long as the port unless made persistent ([`set_persistent`](Self::set_persistent));
    /// bringing it up and addressing it is the caller's (or the host harness's) job.
    pub fn create(name: &str, vf: u16) -> Result<Self, PortError> {
        Self::attach(name, vf, true)
    }

    /// Opens the existing TAP device `name` (in the calling thread's network
    /// namespace) as VF `vf`. The device must be a TAP (not TUN) device that no other
    /// descriptor holds.
    pub fn open_existing(name: &str, vf: u16) -> Result<Self, PortError> {
        let cname = ifname(name)?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(PortError::NoSuchInterface(name.to_string()));
        }
        Self::attach(name, vf, false)
    }

    fn attach(name: &str, vf: u16, exclusive: bool) -> Result<Self, PortError> {
        let cname = ifname(name)?;
        // SAFETY: a plain open(2) of a constant NUL-terminated path.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(PortError::io(
                "open /dev/net/tun (is the tun module loaded, are we root/CAP_NET_ADMIN?)",
                e,
            ));
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        if exclusive {
            req.flags |= libc::IFF_TUN_EXCL as libc::c_short;
        }
        for (d, s) in req.name.iter_mut().zip(cname.as_bytes()) {
            *d = *s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes an `ifreq`; `IfReq` has its layout and
        // size (40 bytes) and lives across the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
            let e = io::Error::last_os_error();
            let what = match (e.raw_os_error(), exclusive) {
                (Some(libc::EBUSY), true) => format!(
                    "TUNSETIFF {name}: an interface of that name exists (use open_existing)"
                ),
                (Some(libc::EINVAL), false) => {
                    format!("TUNSETIFF {name}: the interface exists but is not a TAP device")
                }
                (Some(libc::EPERM), _) => format!("TUNSETIFF {name}: needs CAP_NET_ADMIN"),
                _ => format!("TUNSETIFF {name}"),
            };
            return Err(PortError::io(what, e));
        }

        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(PortError::last_os_error(format!(
                "TUNSETVNETHDRSZ {VNET_HDR_LEN} on {name}"
            )));
        }

        let offloads = set_offload(&fd, TUN_F_BASE | TUN_F_USO)
            .map(|()| TapOffloads {
                csum: true,
                tso4: true,
                tso6: true,
                uso: true,
            })
            .or_else(|_| {
                set_offload(&fd, TUN_F_BASE).map(|()| TapOffloads {
                    csum: true,
                    tso4: true,
                    tso6: true,
                    uso: false,
                })
            })
            .map_err(|e| PortError::io(format!("TUNSETOFFLOAD csum+tso on {name}"), e))?;

        Ok(Self {
            file: File::from(fd),
            name: name.to_string(),
            vf,
            offloads,
            overflow: vec![0; MAX_FRAME_LEN].into_boxed_slice(),
            expect_large: false,
            counters: PortCounters::default(),
            drops: TapDrops::default(),
        })
    }

    /// Makes the device outlive this descriptor (`TUNSETPERSIST`), or not.
    pub fn set_persistent(&self, persistent: bool) -> Result<(), PortError> {
        // SAFETY: TUNSETPERSIST takes its argument by value; no memory is touched.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(persistent),
            )
        };
        if rc < 0 {
            return Err(PortError::last_os_error(format!(
                "TUNSETPERSIST {persistent} on {}",
                self.name
            )));
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offloads the kernel accepted.
    pub fn offloads(&self) -> TapOffloads {
        self.offloads
    }

    /// Drops by reason.
    pub fn drops(&self) -> TapDrops {
        self.drops
    }

    fn drop_frame(&mut self, reason: TapDropReason) {
        match reason {
            TapDropReason::ShortRead(_) | TapDropReason::TooLarge(_) => self.drops.rx_bad_read += 1,
            _ => self.drops.rx_malformed += 1,
        }
        self.note_drop(reason);
    }

    fn drop_tx(&mut self, reason: TapDropReason) {
        let d = &mut self.drops;
        match reason {
            TapDropReason::TooLarge(_) => d.tx_too_large += 1,
            TapDropReason::KernelRejected | TapDropReason::LinkDown => d.tx_rejected += 1,
            _ => d.tx_bad_meta += 1,
        }
        self.note_drop(reason);
    }

    fn note_drop(&mut self, reason: TapDropReason) {
        self.drops.last = Some(reason);
        self.counters.dropped += 1;
        metrics::counter!(
            "pipewright_nic_port_drops_total",
            "port" => "tap",
            "reason" => reason.as_str()
        )
        .increment(1);
    }

    /// One `readv`: header, the pool frame's room, then the overflow buffer.
    fn read_one(&mut self, hdr: &mut [u8; VNET_HDR_LEN], room: &mut [u8]) -> io::Result<usize> {
        (&self.file).read_vectored(&mut [
            IoSliceMut::new(hdr),
            IoSliceMut::new(room),
            IoSliceMut::new(&mut self.overflow),
        ])
    }

    /// One `writev`: header then the frame's bytes.
    fn write_one(&self, hdr: &[u8; VNET_HDR_LEN], data: &[u8]) -> io::Result<usize> {
        (&self.file).write_vectored(&[IoSlice::new(hdr), IoSlice::new(data)])
    }
}

impl VfPort for TapPort {
    fn vf(&self) -> u16 {
        self.vf
    }

    fn recv_burst(
        &mut self,
        pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError> {
        let mut got = 0;
        while got < max {
            let mut frame = if self.expect_large {
                pool.take_large()
            } else {
                pool.take_one()
            };
            let room = frame.tailroom();
            let mut hdr = [0u8; VNET_HDR_LEN];
            let read = {
                let buf = frame.try_push_back(room).unwrap_or_default();
                self.read_one(&mut hdr, buf)
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    pool.give_back([frame]);
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => break,
                        Some(libc::EINTR) => continue,
                        Some(libc::EFAULT | libc::EMSGSIZE) => {
                            self.drop_frame(TapDropReason::TooLarge(MAX_FRAME_LEN + 1));
                            continue;
                        }
                        _ => return Err(PortError::io(format!("read from TAP {}", self.name), e)),
                    }
                }
            };
            if n < VNET_HDR_LEN {
                pool.give_back([frame]);
                self.drop_frame(TapDropReason::ShortRead(n));
                continue;
            }
            let len = n - VNET_HDR_LEN;
            self.expect_large = len > pool.capacity();
            if len <= room {
                frame.truncate(len);
            } else {
                // A super-frame larger than the frame read into: into a large frame
                // (or one of its size past that), and the next read goes into one.
                let mut big = if len <= crate::pool::LARGE_FRAME_CAPACITY {
                    pool.take_large()
                } else {
                    Frame::with_capacity(frame.headroom(), len)
                };
                if let Some(dst) = big.try_push_back(len) {
                    dst[..room].copy_from_slice(frame.data());
                    dst[room..].copy_from_slice(&self.overflow[..len - room]);
                    self.counters.copied_bytes += len as u64;
                }
                pool.give_back([std::mem::replace(&mut frame, big)]);
            }
            match decode_vnet_hdr(&hdr, len) {
                Ok((gso, csum)) => {
                    frame.meta = FrameMeta {
                        vf: self.vf,
                        gso,
                        csum,
                        outer_len: 0,
                    };
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                    out.push(frame);
                    got += 1;
                }
                Err(reason) => {
                    pool.give_back([frame]);
                    self.drop_frame(reason);
                }
            }
        }
        Ok(got)
    }

    fn send_burst(
        &mut self,
        frames: &mut Vec<Frame>,
        pool: &FramePool,
    ) -> Result<usize, PortError> {
        let mut taken = 0;
        let mut sent = 0;
        let mut failure = None;
        while taken < frames.len() {
            let frame = &frames[taken];
            let len = frame.len();
            if len > MAX_FRAME_LEN {
                taken += 1;
                self.drop_tx(TapDropReason::TooLarge(len));
                continue;
            }
            let hdr = match encode_vnet_hdr(&frame.meta, frame.data()) {
                Ok(h) => h,
                Err(reason) => {
                    taken += 1;
                    self.drop_tx(reason);
                    continue;
                }
            };
            match self.write_one(&hdr, frame.data()) {
                Ok(_) => {
                    taken += 1;
                    sent += 1;
                    self.counters.tx_frames += 1;
                    self.counters.tx_bytes += len as u64;
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN | libc::ENOBUFS) => break,
                    Some(libc::EINVAL | libc::EFAULT) => {
                        taken += 1;
                        self.drop_tx(TapDropReason::KernelRejected);
                    }
                    Some(libc::EIO) => {
                        taken += 1;
                        self.drop_tx(TapDropReason::LinkDown);
                    }
                    _ => {
                        // That frame is dropped (counted): the caller retries the
                        // rest, not the frame that failed.
                        taken += 1;
                        self.drop_tx(TapDropReason::KernelRejected);
                        failure = Some(PortError::io(format!("write to TAP {}", self.name), e));
                        break;
                    }
                },
            }
        }
        pool.give_back(frames.drain(..taken));
        match failure {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    fn rx_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn accepts_super_frames(&self) -> bool {
        true
    }

    fn counters(&self) -> PortCounters {
        self.counters
    }
}

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifname(name: &str) -> Result<CString, PortError> {
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name.bytes().any(|b| b == b'/' || b.is_ascii_whitespace())
    {
        return Err(PortError::Setup(format!(
            "bad interface name {name:?}: 1 to 15 bytes, no '/' or spaces"
        )));
    }
    CString::new(name).map_err(|_| PortError::Setup(format!("interface name {name:?} has a NUL")))
}

fn set_offload(fd: &OwnedFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes the flags by value; no memory is touched.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
