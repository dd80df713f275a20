//! Crash points for fault tests: a node started with a [`CrashAt`] aborts its process
//! (no cleanup, like `kill -9`) the `n`-th time it reaches a protocol step.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::log::{Record, Verdict};
use crate::protocol::{Action, Message, Outcome};

/// A protocol step a node can crash at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// A `Prepare` passed analysis here; its intent (at the decider: intent and
    /// decision) is not yet written, nor the `Prepare` forwarded.
    BeforeIntent,
    /// The intent here is durable; the `Durable` notice is not yet sent to the
    /// decider.
    AfterIntent,
    /// The decider's commit decision is durable; the client is not yet answered and
    /// `Commit` not yet sent.
    AfterDecision,
    /// `Commit` arrived; the writes are not yet applied nor the completion logged.
    BeforeCompletion,
    /// The completion is durable; the `Ack` is not yet sent to the decider.
    AfterCompletion,
    /// A checkpoint was started; nothing of it is written yet.
    BeforeCheckpoint,
    /// The new log segment exists and holds half of the checkpoint record (a torn
    /// checkpoint); the old segment is complete.
    CheckpointTorn,
    /// The new segment with its checkpoint is durable; the old segment is not yet
    /// deleted.
    AfterCheckpoint,
}

impl Step {
    /// Every step, in protocol order, then the checkpoint's steps.
    pub const ALL: [Step; 8] = [
        Step::BeforeIntent,
        Step::AfterIntent,
        Step::AfterDecision,
        Step::BeforeCompletion,
        Step::AfterCompletion,
        Step::BeforeCheckpoint,
        Step::CheckpointTorn,
        Step::AfterCheckpoint,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Step::BeforeIntent => "before-intent",
            Step::AfterIntent => "after-intent",
            Step::AfterDecision => "after-decision",
            Step::BeforeCompletion => "before-completion",
            Step::AfterCompletion => "after-completion",
            Step::BeforeCheckpoint => "before-checkpoint",
            Step::CheckpointTorn => "checkpoint-torn",
            Step::AfterCheckpoint => "after-checkpoint",
        }
    }

    /// Whether `actions` (just returned by the node) are this step's.
    fn matches(self, actions: &[Action]) -> bool {
        actions.iter().any(|a| {
            matches!(
                (self, a),
                (
                    Step::BeforeIntent,
                    Action::Persist {
                        record: Record::Intent(_),
                        ..
                    },
                ) | (
                    Step::AfterIntent,
                    Action::Send {
                        msg: Message::Durable { .. },
                        ..
                    },
                ) | (
                    Step::AfterDecision,
                    Action::Reply {
                        outcome: Outcome::Committed,
                        ..
                    },
                ) | (
                    Step::BeforeCompletion,
                    Action::Persist {
                        record: Record::Completion {
                            verdict: Verdict::Commit,
                            ..
                        },
                        ..
                    },
                ) | (
                    Step::AfterCompletion,
                    Action::Send {
                        msg: Message::Ack { .. },
                        ..
                    },
                ) | (
                    Step::BeforeCheckpoint,
                    Action::Persist {
                        record: Record::Checkpoint(_),
                        ..
                    },
                )
            )
        })
    }
}

/// Crash the `n`-th time (from 1) the node reaches `step`.
///
/// ```
/// use pipewright_storage::server::{CrashAt, Step};
/// let at: CrashAt = "after-intent:3".parse()?;
/// assert_eq!((at.step, at.n), (Step::AfterIntent, 3));
/// assert!("sideways:1".parse::<CrashAt>().is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashAt {
    /// The step.
    pub step: Step,
    /// Which occurrence.
    pub n: u64,
}

impl FromStr for CrashAt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, n) = s.split_once(':').unwrap_or((s, "1"));
        let step = Step::ALL
            .into_iter()
            .find(|st| st.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Step::ALL.iter().map(|s| s.name()).collect();
                format!("`{name}` is not a step; one of {}", names.join(", "))
            })?;
        let n = n.parse().map_err(|_| format!("`{n}` is not a count"))?;
        Ok(CrashAt { step, n })
    }
}

/// A crash point armed in a running node.
#[derive(Debug)]
pub(crate) struct Armed {
    at: CrashAt,
    seen: AtomicU64,
}

impl Armed {
    pub(crate) fn new(at: CrashAt) -> Self {
        Self {
            at,
            seen: AtomicU64::new(0),
        }
    }

    /// Abort the process if `actions` complete the armed step's `n`-th occurrence.
    pub(crate) fn check(&self, actions: &[Action]) {
        if self.at.step.matches(actions) {
            self.count();
        }
    }

    /// Whether the next occurrence of `step` is the armed one.
    pub(crate) fn armed_at(&self, step: Step) -> bool {
        self.at.step == step && self.seen.load(Ordering::Relaxed) + 1 == self.at.n
    }

    /// Abort the process if this is the armed step's `n`-th occurrence.
    pub(crate) fn reached(&self, step: Step) {
        if self.at.step == step {
            self.count();
        }
    }

    fn count(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.at.n {
            eprintln!(
                "crash point {}:{} reached: aborting",
                self.at.step.name(),
                self.at.n
            );
            std::process::abort();
        }
    }
}

/// Fault injection on a node's peer links, for tests: each message a node sends to
/// a peer is dropped with probability `drop`, otherwise sent twice with probability
/// `duplicate`, and each copy is delayed by a uniformly random time up to
/// `max_delay` (so messages are also reordered). Off by default; enabled by the
/// `PIPEWRIGHT_STORAGE_NET_FAULTS` environment variable of the node process, e.g.
/// `drop=0.05,dup=0.05,delay-ms=20,seed=7`.
///
/// ```
/// use pipewright_storage::server::NetFaults;
/// let f: NetFaults = "drop=0.1,dup=0.05,delay-ms=20,seed=3".parse()?;
/// assert_eq!((f.drop, f.duplicate, f.max_delay.as_millis(), f.seed), (0.1, 0.05, 20, 3));
/// assert!("drop=2".parse::<NetFaults>().is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetFaults {
    /// Probability that a message is dropped.
    pub drop: f64,
    /// Probability that a (not dropped) message is sent twice.
    pub duplicate: f64,
    /// Each copy is delayed by up to this long.
    pub max_delay: std::time::Duration,
    /// Seed of the fault decisions.
    pub seed: u64,
}

impl FromStr for NetFaults {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut f = NetFaults {
            drop: 0.0,
            duplicate: 0.0,
            max_delay: std::time::Duration::ZERO,
            seed: 1,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected KEY=VALUE"))?;
            let prob = |v: &str| match v.parse::<f64>() {
                Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
                _ => Err(format!("`{part}`: not a probability")),
            };
            match key {
                "drop" => f.drop = prob(value)?,
                "dup" => f.duplicate = prob(value)?,
                "delay-ms" => {
                    let ms = value
                        .parse()
                        .map_err(|_| format!("`{part}`: not milliseconds"))?;
                    f.max_delay = std::time::Duration::from_millis(ms);
                }
                "seed" => f.seed = value.parse().map_err(|_| format!("`{part}`: not a seed"))?,
                _ => return Err(format!("`{key}`: one of drop, dup, delay-ms, seed")),
            }
        }
        Ok(f)
    }
}
