//! The leasing agent process: [`AgentCore`] behind a pipewright pipeline, served as a
//! `tower::Service` and over TCP.
//!
//! ```text
//!  TCP connections ──(admission: in-flight < max, else Busy)──▶ verify ──▶ decide ──▶ reply
//!   (length-delimited postcard, 64 KiB max)                 producer tags   AgentCore, registry
//!                                                                            persisted before
//!                                                                            the answer
//! ```

pub(crate) mod core;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use pipewright_runtime::{
    stage, Pin as CorePin, PipelineBuilder, PipelineService, Plan, Running, Runtime, Tagged,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tower_service::Service;

use self::core::{AgentConfig, AgentCore, Effect, Registered};
use crate::admission::Admission;
use crate::error::BalanceError;
use crate::lease::ClusterKey;
use crate::wire::{
    self, AgentRequest, AgentResponse, AgentStatus, LeaseRequest, LeaseResponse, MAX_AGENT_FRAME,
};

/// How to run an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the producer registry is kept (`producers.json`).
    pub data: PathBuf,
    /// The cluster key.
    pub key: ClusterKey,
    /// Agent tuning.
    pub config: AgentConfig,
    /// Requests inside the agent at once before new ones are answered `Busy`.
    pub max_in_flight: usize,
    /// Write the weight engine's inputs here on shutdown (a replayable trace).
    pub trace: Option<PathBuf>,
}

#[derive(Debug)]
struct Counters {
    /// Lease requests in flight ([`AgentOptions::max_in_flight`]).
    in_flight: Admission,
    busy: AtomicU64,
    malformed: AtomicU64,
}

type Shared = Arc<Mutex<AgentCore>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, AgentCore> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const REGISTRY: &str = "producers.json";

/// Reads the persisted producer registry (empty if none).
pub fn load_registry(dir: &Path) -> Result<Vec<Registered>, BalanceError> {
    let path = dir.join(REGISTRY);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| BalanceError::Registry {
            path: path.clone(),
            why: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(BalanceError::Io {
            what: format!("reading {}", path.display()),
            source: e,
        }),
    }
}

