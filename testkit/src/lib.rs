//! Helpers for pipewright's own tests (a dev-dependency only; never published).
//!
//! - **Skip or require.** A test that needs something outside the crate — a program
//!   (`ping`, `tshark`), a privilege (root, network namespaces), a kernel feature
//!   (io_uring, AF_XDP) — checks for it first. Missing, the test prints ONE line naming
//!   what is missing and how to get it, and returns early; with the matching
//!   `PIPEWRIGHT_REQUIRE_<THING>=1` set (CI sets them all), it fails instead, saying
//!   that the tool is missing. See [`require`], [`require_that`], [`netns`],
//!   [`io_uring()`], [`af_xdp`].
//! - **[`CountingAlloc`]**: a global allocator that counts allocations and tracks
//!   blocks of one watched size, for "no allocation per item" and memory-bound tests.
//! - **[`Partition`]**: a network partition made by the kernel's firewall (nftables):
//!   every packet from or to some addresses dropped until it heals; [`nftables`]
//!   checks it can be made here.
//! - **[`tshark`]**: runs Wireshark's CLI on a capture and returns its fields, the
//!   independent decoder of the NIC's frames.
//!
//! ```
//! use pipewright_testkit::{require, PING};
//!
//! // A test that pings a peer starts with this: when `ping` is missing it prints
//! // `skipped <test>: ping not found (Debian package iputils-ping); set
//! // PIPEWRIGHT_REQUIRE_PING=1 to fail instead` and returns (or, with that variable
//! // set, fails saying ping is missing).
//! if !PING.require() {
//!     return;
//! }
//! assert!(std::process::Command::new("ping").arg("-V").status().is_ok());
//!
//! // The same for any program, by name:
//! if !require("ip", "iproute2", "PIPEWRIGHT_REQUIRE_NETNS") {
//!     return;
//! }
//! ```

mod alloc;
mod need;
mod partition;
pub mod tshark;

pub use alloc::CountingAlloc;
pub use need::{af_xdp, find_tool, io_uring, netns, require, require_that, Tool, IP, PING, TSHARK};
pub use partition::{nftables, Partition, NFT};
