//! The system calls the AF_XDP port needs, each behind a safe function: the AF_XDP
//! socket and its socket options, memory mappings, and the four `bpf(2)` commands of
//! the loader. Every `unsafe` block of the socket and loader lives here.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use super::prog::Insn;

/// `BPF_MAP_CREATE`.
const BPF_MAP_CREATE: libc::c_long = 0;
/// `BPF_MAP_UPDATE_ELEM`.
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_LINK_CREATE`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_MAP_TYPE_XSKMAP`.
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
/// `BPF_PROG_TYPE_XDP`.
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP` (attach type for an XDP link on a netdev).
const BPF_XDP: u32 = 37;

/// Turns a `-1` return into the `errno` error.
fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps a file descriptor the kernel just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` is a fresh descriptor returned by a successful system call; nothing
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
}

/// A memory mapping, unmapped on drop.
#[derive(Debug)]
pub(super) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving it to another thread
// moves the only handle (shared access goes through `&self`/`&mut self` as usual).
unsafe impl Send for Mmap {}

impl Mmap {
    /// `len` bytes of zeroed private anonymous memory, populated up front.
    pub(super) fn anonymous(len: usize) -> io::Result<Self> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        // SAFETY: an anonymous mapping at an address of the kernel's choosing touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        Self::from_ret(p, len)
    }

    /// Maps `len` bytes of the socket's ring at page offset `offset` (shared with the
    /// kernel).
    pub(super) fn ring(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Self> {
        let flags = libc::MAP_SHARED | libc::MAP_POPULATE;
        // SAFETY: maps new memory at an address of the kernel's choosing; the socket fd
        // is valid for the call and the mapping keeps its own reference to the ring.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        Self::from_ret(p, len)
    }

    fn from_ret(p: *mut libc::c_void, len: usize) -> io::Result<Self> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Self { ptr, len })
    }

    /// Start of the mapping.
    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned and nothing refers to the
        // mapping once its owner is dropped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A new AF_XDP socket.
pub(super) fn xsk_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call with integer arguments.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    cvt(fd.into()).map(owned)
}

/// `setsockopt(SOL_XDP, name, u32)` (ring sizes).
pub(super) fn set_ring_size(fd: BorrowedFd<'_>, name: libc::c_int, size: u32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live u32 and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (&size as *const u32).cast(),
            mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    cvt(r.into()).map(drop)
}

/// Registers `umem` (all of it) as the socket's UMEM.
pub(super) fn umem_reg(fd: BorrowedFd<'_>, umem: &Mmap, chunk_size: u32) -> io::Result<()> {
    let reg = libc::xdp_umem_reg {
        addr: umem.as_ptr() as u64,
        len: umem.len() as u64,
        chunk_size,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    // SAFETY: the region is a live mapping owned by the caller, which keeps it alive at
    // least as long as the socket (the kernel also pins the pages it registers).
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_UMEM_REG,
            (&reg as *const libc::xdp_umem_reg).cast(),
            mem::size_of::<libc::xdp_umem_reg>() as libc::socklen_t,
        )
    };
    cvt(r.into()).map(drop)
}

/// `getsockopt(SOL_XDP, name)` into a plain-data struct of the kernel's.
fn getsockopt_xdp<T: Copy>(fd: BorrowedFd<'_>, name: libc::c_int, zero: T) -> io::Result<T> {
    let mut v = zero;
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `v`, a live value of that size
    // (the callers pass plain integer structs, valid for any bytes).
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            (&mut v as *mut T).cast(),
            &mut len,
        )
    };
    cvt(r.into())?;
    if len as usize != mem::size_of::<T>() {
        return Err(io::Error::other(format!(
            "kernel answered {len} bytes, expected {}",
            mem::size_of::<T>()
        )));
    }
    Ok(v)
}

/// The ring offsets for `mmap` (`XDP_MMAP_OFFSETS`, the layout with ring flags).
pub(super) fn mmap_offsets(fd: BorrowedFd<'_>) -> io::Result<libc::xdp_mmap_offsets> {
    let z = libc::xdp_ring_offset {
        producer: 0,
        consumer: 0,
        desc: 0,
        flags: 0,
    };
    let zero = libc::xdp_mmap_offsets {
        rx: z,
        tx: z,
        fr: z,
        cr: z,
    };
    getsockopt_xdp(fd, libc::XDP_MMAP_OFFSETS, zero)
}

