//! Stage replicas: one stage declared with several instances, each on a worker of its
//! own, its input spread over them and its output put back in order where asked.
//!
//! [`Stream::then_replicated`](crate::Stream::then_replicated) builds, for a stage
//! named `parse` with up to `n` replicas:
//!
//! ```text
//!            ┌─> parse#0 ─┐
//! parse/split ─> parse#1 ─┼─> parse/order ─> (next stage)
//!            └─> parse#… ─┘
//! ```
//!
//! `parse/split` hands items to the active replicas (round robin, or by key for stateful
//! stages); in ordered mode it numbers them and `parse/order` restores that order with
//! a reorder buffer bounded by the replicas' rings (a full replica holds the split back
//! rather than letting the others run ahead). Plans place `parse#i` on distinct
//! workers; [`ReplicaControl::set_active`] changes how many replicas get new items
//! while the pipeline runs: a retired replica finishes what it holds, so nothing is
//! lost or duplicated.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{Burst, ErrorPolicy, Failures, Outbox, Stage};

/// How a replicated stage's input is spread and its output reassembled.
///
/// ```
/// use pipewright::{stage, PipelineBuilder, Plan, Replicas, Runtime};
///
/// let b = PipelineBuilder::new();
/// let (input, lines) = b.input::<String>("lines");
/// let lengths = lines
///     .then_replicated("parse", Replicas::new(2), |_replica| stage::map(|l: String| l.len()))
///     .output("lengths");
/// let mut running = Runtime::start(b.build()?, Plan::spread(2))?; // parse#0, parse#1 on 2 workers
/// let (mut tx, rx) = (running.input(&input).unwrap(), running.output(&lengths).unwrap());
/// for line in ["a", "bb", "ccc", "dddd"] {
///     tx.send(line.to_string())?;
/// }
/// drop(tx);
/// running.drain()?;
/// assert_eq!(rx.collect(), vec![1, 2, 3, 4]); // in input order
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Replicas<T> {
    pub(crate) max: usize,
    pub(crate) ordered: bool,
    pub(crate) key: Option<KeyFn<T>>,
}

pub(crate) type KeyFn<T> = Box<dyn FnMut(&T) -> u64 + Send>;

impl<T> fmt::Debug for Replicas<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicas")
            .field("max", &self.max)
            .field("ordered", &self.ordered)
            .field("keyed", &self.key.is_some())
            .finish()
    }
}

impl<T: 'static> Replicas<T> {
    /// Up to `max` replicas (at least 1), all active at start, items spread round
    /// robin, output in input order.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            ordered: true,
            key: None,
        }
    }

    /// Output in completion order: no reorder stage, and a full replica no longer holds
    /// back the others (the split gives its items to the next replica with room).
    pub fn unordered(mut self) -> Self {
        self.ordered = false;
        self
    }

    /// Items with equal keys always go to the same replica (for stages that keep state
    /// per key); the order of one key's items is kept (for an async stage: the order in
    /// which they reach its replica). A keyed stage's replica count is
    /// fixed while it runs: [`ReplicaControl::set_active`] refuses to move keys.
    pub fn by_key<K: Hash>(mut self, mut key: impl FnMut(&T) -> K + Send + 'static) -> Self {
        // A fixed hasher: the same key goes to the same replica in every run.
        let hasher =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        self.key = Some(Box::new(move |item| hasher.hash_one(key(item))));
        self
    }
}

/// A live handle on a replicated stage: how many of its replicas receive new items.
#[derive(Clone)]
pub struct ReplicaControl {
    shared: Arc<ControlShared>,
}

struct ControlShared {
    stage: String,
    max: usize,
    keyed: bool,
    active: AtomicUsize,
}

impl fmt::Debug for ReplicaControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaControl")
            .field("stage", &self.shared.stage)
            .field("active", &self.active())
            .field("max", &self.shared.max)
            .finish()
    }
}

