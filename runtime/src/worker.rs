//! A worker: one OS thread, pinned, owning a tokio current-thread runtime, running its
//! fused sync stages in pipeline order and its async stages as long-lived tasks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_stages::exec::{Activation, ErasedNode, NodeKind, TaskContext};
use pipewright_stages::StageFailure;

use crate::budget::ActivationBudget;
use crate::control::Control;
use crate::mailbox::Command;
use crate::signal::Signal;
use crate::transport::RingTransport;

/// Idle passes over the worker's stages before it parks. Short: these machines have
/// two cores, and a spinning worker steals the one its producer needs.
const SPIN_PASSES: u32 = 64;
/// And at most this long: on a worker with async tasks every idle pass gives them a
/// turn, and tokio polls its I/O driver first (an `epoll_wait`, 1-11 us each on a busy
/// VM), so 64 passes could keep a worker spinning for most of a millisecond after
/// every item (the NIC's sparse-latency profile; a quarter of a storage node's CPU).
const SPIN_TIME: Duration = Duration::from_micros(20);
/// While sync stages keep making progress, let async tasks on the same worker run
/// at least this often. A task's turn is bounded by tokio's cooperative budget (128
/// operations: about a burst of calls), so the sync stages' turn must be about as
/// short, or an async stage sharing a worker with a busy one gets a small fraction
/// of the core (the log pipeline's enrich stage ran at 0.2x the loop with a turn of
/// 32 passes).
const TASK_TURN_EVERY: Duration = Duration::from_micros(50);

struct TaskCx {
    signal: Arc<Signal>,
    control: Arc<Control>,
    /// Set once the task arrived at the abort barrier (in `quiesce`), so that the
    /// worker does not count it twice if it panics afterwards.
    arrived: Arc<std::sync::atomic::AtomicBool>,
}

impl TaskContext for TaskCx {
    fn park(&self, timeout: Option<Duration>) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(async move {
            match timeout {
                Some(limit) => {
                    let _ = tokio::time::timeout(limit, self.signal.park()).await;
                }
                None => self.signal.park().await,
            }
        })
    }
    fn aborted(&self) -> bool {
        self.control.aborted()
    }
    fn quiesce(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(async move {
            // Marked as it arrives, not when the future is made: a quiesce future
            // dropped unpolled never arrives, and the barrier must count it then.
            self.arrived
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.control.quiesce().await
        })
    }
    fn fail(&self, failure: StageFailure) {
        self.control.fail(failure);
    }
    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        // tokio's yield also lets the driver fire due timers and I/O first.
        Box::pin(tokio::task::yield_now())
    }
}

/// A node's id, the node and, if it is async, the signal of its own task.
pub(crate) type WorkerNode = (
    usize,
    Box<dyn ErasedNode<RingTransport>>,
    Option<Arc<Signal>>,
);

/// What one worker is given.
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    pub(crate) core: Option<usize>,
    pub(crate) signal: Arc<Signal>,
    /// Nodes in pipeline order, each with its own signal if it is async.
    pub(crate) nodes: Vec<WorkerNode>,
    pub(crate) control: Arc<Control>,
    /// The worker's io_uring sizing from the plan, if its stages declared one.
    pub(crate) uring: Option<crate::uring::UringConfig>,
}

/// Marks the worker done however its thread ends, so `drain` and `shutdown` never
/// wait on a worker that is gone.
struct DoneGuard(Arc<Control>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(StageFailure {
                stage: "<worker>".into(),
                message: "worker thread panicked".into(),
            });
        }
        self.0.worker_done();
    }
}

pub(crate) fn spawn(setup: WorkerSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("pipewright-w{}", setup.index))
        .spawn(move || run(setup))
}

