//! The host memory a guest runs on: anonymous and file-backed `mmap`s, and the
//! `/proc` readers the accounting and the isolation checks use.
//!
//! Everything `unsafe` about host virtual memory lives in [`GuestMemory`]: it owns one
//! reserved range of the process's address space, hands out bounds-checked copies in and
//! out, and can overlay parts of itself with `MAP_PRIVATE` views of a content store file
//! (the kernel then shares the store's physical pages until a write copies one).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The page size guests, images and the content store use.
pub const PAGE: usize = 4096;

/// One owned range of this process's virtual memory (guest RAM as the host sees it), unmapped on drop.
#[derive(Debug)]
pub struct GuestMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving it to another thread
// moves the ownership with it.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// A private anonymous read-write range of `len` bytes (rounded up to a page),
    /// zero-filled on first touch and not charged against overcommit until touched.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        let len = len.div_ceil(PAGE).max(1) * PAGE;
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses cannot alias
        // any memory Rust knows about; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Replace `pages` pages of this range, starting at page `at`, with a private
    /// copy-on-write view of `file` starting at file page `file_page`.
    pub(crate) fn overlay_private(
        &mut self,
        at: usize,
        pages: usize,
        file: &File,
        file_page: u64,
    ) -> io::Result<()> {
        let end = at
            .checked_add(pages)
            .and_then(|e| e.checked_mul(PAGE))
            .ok_or_else(|| io::Error::other("overlay out of range"))?;
        if end > self.len || pages == 0 {
            return Err(io::Error::other("overlay out of range"));
        }
        // SAFETY: the target range lies inside this mapping (checked above), which this
        // value owns exclusively; MAP_FIXED replaces exactly those pages, and no Rust
        // reference into them is alive (all access goes through copies in `read`/`write`).
        let ptr = unsafe {
            libc::mmap(
                self.ptr.add(at * PAGE).cast(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                (file_page * PAGE as u64) as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Replace `pages` pages at page `at` with fresh private anonymous memory (zeros).
    pub(crate) fn overlay_anonymous(&mut self, at: usize, pages: usize) -> io::Result<()> {
        let end = at
            .checked_add(pages)
            .and_then(|e| e.checked_mul(PAGE))
            .ok_or_else(|| io::Error::other("overlay out of range"))?;
        if end > self.len || pages == 0 {
            return Err(io::Error::other("overlay out of range"));
        }
        // SAFETY: as in `overlay_private`: the range lies inside this owned mapping and no
        // Rust reference into it exists.
        let ptr = unsafe {
            libc::mmap(
                self.ptr.add(at * PAGE).cast(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Advise the kernel about the whole range (`MADV_NOHUGEPAGE`, `MADV_MERGEABLE`, ...).
    pub fn advise(&self, advice: libc::c_int) -> io::Result<()> {
        // SAFETY: madvise on a range this value owns; it changes no memory contents.
        let r = unsafe { libc::madvise(self.ptr.cast(), self.len, advice) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A private anonymous range holding a plain copy of `bytes` (rounded up to a page).
    pub fn copied(bytes: &[u8]) -> io::Result<Self> {
        let mut m = Self::anonymous(bytes.len())?;
        m.write(0, bytes)?;
        Ok(m)
    }

    /// Start address in this process.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Length in bytes (a multiple of [`PAGE`]).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `out.len()` bytes starting at `offset` out of the range.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> io::Result<()> {
        self.check(offset, out.len())?;
        // SAFETY: bounds checked; the source is mapped readable memory of this value and
        // the destination is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Copy `data` into the range at `offset`.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        // SAFETY: bounds checked; the destination is writable memory owned by this value
        // and the source is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
        Ok(())
    }

    fn check(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::other("access outside the mapping")),
        }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by this value and nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Memory figures of one process from `/proc/PID/smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcMemory {
    /// Resident set size: every page mapped, shared or not.
    pub rss: u64,
    /// Proportional set size: each shared page divided among its sharers.
    pub pss: u64,
    /// Unique set size: pages mapped by this process only (private clean + dirty).
    pub uss: u64,
    /// Anonymous memory (includes copy-on-write copies of broken shared pages).
    pub anonymous: u64,
}

/// Parse the text of a `smaps_rollup` (or the sum of an `smaps` excerpt).
pub fn parse_smaps(text: &str) -> ProcMemory {
    let mut m = ProcMemory::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(kib) = val.parse::<u64>() else {
            continue;
        };
        let bytes = kib * 1024;
        match key {
            "Rss:" => m.rss += bytes,
            "Pss:" => m.pss += bytes,
            "Private_Clean:" | "Private_Dirty:" => m.uss += bytes,
            "Anonymous:" => m.anonymous += bytes,
            _ => {}
        }
    }
    m
}

/// RSS/PSS/USS of process `pid`.
pub fn proc_memory(pid: u32) -> io::Result<ProcMemory> {
    Ok(parse_smaps(&std::fs::read_to_string(format!(
        "/proc/{pid}/smaps_rollup"
    ))?))
}

/// Bytes of anonymous memory (copy-on-write copies and touched zero pages) that process
/// `pid` has inside `[start, start+len)`: the guest image pages it broke.
pub fn anonymous_in_range(pid: u32, start: u64, len: u64) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let end = start + len;
    let mut total = 0;
    let mut inside = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = a >= start && b <= end;
                continue;
            }
        }
        if inside {
            if let Some(rest) = line.strip_prefix("Anonymous:") {
                if let Some(kib) = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    total += kib * 1024;
                }
            }
        }
    }
    Ok(total)
}

/// Physical frame numbers of `pages` pages of process `pid` starting at virtual address
/// `start` (`None` for a page not present). Needs root (without `CAP_SYS_ADMIN` the kernel
/// reports every frame as 0, which this function turns into an error).
pub fn frames(pid: u32, start: u64, pages: usize) -> io::Result<Vec<Option<u64>>> {
    use std::os::unix::fs::FileExt;
    let f = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut buf = vec![0u8; pages * 8];
    f.read_exact_at(&mut buf, start / PAGE as u64 * 8)?;
    let mut out = Vec::with_capacity(pages);
    let mut any_present = false;
    let mut any_frame = false;
    for e in buf.chunks_exact(8) {
        let v = u64::from_le_bytes(e.try_into().expect("8 bytes"));
        let present = v & (1 << 63) != 0;
        let pfn = v & ((1 << 55) - 1);
        any_present |= present;
        any_frame |= present && pfn != 0;
        out.push(present.then_some(pfn));
    }
    if any_present && !any_frame {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "pagemap hides frame numbers (run as root)",
        ));
    }
    Ok(out)
}

/// Waits until `fd` has something to read (or its writer closed it), at most `within`;
/// false on timeout.
pub(crate) fn wait_readable(fd: &impl AsRawFd, within: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid `pollfd` on this stack frame for the call's duration; the
        // descriptor is borrowed from `fd`, open for the whole call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_copies_in_and_out_and_refuses_out_of_range() {
        let mut m = GuestMemory::anonymous(3 * PAGE).unwrap();
        m.write(PAGE - 2, b"abcd").unwrap();
        let mut b = [0u8; 4];
        m.read(PAGE - 2, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        assert!(m.read(3 * PAGE - 1, &mut b).is_err());
        assert!(m.write(usize::MAX, b"x").is_err());
    }

    proptest::proptest! {
        /// Any text parses without panicking; known keys add up exactly.
        #[test]
        fn smaps_parser_takes_any_text(junk in ".{0,200}", rss in 0u64..1 << 30, pss in 0u64..1 << 30) {
            let _ = parse_smaps(&junk);
            let m = parse_smaps(&format!("{junk}\nRss: {rss} kB\nPss: {pss} kB\n"));
            proptest::prop_assert!(m.rss >= rss * 1024 && m.pss >= pss * 1024);
        }
    }

    #[test]
    fn smaps_rollup_parses() {
        let t = "00400000-7fff [rollup]\nRss: 100 kB\nPss: 50 kB\nPrivate_Clean: 10 kB\nPrivate_Dirty: 20 kB\nAnonymous: 7 kB\n";
        let m = parse_smaps(t);
        assert_eq!(m.rss, 100 * 1024);
        assert_eq!(m.pss, 50 * 1024);
        assert_eq!(m.uss, 30 * 1024);
        assert_eq!(m.anonymous, 7 * 1024);
    }
}