/// Why a replica count was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// Fewer than one or more than the declared replicas.
    #[error("stage `{stage}` has {max} replicas declared; choose between 1 and {max} active ones (declare more with Replicas::new)")]
    OutOfRange {
        /// The replicated stage.
        stage: String,
        /// Replicas declared.
        max: usize,
    },
    /// The pipeline has no replicated stage of that name.
    #[error(
        "the pipeline has no replicated stage `{stage}`; declare it with Stream::then_replicated (or then_async_replicated)"
    )]
    NotReplicated {
        /// The name asked for.
        stage: String,
    },
    /// The stage spreads items by key: changing the count would move keys between
    /// replicas and split their state.
    #[error("stage `{stage}` spreads items by key, so its replica count is fixed while it runs (changing it would move keys away from their state)")]
    Keyed {
        /// The replicated stage.
        stage: String,
    },
}

impl ReplicaControl {
    pub(crate) fn new(stage: &str, max: usize, keyed: bool) -> Self {
        Self {
            shared: Arc::new(ControlShared {
                stage: stage.to_string(),
                max,
                keyed,
                active: AtomicUsize::new(max),
            }),
        }
    }

    /// The replicated stage's name.
    pub fn stage(&self) -> &str {
        &self.shared.stage
    }

    /// Replicas declared.
    pub fn max(&self) -> usize {
        self.shared.max
    }

    /// Replicas receiving new items now.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Whether items are spread by key.
    pub fn is_keyed(&self) -> bool {
        self.shared.keyed
    }

