//! The data plane on real interfaces: VF ports (AF_XDP or TAP) feed the egress path,
//! whose encapsulated frames leave through io_uring UDP sockets on the underlay;
//! tunnelled datagrams received there go through the ingress path to the VF ports.
//!
//! ```text
//!  VF 0 rx ─┐                                   ┌─> underlay-tx (io_uring, GSO)
//!  VF 1 rx ─┴─> egress-classify ─> route ─┬─────┘
//!                                         └─ ARP replies ─┐
//!  underlay-rx 4789 ─┐                                    ├─> vf-tx (by meta.vf)
//!  underlay-rx 6081 ─┴─> ingress-match ─> ingress-decap ──┘
//! ```
//!
//! Every stage is an ordinary pipewright stage; the [`Plan`] places them on workers
//! (by default the VF side and the underlay side each get one; see [`Workers`] for
//! running to completion on one).
//!
//! ```no_run
//! use std::sync::Arc;
//! use pipewright_nic::dataplane::{DataPlane, UnderlayConfig};
//! use pipewright_nic::port::TapPort;
//! use pipewright_nic::rules::{RuleFile, Versioned};
//!
//! // VF identities, egress and ingress rules from a TOML rule file.
//! let rules = RuleFile::parse(&std::fs::read_to_string("rules.toml")?)?;
//! let (egress, ingress) = (rules.egress_table()?, rules.ingress_table()?);
//! let running = DataPlane::builder()
//!     .vf(Box::new(TapPort::open_existing("tap0", 0)?))
//!     .underlay(UnderlayConfig::new("192.168.77.1".parse()?))
//!     .egress(Versioned::new(egress))
//!     .ingress(Versioned::new(ingress))
//!     .start()?;
//! std::thread::sleep(std::time::Duration::from_secs(10));
//! println!("{:?}", running.stats().all());
//! running.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipewright_runtime::{
    Pin as CpuPin, PipelineBuilder, Plan, Report, RunError, Running, Runtime,
};
use tokio::sync::Notify;

use crate::pipeline::{egress_with, ingress, EgressConfig, NicStats};
use crate::port::{AfXdpPort, PortCounters, VfPort};
use crate::rules::{EgressTable, IngressTable, Versioned};
use crate::tunnel::{DecapConfig, TunnelKind};
use crate::{FramePool, DEFAULT_HEADROOM};

mod activity;
mod config;
mod layout;
mod on_host;
mod running;
mod underlay;
mod underlay_rx;
mod vf;
mod xdp_underlay;

pub use config::{DataPlaneConfig, DataPlaneConfigError, PortEntry, PortKind};
pub use layout::WorkersPolicy;
pub use on_host::{start_on_host, tables_for_host, OnHostError, OnHostOptions};
pub use underlay::{UnderlayConfig, UnderlayTx};
pub use underlay_rx::UnderlayRx;
pub use vf::{SharedPort, VfRx, VfTx};
pub use xdp_underlay::{
    parse_proc_arp, AfXdpUnderlay, NeighbourCache, UnderlayCounters, UnderlayKind, MISS_REFRESH,
    REFRESH,
};

/// Frames per burst unless configured: large enough that a burst from a busy VF
/// leaves the underlay as a few long GSO runs (in `nic_e2e`, 64-byte UDP: 256 gave
/// 1.00–1.01 of the kernel's vxlan where 64 gave 0.95), small enough to stay in cache.
pub const DEFAULT_BURST: usize = 256;

/// How long the receive sources keep polling after a packet unless configured (see
/// [`DataPlaneBuilder::busy_poll`]): long enough to catch the reply to a request that
/// just left (a round trip over a veth/kernel peer takes 20–60 µs), short enough that
/// an idle data plane parks at once.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(200);

/// Tells the data plane's sources to stop: they end, and the pipeline drains.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<(AtomicBool, Notify)>);

impl Stop {
    /// Asks every source to end.
    pub fn stop(&self) {
        self.0 .0.store(true, Ordering::Release);
        self.0 .1.notify_waiters();
    }

