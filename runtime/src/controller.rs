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
    /// Stages, in pipeline order.
    pub stages: Vec<StageLoad>,
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
                    .filter(|s| s.movable && s.worker != target)
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
        for s in obs.stages.iter().filter(|s| s.worker == hi && s.movable) {
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
mod tests {
    use super::*;

    fn stage(name: &str, worker: usize, busy_share: f64) -> StageLoad {
        StageLoad {
            name: name.into(),
            worker,
            busy_ns: busy_share * 1e8,
            items: 1000,
            ns_per_item: Some(100.0),
            queue_depth: 0,
            queue_capacity: 1024,
            burst: 32,
            movable: true,
        }
    }

    fn obs(stages: Vec<StageLoad>) -> Observation {
        Observation {
            interval_ns: 1e8,
            workers: 2,
            stages,
        }
    }

    /// Applies moves to the next observation, as the runtime would.
    fn apply(mut o: Observation, decisions: &[Decision]) -> Observation {
        for d in decisions {
            if let Decision::Move { stage, to, .. } = d {
                o.stages
                    .iter_mut()
                    .filter(|s| &s.name == stage)
                    .for_each(|s| s.worker = *to);
            }
        }
        o
    }

    #[test]
    fn the_bottleneck_gets_a_core_after_patience_then_rests() {
        let mut c = Controller::new(ControllerConfig::default());
        // Worker 0 runs a (0.9) and b (0.5); worker 1 runs c and d (0.1 each).
        let o = obs(vec![
            stage("a", 0, 0.9),
            stage("b", 0, 0.5),
            stage("c", 1, 0.1),
            stage("d", 1, 0.1),
        ]);
        assert!(c.observe(&o).is_empty());
        assert!(c.observe(&o).is_empty());
        let d = c.observe(&o);
        assert_eq!(
            d,
            vec![Decision::Move {
                stage: "b".into(),
                from: 0,
                to: 1,
                why: Reason::Balance
            }]
        );
        let o = apply(o, &d);
        for _ in 0..10 {
            assert!(c.observe(&o).is_empty(), "balanced now: no further moves");
        }
    }

    #[test]
    fn no_oscillation_under_steady_load() {
        let mut c = Controller::new(ControllerConfig::default());
        let mut o = obs(vec![
            stage("a", 0, 0.6),
            stage("b", 0, 0.6),
            stage("c", 0, 0.3),
            stage("d", 1, 0.05),
        ]);
        let mut moves = 0;
        for _ in 0..200 {
            let d = c.observe(&o);
            moves += d
                .iter()
                .filter(|d| matches!(d, Decision::Move { .. }))
                .count();
            o = apply(o, &d);
        }
        assert!(moves <= 2, "{moves} moves under constant load");
    }

    #[test]
    fn a_noisy_interval_does_not_trigger_a_move() {
        let mut c = Controller::new(ControllerConfig::default());
        let calm = obs(vec![stage("a", 0, 0.4), stage("b", 1, 0.4)]);
        let spike = obs(vec![stage("a", 0, 0.95), stage("b", 1, 0.1)]);
        for i in 0..30 {
            let o = if i % 3 == 0 { &spike } else { &calm };
            assert!(c
                .observe(o)
                .iter()
                .all(|d| !matches!(d, Decision::Move { .. })));
        }
    }

    #[test]
    fn idle_pipelines_fuse_onto_one_worker() {
        let mut c = Controller::new(ControllerConfig::default());
        let o = obs(vec![
            stage("a", 0, 0.05),
            stage("b", 1, 0.05),
            stage("c", 1, 0.02),
        ]);
        c.observe(&o);
        c.observe(&o);
        let d = c.observe(&o);
        assert_eq!(d.len(), 1);
        assert!(matches!(
            &d[0],
            Decision::Move {
                why: Reason::Fuse,
                ..
            }
        ));
    }

    #[test]
    fn bursts_follow_backlog_and_latency() {
        let c = Controller::new(ControllerConfig::default());
        let mut s = stage("a", 0, 0.5);
        s.queue_depth = 900;
        assert_eq!(
            c.bursts(&obs(vec![s.clone()])),
            vec![Decision::Burst {
                stage: "a".into(),
                from: 32,
                to: 64
            }]
        );
        s.ns_per_item = Some(5_000.0); // 32 * 5 us = 160 us > 50 us target
        assert_eq!(
            c.bursts(&obs(vec![s.clone()])),
            vec![Decision::Burst {
                stage: "a".into(),
                from: 32,
                to: 16
            }]
        );
        s.queue_depth = 0;
        s.ns_per_item = Some(100.0);
        assert!(c.bursts(&obs(vec![s])).is_empty());
    }

    #[test]
    fn pinned_stages_are_never_moved() {
        let mut c = Controller::new(ControllerConfig::default());
        let mut a = stage("a", 0, 0.9);
        let mut b = stage("b", 0, 0.5);
        a.movable = false;
        b.movable = false;
        let o = obs(vec![a, b, stage("c", 1, 0.0)]);
        for _ in 0..10 {
            assert!(c
                .observe(&o)
                .iter()
                .all(|d| !matches!(d, Decision::Move { .. })));
        }
    }

    #[test]
    fn async_stages_get_no_burst_proposals_the_runtime_would_refuse() {
        let c = Controller::new(ControllerConfig::default());
        let mut s = stage("enrich", 0, 0.5);
        s.movable = false;
        s.ns_per_item = Some(5_000.0); // would shrink if it could
        assert!(c.bursts(&obs(vec![s.clone()])).is_empty());
        s.ns_per_item = Some(100.0);
        s.queue_depth = 900; // would grow if it could
        assert!(c.bursts(&obs(vec![s])).is_empty());
    }
}
