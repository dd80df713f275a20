//! Live re-planning of a running pipeline: applying the controller's decisions.

use std::time::Duration;

use crate::controller::{Controller, Decision, Observation, ReplicatedStage, StageLoad};
use crate::mailbox::Command;
use crate::running::Running;
use crate::stats::Snapshot;

/// Why a plan change could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The pipeline was not started with an adaptive plan.
    #[error("stages cannot move: start the pipeline with `Plan::adaptive()`")]
    NotAdaptive,
    /// No stage has that name.
    #[error("no stage named `{0}`")]
    UnknownStage(String),
    /// The stage cannot be moved or resized live: async stages run as tasks of their
    /// worker.
    #[error("stage `{0}` is async (it runs as a task of its worker), so it cannot be moved or have its burst changed while running; set it in the plan instead")]
    Pinned(String),
    /// No such worker.
    #[error("worker {worker} does not exist (the pipeline has {workers})")]
    NoSuchWorker {
        /// The worker asked for.
        worker: usize,
        /// Workers running.
        workers: usize,
    },
    /// A burst of zero.
    #[error("a burst size of 0 never makes progress; use at least 1")]
    ZeroBurst,
    /// The replica count was refused (the message says why and what to do).
    #[error(transparent)]
    Replicas(#[from] pipewright_stages::ReplicaError),
}

impl Running {
    /// Applies a plan change live: moves a stage to another worker at its next burst
    /// boundary (no item lost, duplicated or reordered) or sets its burst size. Needs a
    /// [`Plan::adaptive`](crate::Plan::adaptive) plan. Every change is logged
    /// (`tracing`) and counted (`pipewright_controller_decisions_total`).
    pub fn apply(&self, decision: &Decision) -> Result<(), ApplyError> {
        let (stage, kind) = match decision {
            Decision::Move { stage, .. } => (stage, "move"),
            Decision::Burst { stage, .. } => (stage, "burst"),
            Decision::Replicas { stage, to, .. } => {
                // Through the split's shared control: works under any plan.
                self.set_replicas(stage, *to)?;
                tracing::info!(target: "pipewright::controller", %decision, "plan change");
                metrics::counter!("pipewright_controller_decisions_total", "kind" => "replicas")
                    .increment(1);
                return Ok(());
            }
        };
        let mailboxes = self.mailboxes.as_ref().ok_or(ApplyError::NotAdaptive)?;
        let node = self
            .stages
            .iter()
            .position(|m| &m.name == stage)
            .ok_or_else(|| ApplyError::UnknownStage(stage.clone()))?;
        let owner = self.stages[node]
            .owner
            .as_ref()
            .ok_or_else(|| ApplyError::Pinned(stage.clone()))?;
        match decision {
            Decision::Move { to, .. } => {
                if *to >= self.workers {
                    return Err(ApplyError::NoSuchWorker {
                        worker: *to,
                        workers: self.workers,
                    });
                }
                // Sent even when the stage seems to be on `to` already: an earlier
                // move may still be on its way, and the owner runs them in order (a
                // worker that finds the stage already its own does nothing).
                let seq = mailboxes.next_move(node);
                mailboxes.send(owner.current(), Command::Detach { node, to: *to, seq });
            }
            Decision::Replicas { .. } => {}
            Decision::Burst { to, .. } => {
                if *to == 0 {
                    return Err(ApplyError::ZeroBurst);
                }
                let seq = mailboxes.next_burst(node);
                mailboxes.send(
                    owner.current(),
                    Command::SetBurst {
                        node,
                        burst: *to,
                        seq,
                    },
                );
                let mut now = self.stages[node]
                    .burst_now
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if seq > now.0 {
                    *now = (seq, *to);
                }
            }
        }
        tracing::info!(target: "pipewright::controller", %decision, "plan change");
        metrics::counter!("pipewright_controller_decisions_total", "kind" => kind).increment(1);
        Ok(())
    }

    /// What each stage did between two snapshots taken `interval` apart, as the
    /// [`Controller`](crate::controller::Controller) sees it.
    pub fn observe(&self, previous: &Snapshot, now: &Snapshot, interval: Duration) -> Observation {
        let stages = now
            .stages
            .iter()
            .zip(self.stages.iter())
            .map(|(s, meta)| {
                let before = previous.stage(&s.name).cloned().unwrap_or_default();
                // Sources take nothing in: their work is what they emit.
                let items = if meta.input.is_some() {
                    s.items_in.saturating_sub(before.items_in)
                } else {
                    s.items_out.saturating_sub(before.items_out)
                };
                let timed = s.timed_items.saturating_sub(before.timed_items);
                let ns_per_item = if timed > 0 {
                    Some(s.timed_nanos.saturating_sub(before.timed_nanos) as f64 / timed as f64)
                } else {
                    s.mean_ns_per_item
                };
                StageLoad {
                    name: s.name.clone(),
                    worker: s.worker,
                    busy_ns: items as f64 * ns_per_item.unwrap_or(0.0),
                    items,
                    ns_per_item,
                    queue_depth: s.queue_depth,
                    queue_capacity: s.queue_capacity,
                    burst: s.burst,
                    movable: meta.owner.is_some(),
                }
            })
            .collect();
        let replicated = self
            .replicas
            .iter()
            .filter(|c| !c.is_keyed())
            .map(|c| ReplicatedStage {
                name: c.stage().to_string(),
                active: c.active(),
                max: c.max(),
            })
            .collect();
        Observation {
            interval_ns: interval.as_nanos() as f64,
            workers: self.workers,
            stages,
            replicated,
        }
    }

    /// One controller interval: observes since `previous` (then replaces it with the
    /// current snapshot), asks `controller`, applies its decisions live and returns
    /// which were applied and which were refused (and why).
    pub fn control_step(
        &self,
        controller: &mut Controller,
        previous: &mut Snapshot,
        interval: Duration,
    ) -> ControlStep {
        let now = self.snapshot();
        let observation = self.observe(previous, &now, interval);
        let mut step = ControlStep::default();
        for decision in controller.observe(&observation) {
            match self.apply(&decision) {
                Ok(()) => step.applied.push(decision),
                Err(error) => {
                    tracing::warn!(target: "pipewright::controller", %decision, %error, "plan change refused");
                    metrics::counter!("pipewright_controller_refused_total").increment(1);
                    step.refused.push((decision, error));
                }
            }
        }
        *previous = now;
        step
    }
}

/// What one [`Running::control_step`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlStep {
    /// Decisions applied to the running pipeline.
    pub applied: Vec<Decision>,
    /// Decisions the runtime refused, with the reason (a controller bug, or a stage
    /// that changed kind under it).
    pub refused: Vec<(Decision, ApplyError)>,
}

impl ControlStep {
    /// The applied decisions.
    pub fn iter(&self) -> std::slice::Iter<'_, Decision> {
        self.applied.iter()
    }
}

impl IntoIterator for ControlStep {
    type Item = Decision;
    type IntoIter = std::vec::IntoIter<Decision>;
    /// The applied decisions.
    fn into_iter(self) -> Self::IntoIter {
        self.applied.into_iter()
    }
}
