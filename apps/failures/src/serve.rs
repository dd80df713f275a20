//! `failures serve`: HTTP ingestion with durable acknowledgements, the report as JSON
//! and HTML, and Prometheus metrics.
//!
//! ```text
//!  POST /v1/events ─▶ parse ─▶ admit ─▶ log (io_uring FileSink, group commit) ─▶ apply ─▶ 200 {accepted, rejected, errors}
//!                                                                                  └─▶ checkpoint (redb) every N events
//!  GET /v1/report  (JSON)   GET / (HTML, inline SVG)   GET /metrics (Prometheus)   GET /healthz
//! ```
//!
//! Recovery: the last checkpoint, then every log record after its offset (a torn tail
//! is cut: it was never acknowledged).

use std::convert::Infallible;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pipewright_runtime::uring::FileSink;
use pipewright_runtime::{Input, Pin, PipelineBuilder, Plan, Running, Runtime};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::aggregate::Aggregates;
use crate::checkpoint::{CheckpointError, Checkpoints};
use crate::detect::{detect, DetectConfig};
use crate::event::{parse_line, Limits, Reason};
use crate::pipeline::{
    lock, AdmitStage, AfterApply, ApplyStage, Batch, LogStage, ParseStage, Shared,
};
use crate::{html, log};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The data directory (log and checkpoints).
    pub data: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Bounds on input.
    pub limits: Limits,
    /// Detection settings of the report.
    pub detect: DetectConfig,
    /// Width of the time buckets, seconds.
    pub bucket_secs: i64,
    /// Checkpoint after this many applied events.
    pub checkpoint_every: u64,
    /// The largest request body accepted, bytes.
    pub max_body_bytes: usize,
}

impl ServeOptions {
    /// Defaults for `data` and `listen`.
    pub fn new(data: PathBuf, listen: SocketAddr) -> Self {
        Self {
            data,
            listen,
            limits: Limits::default(),
            detect: DetectConfig::default(),
            bucket_secs: crate::DEFAULT_BUCKET_SECS,
            checkpoint_every: 200_000,
            max_body_bytes: 32 << 20,
        }
    }
}

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file of the data directory could not be used.
    #[error("{what}: {source}; check the data directory")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The checkpoint store failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The pipeline did not start.
    #[error("the ingest pipeline did not start: {0}")]
    Start(String),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::Io {
        what: what.to_string(),
        source,
    }
}

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Events in the checkpoint.
    pub checkpointed: u64,
    /// Log offset of the checkpoint.
    pub checkpoint_offset: u64,
    /// Log records replayed after it.
    pub records: usize,
    /// Events replayed from them.
    pub events: u64,
    /// Bytes of torn tail cut off the log.
    pub truncated: u64,
}

struct Checkpointer {
    store: Arc<Checkpoints>,
    /// The log, whose checkpointed prefix is released after each checkpoint.
    log: std::fs::File,
    every: u64,
    since: u64,
    last_end: Option<u64>,
}

