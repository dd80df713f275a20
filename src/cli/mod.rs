//! Subcommands of the `pipewright` tool.

#[cfg(feature = "cache")]
pub(crate) mod cache;
pub(crate) mod demo;
pub(crate) mod live;
#[cfg(feature = "nic")]
pub(crate) mod nic;
#[cfg(feature = "storage")]
pub(crate) mod storage;
