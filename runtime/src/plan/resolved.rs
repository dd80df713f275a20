//! What a plan becomes against a pipeline, the limits it is checked against, and
//! why it may not fit.

use crate::uring::UringConfig;

/// A plan resolved against a pipeline: node ids per worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPlan {
    /// Workers in order.
    pub workers: Vec<ResolvedWorker>,
}

/// One resolved worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedWorker {
    /// Node ids, in pipeline order.
    pub nodes: Vec<usize>,
    /// CPU to pin to, if any.
    pub core: Option<usize>,
    /// The worker's io_uring, sized by its stages' declared budgets (`None`: the
    /// default ring, created only if a stage uses it).
    pub uring: Option<UringConfig>,
}

/// The largest ring a plan may ask for, in slots (a ring's slots are allocated when the
/// pipeline starts: 16 Mi slots of 64-byte items are already 1 GiB).
pub(crate) const MAX_RING_CAPACITY: usize = 1 << 24;
/// The largest burst a plan may ask for (rings are made at least twice the widest
/// burst that feeds them).
pub(crate) const MAX_BURST: usize = 1 << 20;

/// Why a plan does not fit a pipeline or this machine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The plan names a stage the pipeline does not have.
    #[error("the plan names stage `{0}`, which the pipeline does not have; check the names passed to the builder")]
    UnknownStage(String),
    /// A stage appears on two workers.
    #[error("stage `{0}` is placed on two workers; give each stage exactly one worker")]
    StageTwice(String),
    /// A stage appears on no worker.
    #[error("stage `{0}` is on no worker; add it to one")]
    StageMissing(String),
    /// The plan has no workers.
    #[error("the plan has no workers; add at least one")]
    NoWorkers,
    /// A ring of zero slots could never carry an item.
    #[error(
        "a ring capacity of 0 was requested; use at least 1 (it is rounded up to a power of two)"
    )]
    ZeroRing,
    /// A burst of zero would never make progress.
    #[error("stage `{0}` has burst size 0; use at least 1")]
    ZeroBurst(String),
    /// A ring larger than any machine could allocate (its slots are allocated up front).
    #[error("a ring capacity of {capacity} slots was requested; use at most {max}")]
    RingTooLarge {
        /// The capacity asked for.
        capacity: usize,
        /// The largest the runtime allocates.
        max: usize,
    },
    /// A burst larger than a ring could hold.
    #[error("stage `{stage}` has burst size {burst}; use at most {max}")]
    BurstTooLarge {
        /// The stage (or `*` for every stage).
        stage: String,
        /// The burst asked for.
        burst: usize,
        /// The largest burst.
        max: usize,
    },
    /// More dedicated workers than CPUs.
    #[error("the stages need {wanted} CPUs of their own but this machine has {cpus}; share some (Cores::Share) or fuse them")]
    NotEnoughCores {
        /// CPUs asked for.
        wanted: usize,
        /// CPUs available.
        cpus: usize,
    },
    /// Two stages asked for the same CPU of their own.
    #[error(
        "two stages ask for CPU {core} of their own; give one another CPU or Cores::Dedicated"
    )]
    CoreTwice {
        /// The CPU.
        core: usize,
    },
    /// A share that is not a positive number.
    #[error("stage `{stage}` asks for a share of weight {weight}; use a positive number")]
    BadShare {
        /// The stage.
        stage: String,
        /// The weight given.
        weight: f64,
    },
    /// A budget that would never let the stage make progress.
    #[error("stage `{stage}` has {what}; give it at least one item and a non-zero time, or leave the budget out for one burst per activation")]
    BadBudget {
        /// The stage.
        stage: String,
        /// What is wrong.
        what: &'static str,
    },
    /// A replica count the stage cannot take.
    #[error(transparent)]
    Replicas(#[from] pipewright_stages::ReplicaError),
    /// A plan file that is not valid.
    #[error("plan file: {0}")]
    File(String),
    /// Pinning to a CPU that does not exist.
    #[error("CPU {core} does not exist: this machine has {cpus} (ids 0..{cpus}); pick one of those or Pin::Auto")]
    NoSuchCore {
        /// The requested CPU.
        core: usize,
        /// CPUs available.
        cpus: usize,
    },
}
