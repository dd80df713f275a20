//! The crate's errors.

use std::io;

/// What went wrong serving a block request or running the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The request names a volume the backend does not have.
    #[error("unknown volume {0:?}: list the backend's volumes (files in the backend directory, objects in the bucket)")]
    UnknownVolume(String),
    /// The request reaches past the end of the volume.
    #[error("request [{offset}, {offset}+{len}) is outside volume {volume:?} of {size} bytes")]
    OutOfRange {
        /// The volume.
        volume: String,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The volume's size.
        size: u64,
    },
    /// The backend failed a fetch, a write-back or a sync.
    #[error("backend error on volume {volume:?}: {source}; check the backend's path or endpoint and retry")]
    Backend {
        /// The volume.
        volume: String,
        /// What the backend said.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the cache file failed.
    #[error("cache file I/O failed: {0}; check the device and free space")]
    Io(#[from] io::Error),
    /// The metadata store failed.
    #[error("metadata store failed: {0}; the cache stops accepting writes it cannot record")]
    Meta(String),
    /// The cache file exists with another geometry than configured.
    #[error("cache file {path} has {found}, configured {wanted}: remove the file (and its .meta) to reformat, or use its geometry")]
    GeometryMismatch {
        /// The file.
        path: String,
        /// What the header says.
        found: String,
        /// What the configuration asks.
        wanted: String,
    },
    /// The configuration is not usable.
    #[error("invalid cache configuration: {0}")]
    Config(String),
    /// No cache slot could be freed for a fill.
    #[error("no cache slot could be freed in {waited_secs} s: every slot is being filled, or the metadata store fails the commits that free them; check the metadata store's disk, or give the cache more chunks")]
    NoFreeSlot {
        /// How long the fill waited.
        waited_secs: u64,
    },
    /// Opening would discard acknowledged writes that were never written back.
    #[error("{chunks} cached chunks hold writes not yet written back ({where_}); opening would discard them, so the cache is not opened: {what_to_do}")]
    UnflushedWritesUnreachable {
        /// How many chunks hold unflushed writes.
        chunks: usize,
        /// Which volumes, or which file.
        where_: String,
        /// What the operator can do.
        what_to_do: String,
    },
    /// A dirty block failed its checksum: its acknowledged data cannot be written back.
    #[error("dirty block {block} of chunk {chunk} of volume {volume:?} failed its checksum; the cache file is damaged, its unflushed write is lost")]
    DirtyBlockCorrupt {
        /// The volume.
        volume: String,
        /// Chunk number in the volume.
        chunk: u64,
        /// Block in the chunk.
        block: u32,
    },
    /// The request pipeline could not be built or started on the runtime.
    #[error("the cache's request pipeline could not start: {0}; check the plan (cores, workers)")]
    Pipeline(String),
    /// The cache is closed.
    #[error("the cache is closed; open it again to serve requests")]
    Closed,
    /// [`Cache::close`](crate::Cache::close) could not write every dirty block back
    /// within the flush deadline.
    #[error("closing: {dirty_chunks} chunks still dirty after the flush deadline of {deadline_ms} ms; their dirty state is durable and the next open writes them back (check the backend, or raise the flush deadline)")]
    CloseDeadline {
        /// The deadline.
        deadline_ms: u64,
        /// Chunks still dirty.
        dirty_chunks: u64,
    },
}

impl CacheError {
    pub(crate) fn meta(e: impl std::fmt::Display) -> Self {
        CacheError::Meta(e.to_string())
    }
}
