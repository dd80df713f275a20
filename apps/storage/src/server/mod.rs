//! The storage node process: recovery, the request pipeline on the pipewright
//! runtime, and the TCP transport.
//!
//! ```text
//!            TCP (peers + clients, one listener; a signed hello says which, see auth)
//!                │ decoded frames            admission: in-flight budget → Busy
//!                ▼
//!  ┌────────┐  ┌──────┐  doorbell  ┌──────────────────────┐  LogDurable  ┌───────────┐
//!  │ ticker │─▶│ node │───────────▶│ log = uring FileSink │─────────────▶│ after-log │
//!  └────────┘  └──────┘            │ 1 write + 1 fdatasync│              └───────────┘
//!   retries     Node::handle/tick   │ per burst            │  Node::persisted(id):
//!               sends, page writes, └──────────────────────┘  forward Prepare, decide,
//!               replies; records →                             reply, Commit, Ack
//!               pending log bytes
//! ```
//!
//! The node and after-log stages share one worker, the log stage has its own: while
//! one burst is being synced, the node stage keeps analysing and the next records
//! gather in the pending bytes (group commit). The node stage only rings the log
//! stage, which takes the pending bytes itself — so it can **linger** for more: when a
//! burst would be tiny while more transactions are open on the node, it waits up to
//! `NodeOptions::linger` (and at most half its recent sync time) for the pending
//! records to catch up with the open transactions, then writes and syncs them all
//! (no linger without concurrent transactions, so a lone transaction pays nothing; and
//! none unless records arrive at least four times as often as the linger is long, so on a
//! device with fast syncs, where waiting only delays the chain, batches fill by
//! themselves during each sync).
//!
//! (What the framework lacked: an async stage cannot pull more items from its input
//! ring during an activation, so lingering inside `process_burst` would only delay
//! the items already taken; the doorbell + shared pending buffer works around it.) Any failure to log or to apply a
//! committed write stops the pipeline (fail-stop); [`NodeServer::run_until`] then
//! returns the error and a restart recovers from the log.
//!
//! # Why the protocol node is shared under a mutex
//!
//! [`Node`] is one state machine fed from two stages: the node stage (messages,
//! ticks) and the after-log stage (`persisted`, once the sink reports records
//! durable). Both must see the same transactions, lock table and page versions, and
//! the record ids either allocates must reach the log in id order (the contract:
//! records become durable, and are acknowledged, in id order). Passing `persisted`
//! back through the node stage's input instead would close a cycle of bounded rings
//! (node → log → after-log → node) that can deadlock under backpressure. So the node,
//! the page file and the encoded-but-not-yet-logged records sit behind one
//! `Arc<Mutex<_>>`: every call into the node, the page writes it asks for and the
//! encoding of the records it asks to persist happen in one critical section, which
//! keeps the pending log bytes in record-id order and applies writes of one page in
//! commit order whichever stage produced them. Records the after-log stage produces
//! (a decider's `Forget`) join the pending bytes and leave with the node stage's next
//! batch (at the latest on the next tick). Critical sections are short (no awaits, no
//! network; page writes go to the page cache) and both stages share a worker, so the
//! mutex is uncontended there; connection tasks take it only to read pages.
//!
//! # Threads
//!
//! Two pipewright workers (node + after-log; log) and the io_uring worker the log's
//! sink uses. The retry timer is a tokio task, not an async source on the node
//! worker: a worker with an async task polls its tokio driver (an `epoll_wait`) on
//! every idle pass, which the profile showed as a quarter of the node worker's CPU.
//! The connection and link tasks run on the caller's tokio runtime; `pipewright
//! storage node` gives them a current-thread one (one thread, not two: a 3-node
//! cluster on 2 cores ran about 12 threads, and a third of its CPU went to context
//! switches and loopback wake-ups). Running the network tasks on the node worker
//! itself (the worker's tokio handle) cut context switches per transaction by a
//! further 28% but lowered throughput on a loaded machine: they then only run when
//! the worker idles, and one thread gets one thread's share of the CPU.
//!
//! # Timers
//!
//! A ticker task feeds the node stage every `tick`: the decider re-sends `Commit`
//! to nodes that have not acknowledged, and a node prepared for longer than
//! `resolve_after` asks its decider (`Resolve`). Asking sooner would be safe but
//! costly: a decider that has not seen the `Prepare` yet decides abort (presumed
//! abort). With acceptors (F ≥ 1) a node prepared for longer than `settle_after`
//! also runs a recovery ballot with them; a client's `Resolve` request
//! (`pipewright storage resolve`) does both at once.
//!
//! # Checkpoints
//!
//! Once `checkpoint_bytes` of log were written since the last checkpoint, the node
//! stage starts one ([`Node::checkpoint`]); its record is the first of a new log
//! segment, and the log stage syncs the page file before writing it and deletes the
//! old segment only once it is durable (see [`crate::log::segments`]).
//!
//! On start, [`NodeServer::start`] picks the log segment to recover from (the newest
//! with a complete checkpoint), deletes the others, replays it, truncates a torn or corrupt tail
//! (a record that does not check out is never applied), rebuilds the node with
//! [`Node::recover`], redoes committed writes, re-takes in-doubt locks and asks the
//! deciders, and only then serves.

