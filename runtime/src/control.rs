//! What all workers of one running pipeline share: the failure that stops it, the
//! abort barrier, the count of running workers, the busy-poll window and the per-stage
//! activation budgets.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pipewright_stages::StageFailure;

use crate::barrier::AbortBarrier;
use crate::budget::ActivationBudget;
use crate::mailbox::Mailboxes;
use crate::signal::Signal;

/// How long an abort waits for every stage to stop producing before it discards
/// anyway (a stage stuck in user code must not hang shutdown).
const QUIESCE_LIMIT: Duration = Duration::from_secs(2);

/// Shared by all workers of one running pipeline.
pub(crate) struct Control {
    failure: Mutex<Option<StageFailure>>,
    signals: Mutex<Vec<Arc<Signal>>>,
    running: Mutex<usize>,
    finished: Condvar,
    /// Notified when a worker is done, for async waiters.
    pub(crate) done: event_listener::Event,
    /// Worker loops and async tasks: all of them stop producing before any discards.
    barrier: AbortBarrier,
    input_closers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    /// Present when stages may move between workers.
    pub(crate) mailboxes: Option<Arc<Mailboxes>>,
    /// Sync stages not yet finished (used when stages may move).
    pub(crate) unfinished: std::sync::atomic::AtomicUsize,
    /// Per-activation budget of each node, by node id.
    pub(crate) activation: Vec<ActivationBudget>,
    /// When the last worker ended (the run's end, for `Report::elapsed`).
    finished_at: Mutex<Option<Instant>>,
    /// Quiesce waits that hit [`QUIESCE_LIMIT`] (for `Report::quiesce_overruns`).
    quiesce_overruns: std::sync::atomic::AtomicUsize,
    /// The busy-poll window in nanoseconds, read by every worker at each idle pass
    /// (`Running::set_busy_poll` changes it while the pipeline runs).
    busy_poll_nanos: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("aborted", &self.aborted())
            .finish()
    }
}

impl Control {
    pub(crate) fn new(workers: usize, async_tasks: usize) -> Self {
        Self {
            failure: Mutex::new(None),
            signals: Mutex::new(Vec::new()),
            running: Mutex::new(workers),
            finished: Condvar::new(),
            done: event_listener::Event::new(),
            barrier: AbortBarrier::new(workers + async_tasks),
            input_closers: Mutex::new(Vec::new()),
            mailboxes: None,
            unfinished: Default::default(),
            activation: Vec::new(),
            finished_at: Mutex::new(None),
            quiesce_overruns: Default::default(),
            busy_poll_nanos: Default::default(),
        }
    }

    /// How long workers keep polling after their last progress before they park.
    pub(crate) fn busy_poll(&self) -> Duration {
        Duration::from_nanos(
            self.busy_poll_nanos
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Sets the busy-poll window of every worker; they pick it up at their next idle pass.
    pub(crate) fn set_busy_poll(&self, window: Duration) {
        let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.busy_poll_nanos
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many quiesce waits gave up at [`QUIESCE_LIMIT`].
    pub(crate) fn quiesce_overruns(&self) -> usize {
        self.quiesce_overruns
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets each node's per-activation budget (by node id).
    pub(crate) fn with_activation_budgets(mut self, budgets: Vec<ActivationBudget>) -> Self {
        self.activation = budgets;
        self
    }

    /// Lets stages move between workers (see [`Mailboxes`]).
    pub(crate) fn with_mailboxes(mut self, mailboxes: Arc<Mailboxes>, sync_nodes: usize) -> Self {
        self.mailboxes = Some(mailboxes);
        self.unfinished = std::sync::atomic::AtomicUsize::new(sync_nodes);
        self
    }

    /// A sync stage finished; the last one wakes every worker so idle ones exit.
    pub(crate) fn node_finished(&self) {
        if let Some(mailboxes) = &self.mailboxes {
            if self
                .unfinished
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
                == 1
            {
                mailboxes.wake_all();
            }
        }
    }

    pub(crate) fn set_input_closers(&self, closers: Vec<Box<dyn Fn() + Send + Sync>>) {
        *self.input_closers.lock().unwrap_or_else(|p| p.into_inner()) = closers;
    }

    /// Closes every application input: sends fail with `Closed` and hand items back.
    pub(crate) fn close_inputs(&self) {
        for close in self
            .input_closers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            close();
        }
    }

    /// A worker loop or async task that will never produce again (it finished).
    pub(crate) fn arrive(&self) {
        self.barrier.arrive();
    }

    /// Arrives at the abort barrier and waits for every worker loop and async task.
    pub(crate) async fn quiesce(&self) {
        self.arrive();
        let start = std::time::Instant::now();
        while !self.barrier.all_arrived() {
            if start.elapsed() > QUIESCE_LIMIT {
                self.quiesce_overruns
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(target: "pipewright", "a stage did not stop within {QUIESCE_LIMIT:?}; discarding anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub(crate) fn add_signal(&self, signal: Arc<Signal>) {
        self.signals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(signal);
    }

    pub(crate) fn aborted(&self) -> bool {
        self.barrier.aborted()
    }

    /// Stops every worker promptly (items in flight are counted as `aborted`).
    pub(crate) fn abort(&self) {
        self.barrier.abort();
        self.close_inputs();
        for signal in self
            .signals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            signal.notify();
        }
    }

    pub(crate) fn fail(&self, failure: StageFailure) {
        tracing::error!(target: "pipewright", stage = %failure.stage, message = %failure.message, "pipeline failed");
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(failure);
        self.abort();
    }

    pub(crate) fn failure(&self) -> Option<StageFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn worker_done(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        *running -= 1;
        if *running == 0 {
            *self.finished_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        self.finished.notify_all();
        drop(running);
        self.done.notify(usize::MAX);
    }

    /// Waits until every worker is done or `timeout` passes; true if all are done.
    pub(crate) fn wait_done(&self, timeout: Duration) -> bool {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let (running, _) = self
            .finished
            .wait_timeout_while(running, timeout, |n| *n > 0)
            .unwrap_or_else(|p| p.into_inner());
        *running == 0
    }

    /// When the last worker ended, once it has.
    pub(crate) fn finished_at(&self) -> Option<Instant> {
        *self.finished_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn all_done(&self) -> bool {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) == 0
    }
}