impl AfterApply for Checkpointer {
    fn applied(&mut self, aggs: &Aggregates, log_end: Option<u64>, events: u64) {
        self.since += events;
        if log_end.is_some() {
            self.last_end = log_end;
        }
        if self.since >= self.every {
            if let Some(end) = self.last_end {
                match self.store.save(&aggs.canonical(), end) {
                    Ok(()) => {
                        metrics::counter!("failures_checkpoints_total").increment(1);
                        self.since = 0;
                        // The checkpoint holds everything before `end`: free its blocks
                        // (a failure only leaves the disk use higher).
                        if crate::punch::punch_prefix(&self.log, end).is_err() {
                            metrics::counter!("failures_log_punch_errors_total").increment(1);
                        }
                    }
                    // The log still holds everything: a failed checkpoint only
                    // lengthens the next recovery. Counted, retried next batch.
                    Err(_) => metrics::counter!("failures_checkpoint_errors_total").increment(1),
                }
            }
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    recovered: Recovered,
    running: Option<Running>,
    shared: Shared,
    accept: tokio::task::JoinHandle<()>,
    store: Arc<Checkpoints>,
    log_path: std::path::PathBuf,
}

struct Ctx {
    shared: Shared,
    input: Mutex<Option<Input<Batch>>>,
    detect: DetectConfig,
    max_body: usize,
    prometheus: Option<PrometheusHandle>,
}

fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .clone()
}

/// Seconds since the epoch, by the system clock.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Server {
    /// Recovers from `opts.data` and starts serving. Must be called within a tokio
    /// runtime with I/O enabled.
    pub async fn start(opts: ServeOptions) -> Result<Server, ServeError> {
        std::fs::create_dir_all(&opts.data).map_err(io("creating the data directory"))?;
        let prometheus = prometheus();
        let store = Arc::new(Checkpoints::open(&opts.data.join("checkpoint.redb"))?);
        let mut recovered = Recovered::default();
        let (mut aggs, offset) = match store.load()? {
            Some((c, off)) => (Aggregates::from_canonical(&c, opts.limits.clone()), off),
            None => (Aggregates::new(opts.limits.clone(), opts.bucket_secs), 0),
        };
        recovered.checkpointed = aggs.accepted();
        recovered.checkpoint_offset = offset;
        let log_path = opts.data.join("events.log");
        let fresh = !log_path.exists();
        let replay = log::replay(&log_path, offset).map_err(io("replaying the log"))?;
        recovered.records = replay.records.len();
        recovered.truncated = replay.truncated;
        for rec in &replay.records {
            for line in rec.payload.split(|b| *b == b'\n') {
                if line.is_empty() {
                    continue;
                }
                match parse_line(line, &opts.limits, rec.now) {
                    Ok(e) => {
                        aggs.add_unchecked(&e);
                        recovered.events += 1;
                    }
                    // Logged lines were valid when logged, under these limits or others:
                    // counted, not silently lost.
                    Err(e) => aggs.count_bad(e.reason()),
                }
            }
        }
        let sink = FileSink::append(&log_path).map_err(io("opening the log"))?;
        if fresh {
            OpenOptions::new()
                .read(true)
                .open(&log_path)
                .and_then(|f| f.sync_all())
                .map_err(io("syncing the new log"))?;
            log::sync_dir(&log_path).map_err(io("syncing the data directory"))?;
        }
        let shared: Shared = Arc::new(Mutex::new(aggs));
        let b = PipelineBuilder::new();
        let (input_id, batches) = b.input::<Batch>("batches");
        batches
            .then("parse", ParseStage::new(opts.limits.clone()))
            .then("admit", AdmitStage::new(shared.clone()))
            .then_async("log", LogStage::new(sink))
            .sink(
                "apply",
                ApplyStage::new(
                    shared.clone(),
                    Checkpointer {
                        store: store.clone(),
                        log: OpenOptions::new()
                            .write(true)
                            .open(&log_path)
                            .map_err(io("opening the log"))?,
                        every: opts.checkpoint_every.max(1),
                        since: 0,
                        last_end: Some(replay.end),
                    },
                ),
            );
        let pipeline = b.build().map_err(|e| ServeError::Start(e.to_string()))?;
        let plan = Plan::explicit()
            .worker(["parse", "admit", "apply"], Pin::Float)
            .worker(["log"], Pin::Float)
            .burst("log", 64);
        let running =
            Runtime::start(pipeline, plan).map_err(|e| ServeError::Start(e.to_string()))?;
        let input = running
            .input(&input_id)
            .ok_or_else(|| ServeError::Start("the pipeline input is closed".into()))?;
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(io("binding the listen address"))?;
        let local_addr = listener
            .local_addr()
            .map_err(io("reading the listen address"))?;
        let ctx = Arc::new(Ctx {
            shared: shared.clone(),
            input: Mutex::new(Some(input)),
            detect: opts.detect.clone(),
            max_body: opts.max_body_bytes,
            prometheus,
        });
        let accept = tokio::spawn(accept_loop(listener, ctx));
        Ok(Server {
            local_addr,
            recovered,
            running: Some(running),
            shared,
            accept,
            store,
            log_path,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What recovery found.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// The shared aggregates.
    pub fn aggregates(&self) -> Aggregates {
        lock(&self.shared).clone()
    }

    /// Stops accepting, drains the pipeline and writes a final checkpoint.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        self.accept.abort();
        if let Some(running) = self.running.take() {
            running
                .drain()
                .map_err(|e| ServeError::Start(e.to_string()))?;
        }
        // Everything accepted is applied and in the log now: a checkpoint saves the
        // next start replaying it, and keeps the counts of refused lines, which the
        // log does not hold.
        let end = match std::fs::metadata(&self.log_path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io("reading the log's length")(e)),
        };
        let canonical = lock(&self.shared).canonical();
        self.store.save(&canonical, end)?;
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, most likely: back off instead of spinning
                // until a connection closes.
                metrics::counter!("failures_accept_errors_total").increment(1);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let input = ctx
                .input
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .and_then(Input::try_clone);
            let input = Arc::new(tokio::sync::Mutex::new(input));
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let input = input.clone();
                async move { Ok::<_, Infallible>(handle(req, &ctx, &input).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .expect("static headers are valid")
}

/// Detects on a copy of the aggregates and renders the report, off the server's I/O
/// threads (a large fleet's report takes a while; ingestion and other requests go on).
async fn report_response(
    ctx: &Ctx,
    content_type: &'static str,
    render: fn(&crate::detect::Report) -> String,
) -> Response<Full<Bytes>> {
    let (shared, config) = (ctx.shared.clone(), ctx.detect.clone());
    let built = tokio::task::spawn_blocking(move || {
        let aggs = lock(&shared).clone();
        render(&detect(&aggs, &config))
    })
    .await;
    match built {
        Ok(body) => respond(StatusCode::OK, content_type, body),
        Err(_) => error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the report failed (a bug: please report it with the server's log)",
        ),
    }
}

fn error_json(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json",
        serde_json::json!({ "error": msg }).to_string(),
    )
}

async fn handle(
    req: Request<Incoming>,
    ctx: &Ctx,
    input: &tokio::sync::Mutex<Option<Input<Batch>>>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/events") => {
            let body = match Limited::new(req.into_body(), ctx.max_body).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error_json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("request body refused ({e}); send smaller batches"),
                    )
                }
            };
            let (tx, rx) = oneshot::channel();
            let batch = Batch {
                bytes: body.to_vec(),
                first_line: 1,
                now: unix_now(),
                reply: Some(tx),
            };
            {
                let mut guard = input.lock().await;
                let Some(input) = guard.as_mut() else {
                    return error_json(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
                };
                if input.send_async(batch).await.is_err() {
                    return error_json(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
                }
            }
            match rx.await {
                Ok(ack) => respond(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string(&ack).unwrap_or_default(),
                ),
                Err(_) => error_json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the batch could not be made durable; nothing of it is acknowledged: retry",
                ),
            }
        }
        (&Method::GET, "/v1/report") => {
            report_response(ctx, "application/json", crate::report::to_json).await
        }
        (&Method::GET, "/") | (&Method::GET, "/report.html") => {
            report_response(ctx, "text/html; charset=utf-8", html::render).await
        }
        (&Method::GET, "/metrics") => {
            let mut text = ctx
                .prometheus
                .as_ref()
                .map(PrometheusHandle::render)
                .unwrap_or_default();
            let aggs = lock(&ctx.shared);
            text.push_str(&format!(
                "# TYPE failures_state_accepted_events gauge\nfailures_state_accepted_events {}\n# TYPE failures_state_bad_lines gauge\n",
                aggs.accepted()
            ));
            let bad = aggs.bad_lines();
            for r in Reason::ALL {
                text.push_str(&format!(
                    "failures_state_bad_lines{{reason=\"{}\"}} {}\n",
                    r.as_str(),
                    bad.get(&r).copied().unwrap_or(0)
                ));
            }
            respond(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        _ => error_json(
            StatusCode::NOT_FOUND,
            "no such endpoint; use POST /v1/events, GET /v1/report, GET /, GET /metrics",
        ),
    }
}

/// Runs a server on its own tokio runtime until SIGINT or SIGTERM, calling `ready`
/// once it listens; then drains and stops.
pub fn run_until_signal(opts: ServeOptions, ready: impl FnOnce(&Server)) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("starting the tokio runtime"))?;
    let server = rt.block_on(Server::start(opts))?;
    ready(&server);
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(io("installing the SIGTERM handler"))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<(), ServeError>(())
    })?;
    server.shutdown()
}
