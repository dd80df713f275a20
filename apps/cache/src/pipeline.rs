//! The request path as a pipewright pipeline:
//!
//! ```text
//!  requests ──▶ lookup (router: resident? ) ──hit──▶ hit#0 / hit#1 (read cached blocks, verify id + CRC) ─┐
//!                                           ──miss─▶ fill (fetch chunk, store, publish; answer from it) ├─▶ reply
//!                                           ──other▶ write (write-back / write-through, flush)          ─┘
//! ```
//!
//! `hit` is a replicated async stage (two unordered replicas, `hit#0` and `hit#1`):
//! each burst of hits goes to the replica with the least waiting, so that a plan can
//! serve them on two workers ([`gateway_plan`]) and a replica stuck behind slow reads
//! gets fewer.
//!
//! Each branch is an async stage that keeps up to [`IN_FLIGHT`] requests in flight
//! across bursts: every request runs as its own task on the stage's worker and answers
//! its ticket (the reply) the moment it completes, so a fast hit never waits for a
//! slow miss of its burst, and the stage takes the next burst while earlier requests
//! are still in flight (the runtime keeps the stage's output open while
//! [`AsyncStage::pending`] is non-zero). At [`IN_FLIGHT`] the stage stops taking
//! requests until one completes: that is the back-pressure.
//!
//! The stages run on pipewright workers, so their block I/O goes through the worker's
//! io_uring (the chunk store's io_uring path): reads of a block range are one read of
//! the data and one of its tags, in flight together, into buffers of `BufferPool`s the
//! three stages share (data buffers of up to 256 KiB and of whole chunks, tag
//! buffers), registered with the worker's ring as fixed buffers: [`start`] declares a
//! `UringBudget` for each stage ([`uring_budget`]). A
//! read inside one chunk is answered with the pooled buffer itself
//! ([`ReadBuf`]), which the NBD server writes to its socket without a copy; the pool
//! is never waited for (an exhausted pool reads into a heap buffer instead), so a
//! client that stops reading its replies cannot starve the others. The pipeline is
//! served as a `tower::Service` by [`PathService`]: [`PipelineService`] in front of
//! the pipeline, with whole-block reads the cache's memory tier holds answered in the
//! caller's task (no hop to the worker and back).

use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use pipewright_runtime::{
    AsyncStage, Burst, Failures, InputId, Outbox, Pin, PipelineBuilder, PipelineService, Plan,
    Replicas, RequestError, ResponseFuture, Running, Runtime, Tagged, UringBudget,
};
use pipewright_stages::Answers;
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::error::CacheError;
use crate::service::{BlockRequest, BlockResponse};
pub use crate::store::ReadBuf;
use crate::store::Uring;

/// What the request path answers a request with.
#[derive(Debug, PartialEq, Eq)]
pub enum PathResponse {
    /// The bytes read (see [`ReadBuf`]).
    Data(ReadBuf),
    /// The write is acknowledged (durable as the write mode says).
    Written,
    /// Everything dirty reached the backend.
    Flushed,
}

impl From<PathResponse> for BlockResponse {
    fn from(r: PathResponse) -> Self {
        match r {
            PathResponse::Data(d) => BlockResponse::Data(d.into_vec()),
            PathResponse::Written => BlockResponse::Written,
            PathResponse::Flushed => BlockResponse::Flushed,
        }
    }
}

/// What a request through the pipeline is answered with.
pub type PipelineReply = Result<PathResponse, CacheError>;

/// A request carried through the pipeline with its completion.
pub type TaggedRequest = Tagged<BlockRequest, PipelineReply>;

/// Requests each of the hit, fill and write stages keeps in flight.
pub const IN_FLIGHT: usize = 64;

const HIT: usize = 0;
const MISS: usize = 1;
const OTHER: usize = 2;
/// Replicas of the `hit` stage.
const HIT_REPLICAS: usize = 2;

/// The io_uring budget each stage of the request path declares for `cache`: its
/// requests in flight (two operations each) and fixed-buffer slots for the pools the
/// three stages share (data buffers in two size classes, tag buffers).
pub fn uring_budget(cache: &Cache) -> UringBudget {
    let buffers: usize = crate::store::pool_classes(cache.chunk_size())
        .iter()
        .map(|c| c.1)
        .sum();
    UringBudget {
        sq_entries: (2 * IN_FLIGHT as u32).next_power_of_two(),
        fixed_buffers: 2 * buffers as u32,
    }
}

