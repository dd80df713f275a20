//! The adaptive controller: a deterministic state machine with no I/O and no clock.
//!
//! Each interval it is shown what every stage did ([`Observation`]) and answers with
//! plan changes ([`Decision`]): move a stage to another worker (giving the bottleneck
//! a core of its own, or fusing stages back when a core is idle) and resize bursts
//! (SEDA's batching controller: the largest burst that keeps per-burst latency under
//! a target). It never acts on one noisy interval (a condition must hold for
//! `patience` intervals) and rests `cooldown` intervals after acting, so it does not
//! oscillate. Because it is pure, it is tested, and replayed, from recorded
//! observations; the runtime applies its decisions live.

use std::fmt;

/// Tuning of the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// Act on load imbalance when the busiest and idlest workers differ by more than
    /// this share of a core.
    pub imbalance: f64,
    /// Intervals a condition must hold before acting.
    pub patience: u32,
    /// Intervals to rest after a move.
    pub cooldown: u32,
    /// Fuse everything onto one worker when all stages together use less than this
    /// share of one core.
    pub fuse_below: f64,
    /// Target time for one burst of one stage, in ns (bounds batching latency).
    pub burst_latency_target_ns: f64,
    /// Smallest and largest burst the controller sets.
    pub burst_range: (usize, usize),
    /// Add a replica to a replicated stage when its active replicas are, on average,
    /// busier than this share of a core and the next replica's worker has room.
    pub replicas_grow_above: f64,
    /// Take a replica out when the stage's load would keep one fewer replica below
    /// this share of a core each.
    pub replicas_shrink_below: f64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            imbalance: 0.25,
            patience: 3,
            cooldown: 5,
            fuse_below: 0.4,
            burst_latency_target_ns: 50_000.0,
            burst_range: (1, 256),
            replicas_grow_above: 0.75,
            replicas_shrink_below: 0.45,
        }
    }
}

/// What one stage did in one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct StageLoad {
    /// Stage name.
    pub name: String,
    /// Worker it runs on.
    pub worker: usize,
    /// Time it spent processing, in ns, during the interval.
    pub busy_ns: f64,
    /// Items it took.
    pub items: u64,
    /// Mean service time per item, in ns, if measured.
    pub ns_per_item: Option<f64>,
    /// Items waiting in its input at the end of the interval.
    pub queue_depth: usize,
    /// Capacity of its input.
    pub queue_capacity: usize,
    /// Its burst size.
    pub burst: usize,
    /// Whether the runtime can move it (async stages and sources cannot).
    pub movable: bool,
}

/// Everything the controller sees in one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Interval length in ns.
    pub interval_ns: f64,
    /// Workers available.
    pub workers: usize,
    /// Stages, in pipeline order (a replicated stage's replicas as `name#i` rows).
    pub stages: Vec<StageLoad>,
    /// Replicated stages whose replica count the runtime can change live.
    pub replicated: Vec<ReplicatedStage>,
}

/// A replicated stage as the controller sees it (its replicas are the
/// `name#0..name#max` rows of [`Observation::stages`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedStage {
    /// The stage's name.
    pub name: String,
    /// Replicas receiving new items now (the first `active` of them).
    pub active: usize,
    /// Replicas declared.
    pub max: usize,
}

/// A plan change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run `stage` on worker `to` from now on.
    Move {
        /// The stage.
        stage: String,
        /// Its worker now.
        from: usize,
        /// Its worker after.
        to: usize,
        /// Why, for logs and metrics.
        why: Reason,
    },
    /// Use burst size `to` for `stage`.
    Burst {
        /// The stage.
        stage: String,
        /// Its burst now.
        from: usize,
        /// Its burst after.
        to: usize,
    },
    /// Give new items of replicated stage `stage` to `to` of its replicas.
    Replicas {
        /// The replicated stage.
        stage: String,
        /// Replicas active now.
        from: usize,
        /// Replicas active after.
        to: usize,
    },
}

/// Why a stage was moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Balancing a busy worker against an idle one (the bottleneck gets a core).
    Balance,
    /// Everything fits on one core: fuse, freeing the others.
    Fuse,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Move {
                stage,
                from,
                to,
                why,
            } => {
                let why = match why {
                    Reason::Balance => "balance",
                    Reason::Fuse => "fuse",
                };
                write!(f, "move {stage}: worker {from} -> {to} ({why})")
            }
            Decision::Burst { stage, from, to } => write!(f, "burst {stage}: {from} -> {to}"),
            Decision::Replicas { stage, from, to } => {
                write!(f, "replicas {stage}: {from} -> {to}")
            }
        }
    }
}