/// The socket's drop/ring statistics (`XDP_STATISTICS`).
pub(super) fn statistics(fd: BorrowedFd<'_>) -> io::Result<libc::xdp_statistics> {
    let zero = libc::xdp_statistics {
        rx_dropped: 0,
        rx_invalid_descs: 0,
        tx_invalid_descs: 0,
        rx_ring_full: 0,
        rx_fill_ring_empty_descs: 0,
        tx_ring_empty_descs: 0,
    };
    getsockopt_xdp(fd, libc::XDP_STATISTICS, zero)
}

/// Binds the socket to `ifindex`/`queue` with `XDP_*` bind `flags`.
pub(super) fn bind(fd: BorrowedFd<'_>, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
    let sa = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: passes a pointer to a live sockaddr_xdp and its exact size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_xdp).cast(),
            mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    cvt(r.into()).map(drop)
}

/// Asks the kernel to process the TX ring: `sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0)`.
pub(super) fn kick_tx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length send with NULL buffers; the kernel reads no user memory.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    cvt(r as libc::c_long).map(drop)
}

/// Wakes the kernel's RX processing (fill ring refilled while it was waiting):
/// `recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL)`.
pub(super) fn wake_rx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a zero-length receive with NULL buffers; the kernel writes no user memory.
    let r = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    cvt(r as libc::c_long).map(drop)
}

/// The index of the interface called `name` in the calling thread's network namespace.
pub(super) fn if_nametoindex(name: &CStr) -> Option<u32> {
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

/// A kernel object name (`map_name`, `prog_name`): at most 15 bytes, NUL-padded.
fn obj_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *o = b;
    }
    out
}

/// Runs `bpf(cmd, attr, size_of(attr))`.
fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised `#[repr(C)]` attribute struct without
    // padding whose pointer fields (if any) the callers point at live buffers that
    // outlive the call; the kernel reads/writes at most `size_of::<A>()` bytes of it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut A).cast::<libc::c_void>(),
            mem::size_of::<A>() as libc::c_uint,
        )
    };
    cvt(r)
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates an XSKMAP (`u32` queue index -> AF_XDP socket) with `max_entries` slots.
pub(super) fn xskmap_create(max_entries: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: obj_name("pw_xsks"),
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `map[key] = value` for a map with `u32` keys and values (`BPF_ANY`).
pub(super) fn map_update_u32(map: BorrowedFd<'_>, key: u32, value: u32) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads an XDP program. On failure the load is repeated with the verifier log on, and
/// the log's text is returned with the error.
pub(super) fn prog_load_xdp(
    insns: &[Insn],
    license: &CStr,
    prog_flags: u32,
) -> Result<OwnedFd, (io::Error, String)> {
    let load = |log: &mut [u8]| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags,
            prog_name: obj_name("pw_xsk_redir"),
            prog_ifindex: 0,
            expected_attach_type: BPF_XDP,
        };
        bpf(BPF_PROG_LOAD, &mut attr).map(owned)
    };
    load(&mut []).or_else(|_| {
        let mut log = vec![0u8; 64 * 1024];
        load(&mut log).map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            (
                e,
                String::from_utf8_lossy(&log[..end]).trim_end().to_string(),
            )
        })
    })
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `prog` to the interface `ifindex` through a BPF link (`XDP_FLAGS_*` mode
/// in `flags`); closing the returned fd detaches the program.
pub(super) fn link_create_xdp(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obj_names_are_cut_and_nul_padded() {
        assert_eq!(&obj_name("pw_xsks")[..8], b"pw_xsks\0");
        assert_eq!(obj_name("a_name_longer_than_fifteen")[15], 0);
    }

    /// A program the verifier rejects (r0 is read by `exit` but never written): the
    /// error carries the verifier's explanation. Needs root (CAP_BPF).
    #[test]
    fn rejected_program_returns_the_verifier_log() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP rejected_program_returns_the_verifier_log: needs root");
            return;
        }
        let exit_only = [super::super::prog::redirect_program(0)[5]]; // just `exit`
        let (err, log) = prog_load_xdp(&exit_only, c"GPL", 0).expect_err("verifier rejects");
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
        assert!(log.contains("R0 !read_ok"), "log: {log}");
    }
}