    /// Gives new items to the first `n` replicas from the split's next burst on. A
    /// replica taken out finishes the items it already holds.
    pub fn set_active(&self, n: usize) -> Result<(), ReplicaError> {
        if n == 0 || n > self.shared.max {
            return Err(ReplicaError::OutOfRange {
                stage: self.shared.stage.clone(),
                max: self.shared.max,
            });
        }
        if self.shared.keyed && n != self.active() {
            return Err(ReplicaError::Keyed {
                stage: self.shared.stage.clone(),
            });
        }
        // Relaxed: the split reads the count once per burst; which burst sees the new
        // value does not matter, only that every item goes to exactly one replica.
        self.shared.active.store(n, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the count at start (the plan's choice), keyed stages included.
    pub fn set_initial(&self, n: usize) -> Result<(), ReplicaError> {
        if n == 0 || n > self.shared.max {
            return Err(ReplicaError::OutOfRange {
                stage: self.shared.stage.clone(),
                max: self.shared.max,
            });
        }
        self.shared.active.store(n, Ordering::Relaxed);
        Ok(())
    }
}

/// The name of replica `index` of `stage` (`parse#0`).
pub fn replica_name(stage: &str, index: usize) -> String {
    format!("{stage}#{index}")
}

/// The replicated stage a replica belongs to, and its index: `parse#1` → `("parse", 1)`.
pub fn parse_replica_name(name: &str) -> Option<(&str, usize)> {
    let (stage, index) = name.rsplit_once('#')?;
    Some((stage, index.parse().ok()?))
}

/// The split's choice of replica for each item, apart from any I/O so that loom models
/// and tests drive the same code the split runs.
///
/// ```
/// use pipewright::Spreader;
///
/// let mut ordered = Spreader::new(true);
/// let picks: Vec<_> = (0..4).map(|_| ordered.pick(2, None, |_| false)).collect();
/// assert_eq!(picks, vec![(0, 0), (1, 1), (0, 2), (1, 3)]); // (replica, sequence number)
/// ```
#[derive(Debug, Clone)]
pub struct Spreader {
    strict: bool,
    next_seq: u64,
    next_replica: usize,
}

impl Spreader {
    /// `strict`: plain round robin (ordered replicas; a backed-up replica holds the
    /// split back). Otherwise a backed-up replica is skipped.
    pub fn new(strict: bool) -> Self {
        Self {
            strict,
            next_seq: 0,
            next_replica: 0,
        }
    }

    /// The replica (below `active`) for the next item and the item's sequence number.
    /// `key` (a keyed stage's hash) decides alone; otherwise round robin, skipping
    /// replicas for which `backed_up` holds unless the spreader is strict.
    pub fn pick(
        &mut self,
        active: usize,
        key: Option<u64>,
        backed_up: impl Fn(usize) -> bool,
    ) -> (usize, u64) {
        let active = active.max(1);
        let replica = if let Some(key) = key {
            (key % active as u64) as usize
        } else {
            let mut r = self.next_replica % active;
            if !self.strict {
                for _ in 0..active {
                    if !backed_up(r) {
                        break;
                    }
                    r = (r + 1) % active;
                }
            }
            self.next_replica = r + 1;
            r
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        (replica, seq)
    }

    /// Like [`pick`](Spreader::pick), but for a non-strict spreader without a key the
    /// replica with the least work waiting (`depth`) goes first, ties in round-robin
    /// order. The split of an unordered replicated stage counts what waits in each
    /// replica's edge, plus a burst for the replica that shares the split's own worker
    /// (which also runs the source upstream, typically): a cheap source leaves its
    /// core free to take an equal share, a costly one fills its local queue and the
    /// other cores take the rest.
    ///
    /// ```
    /// use pipewright::Spreader;
    ///
    /// let mut s = Spreader::new(false);
    /// let depth = [5, 1];
    /// let picks: Vec<_> = (0..3).map(|_| s.pick_shortest(2, None, |_| false, |r| depth[r]).0).collect();
    /// assert_eq!(picks, vec![1, 1, 1]);
    /// let picks: Vec<_> = (0..3).map(|_| s.pick_shortest(2, None, |_| false, |_| 0).0).collect();
    /// assert_eq!(picks, vec![0, 1, 0]); // all equal: plain round robin
    /// ```
    pub fn pick_shortest(
        &mut self,
        active: usize,
        key: Option<u64>,
        backed_up: impl Fn(usize) -> bool,
        depth: impl Fn(usize) -> usize,
    ) -> (usize, u64) {
        if key.is_none() && !self.strict {
            let active = active.max(1);
            let start = self.next_replica % active;
            let r = (0..active)
                .map(|i| (start + i) % active)
                .min_by_key(|&r| depth(r))
                .unwrap_or(start);
            self.next_replica = r + 1;
            let seq = self.next_seq;
            self.next_seq += 1;
            return (r, seq);
        }
        self.pick(active, key, backed_up)
    }
}

/// A numbered item on its way through a replica of an ordered replicated stage.
pub(crate) struct Numbered<T> {
    pub(crate) seq: u64,
    pub(crate) item: T,
}

/// What one numbered input became: its outputs, in the order the stage emitted them.
pub(crate) enum Emitted<T> {
    None,
    One(T),
    Many(VecDeque<T>),
}

impl<T> Emitted<T> {
    /// Moves the outputs to the back of `out`; returns how many.
    pub(crate) fn move_to(self, out: &mut VecDeque<T>) -> usize {
        match self {
            Emitted::None => 0,
            Emitted::One(item) => {
                out.push_back(item);
                1
            }
            Emitted::Many(items) => {
                let n = items.len();
                out.extend(items);
                n
            }
        }
    }

    /// Appends `later` after these outputs.
    pub(crate) fn append(&mut self, later: Emitted<T>) {
        let earlier = std::mem::replace(self, Emitted::None);
        *self = match (earlier, later) {
            (e, Emitted::None) => e,
            (Emitted::None, l) => l,
            (Emitted::One(a), Emitted::One(b)) => Emitted::Many(VecDeque::from([a, b])),
            (Emitted::One(a), Emitted::Many(mut b)) => {
                b.push_front(a);
                Emitted::Many(b)
            }
            (Emitted::Many(mut a), Emitted::One(b)) => {
                a.push_back(b);
                Emitted::Many(a)
            }
            (Emitted::Many(mut a), Emitted::Many(b)) => {
                a.extend(b);
                Emitted::Many(a)
            }
        };
    }
}

/// Where outputs of a replica belong in input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// The outputs of input number `seq` (exactly one per number).
    Of(u64),
    /// Emitted by the stage's timers ([`Stage::on_idle`]) after it settled input
    /// number `seq` (`None`: before it processed any): they go right after that
    /// input's outputs.
    After(Option<u64>),
    /// Emitted when the input ended ([`Stage::flush`]): after every numbered item.
    End,
}

/// Outputs of a replica and where they belong.
pub(crate) struct Settled<T> {
    pub(crate) at: Position,
    pub(crate) outputs: Emitted<T>,
}

/// Runs a stage on numbered items; every input yields exactly one [`Settled`], also
/// when the stage fails or panics on it, so the reorder stage never waits for a number
/// that will not come.
pub(crate) struct Sequenced<S: Stage> {
    inner: S,
    scratch: VecDeque<S::Out>,
    /// The last number it settled (its timers' outputs go after it).
    last: Option<u64>,
}

impl<S: Stage> Sequenced<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            scratch: VecDeque::new(),
            last: None,
        }
    }

