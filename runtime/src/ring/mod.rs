//! Bounded lock-free rings that carry bursts between workers.
//!
//! Written here rather than taken from a crate because the hot path needs burst moves
//! straight from and into the stages' `VecDeque` buffers, a close protocol that the
//! drain logic relies on, and loom models of exactly that code. Both rings have
//! cache-padded indices, allocate only when created, and never block: a full ring
//! returns the items it could not take, which is how backpressure reaches the producer.

mod mpsc;
mod spsc;

pub use mpsc::{MpscConsumer, MpscProducer, PushError};
pub use spsc::{SpscConsumer, SpscProducer};

/// Makes an SPSC ring of at least `capacity` slots (rounded up to a power of two).
pub fn spsc<T>(capacity: usize) -> (SpscProducer<T>, SpscConsumer<T>) {
    spsc::new(capacity)
}

/// Makes an MPSC ring of at least `capacity` slots for `producers` producer handles.
pub fn mpsc<T>(capacity: usize, producers: usize) -> (Vec<MpscProducer<T>>, MpscConsumer<T>) {
    mpsc::new(capacity, producers)
}

pub(crate) fn slots_for(capacity: usize) -> usize {
    capacity.max(2).next_power_of_two()
}