/// One branch's stage: serves each request as its own task on the worker, up to
/// [`IN_FLIGHT`] at once across bursts.
struct Serve {
    cache: Cache,
    io: Arc<Uring>,
    in_flight: FuturesUnordered<JoinHandle<()>>,
}

impl Serve {
    fn new(cache: Cache, io: Arc<Uring>) -> Self {
        Self {
            cache,
            io,
            in_flight: FuturesUnordered::new(),
        }
    }

    fn settle(done: Result<(), tokio::task::JoinError>) {
        if let Err(e) = done {
            // The request's ticket was dropped with its task: the caller sees the
            // request failed; the stage carries on.
            metrics::counter!("cache_request_task_failures_total").increment(1);
            eprintln!("pipewright-cache: a request task failed: {e}");
        }
    }
}

async fn serve(cache: &Cache, io: &Uring, req: BlockRequest) -> PipelineReply {
    match req {
        BlockRequest::Read {
            volume,
            offset,
            len,
        } => cache
            .read_with(io, volume, offset, len)
            .await
            .map(PathResponse::Data),
        BlockRequest::Write {
            volume,
            offset,
            data,
        } => cache
            .write_with(io, volume, offset, std::borrow::Cow::Owned(data))
            .await
            .map(|()| PathResponse::Written),
        BlockRequest::Flush => cache.flush().await.map(|()| PathResponse::Flushed),
    }
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
        while !burst.is_empty() {
            if self.in_flight.len() >= IN_FLIGHT {
                if let Some(done) = self.in_flight.next().await {
                    Self::settle(done);
                }
                continue;
            }
            let Some(t) = burst.pop() else { break };
            let (ticket, value) = t.into_parts();
            match value {
                Ok(req) => {
                    let (cache, io) = (self.cache.clone(), self.io.clone());
                    // Its own task on this worker (the io_uring futures are the
                    // worker's): it answers as soon as it completes.
                    self.in_flight.push(tokio::task::spawn_local(async move {
                        let reply = serve(&cache, &io, req).await;
                        ticket.answer(Ok(reply));
                    }));
                }
                Err(e) => {
                    ticket.answer(Err(e));
                }
            }
        }
        // Reap what has finished, without waiting.
        while let Some(Some(done)) = self.in_flight.next().now_or_never() {
            Self::settle(done);
        }
    }

    fn pending(&self) -> usize {
        self.in_flight.len()
    }

    async fn progress(
        &mut self,
        _out: &mut Outbox<'_, ()>,
        _failures: &mut Failures<'_, Self::Error>,
    ) {
        // Cancel-safe: a dropped `next()` leaves the task in the set.
        if let Some(done) = self.in_flight.next().await {
            Self::settle(done);
        }
    }
}

/// Adds the cache's request path to `b`; returns its input. Its stages (`hit` and its
/// replicas, `fill`, `write`) should get [`uring_budget`] in the plan ([`start`] does that).
pub fn request_path(
    b: &PipelineBuilder,
    cache: Cache,
) -> Result<InputId<TaggedRequest>, CacheError> {
    let io = Arc::new(Uring::new(cache.chunk_size(), cache.block_size())?);
    debug_assert_eq!(io.fixed_buffers(), uring_budget(&cache).fixed_buffers);
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
    // Hits on two replicas, so that a plan can serve them on two workers (a run of
    // large hits, such as a sequential scan, is copied and checksummed on both).
    // Unordered: every request answers its own ticket.
    let hit_cache = cache.clone();
    let hit_io = io.clone();
    hit.sink_async_replicated("hit", Replicas::new(HIT_REPLICAS).unordered(), move |_| {
        Serve::new(hit_cache.clone(), hit_io.clone())
    });
    miss.sink_async("fill", Serve::new(cache.clone(), io.clone()));
    other.sink_async("write", Serve::new(cache, io));
    Ok(input)
}