    fn take_scratch(&mut self) -> Emitted<S::Out> {
        match self.scratch.len() {
            0 => Emitted::None,
            1 => Emitted::One(self.scratch.pop_front().expect("one output")),
            _ => Emitted::Many(std::mem::take(&mut self.scratch)),
        }
    }
}

impl<S: Stage> Stage for Sequenced<S> {
    type In = Numbered<S::In>;
    type Out = Settled<S::Out>;
    type Error = S::Error;

    fn process(&mut self, item: Self::In, out: &mut Outbox<'_, Self::Out>) -> Result<(), S::Error> {
        let Numbered { seq, item } = item;
        self.last = Some(seq);
        let at = Position::Of(seq);
        let inner = &mut self.inner;
        let scratch = &mut self.scratch;
        let result = crate::node::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.process(item, &mut Outbox::new(scratch))
        }));
        let outputs = self.take_scratch();
        match result {
            Ok(Ok(())) => {
                out.push(Settled { at, outputs });
                Ok(())
            }
            Ok(Err(error)) => {
                out.push(Settled {
                    at,
                    outputs: Emitted::None,
                });
                Err(error)
            }
            Err(payload) => {
                // Settle the number, then let the executor count the panic and apply
                // the error policy as for any stage.
                out.push(Settled {
                    at,
                    outputs: Emitted::None,
                });
                std::panic::resume_unwind(payload)
            }
        }
    }

    fn process_burst(
        &mut self,
        burst: &mut Burst<'_, Self::In>,
        out: &mut Outbox<'_, Self::Out>,
        failures: &mut Failures<'_, Self::Error>,
    ) {
        while let Some(item) = burst.pop() {
            if let Err(error) = self.process(item, out) {
                failures.push(error);
            }
        }
    }

    fn flush(&mut self, out: &mut Outbox<'_, Self::Out>) -> Result<(), S::Error> {
        // What a batching stage emits at the end belongs after every numbered item:
        // number it past them all.
        let result = self.inner.flush(&mut Outbox::new(&mut self.scratch));
        if !self.scratch.is_empty() {
            let outputs = self.take_scratch();
            out.push(Settled {
                at: Position::End,
                outputs,
            });
        }
        result
    }

    fn on_idle(&mut self, out: &mut Outbox<'_, Self::Out>) -> Option<std::time::Duration> {
        let inner = &mut self.inner;
        let scratch = &mut self.scratch;
        let wait = match crate::node::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.on_idle(&mut Outbox::new(scratch))
        })) {
            Ok(wait) => wait,
            Err(payload) => {
                // What it emitted before the panic is dropped with it (it would go out
                // as the next input's); the executor counts the panic. No number is
                // left unsettled.
                self.scratch.clear();
                std::panic::resume_unwind(payload)
            }
        };
        if !self.scratch.is_empty() {
            let outputs = self.take_scratch();
            out.push(Settled {
                at: Position::After(self.last),
                outputs,
            });
        }
        wait
    }

    fn error_policy(&self) -> ErrorPolicy {
        self.inner.error_policy()
    }

    fn backoff(&self) -> Option<std::time::Duration> {
        self.inner.backoff()
    }
}
