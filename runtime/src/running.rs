//! A started pipeline and its lifecycle: drain, shutdown with a deadline, join,
//! snapshots, live settings. `start.rs` starts it.

use std::any::Any;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pipewright_stages::{InputId, OutputId, Pipeline, ReplicaControl, ReplicaError, StageFailure};

use crate::control::Control;
use crate::handles::{Input, Output};
use crate::mailbox::Mailboxes;
use crate::plan::Plan;
use crate::signal::Owner;
use crate::stats::{Snapshot, StageStats};
use crate::stop::StopHandle;
use crate::transport::{EdgeKind, RingReceiver, RingSender, RingTransport};
use crate::watch::Watch;

pub use crate::outcome::{Report, RunError, StartError};

/// A pipeline built for the runtime.
pub type RuntimePipeline = Pipeline<RingTransport>;

pub(crate) type Discard = fn(&mut (dyn Any + Send)) -> u64;
pub(crate) type DepthProbe = Box<dyn Fn() -> usize + Send + Sync>;

pub(crate) struct StageMeta {
    pub(crate) name: String,
    pub(crate) worker: usize,
    /// The burst size last set (by the plan, or live by `apply`), with the number of
    /// the change that set it: of two changes applied at once, the later-numbered one
    /// is both the one the worker carries out and the one reported.
    pub(crate) burst_now: std::sync::Mutex<(usize, usize)>,
    /// Present when the stage can move; says where it runs now.
    pub(crate) owner: Option<Arc<Owner>>,
    pub(crate) stats: Arc<StageStats>,
    pub(crate) input: Option<(EdgeKind, usize, DepthProbe)>,
    /// The stages feeding its input edge (to tell whether a fused edge still is).
    pub(crate) producers: Vec<usize>,
}

/// A pipeline running on its workers.
///
/// ```
/// use pipewright::{stage, Plan, PipelineBuilder, Runtime};
///
/// let b = PipelineBuilder::new();
/// let (input, numbers) = b.input::<u64>("numbers");
/// let out = numbers
///     .then("square", stage::map(|x: u64| x * x))
///     .then("plus-one", stage::map(|x: u64| x + 1))
///     .output("results");
/// let mut running = Runtime::start(b.build()?, Plan::spread(2))?;
/// let mut tx = running.input(&input).expect("input open");
/// let rx = running.output(&out).expect("output not taken yet");
/// for i in 0..1000 {
///     tx.send(i)?;
/// }
/// drop(tx);
/// let report = running.drain()?;
/// assert!(report.completed);
/// assert_eq!(rx.collect().len(), 1000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Running {
    pub(crate) control: Arc<Control>,
    pub(crate) threads: Vec<JoinHandle<()>>,
    pub(crate) inputs: Vec<Option<Box<dyn Any + Send>>>,
    pub(crate) outputs: Vec<Option<Box<dyn Any + Send>>>,
    pub(crate) output_discards: Vec<Discard>,
    pub(crate) stages: Arc<Vec<StageMeta>>,
    pub(crate) edges: Vec<(String, EdgeKind)>,
    pub(crate) started: Instant,
    pub(crate) plan: Plan,
    pub(crate) mailboxes: Option<Arc<Mailboxes>>,
    pub(crate) workers: usize,
    pub(crate) replicas: Vec<ReplicaControl>,
    pub(crate) stop: StopHandle,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("plan", &self.plan.to_string())
            .field("workers", &self.threads.len())
            .finish()
    }
}

impl Running {
    /// The live control of replicated stage `stage` (declared with
    /// `Stream::then_replicated`).
    pub fn replicas(&self, stage: &str) -> Option<&ReplicaControl> {
        self.replicas.iter().find(|c| c.stage() == stage)
    }

    /// Gives new items of replicated stage `stage` to `active` of its replicas from
    /// its next burst on; a replica taken out finishes what it holds, so no item is
    /// lost or processed twice.
    pub fn set_replicas(&self, stage: &str, active: usize) -> Result<(), ReplicaError> {
        let control = self
            .replicas(stage)
            .ok_or_else(|| ReplicaError::NotReplicated {
                stage: stage.to_string(),
            })?;
        let before = control.active();
        control.set_active(active)?;
        if before != active {
            tracing::info!(target: "pipewright", stage, from = before, to = active, "replicas changed");
            metrics::gauge!("pipewright_stage_replicas", "stage" => stage.to_string())
                .set(active as f64);
        }
        Ok(())
    }

