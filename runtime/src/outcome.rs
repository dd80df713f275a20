//! What starting and running a pipeline can end in: the errors of a start and of a
//! run, and the report of a finished run.

use std::time::Duration;

use pipewright_stages::exec::BindError;
use pipewright_stages::StageFailure;

use crate::plan::PlanError;
use crate::stats::Snapshot;

/// Why a pipeline did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The pipeline could not be built (so `Runtime::start(b.build()?, plan)?` can
    /// report both through one error type).
    #[error(transparent)]
    Build(#[from] pipewright_stages::BuildError),
    /// The plan does not fit the pipeline or the machine.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// An edge end could not be bound (a bug: types are checked at build time).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A worker thread could not be spawned.
    #[error("cannot spawn a worker thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Why a run ended badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// A stage failed under `ErrorPolicy::FailPipeline` (or a worker died).
    #[error(transparent)]
    Failed(#[from] StageFailure),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Report {
    /// True when every stage finished by draining its input (nothing was abandoned).
    pub completed: bool,
    /// Items dropped because the run was aborted or hit its deadline (also in the
    /// per-stage `aborted` counters).
    pub abandoned: u64,
    /// Items that reached an output nobody took a handle for (discarded, counted).
    pub unclaimed_outputs: u64,
    /// Wall time from start until the last worker finished (not until `drain` or
    /// `join` returned: a report taken long after the run ended still says how long
    /// it ran).
    pub elapsed: Duration,
    /// Final counters.
    pub snapshot: Snapshot,
    /// Sources that ended with an error ([`SourceState::Failed`](crate::SourceState::Failed)),
    /// by name with the error's message. The rest of the pipeline drained normally
    /// (`completed` may still be true): check this to tell a clean end from a failed
    /// read.
    pub source_errors: Vec<StageFailure>,
    /// Times an abort stopped waiting for every stage to stop producing (a stage stuck
    /// in its own code for more than 2 s) and discarded what was in flight anyway.
    /// Non-zero means the `abandoned` count may have missed items that stage emitted
    /// later.
    pub quiesce_overruns: usize,
}
