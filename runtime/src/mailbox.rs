//! Live re-planning: commands sent to workers, and stages handed between them.
//!
//! A stage moves at a burst boundary: its worker detaches it (with its input buffer,
//! pending output and its edge ends), points the stage's [`Owner`] at the new worker,
//! and posts it there. Edges are untouched — rings and fused buffers work from any
//! thread — so no item is lost, duplicated or reordered by a move.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pipewright_stages::exec::ErasedNode;

use crate::signal::{Owner, Signal};
use crate::transport::RingTransport;

/// A command for one worker.
pub(crate) enum Command {
    /// Stop running node `node` and hand it to worker `to`.
    Detach { node: usize, to: usize },
    /// Start running this node.
    Attach {
        node: usize,
        boxed: Box<dyn ErasedNode<RingTransport>>,
    },
    /// Set node `node`'s burst size.
    SetBurst { node: usize, burst: usize },
}

/// One mailbox per worker.
pub(crate) struct Mailboxes {
    boxes: Vec<Mutex<Vec<Command>>>,
    flags: Vec<AtomicBool>,
    signals: Vec<Arc<Signal>>,
    /// The owner of every movable (sync) node; `None` for async nodes.
    pub(crate) owners: Vec<Option<Arc<Owner>>>,
}

impl std::fmt::Debug for Mailboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailboxes")
            .field("workers", &self.boxes.len())
            .finish()
    }
}

impl Mailboxes {
    pub(crate) fn new(signals: Vec<Arc<Signal>>, owners: Vec<Option<Arc<Owner>>>) -> Self {
        Self {
            boxes: signals.iter().map(|_| Mutex::new(Vec::new())).collect(),
            flags: signals.iter().map(|_| AtomicBool::new(false)).collect(),
            signals,
            owners,
        }
    }

    /// Posts `command` to `worker` and wakes it.
    pub(crate) fn send(&self, worker: usize, command: Command) {
        self.boxes[worker]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(command);
        self.flags[worker].store(true, Ordering::Release);
        self.signals[worker].notify();
    }

    /// Takes `worker`'s commands, if any (one atomic load when there are none).
    #[inline]
    pub(crate) fn take(&self, worker: usize, into: &mut Vec<Command>) -> bool {
        if !self.flags[worker].load(Ordering::Acquire)
            || !self.flags[worker].swap(false, Ordering::AcqRel)
        {
            return false;
        }
        into.append(&mut self.boxes[worker].lock().unwrap_or_else(|p| p.into_inner()));
        true
    }

    /// Wakes every worker (the last stage finished, or an abort).
    pub(crate) fn wake_all(&self) {
        for s in &self.signals {
            s.notify();
        }
    }
}
