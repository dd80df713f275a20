//! Plans: which stages run on which worker, pinned to which core, with which ring
//! sizes and bursts. Plans are plain data: printable, comparable, buildable in code.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::budget::{ActivationBudget, UringBudget, MAX_FIXED_BUFFERS, MAX_URING_ENTRIES};
use crate::uring::UringConfig;

mod resolved;
pub use resolved::{PlanError, ResolvedPlan, ResolvedWorker};
pub(crate) use resolved::{MAX_BURST, MAX_RING_CAPACITY};

/// Default slots per inter-worker ring.
pub const DEFAULT_RING_CAPACITY: usize = 1024;

/// Where a worker's thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Pinned to this CPU id.
    Core(usize),
    /// Pinned to CPU `worker index % number of CPUs` (the default).
    Auto,
    /// Not pinned: the OS scheduler decides.
    Float,
}

/// One worker of a plan: a pinned OS thread running the listed stages, fused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// Stage names, in any order (the runtime runs them in pipeline order).
    pub stages: Vec<String>,
    /// CPU placement.
    pub pin: Pin,
}

/// How stages are laid out on workers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    Fused,
    PerStage,
    Spread(usize),
    Explicit(Vec<WorkerSpec>),
}

/// A mapping of stages onto workers, plus ring capacities and burst sizes.
///
/// ```
/// use pipewright::{Pin, Plan};
///
/// // Two workers: parse+checksum fused on CPU 0, route+sink on CPU 1.
/// let plan = Plan::explicit()
///     .worker(["parse", "checksum"], Pin::Core(0))
///     .worker(["route", "sink"], Pin::Core(1))
///     .ring_capacity(4096)
///     .burst("parse", 64);
/// println!("{plan}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    layout: Layout,
    ring_capacity: usize,
    ring_overrides: HashMap<String, usize>,
    bursts: HashMap<String, usize>,
    activations: HashMap<String, ActivationBudget>,
    urings: HashMap<String, UringBudget>,
    replicas: HashMap<String, usize>,
    adaptive: bool,
    busy_poll: Duration,
}

impl Default for Plan {
    /// Spread over as many workers as the machine has CPUs.
    fn default() -> Self {
        Self::spread(available_cpus())
    }
}

/// CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Plan {
    fn with_layout(layout: Layout) -> Self {
        Self {
            layout,
            ring_capacity: DEFAULT_RING_CAPACITY,
            ring_overrides: HashMap::new(),
            bursts: HashMap::new(),
            activations: HashMap::new(),
            urings: HashMap::new(),
            replicas: HashMap::new(),
            adaptive: false,
            busy_poll: Duration::ZERO,
        }
    }

    /// Every stage on one worker: all edges fused, no rings.
    pub fn fused() -> Self {
        Self::with_layout(Layout::Fused)
    }

    /// One worker per stage: every edge is a ring.
    pub fn per_stage() -> Self {
        Self::with_layout(Layout::PerStage)
    }

    /// `workers` workers, each taking a contiguous run of stages in pipeline order
    /// (balanced by count).
    pub fn spread(workers: usize) -> Self {
        Self::with_layout(Layout::Spread(workers))
    }

    /// An explicit plan; add workers with [`worker`](Plan::worker).
    pub fn explicit() -> Self {
        Self::with_layout(Layout::Explicit(Vec::new()))
    }

    /// Adds a worker running `stages` (only for [`Plan::explicit`] plans; on another
    /// plan this turns it into an explicit one).
    pub fn worker<S: Into<String>>(
        mut self,
        stages: impl IntoIterator<Item = S>,
        pin: Pin,
    ) -> Self {
        let spec = WorkerSpec {
            stages: stages.into_iter().map(Into::into).collect(),
            pin,
        };
        match &mut self.layout {
            Layout::Explicit(workers) => workers.push(spec),
            other => *other = Layout::Explicit(vec![spec]),
        }
        self
    }

    /// Keeps each worker polling its stages (and its async stages' sockets and rings)
    /// for `window` after its last progress before it parks: a packet or request that
    /// arrives within the window is taken at once instead of after a thread wake-up
    /// (tens of microseconds after an idle period). Costs a core's time while idle, so
    /// for latency-sensitive pipelines with cores to spare; `Duration::ZERO` (the
    /// default) parks after a few idle passes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pipewright::Plan;
    /// let plan = Plan::spread(2).busy_poll(Duration::from_micros(200));
    /// assert_eq!(plan.busy_poll_window(), Duration::from_micros(200));
    /// ```
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// How long workers keep polling after their last progress (see
    /// [`busy_poll`](Plan::busy_poll)).
    pub fn busy_poll_window(&self) -> Duration {
        self.busy_poll
    }

    /// Lets stages move between workers while running (see
    /// [`Running::apply`](crate::Running::apply) and the [`controller`](crate::controller)).
    /// Costs one extra atomic per wake-up; fused sync stages keep waking each other.
    pub fn adaptive(mut self) -> Self {
        self.adaptive = true;
        self
    }

    /// Whether stages may move while running.
    pub fn is_adaptive(&self) -> bool {
        self.adaptive
    }

    /// Slots of every inter-worker ring (rounded up to a power of two).
    pub fn ring_capacity(mut self, capacity: usize) -> Self {
        self.ring_capacity = capacity;
        self
    }

    /// Slots of the ring in front of one stage (or application output).
    pub fn ring_capacity_for(mut self, stage: &str, capacity: usize) -> Self {
        self.ring_overrides.insert(stage.to_string(), capacity);
        self
    }

    /// Burst size of one stage (overrides what the builder set). For a replicated stage
    /// it applies to every replica and to its split and order nodes: give a stage of
    /// large items (blocks of lines, whole files) a small burst, and its split hands
    /// them out one at a time to whichever replica has the least waiting.
    pub fn burst(mut self, stage: &str, burst: usize) -> Self {
        self.bursts.insert(stage.to_string(), burst);
        self
    }

    /// Sets how much `stage` may do per activation before its worker moves on (see
    /// [`ActivationBudget`]; the default is one burst).
    pub fn activation(mut self, stage: &str, budget: ActivationBudget) -> Self {
        self.activations.insert(stage.to_string(), budget);
        self
    }

    /// Declares what I/O `stage` needs of its worker's io_uring (see [`UringBudget`]).
    pub fn uring(mut self, stage: &str, budget: UringBudget) -> Self {
        self.urings.insert(stage.to_string(), budget);
        self
    }

    /// Starts a replicated stage (see `Stream::then_replicated`) with `active` of its
    /// declared replicas receiving items (the default is all of them); the rest stay
    /// parked until [`Running::set_replicas`](crate::Running::set_replicas) or the
    /// controller activates them.
    pub fn replicas(mut self, stage: &str, active: usize) -> Self {
        self.replicas.insert(stage.to_string(), active);
        self
    }

    pub(crate) fn replicas_for(&self, stage: &str) -> Option<usize> {
        self.replicas.get(stage).copied()
    }

    pub(crate) fn uring_for(&self, stage: &str) -> Option<UringBudget> {
        self.urings
            .get(stage)
            .or_else(|| self.urings.get(replica_base(stage)?))
            .copied()
    }

    pub(crate) fn urings_map(&self) -> Vec<(String, UringBudget)> {
        self.urings.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub(crate) fn activation_for(&self, stage: &str) -> ActivationBudget {
        self.activations
            .get(stage)
            .or_else(|| self.activations.get(replica_base(stage)?))
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn activations_map(&self) -> Vec<(String, ActivationBudget)> {
        self.activations
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Sets the burst size of every stage.
    pub fn burst_all(mut self, burst: usize) -> Self {
        self.bursts.insert(ALL.to_string(), burst);
        self
    }

    pub(crate) fn burst_for(&self, stage: &str) -> Option<usize> {
        self.bursts
            .get(stage)
            .or_else(|| self.bursts.get(replica_base(stage)?))
            .or_else(|| self.bursts.get(plumbing_base(stage)?))
            .or_else(|| self.bursts.get(ALL))
            .copied()
    }

    pub(crate) fn ring_for(&self, consumer: &str) -> usize {
        self.ring_overrides
            .get(consumer)
            .or_else(|| self.ring_overrides.get(replica_base(consumer)?))
            .copied()
            .unwrap_or(self.ring_capacity)
    }

    /// Resolves the plan against a pipeline's stage names (in pipeline order).
    pub fn resolve(&self, stages: &[&str]) -> Result<ResolvedPlan, PlanError> {
        self.resolve_for(stages, available_cpus())
    }

    /// Resolves the plan for a machine with `cpus` CPUs (ids `0..cpus`).
    pub fn resolve_for(&self, stages: &[&str], cpus: usize) -> Result<ResolvedPlan, PlanError> {
        if self.ring_capacity == 0 || self.ring_overrides.values().any(|c| *c == 0) {
            return Err(PlanError::ZeroRing);
        }
        let mut rings = std::iter::once(&self.ring_capacity).chain(self.ring_overrides.values());
        if let Some(&capacity) = rings.find(|c| **c > MAX_RING_CAPACITY) {
            return Err(PlanError::RingTooLarge {
                capacity,
                max: MAX_RING_CAPACITY,
            });
        }
        if let Some((stage, _)) = self.bursts.iter().find(|(_, b)| **b == 0) {
            return Err(PlanError::ZeroBurst(stage.clone()));
        }
        if let Some((stage, &burst)) = self.bursts.iter().find(|(_, b)| **b > MAX_BURST) {
            return Err(PlanError::BurstTooLarge {
                stage: stage.clone(),
                burst,
                max: MAX_BURST,
            });
        }
        for (stage, budget) in &self.activations {
            if let Some(what) = budget.invalid() {
                return Err(PlanError::BadBudget {
                    stage: stage.clone(),
                    what,
                });
            }
        }
        for (stage, budget) in &self.urings {
            if let Some(what) = budget.invalid() {
                return Err(PlanError::BadBudget {
                    stage: stage.clone(),
                    what,
                });
            }
        }
        for name in self
            .bursts
            .keys()
            .chain(self.ring_overrides.keys())
            .chain(self.activations.keys())
            .chain(self.urings.keys())
            .chain(self.replicas.keys())
        {
            let replicated = stages
                .iter()
                .any(|s| replica_base(s) == Some(name.as_str()));
            if name != ALL && !stages.contains(&name.as_str()) && !replicated {
                return Err(PlanError::UnknownStage(name.clone()));
            }
        }
        let n = stages.len();
        let groups: Vec<(Vec<usize>, Pin)> = match &self.layout {
            Layout::Fused => vec![((0..n).collect(), Pin::Auto)],
            Layout::PerStage => (0..n).map(|i| (vec![i], Pin::Auto)).collect(),
            Layout::Spread(0) => return Err(PlanError::NoWorkers),
            Layout::Spread(w) => {
                let w = (*w).min(n.max(1));
                let mut groups: Vec<(Vec<usize>, Pin)> = (0..w)
                    .map(|k| ((k * n / w..(k + 1) * n / w).collect(), Pin::Auto))
                    .collect();
                spread_replicas(stages, &mut groups);
                groups
            }
            Layout::Explicit(workers) => {
                if workers.is_empty() {
                    return Err(PlanError::NoWorkers);
                }
                let mut seen = vec![false; n];
                let mut groups = Vec::new();
                for w in workers {
                    let mut ids = Vec::new();
                    for name in &w.stages {
                        if let Some(id) = stages.iter().position(|s| s == name) {
                            if std::mem::replace(&mut seen[id], true) {
                                return Err(PlanError::StageTwice(name.clone()));
                            }
                            ids.push(id);
                            continue;
                        }
                        // A replicated stage's name: this worker takes its next replica
                        // (and the first worker naming it also takes its split).
                        let next = stages.iter().enumerate().position(|(i, s)| {
                            !seen[i] && parse_replica(s).is_some_and(|(base, _)| base == name)
                        });
                        let Some(id) = next else {
                            let known = stages.iter().any(|s| replica_base(s) == Some(name));
                            return Err(if known {
                                PlanError::StageTwice(name.clone())
                            } else {
                                PlanError::UnknownStage(name.clone())
                            });
                        };
                        seen[id] = true;
                        ids.push(id);
                        for part in ["split", "order"] {
                            let part = format!("{name}/{part}");
                            if let Some(p) = stages.iter().position(|s| *s == part) {
                                if !seen[p]
                                    && (part.ends_with("split") || last_mention(workers, name, w))
                                {
                                    seen[p] = true;
                                    ids.push(p);
                                }
                            }
                        }
                    }
                    ids.sort_unstable();
                    groups.push((ids, w.pin));
                }
                // Replicas no worker named go round the workers that named their stage.
                for (id, stage) in stages.iter().enumerate() {
                    if seen[id] {
                        continue;
                    }
                    let Some((base, index)) = parse_replica(stage) else {
                        continue;
                    };
                    let hosts: Vec<usize> = workers
                        .iter()
                        .enumerate()
                        .filter(|(_, w)| w.stages.iter().any(|s| s == base))
                        .map(|(i, _)| i)
                        .collect();
                    if !hosts.is_empty() {
                        seen[id] = true;
                        groups[hosts[index % hosts.len()]].0.push(id);
                    }
                }
                for group in &mut groups {
                    group.0.sort_unstable();
                }
                if let Some(missing) = seen.iter().position(|s| !s) {
                    return Err(PlanError::StageMissing(stages[missing].to_string()));
                }
                groups
            }
        };
        let cpus = cpus.max(1);
        let mut workers = Vec::new();
        for (index, (nodes, pin)) in groups.into_iter().enumerate() {
            let core = match pin {
                Pin::Core(c) if c >= cpus => return Err(PlanError::NoSuchCore { core: c, cpus }),
                Pin::Core(c) => Some(c),
                Pin::Auto => Some(index % cpus),
                Pin::Float => None,
            };
            let mut uring: Option<UringConfig> = None;
            for &node in &nodes {
                if let Some(b) = self.uring_for(stages[node]) {
                    let c = uring.get_or_insert(UringConfig {
                        entries: 0,
                        fixed_buffers: 0,
                    });
                    c.entries += b.sq_entries;
                    c.fixed_buffers += b.fixed_buffers;
                    if c.entries > MAX_URING_ENTRIES || c.fixed_buffers > MAX_FIXED_BUFFERS {
                        return Err(PlanError::BadBudget {
                            stage: stages[node].to_string(),
                            what: "an io_uring budget that, with the other stages on its worker, exceeds the kernel's limits (32768 entries, 16384 fixed buffers)",
                        });
                    }
                }
            }
            workers.push(ResolvedWorker { nodes, core, uring });
        }
        Ok(ResolvedPlan { workers })
    }
}

const ALL: &str = "*";

/// `parse#1` → `("parse", 1)`.
fn parse_replica(name: &str) -> Option<(&str, usize)> {
    pipewright_stages::parse_replica_name(name)
}

/// The replicated stage a node belongs to: `parse#1` → `parse` (its split and order
/// nodes are plumbing with names of their own).
fn replica_base(name: &str) -> Option<&str> {
    parse_replica(name).map(|(base, _)| base)
}

/// The replicated stage whose split or order node this is: `parse/split` → `parse`. A
/// burst set for a replicated stage applies to its split too, so that the split hands
/// out work in the replicas' units (a replica of 64 KiB blocks with a burst of 1 must
/// not be sent 64 blocks ahead of the others).
fn plumbing_base(name: &str) -> Option<&str> {
    let (base, node) = name.rsplit_once('/')?;
    matches!(node, "split" | "order").then_some(base)
}

/// Whether `worker` is the last of `workers` that names `stage`.
fn last_mention(workers: &[WorkerSpec], stage: &str, worker: &WorkerSpec) -> bool {
    let last = workers
        .iter()
        .rposition(|w| w.stages.iter().any(|s| s == stage));
    last.is_some_and(|i| std::ptr::eq(&workers[i], worker))
}

/// Moves the replicas of each replicated stage onto distinct workers, starting at the
/// worker that holds its split: a contiguous spread could put them all on one.
fn spread_replicas(stages: &[&str], groups: &mut [(Vec<usize>, Pin)]) {
    let workers = groups.len();
    if workers < 2 {
        return;
    }
    let worker_of = |groups: &[(Vec<usize>, Pin)], id: usize| {
        groups.iter().position(|(ids, _)| ids.contains(&id))
    };
    for (id, stage) in stages.iter().enumerate() {
        let Some((base, index)) = parse_replica(stage) else {
            continue;
        };
        let split = format!("{base}/split");
        let start = stages
            .iter()
            .position(|s| *s == split)
            .and_then(|s| worker_of(groups, s))
            .unwrap_or(0);
        let target = (start + index) % workers;
        if let Some(from) = worker_of(groups, id) {
            groups[from].0.retain(|&n| n != id);
        }
        groups[target].0.push(id);
    }
    for (ids, _) in groups.iter_mut() {
        ids.sort_unstable();
    }
}

/// A generated layout, for plan files.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LayoutKind {
    Fused,
    PerStage,
    Spread(usize),
}

impl Plan {
    pub(crate) fn layout_parts(&self) -> (Option<LayoutKind>, Vec<WorkerSpec>) {
        match &self.layout {
            Layout::Fused => (Some(LayoutKind::Fused), Vec::new()),
            Layout::PerStage => (Some(LayoutKind::PerStage), Vec::new()),
            Layout::Spread(n) => (Some(LayoutKind::Spread(*n)), Vec::new()),
            Layout::Explicit(w) => (None, w.clone()),
        }
    }

    pub(crate) fn ring_capacity_default(&self) -> usize {
        self.ring_capacity
    }

    pub(crate) fn bursts_map(&self) -> Vec<(String, usize)> {
        self.bursts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub(crate) fn rings_map(&self) -> Vec<(String, usize)> {
        self.ring_overrides
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.layout {
            Layout::Fused => write!(f, "fused (one worker)")?,
            Layout::PerStage => write!(f, "one worker per stage")?,
            Layout::Spread(w) => write!(f, "spread over {w} workers")?,
            Layout::Explicit(workers) => {
                for (i, w) in workers.iter().enumerate() {
                    let pin = match w.pin {
                        Pin::Core(c) => format!("cpu {c}"),
                        Pin::Auto => "cpu auto".into(),
                        Pin::Float => "unpinned".into(),
                    };
                    write!(
                        f,
                        "{}worker {i} [{pin}]: {}",
                        if i > 0 { "; " } else { "" },
                        w.stages.join(" -> ")
                    )?;
                }
            }
        }
        write!(f, "; rings {} slots", self.ring_capacity)?;
        if !self.busy_poll.is_zero() {
            write!(f, "; busy-poll {:?}", self.busy_poll)?;
        }
        Ok(())
    }
}