#[cfg(feature = "faults")]
mod faults;
mod net;
mod stages;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipewright_runtime::uring::FileSink;
use pipewright_runtime::{Pin, PipelineBuilder, Plan, RunError, Running, Runtime, StartError};
use tokio::net::TcpListener;

use crate::log::{segments, Corruption};
use crate::pages::{PageError, PageStore};
use crate::peers::Peers;
use crate::protocol::{Action, Message, Node, NodeConfig, RecoverError};
use crate::types::{NodeId, PageId};
use crate::wire::NodeStatus;

#[cfg(feature = "faults")]
pub use faults::{CrashAt, NetFaults, Step};
pub use state::NodeFault;

use net::Ctx;
use stages::{ticker, AfterLog, LogStage, NodeStage};
use state::{lock, Effects, State, Stats};

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id (must be in `peers`).
    pub id: NodeId,
    /// Where to listen for peers and clients.
    pub listen: SocketAddr,
    /// The data directory (`log` and `pages` inside; created if missing).
    pub data: PathBuf,
    /// Every node of the cluster.
    pub peers: Peers,
    /// Pages in the page file.
    pub pages: u64,
    /// Client transactions admitted at this node (as head) at once; beyond it clients
    /// get `Busy`.
    pub max_in_flight: usize,
    /// Page locks held by prepared transactions at once (the lock table's capacity).
    pub lock_capacity: usize,
    /// The retry timer (in-doubt `Resolve`, the decider's `Commit` re-sends).
    pub tick: Duration,
    /// How long a prepared transaction waits for its outcome before asking the decider
    /// (a decider that has not seen the `Prepare` yet answers abort).
    pub resolve_after: Duration,
    /// With acceptors (F ≥ 1): how long a node in doubt waits for its decider before it
    /// settles the outcome with the acceptors (a recovery ballot).
    pub settle_after: Duration,
    /// Group commit: the longest a log burst waits for more records before its
    /// `fdatasync` when it would be tiny while other transactions are open (also at
    /// most half a recent sync; zero: never wait).
    pub linger: Duration,
    /// Fault tests: abort the process at this protocol step (feature `faults`).
    #[cfg(feature = "faults")]
    pub crash_at: Option<CrashAt>,
    /// Start a checkpoint (a new log segment; finished transactions forgotten) once
    /// this many log bytes were written since the last one.
    pub checkpoint_bytes: u64,
    /// Fault tests: drop, duplicate and delay messages to peers (feature `faults`).
    #[cfg(feature = "faults")]
    pub net_faults: Option<NetFaults>,
}

/// Environment variable overriding [`NodeOptions::linger`], in microseconds (the
/// CLI's `--linger-us` sets it too).
pub const LINGER_US_ENV: &str = "PIPEWRIGHT_STORAGE_LINGER_US";
/// Environment variable overriding [`NodeOptions::checkpoint_bytes`] (for tests and
/// experiments; the CLI has no flag for it).
pub const CHECKPOINT_BYTES_ENV: &str = "PIPEWRIGHT_STORAGE_CHECKPOINT_BYTES";
/// Environment variable enabling [`NetFaults`] on the peer links, e.g.
/// `drop=0.05,dup=0.05,delay-ms=20,seed=7` (fault tests only: feature `faults`).
#[cfg(feature = "faults")]
pub const NET_FAULTS_ENV: &str = "PIPEWRIGHT_STORAGE_NET_FAULTS";

