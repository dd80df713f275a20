//! io_uring as a worker resource.
//!
//! Every worker that runs an I/O stage owns one io_uring, created on first use and
//! driven together with the worker's tokio runtime: the ring's eventfd is registered
//! with tokio, and a task on the worker reaps completions and wakes the futures
//! waiting for them. Async stages submit reads, writes and syncs through it and
//! await completions ([`write_at`], [`read_at`], [`fdatasync`]); the operations own
//! their buffers until the kernel is done with them, even if the awaiting future is
//! dropped.
//!
//! Stages built on it: [`FileSink`] (appends with group commit: one write and one
//! `fdatasync` per burst, records acknowledged only once durable) and [`FileReader`]
//! (reads ranges of a file, a burst of reads in flight at once).

mod driver;
mod file;

pub use driver::{fdatasync, read_at, write_at, UringConfig};
pub use file::{Chunk, Durable, FileReader, FileSink, ReadRange};
