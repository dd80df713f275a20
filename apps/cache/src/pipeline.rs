//! The request path as a pipewright pipeline:
//!
//! ```text
//!  requests ──▶ lookup (router: resident? ) ──hit──▶ hit / hit2 (read cached blocks, verify id + CRC) ─┐
//!                                           ──miss─▶ fill (fetch chunk, store, publish; answer from it) ├─▶ reply
//!                                           ──other▶ write (write-back / write-through, flush)          ─┘
//! ```
//!
//! Hits alternate between `hit` and `hit2`, so that a plan can serve them on two
//! workers ([`gateway_plan`]).
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
    RequestError, ResponseFuture, Running, Runtime, Tagged, UringBudget,
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
const HIT2: usize = 1;
const MISS: usize = 2;
const OTHER: usize = 3;

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

/// Adds the cache's request path to `b`; returns its input. Its stages (`hit`,
/// `hit2`, `fill`, `write`) should get [`uring_budget`] in the plan ([`start`] does that).
pub fn request_path(
    b: &PipelineBuilder,
    cache: Cache,
) -> Result<InputId<TaggedRequest>, CacheError> {
    let io = Arc::new(Uring::new(cache.chunk_size(), cache.block_size())?);
    debug_assert_eq!(io.fixed_buffers(), uring_budget(&cache).fixed_buffers);
    let (input, requests) = b.input::<TaggedRequest>("requests");
    let lookup_cache = cache.clone();
    // Hits alternate between two stages, so that a plan can serve them on two
    // workers (a run of large hits, such as a sequential scan, is copied and
    // checksummed on both).
    let hits = std::sync::atomic::AtomicUsize::new(0);
    let [hit, hit2, miss, other] =
        requests.route::<4, _>("lookup", move |t: &TaggedRequest| match t.value() {
            Ok(BlockRequest::Read {
                volume,
                offset,
                len,
            }) if lookup_cache.is_resident(*volume, *offset, *len) => {
                if hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 0 {
                    HIT
                } else {
                    HIT2
                }
            }
            Ok(BlockRequest::Read { .. }) => MISS,
            _ => OTHER,
        });
    hit.sink_async("hit", Serve::new(cache.clone(), io.clone()));
    hit2.sink_async("hit2", Serve::new(cache.clone(), io.clone()));
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
        if let BlockRequest::Read {
            volume,
            offset,
            len,
        } = req
        {
            if let Some(data) = self.cache.read_memory(volume, offset, len) {
                let (ticket, _) = answers.tag(id, ()).into_parts();
                ticket.answer(Ok(Ok(PathResponse::Data(ReadBuf::from_vec(data)))));
                return Ok(());
            }
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
        if let BlockRequest::Read {
            volume,
            offset,
            len,
        } = req
        {
            if let Some(data) = self.cache.read_memory(volume, offset, len) {
                let reply = Ok(Ok(PathResponse::Data(ReadBuf::from_vec(data))));
                return Box::pin(std::future::ready(reply));
            }
        }
        self.pipeline.call(req)
    }
}

/// The gateway's plan for the request path: two unpinned workers, one for the lookup,
/// half the hits and the writes, one for the other half of the hits and the fills, so
/// that the request path uses two cores (a scan's hits are copied and checksummed on
/// both) and half the hits never wait behind a miss's backend read and chunk write
/// on the same thread. Unpinned, because the gateway shares its machine with its clients
/// (and the tokio threads feeding the pipeline): the scheduler places them.
pub fn gateway_plan() -> Plan {
    Plan::explicit()
        .worker(["lookup", "hit", "write"], Pin::Float)
        .worker(["hit2", "fill"], Pin::Float)
}