    /// A sending handle for an application input, or `None` once it is closed (or for
    /// an id of another pipeline whose input carries another item type).
    pub fn input<T: Send + 'static>(&self, id: &InputId<T>) -> Option<Input<T>> {
        let sender = self
            .inputs
            .get(id.index())?
            .as_ref()?
            .downcast_ref::<RingSender<T>>()?;
        let space = sender.space_event();
        sender.try_clone().map(|s| Input::new(s, space))
    }

    /// The receiving handle of an application output (once: outputs have one reader;
    /// `None` after that, or for an id of another pipeline whose output carries
    /// another item type, which leaves this pipeline's output in place).
    pub fn output<T: Send + 'static>(&mut self, id: &OutputId<T>) -> Option<Output<T>> {
        let slot = self.outputs.get_mut(id.index())?;
        if !slot.as_ref()?.is::<RingReceiver<T>>() {
            return None;
        }
        let receiver = *slot.take()?.downcast::<RingReceiver<T>>().ok()?;
        let ready = receiver.ready_event();
        Some(Output::new(receiver, ready))
    }

    /// A handle that ends every source of this pipeline from any thread (a Ctrl-C or
    /// SIGTERM handler, an admin endpoint); the pipeline then drains. See
    /// [`StopHandle`] for how to wire signals to it.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Stops accepting input: pending sends fail with `Closed` and hand their item
    /// back; everything already accepted is still processed.
    pub fn close_inputs(&mut self) {
        self.control.close_inputs();
        // Our own producer handles would otherwise keep the input edges open.
        for input in &mut self.inputs {
            input.take();
        }
    }

    /// Closes inputs and waits until every accepted item has been processed and every
    /// stage has finished.
    ///
    /// Outputs you took with [`output`](Running::output) must be read while this waits
    /// (from another thread or task): a full output stops the stages feeding it, by
    /// design. Outputs nobody took are drained and counted in the report.
    pub fn drain(mut self) -> Result<Report, RunError> {
        self.close_inputs();
        self.wait(None)
    }

    /// Like [`drain`](Running::drain), but after `deadline` aborts: items still in
    /// flight are dropped and counted as `aborted` (see [`Report::abandoned`]).
    pub fn shutdown(mut self, deadline: Duration) -> Result<Report, RunError> {
        self.close_inputs();
        self.wait(Some(deadline))
    }

    /// Waits for the pipeline to end by itself: sources exhausted, and each input ended
    /// by the drop of its last [`Input`] handle (inputs are not force-closed).
    pub fn join(mut self) -> Result<Report, RunError> {
        for input in &mut self.inputs {
            input.take();
        }
        self.wait(None)
    }

    /// Aborts now: every worker stops at its next activation.
    pub fn abort(self) -> Result<Report, RunError> {
        self.control.abort();
        self.shutdown(Duration::ZERO)
    }

    /// Changes how long idle workers keep polling before they park (the plan's
    /// [`busy_poll`](Plan::busy_poll) window), while the pipeline runs: a data plane
    /// polls while traffic is sparse but latency matters, and stops when its CPU is
    /// needed elsewhere. Workers pick the new window up at their next idle pass;
    /// `Duration::ZERO` turns polling off.
    ///
    /// [`plan`](Running::plan) keeps the window the pipeline started with.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pipewright::{IterSource, PipelineBuilder, Plan, Runtime};
    ///
    /// let b = PipelineBuilder::new();
    /// b.source("numbers", IterSource(0..1000u64)).for_each("sink", drop);
    /// let running = Runtime::start(b.build()?, Plan::fused())?;
    /// running.set_busy_poll(Duration::from_micros(200));
    /// assert_eq!(running.busy_poll(), Duration::from_micros(200));
    /// running.join()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_busy_poll(&self, window: Duration) {
        self.control.set_busy_poll(window);
    }

    /// The busy-poll window the workers use now (see [`set_busy_poll`](Running::set_busy_poll)).
    pub fn busy_poll(&self) -> Duration {
        self.control.busy_poll()
    }

    /// True once every worker has ended.
    pub fn is_finished(&self) -> bool {
        self.control.all_done()
    }

    /// Resolves once every worker is done: the pipeline completed, or failed (a stage
    /// under `FailPipeline`, a panic) or was aborted. For async callers that must not
    /// block a thread; `join`/`drain` then return at once with the report.
    ///
    /// ```
    /// use pipewright::{IterSource, PipelineBuilder, Plan, Runtime};
    /// let b = PipelineBuilder::new();
    /// b.source("n", IterSource(0..100u32)).for_each("sink", |_| {});
    /// let running = Runtime::start(b.build()?, Plan::fused())?;
    /// futures::executor::block_on(running.finished());
    /// assert!(running.join()?.completed);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn finished(&self) {
        loop {
            if self.control.all_done() {
                return;
            }
            let listener = self.control.done.listen();
            if self.control.all_done() {
                return;
            }
            listener.await;
        }
    }

    fn wait(&mut self, deadline: Option<Duration>) -> Result<Report, RunError> {
        let end = deadline.map(|d| Instant::now() + d);
        let mut unclaimed = 0u64;
        let mut outputs: Vec<(Box<dyn Any + Send>, Discard)> = self
            .outputs
            .iter_mut()
            .zip(&self.output_discards)
            .filter_map(|(o, d)| o.take().map(|o| (o, *d)))
            .collect();
        let mut completed = true;
        loop {
            // Outputs nobody holds are drained here so they cannot stall the run.
            for (out, discard) in &mut outputs {
                unclaimed += discard(out.as_mut());
            }
            if self.control.wait_done(Duration::from_millis(5)) {
                break;
            }
            if let Some(end) = end {
                if Instant::now() >= end && !self.control.aborted() {
                    tracing::warn!(target: "pipewright", "shutdown deadline reached; aborting in-flight items");
                    completed = false;
                    self.control.abort();
                }
            }
        }
        for (out, discard) in &mut outputs {
            unclaimed += discard(out.as_mut());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let snapshot = self.snapshot();
        let abandoned = snapshot
            .stages
            .iter()
            .flat_map(|s| &s.dropped)
            .filter(|(r, _)| *r == "aborted")
            .map(|(_, n)| n)
            .sum();
        if let Some(failure) = self.control.failure() {
            return Err(RunError::Failed(failure));
        }
        let source_errors = snapshot
            .stages
            .iter()
            .filter_map(|s| {
                s.source_error.as_ref().map(|message| StageFailure {
                    stage: s.name.clone(),
                    message: message.clone(),
                })
            })
            .collect();
        Ok(Report {
            source_errors,
            completed: completed && !self.control.aborted(),
            abandoned,
            unclaimed_outputs: unclaimed,
            elapsed: self
                .control
                .finished_at()
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(self.started),
            snapshot,
            quiesce_overruns: self.control.quiesce_overruns(),
        })
    }

    /// Counters of every stage now.
    pub fn snapshot(&self) -> Snapshot {
        crate::watch::snapshot_of(&self.stages)
    }

    /// A handle that takes snapshots from any thread while the pipeline runs (for a
    /// monitoring thread, or [`live::serve`](crate::live::serve) for `pipewright top`).
    pub fn watch(&self) -> Watch {
        Watch::new(self.stages.clone(), self.started, self.plan.to_string())
    }

    /// Publishes queue depths as `pipewright_stage_queue_depth` gauges (counters and
    /// histograms are published as they happen; gauges when this is called).
    pub fn publish_gauges(&self) {
        for s in self.snapshot().stages {
            metrics::gauge!("pipewright_stage_queue_depth", "stage" => s.name.clone())
                .set(s.queue_depth as f64);
            metrics::gauge!("pipewright_stage_worker", "stage" => s.name).set(s.worker as f64);
        }
    }

    /// The plan this pipeline runs with.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Every edge with how it is carried (for diagnostics).
    pub fn edges(&self) -> &[(String, EdgeKind)] {
        &self.edges
    }

    /// Time since start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            // Dropped without drain or shutdown (often while unwinding from a panic):
            // stop the workers. A worker stuck inside a stage's own code cannot be
            // stopped; after a grace period it is detached rather than hanging the drop.
            self.control.abort();
            if self.control.wait_done(Duration::from_secs(3)) {
                for thread in self.threads.drain(..) {
                    let _ = thread.join();
                }
            } else {
                tracing::error!(
                    target: "pipewright",
                    "a stage did not return within 3 s of the abort; detaching its worker thread"
                );
                self.threads.clear();
            }
        }
    }
}