impl NodeOptions {
    /// Options with defaults: 1024 pages, 1024 transactions in flight, 65536 page
    /// locks, a 200 ms retry timer, `Resolve` after 1 s prepared, a recovery ballot
    /// after 2 s (F ≥ 1), a checkpoint every
    /// 4 MiB of log, no fault injection; the environment variable
    /// [`CHECKPOINT_BYTES_ENV`] overrides the checkpoint size, and with feature `faults`
    /// `NET_FAULTS_ENV` sets the network faults (an unparsable value is ignored with a
    /// message on stderr).
    ///
    /// ```
    /// use pipewright_storage::{peers::Peers, server::NodeOptions, NodeId};
    /// let peers = Peers::parse("[nodes]\n1 = \"127.0.0.1:7101\"")?;
    /// let opts = NodeOptions::new(NodeId(1), "127.0.0.1:7101".parse()?, "/tmp/n1".into(), peers);
    /// assert_eq!(opts.max_in_flight, 1024);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(id: NodeId, listen: SocketAddr, data: PathBuf, peers: Peers) -> Self {
        Self {
            id,
            listen,
            data,
            peers,
            pages: 1024,
            max_in_flight: 1024,
            lock_capacity: 1 << 16,
            tick: Duration::from_millis(200),
            resolve_after: Duration::from_secs(1),
            settle_after: Duration::from_secs(2),
            linger: Duration::from_micros(env_parse(LINGER_US_ENV).unwrap_or(1000)),
            #[cfg(feature = "faults")]
            crash_at: None,
            checkpoint_bytes: env_parse(CHECKPOINT_BYTES_ENV).unwrap_or(4 << 20),
            #[cfg(feature = "faults")]
            net_faults: env_parse(NET_FAULTS_ENV),
        }
    }
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("ignoring {name}={value}: not a valid value");
            None
        }
    }
}

