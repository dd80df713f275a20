//! Snapshots of a running pipeline taken from any thread ([`Running::watch`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(doc)]
use crate::running::Running;
use crate::running::StageMeta;
use crate::stats::Snapshot;
use crate::EdgeKind;

/// Takes [`Snapshot`]s of a running pipeline from any thread ([`Running::watch`]).
/// Cheap to clone; after the pipeline ends it keeps showing the final counters.
#[derive(Clone)]
pub struct Watch {
    stages: Arc<Vec<StageMeta>>,
    started: Instant,
    plan: String,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("stages", &self.stages.len())
            .field("plan", &self.plan)
            .finish()
    }
}

impl Watch {
    pub(crate) fn new(stages: Arc<Vec<StageMeta>>, started: Instant, plan: String) -> Self {
        Self {
            stages,
            started,
            plan,
        }
    }

    /// Counters of every stage now.
    pub fn snapshot(&self) -> Snapshot {
        snapshot_of(&self.stages)
    }

    /// Time since the pipeline started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The plan the pipeline started with, as text.
    pub fn plan(&self) -> &str {
        &self.plan
    }
}

pub(crate) fn snapshot_of(stages: &[StageMeta]) -> Snapshot {
    let worker_now = |meta: &StageMeta| meta.owner.as_ref().map_or(meta.worker, |o| o.current());
    let workers: Vec<usize> = stages.iter().map(worker_now).collect();
    Snapshot {
        stages: stages
            .iter()
            .enumerate()
            .map(|(id, meta)| {
                let mut s = meta.stats.snapshot(&meta.name);
                s.worker = workers[id];
                s.burst = meta.burst_now.lock().unwrap_or_else(|p| p.into_inner()).1;
                if let Some((kind, capacity, probe)) = &meta.input {
                    s.queue_depth = probe();
                    s.queue_capacity = *capacity;
                    // A fused edge whose ends a live move put on different workers is
                    // carried by its locked queue across threads.
                    let split = meta.producers.iter().any(|&p| workers[p] != workers[id]);
                    s.input_kind = if *kind == EdgeKind::Local && split {
                        "shared"
                    } else {
                        kind.as_str()
                    }
                    .into();
                } else {
                    s.input_kind = "-".into();
                }
                s
            })
            .collect(),
    }
}
