//! Subcommands of the `pipewright` tool.

#[cfg(feature = "balance")]
pub(crate) mod balance;
#[cfg(feature = "cache")]
pub(crate) mod cache;
pub(crate) mod demo;
#[cfg(feature = "failures")]
pub(crate) mod failures;
pub(crate) mod live;
#[cfg(feature = "memshare")]
pub(crate) mod memshare;
#[cfg(feature = "nic")]
pub(crate) mod nic;
#[cfg(feature = "storage")]
pub(crate) mod storage;
pub(crate) mod top;