/// The controller's state between intervals.
#[derive(Debug, Clone)]
pub struct Controller {
    config: ControllerConfig,
    imbalanced_for: u32,
    underused_for: u32,
    resting: u32,
    decisions: u64,
    /// Per replicated stage: consecutive intervals it wanted to grow (> 0) or shrink
    /// (< 0).
    replica_trend: Vec<(String, i32)>,
}

impl Controller {
    /// A controller with `config`.
    pub fn new(config: ControllerConfig) -> Self {
        Self {
            config,
            imbalanced_for: 0,
            underused_for: 0,
            resting: 0,
            decisions: 0,
            replica_trend: Vec::new(),
        }
    }

    /// Decisions made so far.
    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    /// Utilisation (share of one core) of every worker.
    pub fn utilisation(obs: &Observation) -> Vec<f64> {
        let mut u = vec![0.0; obs.workers.max(1)];
        for s in &obs.stages {
            if let Some(w) = u.get_mut(s.worker) {
                *w += s.busy_ns / obs.interval_ns.max(1.0);
            }
        }
        u
    }

    /// One interval: what to change.
    pub fn observe(&mut self, obs: &Observation) -> Vec<Decision> {
        let mut out = self.bursts(obs);
        if self.resting > 0 {
            self.resting -= 1;
            self.decisions += out.len() as u64;
            return out;
        }
        let util = Self::utilisation(obs);
        if let Some(d) = self.replicas(obs, &util) {
            self.act();
            out.push(d);
            self.decisions += out.len() as u64;
            return out;
        }
        let total: f64 = util.iter().sum();
        let used_workers = util.iter().filter(|u| **u > 0.0).count();
        // Fuse back when everything fits comfortably on one core.
        if used_workers > 1 && total < self.config.fuse_below {
            self.underused_for += 1;
            self.imbalanced_for = 0;
            if self.underused_for >= self.config.patience {
                let target = busiest(&util);
                let moves: Vec<Decision> = obs
                    .stages
                    .iter()
                    .filter(|s| s.movable && !is_replica(s) && s.worker != target)
                    .map(|s| Decision::Move {
                        stage: s.name.clone(),
                        from: s.worker,
                        to: target,
                        why: Reason::Fuse,
                    })
                    .collect();
                if !moves.is_empty() {
                    self.act();
                    out.extend(moves);
                }
            }
            self.decisions += out.len() as u64;
            return out;
        }
        self.underused_for = 0;
        let (hi, lo) = (busiest(&util), idlest(&util));
        if util[hi] - util[lo] > self.config.imbalance {
            self.imbalanced_for += 1;
            if self.imbalanced_for >= self.config.patience {
                if let Some(m) = self.best_move(obs, &util, hi, lo) {
                    self.act();
                    out.push(m);
                }
            }
        } else {
            self.imbalanced_for = 0;
        }
        self.decisions += out.len() as u64;
        out
    }

