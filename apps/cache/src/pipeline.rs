//! The request path as a pipewright pipeline:
//!
//! ```text
//!  requests ──▶ lookup (router: resident? ) ──hit──▶ hit  (read cached blocks, verify id + CRC) ─┐
//!                                           ──miss─▶ fill (fetch chunk, store, publish, read)   ├─▶ reply
//!                                           ──other▶ write (write-back / write-through, flush) ─┘
//! ```
//!
//! Each branch is an async stage that serves its whole burst concurrently (one future
//! per burst joining the requests) and answers each request's ticket: the reply. The
//! pipeline runs on the pipewright runtime and is served as a `tower::Service` by
//! [`PipelineService`].

use futures::future::join_all;
use pipewright_runtime::{
    AsyncStage, Burst, Failures, InputId, Outbox, PipelineBuilder, PipelineService, Plan, Running,
    Runtime, Tagged,
};

use crate::cache::Cache;
use crate::error::CacheError;
use crate::service::{BlockRequest, BlockResponse};

/// What a request through the pipeline is answered with.
pub type PipelineReply = Result<BlockResponse, CacheError>;

/// A request carried through the pipeline with its completion.
pub type TaggedRequest = Tagged<BlockRequest, PipelineReply>;

const HIT: usize = 0;
const MISS: usize = 1;
const OTHER: usize = 2;

/// One branch's stage: serves its burst concurrently and answers every request.
struct Serve {
    cache: Cache,
}

impl AsyncStage for Serve {
    type In = TaggedRequest;
    type Out = ();
    type Error = std::convert::Infallible;

    async fn process_burst(
        &mut self,
        burst: &mut Burst<'_, TaggedRequest>,
        _out: &mut Outbox<'_, ()>,
        _failures: &mut Failures<'_, Self::Error>,
    ) {
        let mut jobs = Vec::new();
        while let Some(t) = burst.pop() {
            let (ticket, value) = t.into_parts();
            match value {
                Ok(req) => jobs.push((ticket, req)),
                Err(e) => {
                    ticket.answer(Err(e));
                }
            }
        }
        let cache = &self.cache;
        join_all(jobs.into_iter().map(|(ticket, req)| async move {
            let result = match req {
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
            };
            ticket.answer(Ok(result));
        }))
        .await;
    }
}

/// Adds the cache's request path to `b`; returns its input.
pub fn request_path(b: &PipelineBuilder, cache: Cache) -> InputId<TaggedRequest> {
    let (input, requests) = b.input::<TaggedRequest>("requests");
    let lookup_cache = cache.clone();
    let [hit, miss, other] =
        requests.route::<3, _>("lookup", move |t: &TaggedRequest| match t.value() {
            Ok(BlockRequest::Read {
                volume,
                offset,
                len,
            }) if lookup_cache.is_resident(*volume, *offset, *len) => HIT,
            Ok(BlockRequest::Read { .. }) => MISS,
            _ => OTHER,
        });
    hit.sink_async(
        "hit",
        Serve {
            cache: cache.clone(),
        },
    );
    miss.sink_async(
        "fill",
        Serve {
            cache: cache.clone(),
        },
    );
    other.sink_async("write", Serve { cache });
    input
}

/// Starts the request path on the pipewright runtime with `plan`; returns the running
/// pipeline (for snapshots, drain, shutdown) and the `tower::Service` in front of it.
pub fn start(
    cache: Cache,
    plan: Plan,
) -> Result<(Running, PipelineService<BlockRequest, PipelineReply>), CacheError> {
    let b = PipelineBuilder::new();
    let input = request_path(&b, cache);
    let pipeline = b.build().map_err(|e| CacheError::Pipeline(e.to_string()))?;
    let running =
        Runtime::start(pipeline, plan).map_err(|e| CacheError::Pipeline(e.to_string()))?;
    let service = PipelineService::new(running.input(&input).expect("the input exists"));
    Ok((running, service))
}