    /// Whether [`Stop::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0 .0.load(Ordering::Acquire)
    }

    /// Resolves once stopped.
    pub async fn wait(&self) {
        loop {
            let notified = self.0 .1.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// Something the builder needs was not given.
    #[error("data plane: {0}")]
    Missing(&'static str),
    /// A socket could not be bound.
    #[error("underlay socket {what}: {source}; check that the address is configured on an interface of this namespace and the port is free")]
    Socket {
        /// Which socket.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The AF_XDP underlay could not be opened.
    #[error("AF_XDP underlay on {ifname}: {source}; check that the interface exists in this namespace and supports XDP (or use the UDP underlay)")]
    Underlay {
        /// The underlay interface.
        ifname: String,
        /// Why.
        #[source]
        source: crate::port::PortError,
    },
    /// The pipeline could not be built or started.
    #[error("data plane pipeline: {0}")]
    Start(String),
}

/// Builds a [`RunningDataPlane`].
#[derive(Debug, Default)]
pub struct DataPlaneBuilder {
    vfs: Vec<Box<dyn VfPort>>,
    underlay: Option<UnderlayConfig>,
    rx_ports: Vec<u16>,
    decap: Option<DecapConfig>,
    egress: Option<Versioned<EgressTable>>,
    ingress: Option<Versioned<IngressTable>>,
    plan: Option<Plan>,
    burst: Option<usize>,
    busy_poll: Option<Duration>,
    workers: Workers,
    switchable: bool,
}

/// How many workers the data plane's default plan uses (when no
/// [`plan`](DataPlaneBuilder::plan) is given).
///
/// - [`Workers::Two`] (the default): the VF side (VF receive, egress, underlay
///   transmit) on one worker and the underlay side (underlay receive, ingress, VF
///   transmit) on another, each direction's hot path on its own thread. Choose it for
///   throughput: in `nic_e2e` quick runs on a loaded 2-CPU machine a TCP stream got
///   0.29–1.16 Gbit/s through the TAP VF with two workers against 0.31–0.73 with one
///   (data one way and ACKs the other way are both loaded, and two workers pipeline
///   them).
/// - [`Workers::One`], run to completion: every stage on one worker, which also
///   busy-polls for the data plane's busy-poll window (`Plan::busy_poll`) after its
///   last progress. A request and its reply stay on one thread: a round trip needs at
///   most one thread wake-up and no frame crosses a ring between threads. Choose it
///   for latency-bound, low-rate traffic (request/response, control protocols): in the
///   same runs the AF_XDP VF's back-to-back round-trip p50 was 63–113 µs with one worker
///   against 86–134 µs with two (sparse round trips, one every 2 ms, varied too much
///   under that load to tell the two apart).
///
/// [`Workers::for_traffic`] is the default plan's choice for a kind of traffic (the
/// `nic_e2e` bench runs its latency cases with it). Started
/// [`switchable`](DataPlaneBuilder::switchable), the data plane can change between the
/// two while it runs ([`RunningDataPlane::set_workers`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workers {
    /// Run to completion: every stage on one busy-polling worker.
    One,
    /// The VF side and the underlay side on a worker each.
    #[default]
    Two,
}

impl Workers {
    /// The choice for a kind of traffic, as the data plane's default plan makes it:
    /// latency-bound traffic (request/response, control protocols, sparse packets)
    /// runs to completion on one busy-polling worker, bulk traffic on two.
    pub fn for_traffic(latency_bound: bool) -> Self {
        if latency_bound {
            Workers::One
        } else {
            Workers::Two
        }
    }
}

/// Why [`RunningDataPlane::set_workers`] could not switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The data plane was started with a fixed layout.
    #[error("the data plane was started with a fixed layout; start it with DataPlaneBuilder::switchable(true) (config: switchable = true) to change its workers while it runs")]
    Fixed,
    /// The runtime refused to move a stage.
    #[error("moving stage {stage}: {source}; the data plane keeps running on the stages' previous workers")]
    Move {
        /// The stage.
        stage: String,
        /// Why.
        #[source]
        source: pipewright_runtime::ApplyError,
    },
}

/// Entry point: see [`DataPlane::builder`].
#[derive(Debug)]
pub struct DataPlane;

impl DataPlane {
    /// A data plane to configure.
    pub fn builder() -> DataPlaneBuilder {
        DataPlaneBuilder::default()
    }
}

impl DataPlaneBuilder {
    /// Adds a VF port (its [`VfPort::vf`] number is the VF the rules name).
    pub fn vf(mut self, port: Box<dyn VfPort>) -> Self {
        self.vfs.push(port);
        self
    }

    /// The underlay sockets' address and sizing.
    pub fn underlay(mut self, config: UnderlayConfig) -> Self {
        self.underlay = Some(config);
        self
    }

    /// Receives tunnelled traffic on this UDP port (default: VXLAN's 4789).
    pub fn rx_port(mut self, port: u16) -> Self {
        self.rx_ports.push(port);
        self
    }

    /// Which tunnels the receive ports speak (default: VXLAN 4789, Geneve 6081, the
    /// proprietary tunnel on its port).
    pub fn decap(mut self, decap: DecapConfig) -> Self {
        self.decap = Some(decap);
        self
    }

    /// The egress rule table (publish new versions into it to change rules live).
    pub fn egress(mut self, table: Versioned<EgressTable>) -> Self {
        self.egress = Some(table);
        self
    }

    /// The ingress rule table (publish new versions into it to change rules live).
    pub fn ingress(mut self, table: Versioned<IngressTable>) -> Self {
        self.ingress = Some(table);
        self
    }

    /// Where the stages run (default: the plan [`workers`](Self::workers) chooses).
    pub fn plan(mut self, plan: Plan) -> Self {
        self.plan = Some(plan);
        self
    }

    /// How long every receive source keeps polling its queue after any of them got a
    /// packet, instead of parking its worker (default [`DEFAULT_BUSY_POLL`]; zero
    /// turns busy-polling off). A parked worker costs a thread wake-up per packet
    /// (tens of µs after an idle period); polling costs CPU only within the window.
    /// Change it live with [`RunningDataPlane::set_busy_poll`].
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = Some(window);
        self
    }

    /// Runs every stage on one busy-polling worker (true) or on two (false), unless a
    /// [`plan`](Self::plan) is given; shorthand for [`workers`](Self::workers) with
    /// [`Workers::One`] or [`Workers::Two`].
    pub fn run_to_completion(self, on: bool) -> Self {
        self.workers(if on { Workers::One } else { Workers::Two })
    }

    /// How many workers the default plan uses (default [`Workers::Two`]; see
    /// [`Workers`] for when to choose which). Ignored when a [`plan`](Self::plan) is
    /// given.
    pub fn workers(mut self, workers: Workers) -> Self {
        self.workers = workers;
        self
    }

    /// Lets the [`Workers`] choice change while the data plane runs
    /// ([`RunningDataPlane::set_workers`]; default false). The plan then always has
    /// two workers and is adaptive: every async stage (the receive sources, the
    /// socket underlay's transmit) runs on worker 0, and the sync stages move between
    /// the workers at a switch, at a burst boundary (no frame lost or reordered).
    /// Costs one atomic per wake-up; in [`Workers::Two`] the underlay side's receive
    /// shares worker 0 with the VF side. Ignored when a [`plan`](Self::plan) is given.
    pub fn switchable(mut self, on: bool) -> Self {
        self.switchable = on;
        self
    }

    /// Burst size of every stage (default [`DEFAULT_BURST`]).
    pub fn burst(mut self, burst: usize) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Binds the sockets, builds the pipeline and starts it.
    pub fn start(self) -> Result<RunningDataPlane, DataPlaneError> {
        let underlay = self.underlay.ok_or(DataPlaneError::Missing(
            "no underlay: call .underlay(UnderlayConfig::new(local_ip))",
        ))?;
        let egress_table = self
            .egress
            .ok_or(DataPlaneError::Missing("no egress table: call .egress(..)"))?;
        let ingress_table = self.ingress.ok_or(DataPlaneError::Missing(
            "no ingress table: call .ingress(..)",
        ))?;
        if self.vfs.is_empty() {
            return Err(DataPlaneError::Missing("no VF port: call .vf(port)"));
        }
        let rx_ports = if self.rx_ports.is_empty() {
            vec![TunnelKind::Vxlan.default_port()]
        } else {
            self.rx_ports
        };
        let stats = NicStats::new();
        let stop = Stop::default();
        let window = self.busy_poll.unwrap_or(DEFAULT_BUSY_POLL);
        let activity = activity::Activity::new(window);
        // Room for a 64 KiB TSO segment plus outer headers is not needed per frame:
        // segmentation produces MTU-size frames; receive frames carry one datagram.
        let pool = Arc::new(FramePool::new(DEFAULT_HEADROOM, 9216, 8192));
        let ports: Vec<(u16, SharedPort)> = self
            .vfs
            .into_iter()
            .map(|p| (p.vf(), Arc::new(Mutex::new(p))))
            .collect();

        let b = PipelineBuilder::new().default_burst(self.burst.unwrap_or(DEFAULT_BURST));
        let rx = ports.iter().map(|(vf, port)| {
            b.source_async(
                &format!("vf{vf}-rx"),
                VfRx::new(
                    port.clone(),
                    pool.clone(),
                    stats.clone(),
                    stop.clone(),
                    activity.clone(),
                ),
            )
        });
        let from_vfs = b.merge(rx.collect::<Vec<_>>());
        // TSO super-frames stay whole to the socket underlay, which cuts them into its
        // GSO sends; the AF_XDP underlay sends frames, so egress cuts them.
        let keep_super_frames = matches!(underlay.kind, UnderlayKind::Udp) && underlay.gso;
        let out = egress_with(
            from_vfs,
            &EgressConfig {
                table: egress_table,
                pool: pool.clone(),
                stats: stats.clone(),
            },
            keep_super_frames,
        );
        let mut from_underlay = Vec::new();
        let mut xdp = None;
        let tunnel_frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
        match &underlay.kind {
            UnderlayKind::Udp => {
                let tx = UnderlayTx::bind(
                    underlay.clone(),
                    pool.clone(),
                    stats.clone(),
                    tunnel_frames.clone(),
                )
                .map_err(|e| DataPlaneError::Socket {
                    what: format!("for sending on {}", underlay.local),
                    source: e,
                })?;
                out.underlay.sink_async("underlay-tx", tx);
                for port in &rx_ports {
                    let rx = UnderlayRx::bind(
                        underlay.clone(),
                        *port,
                        pool.clone(),
                        stats.clone(),
                        stop.clone(),
                        activity.clone(),
                        self.decap.clone().unwrap_or_default(),
                    )
                    .map_err(|e| DataPlaneError::Socket {
                        what: format!("{}:{port}", underlay.local),
                        source: e,
                    })?;
                    from_underlay.push(b.source_async(&format!("underlay-rx-{port}"), rx));
                }
            }
            UnderlayKind::AfXdp(x) => {
                let fail = |source| DataPlaneError::Underlay {
                    ifname: x.ifname.clone(),
                    source,
                };
                let own_mac = xdp_underlay::interface_mac(&x.ifname)
                    .map_err(|e| fail(crate::port::PortError::io("read the interface MAC", e)))?;
                let port = AfXdpPort::builder(&x.ifname)
                    .queue(x.queue)
                    .mode(x.xdp_mode)
                    .redirect_udp_ports(&rx_ports)
                    .build()
                    .map_err(fail)?;
                let port: SharedPort = Arc::new(Mutex::new(Box::new(port)));
                let counters = Arc::new(xdp_underlay::TxCounters::default());
                let tx = xdp_underlay::XdpUnderlayTx::new(
                    port.clone(),
                    &x.ifname,
                    own_mac,
                    underlay.local,
                    pool.clone(),
                    stats.clone(),
                    counters.clone(),
                )
                .map_err(|e| DataPlaneError::Socket {
                    what: format!("for the kernel path on {}", underlay.local),
                    source: e,
                })?;
                out.underlay.sink("underlay-tx", tx);
                let rx = VfRx::new(
                    port.clone(),
                    pool.clone(),
                    stats.clone(),
                    stop.clone(),
                    activity.clone(),
                )
                .labelled("underlay-rx");
                from_underlay.push(b.source_async("underlay-rx-xdp", rx));
                xdp = Some((port, counters));
            }
        }
        let inner = ingress(
            b.merge(from_underlay),
            &ingress_table,
            self.decap.unwrap_or_default(),
            &stats,
        );
        inner
            .merge(out.to_vf)
            .sink("vf-tx", VfTx::new(&ports, pool.clone(), stats.clone()));
        let pipeline = b
            .build()
            .map_err(|e| DataPlaneError::Start(e.to_string()))?;
        let names = pipeline.stage_names();
        let udp_underlay = matches!(underlay.kind, UnderlayKind::Udp);
        let roles: Vec<layout::StageRole> = names
            .iter()
            .map(|n| layout::StageRole {
                side: layout::side_of(n),
                is_async: is_async_stage(n, udp_underlay),
            })
            .collect();
        let switchable = self.switchable && self.plan.is_none();
        let plan = match self.plan {
            Some(plan) => plan,
            None => {
                let placement = layout::place(&roles, self.workers, switchable);
                let mut plan = Plan::explicit();
                for w in 0..layout::worker_count(self.workers, switchable) {
                    let mine = names
                        .iter()
                        .zip(&placement)
                        .filter(|(_, at)| **at == w)
                        .map(|(n, _)| *n);
                    plan = plan.worker(mine, CpuPin::Auto);
                }
                if switchable {
                    plan = plan.adaptive();
                }
                plan.busy_poll(runtime_busy_poll(self.workers, window))
            }
        };
        let layout = Layout {
            names: names.iter().map(|n| n.to_string()).collect(),
            roles,
            switchable,
            workers: Mutex::new(self.workers),
        };
        let running =
            Runtime::start(pipeline, plan).map_err(|e| DataPlaneError::Start(e.to_string()))?;
        Ok(RunningDataPlane {
            running,
            layout,
            tunnel_frames: underlay.tunnel_gso.then_some(tunnel_frames),
            xdp,
            activity,
            stop,
            stats,
            ports,
        })
    }
}