    /// A replicated stage whose active replicas are saturated gets one more (on a
    /// worker with room); one whose load fits in fewer gives one back. Changing the
    /// count beats moving stages: it is how a stage gets more than one core.
    fn replicas(&mut self, obs: &Observation, util: &[f64]) -> Option<Decision> {
        let interval = obs.interval_ns.max(1.0);
        let mut wanted = None;
        for r in &obs.replicated {
            let rows: Vec<&StageLoad> = obs
                .stages
                .iter()
                .filter(|s| {
                    pipewright_stages::parse_replica_name(&s.name).is_some_and(|(b, _)| b == r.name)
                })
                .collect();
            let share = |i: usize| {
                rows.iter()
                    .find(|s| {
                        pipewright_stages::parse_replica_name(&s.name).map(|p| p.1) == Some(i)
                    })
                    .map(|s| s.busy_ns / interval)
            };
            let load: f64 = (0..r.active).filter_map(share).sum();
            let next_worker = rows
                .iter()
                .find(|s| {
                    pipewright_stages::parse_replica_name(&s.name).map(|p| p.1) == Some(r.active)
                })
                .map(|s| s.worker);
            let grow = r.active < r.max
                && load / r.active.max(1) as f64 > self.config.replicas_grow_above
                && next_worker.is_some_and(|w| {
                    util.get(w)
                        .is_some_and(|u| *u < 1.0 - self.config.replicas_grow_above)
                });
            let shrink =
                r.active > 1 && load / ((r.active - 1) as f64) < self.config.replicas_shrink_below;
            let step: i32 = if grow {
                1
            } else if shrink {
                -1
            } else {
                0
            };
            let trend = match self.replica_trend.iter_mut().find(|t| t.0 == r.name) {
                Some(t) => &mut t.1,
                None => {
                    self.replica_trend.push((r.name.clone(), 0));
                    &mut self.replica_trend.last_mut().expect("just pushed").1
                }
            };
            *trend = match step {
                0 => 0,
                s if s.signum() == trend.signum() => *trend + s,
                s => s,
            };
            if wanted.is_none() && trend.unsigned_abs() >= self.config.patience {
                let to = if step > 0 { r.active + 1 } else { r.active - 1 };
                *trend = 0;
                wanted = Some(Decision::Replicas {
                    stage: r.name.clone(),
                    from: r.active,
                    to,
                });
            }
        }
        wanted
    }

    fn act(&mut self) {
        self.resting = self.config.cooldown;
        self.imbalanced_for = 0;
        self.underused_for = 0;
    }

    /// The move from `hi` to `lo` that leaves the two closest, if it improves the
    /// imbalance by more than half the threshold (hysteresis against ping-pong).
    fn best_move(&self, obs: &Observation, util: &[f64], hi: usize, lo: usize) -> Option<Decision> {
        let before = util[hi] - util[lo];
        let mut best: Option<(&StageLoad, f64)> = None;
        let on_hi = obs.stages.iter().filter(|s| s.worker == hi).count();
        // Replicas keep their workers: a replicated stage gets more or fewer cores
        // through its replica count, never by stacking replicas on one worker.
        for s in obs
            .stages
            .iter()
            .filter(|s| s.worker == hi && s.movable && !is_replica(s))
        {
            if on_hi == 1 {
                break; // a stage alone on its worker already has the core
            }
            let share = s.busy_ns / obs.interval_ns.max(1.0);
            let after = ((util[hi] - share) - (util[lo] + share)).abs();
            if best.is_none_or(|(_, b)| after < b) {
                best = Some((s, after));
            }
        }
        let (stage, after) = best?;
        (before - after > self.config.imbalance / 2.0).then(|| Decision::Move {
            stage: stage.name.clone(),
            from: hi,
            to: lo,
            why: Reason::Balance,
        })
    }

    /// SEDA-style batching: grow a stage's burst while its queue builds and a burst
    /// stays well under the latency target; shrink it when a burst overshoots.
    fn bursts(&self, obs: &Observation) -> Vec<Decision> {
        let (min, max) = self.config.burst_range;
        let target = self.config.burst_latency_target_ns;
        let mut out = Vec::new();
        for s in &obs.stages {
            // Only a stage the runtime can reach at a burst boundary can be resized
            // live (async stages run as tasks): propose nothing it would refuse.
            if !s.movable {
                continue;
            }
            let Some(ns) = s.ns_per_item else { continue };
            let burst_ns = ns * s.burst as f64;
            let backlog = s.queue_capacity > 0 && s.queue_depth * 2 > s.queue_capacity;
            let to = if burst_ns > target && s.burst > min {
                (s.burst / 2).max(min)
            } else if backlog
                && burst_ns * 2.0 < target / 2.0
                && s.burst < max.min(s.queue_capacity)
            {
                // A burst larger than the input edge could never fill.
                (s.burst * 2).min(max).min(s.queue_capacity)
            } else {
                continue;
            };
            out.push(Decision::Burst {
                stage: s.name.clone(),
                from: s.burst,
                to,
            });
        }
        out
    }
}

fn is_replica(s: &StageLoad) -> bool {
    pipewright_stages::parse_replica_name(&s.name).is_some()
}

fn busiest(u: &[f64]) -> usize {
    (0..u.len())
        .max_by(|a, b| u[*a].total_cmp(&u[*b]))
        .unwrap_or(0)
}

fn idlest(u: &[f64]) -> usize {
    (0..u.len())
        .min_by(|a, b| u[*a].total_cmp(&u[*b]))
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