/// Starts the request path on the pipewright runtime with `plan` (plus the stages'
/// [`uring_budget`]); returns the running pipeline (for snapshots, drain, shutdown)
/// and the `tower::Service` in front of it.
pub fn start(cache: Cache, plan: Plan) -> Result<(Running, PathService), CacheError> {
    let budget = uring_budget(&cache);
    let plan = plan
        .uring("hit", budget)
        .uring("hit2", budget)
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
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use futures::future::BoxFuture;
    use pipewright_runtime::{Plan, RequestError};
    use tokio::sync::{Notify, Semaphore};
    use tower::ServiceExt;

    use super::*;
    use crate::backend::{Backend, FileBackend, VolumeInfo};
    use crate::config::CacheConfig;

    const CHUNK: u64 = 128 << 10;

    /// The file backend, with reads of one chunk held at a gate until the test opens
    /// it: a slow object store, deterministically.
    #[derive(Debug)]
    struct Gated {
        files: FileBackend,
        gated_offset: u64,
        gate: Semaphore,
        arrived: Notify,
        waiting: AtomicU64,
        reads: AtomicU64,
    }

    impl Backend for Gated {
        fn volumes(&self) -> BoxFuture<'_, std::io::Result<Vec<VolumeInfo>>> {
            self.files.volumes()
        }
        fn read(
            &self,
            volume: &str,
            offset: u64,
            len: usize,
        ) -> BoxFuture<'_, std::io::Result<Vec<u8>>> {
            let volume = volume.to_string();
            self.reads.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if offset == self.gated_offset {
                    self.waiting.fetch_add(1, Ordering::SeqCst);
                    self.arrived.notify_one();
                    let _permit = self.gate.acquire().await.expect("gate open");
                }
                self.files.read(&volume, offset, len).await
            })
        }
        fn write(
            &self,
            volume: &str,
            offset: u64,
            data: Vec<u8>,
        ) -> BoxFuture<'_, std::io::Result<()>> {
            self.files.write(volume, offset, data)
        }
        fn sync(&self, volume: &str) -> BoxFuture<'_, std::io::Result<()>> {
            self.files.sync(volume)
        }
    }

    /// Buffers of the pool a 64 KiB read takes from.
    fn small_buffers() -> usize {
        crate::store::pool_classes(CHUNK)[0].1
    }

    fn image() -> Vec<u8> {
        (0..(2usize << 20))
            .map(|i| (i * 31 / 4096 + i % 251) as u8)
            .collect()
    }

    fn setup(dir: &std::path::Path, gated_offset: u64) -> (Arc<Gated>, CacheConfig) {
        let vdir = dir.join("volumes");
        std::fs::create_dir(&vdir).unwrap();
        std::fs::write(vdir.join("disk"), image()).unwrap();
        let backend = Arc::new(Gated {
            files: FileBackend::new(&vdir).unwrap(),
            gated_offset,
            gate: Semaphore::new(0),
            arrived: Notify::new(),
            waiting: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        });
        let mut cfg = CacheConfig::new(dir.join("cache"), 32);
        cfg.chunk_size = CHUNK;
        cfg.low_watermark = 1;
        cfg.high_watermark = 2;
        (backend, cfg)
    }

    async fn read(
        svc: &PathService,
        volume: crate::VolumeId,
        offset: u64,
        len: u64,
    ) -> Result<PipelineReply, RequestError> {
        svc.clone()
            .oneshot(BlockRequest::Read {
                volume,
                offset,
                len,
            })
            .await
    }

    /// A miss whose fetch is stuck does not hold back a later miss of the same stage
    /// (another burst), nor the hits: each request is answered when it completes.
    #[test]
    fn a_slow_miss_does_not_hold_back_later_requests() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, cfg) = setup(dir.path(), 5 * CHUNK);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cache = rt.block_on(Cache::open(cfg, backend.clone())).unwrap();
        let disk = cache.volume("disk").unwrap();
        let (running, svc) = start(cache.clone(), Plan::fused()).unwrap();
        let img = image();
        // A hang guard only (no timing is measured): a stage that held later requests
        // behind the stuck one would never answer them.
        let guard = std::time::Duration::from_secs(120);
        let checked = async {
            let slow = tokio::spawn({
                let svc = svc.clone();
                async move { read(&svc, disk, 5 * CHUNK, 4096).await }
            });
            // The slow miss is inside the fill stage, waiting for its fetch.
            while backend.waiting.load(Ordering::SeqCst) == 0 {
                backend.arrived.notified().await;
            }
            for round in 0..4u64 {
                // Misses of other chunks (the same stage), then hits of them.
                for chunk in [1u64, 2, 3, 6] {
                    let off = chunk * CHUNK + round * 8192;
                    let got = read(&svc, disk, off, 8192).await.unwrap().unwrap();
                    let PathResponse::Data(d) = got else {
                        panic!("{got:?}")
                    };
                    assert_eq!(d[..], img[off as usize..off as usize + 8192]);
                }
            }
            assert!(!slow.is_finished(), "the gated fetch cannot have completed");
            backend.gate.add_permits(1);
            let got = slow.await.unwrap().unwrap().unwrap();
            let PathResponse::Data(d) = got else {
                panic!("{got:?}")
            };
            let off = 5 * CHUNK as usize;
            assert_eq!(d[..], img[off..off + 4096]);
        };
        rt.block_on(async { tokio::time::timeout(guard, checked).await })
            .expect("requests behind a stuck miss were never answered");
        drop(svc);
        assert!(running.drain().unwrap().completed);
        let s = cache.stats();
        println!(
            "a slow miss: {} hits, {} misses, {} fills",
            s.hits, s.misses, s.fills
        );
        assert_eq!(s.fills, 5);
    }

    /// Reads inside one chunk come back in the stage's pooled buffers, also when many
    /// replies are held at once (an exhausted pool reads into heap buffers, never
    /// waits); reads across chunks are gathered. Every byte is the backend's.
    #[test]
    fn reads_come_back_in_pooled_buffers_and_never_wait_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, cfg) = setup(dir.path(), u64::MAX);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cache = rt.block_on(Cache::open(cfg, backend)).unwrap();
        let disk = cache.volume("disk").unwrap();
        let (running, svc) = start(cache.clone(), Plan::fused()).unwrap();
        let img = image();
        let held = rt.block_on(async {
            let mut held = Vec::new();
            // Three times as many replies held as the pool has buffers.
            let n = 3 * small_buffers() as u64;
            for i in 0..n {
                let chunk = i % 16;
                let off = chunk * CHUNK + (i * 4096) % (CHUNK - 65536);
                let got = read(&svc, disk, off, 65536).await.unwrap().unwrap();
                let PathResponse::Data(d) = got else {
                    panic!("{got:?}")
                };
                assert_eq!(d[..], img[off as usize..off as usize + 65536]);
                held.push(d);
            }
            // Across two chunks, unaligned.
            let off = 3 * CHUNK - 1000;
            let got = read(&svc, disk, off, 5000).await.unwrap().unwrap();
            let PathResponse::Data(d) = got else {
                panic!("{got:?}")
            };
            assert_eq!(d[..], img[off as usize..off as usize + 5000]);
            assert!(!d.is_pooled());
            held
        });
        let pooled = held.iter().filter(|d| d.is_pooled()).count();
        println!("{} replies held: {pooled} in pooled buffers", held.len());
        assert_eq!(
            pooled,
            small_buffers(),
            "every pooled buffer is in use, the rest on the heap"
        );
        drop(held);
        drop(svc);
        assert!(running.drain().unwrap().completed);
    }

    /// Sequential readahead: a scan through the pipeline makes fewer backend reads
    /// than chunks (one read per run of chunks), every byte still the backend's, and
    /// without readahead exactly one read per chunk.
    #[test]
    fn sequential_readahead_makes_fewer_backend_reads() {
        let img = image();
        let chunks = img.len() as u64 / CHUNK;
        let mut reads = Vec::new();
        for readahead in [0u32, 4] {
            let dir = tempfile::tempdir().unwrap();
            let (backend, mut cfg) = setup(dir.path(), u64::MAX);
            cfg.readahead = readahead;
            let rt = tokio::runtime::Runtime::new().unwrap();
            let cache = rt.block_on(Cache::open(cfg, backend.clone())).unwrap();
            let disk = cache.volume("disk").unwrap();
            let (running, svc) = start(cache.clone(), Plan::fused()).unwrap();
            rt.block_on(async {
                // 64 KiB reads, in order, one at a time: a sequential reader.
                for off in (0..img.len() as u64).step_by(65536) {
                    let got = read(&svc, disk, off, 65536).await.unwrap().unwrap();
                    let PathResponse::Data(d) = got else {
                        panic!("{got:?}")
                    };
                    assert_eq!(d[..], img[off as usize..off as usize + 65536]);
                }
            });
            drop(svc);
            assert!(running.drain().unwrap().completed);
            let s = cache.stats();
            let n = backend.reads.load(Ordering::SeqCst);
            println!(
                "readahead {readahead}: {chunks} chunks scanned with {n} backend reads ({} fills, {} misses, {} single-flight waits)",
                s.fills, s.misses, s.single_flight_waits
            );
            assert_eq!(s.fills, chunks, "every chunk fetched once");
            reads.push(n);
        }
        assert_eq!(reads[0], chunks);
        // Chunk 0 alone, chunk 1 with 4 ahead, then every 5th chunk with 4 ahead.
        assert!(reads[1] <= 2 + chunks / 5, "{reads:?}");
    }

    /// An oracle through the io_uring path: writes, then rounds of concurrent reads
    /// of random ranges (across chunk boundaries too) over a cache half the volume's
    /// size, with some reads stalled between lookup and read so that eviction and
    /// reuse overtake them. Every byte equals the last write's or the backend's, and
    /// the stale path was exercised.
    #[test]
    fn oracle_through_the_uring_path_with_eviction_and_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, mut cfg) = setup(dir.path(), u64::MAX);
        cfg.chunks = 8;
        cfg.stall_reads_every = 3;
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cache = rt.block_on(Cache::open(cfg, backend)).unwrap();
        let disk = cache.volume("disk").unwrap();
        let (running, svc) = start(cache.clone(), Plan::fused()).unwrap();
        let mut model = image();
        let size = model.len() as u64;
        let mut rng = fastrand::Rng::with_seed(10);
        let mut checked = 0u64;
        rt.block_on(async {
            for i in 0..32u64 {
                let len = rng.u64(1..20_000);
                let off = rng.u64(0..size - len);
                let data = vec![(i as u8).wrapping_mul(37) ^ 0xa5; len as usize];
                let r = svc
                    .clone()
                    .oneshot(BlockRequest::Write {
                        volume: disk,
                        offset: off,
                        data: data.clone(),
                    })
                    .await
                    .unwrap();
                assert_eq!(r.unwrap(), PathResponse::Written);
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            let model = Arc::new(model);
            for _ in 0..40 {
                let mut calls = Vec::new();
                for _ in 0..48 {
                    let len = rng.u64(1..40_000);
                    let off = rng.u64(0..size - len);
                    let svc = svc.clone();
                    calls.push(tokio::spawn(async move {
                        (off, len, read(&svc, disk, off, len).await)
                    }));
                }
                for c in calls {
                    let (off, len, got) = c.await.unwrap();
                    let got = got.unwrap().unwrap();
                    let PathResponse::Data(d) = got else {
                        panic!("{got:?}")
                    };
                    assert!(
                        d[..] == model[off as usize..(off + len) as usize],
                        "bytes [{off}, +{len}) differ from the oracle"
                    );
                    checked += len;
                }
            }
        });
        drop(svc);
        assert!(running.drain().unwrap().completed);
        let s = cache.stats();
        println!(
            "uring oracle: {checked} bytes checked; {} fills, {} evictions ({} dirty), {} stale refusals, {} torn retries, {} flushes",
            s.fills, s.evictions, s.dirty_evictions, s.stale_refusals, s.torn_retries, s.flushes
        );
        assert!(s.evictions > 0, "the cache never evicted");
        assert!(
            s.stale_refusals > 0,
            "no read raced a reuse: the stale path was not exercised"
        );
    }
}
