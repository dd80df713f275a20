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
    /// decision) is not yet written.
    BeforeIntent,
    /// The intent is durable; the `Prepare` is not yet forwarded.
    AfterIntent,
    /// The decider's commit decision is durable; the client is not yet answered and
    /// `Commit` not yet sent.
    AfterDecision,
    /// `Commit` arrived; the writes are not yet applied nor the completion logged.
    BeforeCompletion,
    /// The completion is durable; the `Ack` is not yet sent to the decider.
    AfterCompletion,
}

impl Step {
    /// Every step, in protocol order.
    pub const ALL: [Step; 5] = [
        Step::BeforeIntent,
        Step::AfterIntent,
        Step::AfterDecision,
        Step::BeforeCompletion,
        Step::AfterCompletion,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Step::BeforeIntent => "before-intent",
            Step::AfterIntent => "after-intent",
            Step::AfterDecision => "after-decision",
            Step::BeforeCompletion => "before-completion",
            Step::AfterCompletion => "after-completion",
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
                        msg: Message::Prepare(_),
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
        if self.at.step.matches(actions)
            && self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.at.n
        {
            eprintln!(
                "crash point {}:{} reached: aborting",
                self.at.step.name(),
                self.at.n
            );
            std::process::abort();
        }
    }
}