/// A node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory, log or listener failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// The data directory is in another format (or not ours).
    #[error("{0}")]
    Format(#[from] crate::log::format::FormatError),
    /// The page file failed.
    #[error("page file: {0}")]
    Pages(#[from] PageError),
    /// The log cannot be recovered from.
    #[error("recovery: {0}")]
    Recover(#[from] RecoverError),
    /// The peers file holds no cluster key (it is a client's).
    #[error("{0}")]
    Peers(#[from] crate::peers::PeersError),
    /// The pipeline could not be built or started.
    #[error("starting the pipeline: {0}")]
    Start(String),
    /// The pipeline stopped: a log write or page write failed (fail-stop).
    #[error("the node stopped: {0}")]
    Failed(#[from] RunError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |error| NodeError::Io { what, error }
}

/// What recovery found in the log and page file.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// Valid records replayed.
    pub records: usize,
    /// Where and why replay stopped early (the torn or corrupt tail was truncated).
    pub corruption: Option<Corruption>,
    /// Bytes truncated from the log's tail.
    pub truncated_bytes: u64,
    /// The log segment recovered from (0: the log was never checkpointed).
    pub segment: u64,
    /// Log segments deleted (older ones; a newer one with a torn checkpoint).
    pub deleted_segments: Vec<u64>,
    /// Transactions remembered after recovery.
    pub remembered: usize,
    /// Pages that failed their checksum (treated as never written; redone from the log).
    pub corrupt_pages: Vec<PageId>,
    /// Committed transactions whose writes were redone.
    pub redone: usize,
    /// In-doubt transactions (intent logged, outcome unknown) now asking their decider.
    pub in_doubt: usize,
    /// How long recovery took (opening the page file and log, replay, redo), until
    /// the node was ready to serve.
    pub duration: std::time::Duration,
}

/// A running storage node.
#[derive(Debug)]
pub struct NodeServer {
    local_addr: SocketAddr,
    recovered: Recovered,
    running: Running,
    accept: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
    shared: state::Shared,
    fx: Arc<Effects>,
}

impl NodeServer {
    /// Recover from `opts.data` and start serving on `opts.listen`. Must be called
    /// within a tokio runtime (with I/O and time enabled). The server's connections,
    /// links and retry timer are tasks on that runtime: on a current-thread runtime
    /// (as [`io_runtime(0)`](crate::io_runtime) gives) they run only while a caller is
    /// inside `block_on`, so keep the runtime's thread in `block_on` (as
    /// `pipewright storage node` does) for as long as the node serves.
    pub async fn start(opts: NodeOptions) -> Result<NodeServer, NodeError> {
        let began = std::time::Instant::now();
        let key = opts.peers.cluster_key()?;
        std::fs::create_dir_all(&opts.data).map_err(io("creating the data directory"))?;
        crate::log::format::check(&opts.data)?;
        let pages = PageStore::open(opts.data.join("pages"), opts.pages)?;
        let scan = pages.scan()?;
        let opened = segments::open(&opts.data).map_err(io("opening the log"))?;
        let log_path = segments::segment_path(&opts.data, opened.seq);
        let mut recovered = Recovered {
            corrupt_pages: scan.corrupt.clone(),
            records: opened.replay.records.len(),
            corruption: opened.replay.corruption,
            truncated_bytes: opened.truncated_bytes,
            segment: opened.seq,
            deleted_segments: opened.deleted,
            ..Recovered::default()
        };
        let records = opened.replay.records;
        let tick_ms = opts.tick.as_millis().max(1);
        let config = NodeConfig {
            lock_capacity: opts.lock_capacity,
            page_capacity: opts.pages,
            patience: (opts.settle_after.as_millis().div_ceil(tick_ms)).min(u32::MAX as u128)
                as u32,
            ..NodeConfig::default()
        };
        let (node, actions) = Node::recover(opts.id, config, scan.versions, records)?;
        recovered.remembered = node.remembered();
        for action in &actions {
            match action {
                Action::Apply { .. } => recovered.redone += 1,
                Action::Send {
                    msg: Message::Resolve { .. },
                    ..
                } => recovered.in_doubt += 1,
                _ => {}
            }
        }
        let sink = FileSink::append(&log_path).map_err(io("opening the log"))?;
        // The log and page files may have just been created: their directory entries
        // (and the data directory's own, in its parent) are durable from here on, before
        // anything is acknowledged.
        segments::sync_dir(&opts.data).map_err(io("syncing the data directory"))?;
        if let Some(parent) = opts.data.parent().filter(|p| !p.as_os_str().is_empty()) {
            segments::sync_dir(parent).map_err(io("syncing the data directory's parent"))?;
        }
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(io(format!("listening on {}", opts.listen)))?;
        let local_addr = listener.local_addr().map_err(io("listener address"))?;

        let page_handle = pages.sync_handle()?;
        let shared = Arc::new(Mutex::new(State::new(
            node,
            pages,
            opts.resolve_after,
            opts.checkpoint_bytes,
        )));
        let (links, pending_links) = net::link_queues(opts.peers.iter());
        let fx = Arc::new(Effects {
            id: opts.id,
            links,
            clients: Mutex::default(),
            stats: Stats::default(),
            max_in_flight: opts.max_in_flight.max(1),
            #[cfg(feature = "faults")]
            crash: opts.crash_at.map(faults::Armed::new),
        });
        let b = PipelineBuilder::new();
        let (inbound_id, inbound) = b.input("inbound");
        let node_stage = NodeStage {
            shared: shared.clone(),
            fx: fx.clone(),
        };
        let after_log = AfterLog {
            shared: shared.clone(),
            fx: fx.clone(),
        };
        inbound
            .then("node", node_stage)
            .then_async(
                "log",
                LogStage::new(
                    shared.clone(),
                    opts.linger,
                    sink,
                    fx.clone(),
                    opts.data.clone(),
                    opened.seq,
                    page_handle,
                ),
            )
            .sink("after-log", after_log);
        let pipeline = b.build().map_err(|e| NodeError::Start(e.to_string()))?;
        let plan = Plan::explicit()
            .worker(["node", "after-log"], Pin::Float)
            .worker(["log"], Pin::Float)
            .burst("node", 64)
            .burst("log", 256);
        let running = Runtime::start(pipeline, plan)
            .map_err(|e: StartError| NodeError::Start(e.to_string()))?;
        let input = running
            .input(&inbound_id)
            .ok_or_else(|| NodeError::Start("the pipeline input is closed".into()))?;
        fx.stats
            .log_disk_bytes
            .store(segments::disk_bytes(&opts.data), Ordering::Relaxed);
        #[cfg(feature = "faults")]
        net::start_links(opts.id, &key, pending_links, &input, opts.net_faults, &fx);
        #[cfg(not(feature = "faults"))]
        net::start_links(opts.id, &key, pending_links, &input);
        // Recovery's actions (redo, Resolve, Commit re-sends) before serving.
        lock(&shared)
            .execute(&fx, actions)
            .map_err(|e| NodeError::Start(e.to_string()))?;
        let ctx = Ctx {
            shared: shared.clone(),
            fx: fx.clone(),
            key,
        };
        recovered.duration = began.elapsed();
        lock(&shared).recovery_ms = recovered.duration.as_millis() as u64;
        metrics::histogram!("storage_recovery_seconds").record(recovered.duration.as_secs_f64());
        let ticker = match input.try_clone() {
            Some(ticks) => tokio::spawn(ticker(opts.tick, ticks)),
            None => return Err(NodeError::Start("the pipeline input is closed".into())),
        };
        let accept = tokio::spawn(net::accept_loop(listener, ctx, input));
        Ok(NodeServer {
            local_addr,
            recovered,
            running,
            accept,
            ticker,
            shared,
            fx,
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

    /// The node's status and counters.
    pub fn status(&self) -> NodeStatus {
        lock(&self.shared).status(&self.fx)
    }

    /// Serve until `shutdown` completes (then stop within a second) or the pipeline
    /// fails (then return its error).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        tokio::pin!(shutdown);
        let failed = loop {
            tokio::select! {
                _ = &mut shutdown => break false,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if self.running.is_finished() {
                        break true;
                    }
                }
            }
        };
        self.accept.abort();
        self.ticker.abort();
        let running = self.running;
        let report = tokio::task::spawn_blocking(move || {
            if failed {
                running.join()
            } else {
                running.shutdown(Duration::from_secs(1))
            }
        })
        .await
        .map_err(|e| NodeError::Start(format!("joining the pipeline: {e}")))?;
        report?;
        Ok(())
    }
}