/// Writes the registry durably: temporary file, fsync, rename, fsync of the directory.
fn store_registry(dir: &Path, reg: &[Registered]) -> std::io::Result<()> {
    let tmp = dir.join("producers.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(reg).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(REGISTRY))?;
    std::fs::File::open(dir)?.sync_all()
}

/// A request after the verify stage.
enum Checked {
    Lease(LeaseRequest),
    Producer(crate::wire::ProducerStatus),
    Forged,
    Status,
}

/// A running agent.
pub struct AgentServer {
    local_addr: SocketAddr,
    running: Running,
    service: PipelineService<AgentRequest, AgentResponse>,
    accept: tokio::task::JoinHandle<()>,
    core: Shared,
    counters: Arc<Counters>,
    trace: Option<PathBuf>,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl AgentServer {
    /// Loads the registry, starts the pipeline and listens.
    pub async fn start(opts: AgentOptions) -> Result<Self, BalanceError> {
        std::fs::create_dir_all(&opts.data).map_err(|e| BalanceError::Io {
            what: format!("creating {}", opts.data.display()),
            source: e,
        })?;
        let registry = load_registry(&opts.data)?;
        let mut core = AgentCore::new(opts.config.clone(), opts.key.clone(), now_ms(), &registry);
        if opts.trace.is_some() {
            core.record(now_ms());
        }
        let core: Shared = Arc::new(Mutex::new(core));
        let counters = Arc::new(Counters {
            in_flight: Admission::new(opts.max_in_flight.max(1)),
            busy: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        });
        let b = PipelineBuilder::new();
        let (input_id, requests) = b.input::<Tagged<AgentRequest, AgentResponse>>("requests");
        let key = opts.key.clone();
        let decide_core = core.clone();
        let decide_counters = counters.clone();
        let mut registry_unsaved = false;
        let dir = opts.data.clone();
        requests
            .then_tagged(
                "verify",
                stage::map(move |req: AgentRequest| match req {
                    AgentRequest::Lease(l) => Checked::Lease(l),
                    AgentRequest::Producer(s) if s.verify(&key) => Checked::Producer(s.status),
                    AgentRequest::Producer(_) => Checked::Forged,
                    AgentRequest::Status => Checked::Status,
                }),
            )
            .then_tagged(
                "decide",
                stage::map(move |c: Checked| {
                    let now = now_ms();
                    let mut core = lock(&decide_core);
                    match c {
                        Checked::Lease(req) => {
                            let r = core.lease(now, &req);
                            metrics::counter!("balance_leases_granted_total").increment(r.granted.len() as u64);
                            metrics::counter!("balance_leases_refused_total").increment(r.refused.len() as u64);
                            metrics::counter!("balance_reports_rejected_total").increment(u64::from(r.reports_rejected));
                            AgentResponse::Lease(r)
                        }
                        Checked::Producer(s) => {
                            let (peers, fx) = core.producer(now, &s);
                            // After a failed write the registry is written again with
                            // the next status, changed or not.
                            let save = match fx {
                                Effect::Persist(reg) => Some(reg),
                                Effect::None if registry_unsaved => Some(core.registry()),
                                Effect::None => None,
                            };
                            if let Some(reg) = save {
                                if let Err(e) = store_registry(&dir, &reg) {
                                    registry_unsaved = true;
                                    metrics::counter!("balance_registry_errors_total").increment(1);
                                    return AgentResponse::Refused(format!(
                                        "the agent could not persist its producer registry ({e}); retry"
                                    ));
                                }
                                registry_unsaved = false;
                            }
                            AgentResponse::Peers(peers)
                        }
                        Checked::Forged => {
                            core.forged_status();
                            metrics::counter!("balance_forged_status_total").increment(1);
                            AgentResponse::Refused(
                                "producer status tag does not verify: check the cluster key".into(),
                            )
                        }
                        Checked::Status => AgentResponse::Status(core.status(
                            now,
                            decide_counters.busy.load(Ordering::Relaxed),
                            decide_counters.malformed.load(Ordering::Relaxed),
                        )),
                    }
                }),
            )
            .respond("reply");
        let pipeline = b.build().map_err(|e| BalanceError::Start(e.to_string()))?;
        let plan = Plan::explicit()
            .worker(["verify", "decide", "reply"], CorePin::Float)
            .burst("decide", 64);
        let running =
            Runtime::start(pipeline, plan).map_err(|e| BalanceError::Start(e.to_string()))?;
        let input = running
            .input(&input_id)
            .ok_or_else(|| BalanceError::Start("the pipeline input is closed".into()))?;
        let service = PipelineService::new(input);
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|e| BalanceError::Io {
                what: format!("listening on {}", opts.listen),
                source: e,
            })?;
        let local_addr = listener.local_addr().map_err(|e| BalanceError::Io {
            what: "listener address".into(),
            source: e,
        })?;
        let accept = tokio::spawn(accept_loop(listener, service.clone(), counters.clone()));
        Ok(Self {
            local_addr,
            running,
            service,
            accept,
            core,
            counters,
            trace: opts.trace,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The agent as a `tower::Service<LeaseRequest>` (in-process, no admission control).
    pub fn service(&self) -> AgentService {
        AgentService {
            inner: self.service.clone(),
        }
    }

    /// The agent's status.
    pub fn status(&self) -> AgentStatus {
        lock(&self.core).status(
            now_ms(),
            self.counters.busy.load(Ordering::Relaxed),
            self.counters.malformed.load(Ordering::Relaxed),
        )
    }

    /// A handle reading the agent's status (for in-process observers).
    pub fn status_handle(&self) -> impl Fn() -> AgentStatus + Send + Sync + 'static {
        let (core, counters) = (self.core.clone(), self.counters.clone());
        move || {
            lock(&core).status(
                now_ms(),
                counters.busy.load(Ordering::Relaxed),
                counters.malformed.load(Ordering::Relaxed),
            )
        }
    }

    /// Serves until `shutdown` completes or the pipeline fails.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), BalanceError> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if self.running.is_finished() { break; }
                }
            }
        }
        self.accept.abort();
        if let Some(path) = &self.trace {
            let (config, (trace, decisions)) = {
                let mut core = lock(&self.core);
                (core.weight_config(), core.take_trace())
            };
            // First line: the weight configuration; then one event per line. The live
            // selections go to `<trace>.decisions` (a replay must reproduce them).
            let mut text = serde_json::to_string(&config).expect("config encodes");
            text.push('\n');
            for ev in trace {
                text.push_str(&serde_json::to_string(&ev).expect("events encode"));
                text.push('\n');
            }
            let mut dec = String::new();
            for d in decisions {
                dec.push_str(&serde_json::to_string(&d).expect("decisions encode"));
                dec.push('\n');
            }
            let mut dpath = path.clone().into_os_string();
            dpath.push(".decisions");
            for (p, body) in [(path.clone(), text), (PathBuf::from(dpath), dec)] {
                std::fs::write(&p, body).map_err(|e| BalanceError::Io {
                    what: format!("writing the trace {}", p.display()),
                    source: e,
                })?;
            }
        }
        drop(self.service);
        let running = self.running;
        tokio::task::spawn_blocking(move || running.shutdown(Duration::from_secs(1)))
            .await
            .map_err(|e| BalanceError::Start(format!("joining the pipeline: {e}")))?
            .map_err(|e| BalanceError::Start(e.to_string()))?;
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: PipelineService<AgentRequest, AgentResponse>,
    counters: Arc<Counters>,
) {
    let open = Admission::new(MAX_CONNECTIONS);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // A cap on open connections keeps file descriptors for real consumers when
        // something opens connections and leaves them.
        let Some(place) = open.try_admit() else {
            counters.busy.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("balance_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (service, counters) = (service.clone(), counters.clone());
        tokio::spawn(async move {
            let _place = place;
            serve(stream, service, counters).await;
        });
    }
}

/// Connections the agent keeps open at once.
const MAX_CONNECTIONS: usize = 16_384;

/// A connection that sends no request for this long is closed (consumers renew every
/// second or so; a closed connection is reopened by the next call).
const IDLE_LIMIT: Duration = Duration::from_secs(120);

async fn serve(
    stream: TcpStream,
    mut service: PipelineService<AgentRequest, AgentResponse>,
    counters: Arc<Counters>,
) {
    let mut framed = Framed::new(stream, wire::codec(MAX_AGENT_FRAME));
    while let Ok(Some(frame)) = tokio::time::timeout(IDLE_LIMIT, framed.next()).await {
        let bytes = match frame {
            Ok(b) => b,
            Err(_) => {
                // Oversized or broken framing: the stream cannot be resynchronised.
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("balance_malformed_total").increment(1);
                return;
            }
        };
        let answer = match wire::decode::<AgentRequest>(&bytes) {
            Err(e) => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("balance_malformed_total").increment(1);
                AgentResponse::Refused(format!(
                    "the agent could not read the request ({e}): the client and the agent are \
                     probably different pipewright versions; run the same version on both"
                ))
            }
            // Producer statuses (one per producer per period) and status queries are
            // not subject to admission: under a storm of lease requests, refusing them
            // would mark live producers dead and revoke their leases.
            Ok(req @ (AgentRequest::Producer(_) | AgentRequest::Status)) => {
                match service.call(req).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Ok(req) => {
                if let Some(_place) = counters.in_flight.try_admit() {
                    match service.call(req).await {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                } else {
                    counters.busy.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("balance_busy_total").increment(1);
                    AgentResponse::Busy
                }
            }
        };
        if framed.send(wire::encode(&answer)).await.is_err() {
            return;
        }
    }
}

/// The agent as a `tower::Service<LeaseRequest>`: requests run on the agent's
/// pipeline.
#[derive(Debug, Clone)]
pub struct AgentService {
    inner: PipelineService<AgentRequest, AgentResponse>,
}

impl Service<LeaseRequest> for AgentService {
    type Response = LeaseResponse;
    type Error = BalanceError;
    type Future = Pin<Box<dyn Future<Output = Result<LeaseResponse, BalanceError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BalanceError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| BalanceError::Start(e.to_string()))
    }

    fn call(&mut self, req: LeaseRequest) -> Self::Future {
        let fut = self.inner.call(AgentRequest::Lease(req));
        Box::pin(async move {
            match fut.await {
                Ok(AgentResponse::Lease(r)) => Ok(r),
                Ok(AgentResponse::Busy) => Err(BalanceError::Busy),
                Ok(other) => Err(BalanceError::Protocol(format!(
                    "unexpected answer {other:?}"
                ))),
                Err(e) => Err(BalanceError::Start(e.to_string())),
            }
        })
    }
}