/// The request path as a `tower::Service`: a whole-block read the cache's memory tier
/// holds a valid copy of ([`Cache::read_memory`]) is answered in the caller's task,
/// without I/O and without a trip through the pipeline; every other request goes
/// through the pipeline ([`PipelineService`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct PathService {
    cache: Cache,
    pipeline: PipelineService<BlockRequest, PipelineReply>,
}

impl PathService {
    /// Serves requests through `pipeline` (built by [`request_path`] for `cache`),
    /// memory-tier hits of `cache` directly.
    pub fn new(cache: Cache, pipeline: PipelineService<BlockRequest, PipelineReply>) -> Self {
        Self { cache, pipeline }
    }

    /// The answer to a whole-block read the memory tier holds, without the pipeline.
    fn memory_answer(&self, req: &BlockRequest) -> Option<PipelineReply> {
        let BlockRequest::Read {
            volume,
            offset,
            len,
        } = req
        else {
            return None;
        };
        if let Some(data) = self.cache.read_memory(*volume, *offset, *len) {
            return Some(Ok(PathResponse::Data(ReadBuf::from_vec(data))));
        }
        let data = self.cache.read_direct(*volume, *offset, *len)?;
        Some(Ok(PathResponse::Data(data)))
    }

    /// Sends `req` with its answer going to `answers` as `(id, reply)` (see
    /// [`PipelineService::send_queued`]): a caller with many requests in flight (an NBD
    /// connection, a load generator) waits on one queue and is woken once per burst
    /// of answers, not once per request. A whole-block read the memory tier holds is
    /// answered into the queue at once, from the caller's task. Waits while the
    /// pipeline's input is full; a closed pipeline is [`RequestError::Closed`] (and
    /// nothing is queued for `id`).
    pub async fn send_queued(
        &mut self,
        answers: &Answers<PipelineReply>,
        id: u64,
        req: BlockRequest,
    ) -> Result<(), RequestError> {
        if let Some(reply) = self.memory_answer(&req) {
            let (ticket, _) = answers.tag(id, ()).into_parts();
            ticket.answer(Ok(reply));
            return Ok(());
        }
        self.pipeline.send_queued(answers, id, req).await
    }
}

impl tower_service::Service<BlockRequest> for PathService {
    type Response = PipelineReply;
    type Error = RequestError;
    type Future = ResponseFuture<PipelineReply>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), RequestError>> {
        self.pipeline.poll_ready(cx)
    }

    fn call(&mut self, req: BlockRequest) -> Self::Future {
        if let Some(reply) = self.memory_answer(&req) {
            return ResponseFuture::ready(Ok(reply));
        }
        self.pipeline.call(req)
    }
}

/// The gateway's plan for the request path: two unpinned workers, one for the lookup,
/// the first `hit` replica and the writes, one for the second replica and the fills,
/// so that the request path uses two cores (a scan's hits are copied and checksummed
/// on both) and hits can go around a worker busy with a miss's backend read and chunk
/// write (the replicas take bursts by how much each has waiting). Unpinned, because the gateway shares its machine with its clients
/// (and the tokio threads feeding the pipeline): the scheduler places them.
pub fn gateway_plan() -> Plan {
    Plan::explicit()
        .worker(["lookup", "hit", "write"], Pin::Float)
        .worker(["hit", "fill"], Pin::Float)
}

/// Starts the request path on the pipewright runtime with `plan` (plus the stages'
/// [`uring_budget`]); returns the running pipeline (for snapshots, drain, shutdown)
/// and the `tower::Service` in front of it.
pub fn start(cache: Cache, plan: Plan) -> Result<(Running, PathService), CacheError> {
    let budget = uring_budget(&cache);
    let plan = plan
        .uring("hit", budget)
        .uring("fill", budget)
        .uring("write", budget);
    let b = PipelineBuilder::new();
    let input = request_path(&b, cache.clone())?;
    let pipeline = b.build().map_err(|e| CacheError::Pipeline(e.to_string()))?;
    let running =
        Runtime::start(pipeline, plan).map_err(|e| CacheError::Pipeline(e.to_string()))?;
    let service = PipelineService::new(running.input(&input).expect("the input exists"));
    Ok((running, PathService::new(cache, service)))
}

#[cfg(test)]
mod tests;
