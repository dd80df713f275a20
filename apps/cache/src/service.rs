//! The cache as a `tower::Service` of block requests.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::cache::{Cache, VolumeId};
use crate::error::CacheError;

/// A block request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRequest {
    /// Read `len` bytes from `offset`.
    Read {
        /// The volume.
        volume: VolumeId,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Write `data` at `offset`.
    Write {
        /// The volume.
        volume: VolumeId,
        /// First byte.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Write every dirty chunk back to the backend.
    Flush,
}

/// The answer to a [`BlockRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockResponse {
    /// The bytes read.
    Data(Vec<u8>),
    /// The write is acknowledged (durable as the write mode says).
    Written,
    /// Everything dirty reached the backend.
    Flushed,
}

/// A [`Cache`] as a `tower::Service<BlockRequest>`; always ready (the cache applies
/// its own back-pressure: fills wait for free slots).
#[derive(Debug, Clone)]
pub struct CacheService {
    cache: Cache,
}

impl CacheService {
    /// Serves `cache`.
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }
}

impl tower_service::Service<BlockRequest> for CacheService {
    type Response = BlockResponse;
    type Error = CacheError;
    type Future = Pin<Box<dyn Future<Output = Result<BlockResponse, CacheError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CacheError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: BlockRequest) -> Self::Future {
        let cache = self.cache.clone();
        Box::pin(async move {
            match req {
                BlockRequest::Read {
                    volume,
                    offset,
                    len,
                } => cache
                    .read(volume, offset, len)
                    .await
                    .map(BlockResponse::Data),
                BlockRequest::Write {
                    volume,
                    offset,
                    data,
                } => cache
                    .write(volume, offset, &data)
                    .await
                    .map(|()| BlockResponse::Written),
                BlockRequest::Flush => cache.flush().await.map(|()| BlockResponse::Flushed),
            }
        })
    }
}
