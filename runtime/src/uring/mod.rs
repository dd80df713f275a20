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
//! The ring is a resource of the plan: stages declare a [`UringBudget`](crate::UringBudget)
//! (submission entries, fixed-buffer slots) and each worker's ring is sized by the
//! sum over its stages. A [`BufferPool`] is a stage's I/O memory budget; on a worker
//! whose ring has fixed-buffer slots, the pool is registered on first use and reads
//! into it are `READ_FIXED`.
//!
//! A stage that keeps operations in flight across bursts holds them as [`InFlight`]
//! (`Send`, awaited later on the same worker) and reports them through
//! `AsyncStage::pending`/`progress`.
//!
//! Stages built on it: [`FileSink`] (appends with group commit, records acknowledged
//! only once durable; per burst, or pipelined: one write + linked sync in flight while
//! the next batch gathers) and [`FileReader`] (reads ranges of a file, a burst of
//! reads in flight at once).

mod buffers;
mod bufring;
mod driver;
mod file;
mod in_flight;
mod ops;
mod sink;
mod udp;

pub use buffers::{BufferPool, PooledBuf};
pub(crate) use driver::configure;
pub use driver::{current_config, fixed_buffers_registered, UringConfig};
pub use file::{Chunk, ChunkBytes, FileReader, ReadRange};
pub use in_flight::{
    start_read, start_read_pooled, start_write_pooled, write_then_sync, InFlight, WriteThenSync,
};
pub use ops::{fdatasync, read_at, read_pooled, write_at, write_pooled};
pub use sink::{Durable, FileSink, SinkRecord, SinkStats};
pub use udp::{Received, UdpConfig, UdpCounters, UdpRing, MAX_SLICES};