fn run(setup: WorkerSetup) {
    let WorkerSetup {
        index,
        core,
        signal,
        nodes,
        control,
        uring,
    } = setup;
    if let Some(config) = uring {
        crate::uring::configure(config);
    }
    let _done = DoneGuard(control.clone());
    if let Some(core) = core {
        // Pinning is best effort: in a container the CPU may be outside our cpuset.
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!(target: "pipewright", core, "could not pin worker; running unpinned");
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            control.fail(StageFailure {
                stage: "<worker>".into(),
                message: format!("cannot start tokio runtime: {error}"),
            });
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut sync_nodes = Vec::new();
        let mut tasks = Vec::new();
        for (id, node, own_signal) in nodes {
            if node.kind() == NodeKind::Async {
                let arrived = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let cx = TaskCx {
                    signal: own_signal.unwrap_or_else(|| signal.clone()),
                    control: control.clone(),
                    arrived: arrived.clone(),
                };
                // An async stage (a task with an input) yields after each turn of its
                // own (`exec::TASK_TURN`): tokio's per-poll budget of 128 operations,
                // spent across thousands of calls in flight, made every call after it
                // return at once and wake itself, and the stage crawled (44k calls/s
                // with 8192 in flight; 570k without the budget).
                let own_turns = node.has_input();
                let task = node.into_task(Box::new(cx));
                let control = control.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    // A stage's own panics are caught (and counted) inside its node; one
                    // that escapes the node still ends the run with an error and reaches
                    // the barrier, instead of leaving the other workers waiting for it.
                    let task = std::panic::AssertUnwindSafe(task);
                    let caught = if own_turns {
                        futures::FutureExt::catch_unwind(tokio::task::unconstrained(task)).await
                    } else {
                        futures::FutureExt::catch_unwind(task).await
                    };
                    let result = caught.unwrap_or_else(|payload| {
                        let failure = StageFailure {
                            stage: "<async task>".into(),
                            message: format!("panicked: {}", panic_text(&*payload)),
                        };
                        control.fail(failure.clone());
                        Activation::Failed(failure)
                    });
                    // `Idle` is the abort path, which arrived at the barrier itself (as
                    // did a task that panicked after its `quiesce`).
                    if result != Activation::Idle
                        && !arrived.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        control.arrive();
                    }
                    result
                }));
            } else {
                sync_nodes.push(Slot {
                    id,
                    node,
                    done: false,
                });
            }
        }
        let mut worker = SyncLoop {
            index,
            slots: sync_nodes,
            signal: &signal,
            control: &control,
            has_tasks: !tasks.is_empty(),
            mail: Vec::new(),
            deferred: Vec::new(),
        };
        worker.run().await;
        for task in tasks {
            match task.await {
                Ok(Activation::Failed(failure)) => control.fail(failure),
                Ok(_) => {}
                Err(error) => control.fail(StageFailure {
                    stage: "<async task>".into(),
                    message: error.to_string(),
                }),
            }
        }
    });
}

/// A panic's message, when it has one.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Activates a node for one burst, or, with a larger budget, for bursts until the
/// budget is spent or the node stops making progress. Returns the last activation
/// and whether bursts before it made progress.
#[inline]
fn activate_within(slot: &mut Slot, budget: ActivationBudget) -> (Activation, bool) {
    let start = budget.time.map(|_| Instant::now());
    let first = slot.node.activate();
    if budget.is_single_burst() || first != Activation::Progress {
        return (first, false);
    }
    let burst = slot.node.burst();
    let mut charged = burst;
    let elapsed = || start.map_or(Duration::ZERO, |s| s.elapsed());
    while budget.allows_more(charged, elapsed) {
        match slot.node.activate() {
            Activation::Progress => charged += burst,
            other => return (other, true),
        }
    }
    (Activation::Progress, true)
}

/// A sync node on a worker, with its id (pipeline order) and whether it finished.
struct Slot {
    id: usize,
    node: Box<dyn ErasedNode<RingTransport>>,
    done: bool,
}

