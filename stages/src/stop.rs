//! The flag a stop handle raises to end every source of a running pipeline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared between an executor's stop handle and the pipeline's source nodes: once
/// raised, every source ends at its next safe point (a sync source before its next
/// pull, an async source at the await it is parked in) and the pipeline drains.
///
/// Executors bind one into every node with
/// [`ErasedNode::bind_stop`](crate::exec::ErasedNode::bind_stop); users get the
/// runtime's `StopHandle` instead.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag (idempotent). The executor must then wake its sources.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once raised.
    #[inline]
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
