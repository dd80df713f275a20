//! pipewright's software NIC: the packet path of an SR-IOV NIC with stateless tunnel
//! offload, as pipewright stages over bursts of frames.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![deny(unsafe_code)]

#[cfg(not(loom))]
pub mod dataplane;
#[cfg(not(loom))]
mod frame;
#[cfg(not(loom))]
pub mod host;
#[cfg(not(loom))]
pub mod offload;
#[cfg(not(loom))]
pub mod pipeline;
#[cfg(not(loom))]
mod pool;
#[cfg(not(loom))]
pub mod port;
pub mod rules;
pub(crate) mod sync;
#[cfg(not(loom))]
pub mod tunnel;
#[cfg(not(loom))]
pub mod wire;

#[cfg(not(loom))]
pub use frame::{Frame, FrameMeta, Gso, GsoKind, PartialCsum, DEFAULT_HEADROOM};
#[cfg(not(loom))]
pub use pool::FramePool;