/// Whether an idle worker with busy-poll `window` polls once more instead of parking:
/// while it has been idle for less than the window. A worker descheduled for longer
/// than the window finds it has been idle that long, and parks.
fn keep_polling(window: Duration, idle_for: Duration) -> bool {
    !window.is_zero() && idle_for < window
}

/// Whether an idle worker spins once more before it parks (without busy polling): for
/// a few passes, and never longer than [`SPIN_TIME`].
fn keep_spinning(idle_passes: u32, idle_for: Duration) -> bool {
    idle_passes < SPIN_PASSES && idle_for < SPIN_TIME
}

struct SyncLoop<'a> {
    index: usize,
    slots: Vec<Slot>,
    signal: &'a Signal,
    control: &'a Control,
    has_tasks: bool,
    mail: Vec<Command>,
    /// Commands for stages that are on their way to this worker (handed over, not yet
    /// attached): applied when they arrive.
    deferred: Vec<Command>,
}

impl SyncLoop<'_> {
    /// True while this worker has work: its own unfinished stages, or (when stages
    /// can move) any unfinished stage anywhere.
    fn running(&self) -> bool {
        match &self.control.mailboxes {
            Some(_) => {
                self.control
                    .unfinished
                    .load(std::sync::atomic::Ordering::Acquire)
                    > 0
            }
            None => self.slots.iter().any(|s| !s.done),
        }
    }

    /// Applies re-planning commands; true if a stage arrived (run it right away).
    fn handle_mail(&mut self) -> bool {
        let control = self.control;
        let Some(mailboxes) = &control.mailboxes else {
            return false;
        };
        if !mailboxes.take(self.index, &mut self.mail) {
            return false;
        }
        let mut arrived = false;
        let mut work: std::collections::VecDeque<Command> = std::mem::take(&mut self.mail).into();
        while let Some(command) = work.pop_front() {
            match command {
                Command::Detach { node, to, seq } => {
                    // A later move of the stage supersedes this one (it may have been
                    // forwarded after the stage and arrive after the later one).
                    if !mailboxes.is_latest_move(node, seq) {
                        continue;
                    }
                    let Some(at) = self.slots.iter().position(|s| s.id == node) else {
                        self.not_here(mailboxes, Command::Detach { node, to, seq });
                        continue;
                    };
                    if self.slots[at].done || self.control.aborted() || to == self.index {
                        continue;
                    }
                    let slot = self.slots.remove(at);
                    if let Some(owner) = &mailboxes.owners[node] {
                        // After this swap producers wake `to`; wakes before it were
                        // ordered before the hand-over and their items travel with it.
                        owner.hand_over(to);
                    }
                    mailboxes.send(
                        to,
                        Command::Attach {
                            node,
                            boxed: slot.node,
                        },
                    );
                }
                Command::Attach { node, boxed } => {
                    let at = self.slots.partition_point(|s| s.id < node);
                    self.slots.insert(
                        at,
                        Slot {
                            id: node,
                            node: boxed,
                            done: false,
                        },
                    );
                    arrived = true;
                    // Commands that reached this worker before the stage did.
                    let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
                        .into_iter()
                        .partition(|c| c.node() == node);
                    self.deferred = later;
                    work.extend(now);
                }
                Command::SetBurst { node, burst, seq } => {
                    if !mailboxes.is_latest_burst(node, seq) {
                        continue;
                    }
                    match self.slots.iter_mut().find(|s| s.id == node) {
                        Some(slot) => slot.node.set_burst(burst),
                        None => self.not_here(mailboxes, Command::SetBurst { node, burst, seq }),
                    }
                }
            }
        }
        arrived
    }

    /// A command for a stage this worker does not run: it moved on (the command goes
    /// to its owner now), or it is on its way here (kept until it arrives). Dropping
    /// it would lose a move or a burst change `Running::apply` reported as applied.
    fn not_here(&mut self, mailboxes: &crate::mailbox::Mailboxes, command: Command) {
        let owner = mailboxes.owners[command.node()]
            .as_ref()
            .map(|o| o.current());
        match owner {
            Some(owner) if owner != self.index => mailboxes.send(owner, command),
            Some(_) => self.deferred.push(command),
            // A pinned stage gets no commands.
            None => {}
        }
    }

    async fn run(&mut self) {
        let mut idle_passes = 0u32;
        let mut idle_since: Option<Instant> = None;
        let mut last_turn = Instant::now();
        loop {
            if self.control.aborted() {
                self.abort().await;
                return;
            }
            let mut progress = self.handle_mail();
            if !self.running() {
                break;
            }
            let mut throttle: Option<Duration> = None;
            for slot in self.slots.iter_mut().filter(|s| !s.done) {
                let budget = self
                    .control
                    .activation
                    .get(slot.id)
                    .copied()
                    .unwrap_or_default();
                let (activation, earlier_progress) = activate_within(slot, budget);
                progress |= earlier_progress;
                match activation {
                    Activation::Progress => progress = true,
                    Activation::Finished => {
                        slot.done = true;
                        progress = true;
                        self.control.node_finished();
                    }
                    Activation::Throttled(wait) => {
                        throttle = Some(throttle.map_or(wait, |t| t.min(wait)))
                    }
                    Activation::Idle | Activation::Blocked => {}
                    Activation::Failed(failure) => {
                        self.control.fail(failure);
                        self.abort().await;
                        return;
                    }
                }
            }
            if progress {
                idle_passes = 0;
                idle_since = None;
                if self.has_tasks && last_turn.elapsed() >= TASK_TURN_EVERY {
                    tokio::task::yield_now().await;
                    last_turn = Instant::now();
                }
                continue;
            }
            idle_passes += 1;
            let now = Instant::now();
            let idle_for = now - *idle_since.get_or_insert(now);
            let polling = keep_polling(self.control.busy_poll(), idle_for);
            if keep_spinning(idle_passes, idle_for) || polling {
                if self.has_tasks {
                    tokio::task::yield_now().await;
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            idle_passes = 0;
            idle_since = None;
            match throttle {
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, self.signal.park()).await;
                }
                None => self.signal.park().await,
            }
        }
        self.control.arrive();
    }

    /// Stops producing, waits until every other stage has too, takes in any stage that
    /// was being handed over, then drops and counts what this worker's stages hold and
    /// what waits in their input edges.
    async fn abort(&mut self) {
        self.control.quiesce().await;
        self.handle_mail();
        for slot in &mut self.slots {
            slot.node.abandon();
        }
    }
}

#[cfg(test)]
mod busy_poll_tests {
    use std::time::Duration;

    use super::{keep_polling, keep_spinning, SPIN_PASSES, SPIN_TIME};

    const WINDOW: Duration = Duration::from_micros(200);

    #[test]
    fn polls_within_the_window_of_idleness() {
        assert!(keep_polling(WINDOW, Duration::ZERO));
        assert!(keep_polling(WINDOW, Duration::from_micros(199)));
        assert!(!keep_polling(WINDOW, WINDOW));
        // Descheduled for 5 ms: idle that long, so it parks.
        assert!(!keep_polling(WINDOW, Duration::from_millis(5)));
    }

    #[test]
    fn a_zero_window_never_polls() {
        assert!(!keep_polling(Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn an_idle_worker_spins_a_few_passes_and_never_long() {
        assert!(keep_spinning(1, Duration::ZERO));
        assert!(keep_spinning(SPIN_PASSES - 1, Duration::from_micros(1)));
        assert!(!keep_spinning(SPIN_PASSES, Duration::ZERO));
        // Passes that each poll tokio's driver end the spin by time, not count.
        assert!(!keep_spinning(3, SPIN_TIME));
        assert!(!keep_spinning(3, Duration::from_millis(1)));
    }
}
