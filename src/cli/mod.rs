//! Subcommands of the `pipewright` tool.

pub(crate) mod demo;
pub(crate) mod live;
#[cfg(feature = "memshare")]
pub(crate) mod memshare;
#[cfg(feature = "nic")]
pub(crate) mod nic;
#[cfg(feature = "storage")]
pub(crate) mod storage;
