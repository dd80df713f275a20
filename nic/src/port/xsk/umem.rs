//! The UMEM: one anonymous mapping cut into equal power-of-two frames, registered with
//! the socket, plus the stack of frame addresses user space currently owns.
//!
//! A frame address is owned by exactly one side at a time: on the free stack (ours),
//! in the fill ring or the TX ring (the kernel's), or in an RX / completion descriptor
//! we have read (ours again). The kernel only writes frames it owns, so slices of
//! frames we own are not written behind our back.
#![allow(unsafe_code)]

use std::io;

use super::sys::Mmap;

/// Packet memory shared with the kernel.
#[derive(Debug)]
pub(super) struct Umem {
    map: Mmap,
    frame_size: u32,
    frames: u32,
    free: Vec<u64>,
}

/// Where `addr..addr + len` lies in a UMEM of `frames` frames of `frame_size` bytes,
/// as a byte range of the mapping, if it stays inside one frame.
pub(super) fn frame_range(addr: u64, len: usize, frame_size: u32, frames: u32) -> Option<usize> {
    let fs = u64::from(frame_size);
    let (index, offset) = (addr / fs, addr % fs);
    (index < u64::from(frames) && offset.saturating_add(len as u64) <= fs).then_some(addr as usize)
}

impl Umem {
    /// A zeroed UMEM of `frames` frames of `frame_size` bytes, every frame free.
    pub(super) fn new(frames: u32, frame_size: u32) -> io::Result<Self> {
        let map = Mmap::anonymous(frames as usize * frame_size as usize)?;
        let free = (0..u64::from(frames))
            .rev()
            .map(|i| i * u64::from(frame_size))
            .collect();
        Ok(Self {
            map,
            frame_size,
            frames,
            free,
        })
    }

    /// The mapping (for `XDP_UMEM_REG`).
    pub(super) fn mapping(&self) -> &Mmap {
        &self.map
    }

    /// Bytes per frame.
    pub(super) fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Takes a free frame.
    pub(super) fn alloc(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// Returns the frame holding `addr` to the free stack.
    pub(super) fn free(&mut self, addr: u64) {
        let base = addr - addr % u64::from(self.frame_size);
        // An address outside the UMEM (from a misbehaving kernel, already refused by
        // the reader) is no frame of ours: giving it out later would panic a worker.
        if base / u64::from(self.frame_size) >= u64::from(self.frames) {
            return;
        }
        debug_assert!(
            self.free.len() < self.frames as usize,
            "UMEM frame freed twice"
        );
        self.free.push(base);
    }

    /// Free frames.
    pub(super) fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// The `len` bytes at `addr` of a frame we own, or `None` if they leave the frame.
    pub(super) fn bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let at = frame_range(addr, len, self.frame_size, self.frames)?;
        // SAFETY: `at..at + len` lies inside the mapping (checked by `frame_range`), and
        // the frame is owned by user space (see the module docs), so the kernel does not
        // write it while the shared borrow of `self` lasts.
        Some(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at), len) })
    }

    /// The `len` bytes at `addr` of a frame we own, writable.
    pub(super) fn bytes_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let at = frame_range(addr, len, self.frame_size, self.frames)?;
        // SAFETY: as in `bytes`; the exclusive borrow of `self` makes this the only
        // reference to the range.
        Some(unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(at), len) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_inside_one_frame() {
        assert_eq!(frame_range(0, 2048, 2048, 4), Some(0));
        assert_eq!(frame_range(2048 + 256, 1792, 2048, 4), Some(2304));
        assert_eq!(frame_range(2048 + 256, 1793, 2048, 4), None);
        assert_eq!(frame_range(4 * 2048, 1, 2048, 4), None);
    }

    #[test]
    fn free_stack_round_trips() {
        let mut u = Umem::new(4, 2048).expect("anonymous mmap");
        let a = u.alloc().expect("a free frame");
        assert_eq!(a, 0);
        u.bytes_mut(a + 10, 3)
            .expect("inside")
            .copy_from_slice(b"abc");
        assert_eq!(u.bytes(a + 10, 3), Some(&b"abc"[..]));
        u.free(a + 300);
        assert_eq!(u.free_frames(), 4);
        // An address past the UMEM is not taken back.
        u.free(4 * 2048 + 5);
        assert_eq!(u.free_frames(), 4);
        assert_eq!(u.alloc(), Some(0));
    }
}
