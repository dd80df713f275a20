//! A pool of frame buffers, so that the steady state allocates nothing: stages take
//! frames a burst at a time and whoever finishes with a frame gives it back.

use std::sync::Mutex;

use crate::Frame;

/// Shared free list of frames of one size class.
#[derive(Debug)]
pub struct FramePool {
    free: Mutex<Vec<Frame>>,
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

    /// Returns frames; those beyond the pool's limit (or of another size) are freed.
    pub fn give_back(&self, frames: impl IntoIterator<Item = Frame>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for f in frames {
            if free.len() < self.max_free && f.buffer_len() == self.headroom + self.capacity {
                free.push(f);
            }
        }
    }

    /// Idle frames held.
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
