//! A pool of frame buffers, so that the steady state allocates nothing: stages take
//! frames a burst at a time and whoever finishes with a frame gives it back.

use std::sync::Mutex;

use crate::Frame;

/// Room of the pool's large frames ([`FramePool::take_large`]): a 64 KiB TSO/GRO
/// super-frame with its link headers.
pub(crate) const LARGE_FRAME_CAPACITY: usize = 65_536 + 1024;
/// Idle large frames a pool keeps.
const MAX_FREE_LARGE: usize = 64;

/// Shared free lists of frames: one size class for packets, and a few large frames
/// for super-frames.
#[derive(Debug)]
pub struct FramePool {
    free: Mutex<Vec<Frame>>,
    large: Mutex<Vec<Frame>>,
    headroom: usize,
    capacity: usize,
    max_free: usize,
}

impl FramePool {
    /// A pool of frames with `headroom` bytes in front and room for `capacity` bytes,
    /// keeping at most `max_free` idle frames.
    pub fn new(headroom: usize, capacity: usize, max_free: usize) -> Self {
        Self {
            free: Mutex::new(Vec::with_capacity(max_free)),
            large: Mutex::new(Vec::new()),
            headroom,
            capacity,
            max_free,
        }
    }

    /// Takes `n` empty frames into `into` (allocating only if the pool runs dry).
    pub fn take(&self, n: usize, into: &mut Vec<Frame>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let from_pool = n.min(free.len());
        let start = free.len() - from_pool;
        into.extend(free.drain(start..));
        drop(free);
        for _ in from_pool..n {
            into.push(Frame::with_capacity(self.headroom, self.capacity));
        }
        for f in into.iter_mut().rev().take(n) {
            f.clear(self.headroom);
        }
    }

    /// Takes one empty frame.
    pub fn take_one(&self) -> Frame {
        let mut one = Vec::with_capacity(1);
        self.take(1, &mut one);
        one.pop().expect("take(1) yields one frame")
    }

    /// Takes one empty large frame: room for a 64 KiB super-frame with its link
    /// headers (read whole, without a copy), recycled like the others.
    pub fn take_large(&self) -> Frame {
        let idle = self.large.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut f =
            idle.unwrap_or_else(|| Frame::with_capacity(self.headroom, LARGE_FRAME_CAPACITY));
        f.clear(self.headroom);
        f
    }

    /// Bytes a frame from [`FramePool::take`] holds after its headroom.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Returns frames; those beyond the pool's limits (or of another size) are freed.
    pub fn give_back(&self, frames: impl IntoIterator<Item = Frame>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let mut large = None;
        for f in frames {
            if f.buffer_len() == self.headroom + self.capacity {
                if free.len() < self.max_free {
                    free.push(f);
                }
            } else if f.buffer_len() == self.headroom + LARGE_FRAME_CAPACITY {
                let large = large
                    .get_or_insert_with(|| self.large.lock().unwrap_or_else(|p| p.into_inner()));
                if large.len() < MAX_FREE_LARGE {
                    large.push(f);
                }
            }
        }
    }

    /// Idle frames held.
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