/// Whether stage `name` of the data plane runs as a task of its worker (a source, or
/// the socket underlay's transmit).
fn is_async_stage(name: &str, udp_underlay: bool) -> bool {
    (name.starts_with("vf") && name.ends_with("-rx"))
        || name.starts_with("underlay-rx")
        || (udp_underlay && name == "underlay-tx")
}

/// The runtime's busy-poll window for a [`Workers`] choice: a run-to-completion
/// worker polls all its inputs (rings and sockets) for the window after its last
/// progress; with two workers only the receive sources poll (the data plane's own
/// window), so a worker with nothing to receive parks at once.
fn runtime_busy_poll(workers: Workers, window: Duration) -> Duration {
    match workers {
        Workers::One => window,
        Workers::Two => Duration::ZERO,
    }
}

/// The stages and the placement choice of a running data plane.
#[derive(Debug)]
struct Layout {
    names: Vec<String>,
    roles: Vec<layout::StageRole>,
    switchable: bool,
    workers: Mutex<Workers>,
}

/// A running data plane.
#[derive(Debug)]
pub struct RunningDataPlane {
    running: Running,
    layout: Layout,
    tunnel_frames: Option<Arc<std::sync::atomic::AtomicU64>>,
    xdp: Option<(SharedPort, Arc<xdp_underlay::TxCounters>)>,
    activity: activity::Activity,
    stop: Stop,
    stats: NicStats,
    ports: Vec<(u16, SharedPort)>,
}
