//! Starting a pipeline on workers, and its lifecycle: drain, shutdown with a deadline,
//! join, snapshots.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_listener::Event;
use pipewright_stages::exec::{Endpoint, NodeKind};
use pipewright_stages::{InputId, OutputId, Pipeline, ReplicaControl, ReplicaError, StageFailure};

use crate::handles::{Input, Output};
use crate::link::{Link, Waker};
use crate::mailbox::Mailboxes;
use crate::plan::{Plan, PlanError};
use crate::signal::{Owner, Signal};
use crate::stats::{Snapshot, StageStats, StatsObserver};
use crate::stop::StopHandle;
use crate::transport::{EdgeKind, EdgePlan, RingReceiver, RingSender, RingTransport};
use crate::watch::Watch;
use crate::worker::{self, Control, WorkerSetup};

pub use crate::outcome::{Report, RunError, StartError};

/// A pipeline built for the runtime.
pub type RuntimePipeline = Pipeline<RingTransport>;

type Discard = fn(&mut (dyn Any + Send)) -> u64;
pub(crate) type DepthProbe = Box<dyn Fn() -> usize + Send + Sync>;

pub(crate) struct StageMeta {
    pub(crate) name: String,
    pub(crate) worker: usize,
    /// The burst size last set (by the plan, or live by `apply`).
    pub(crate) burst_now: std::sync::atomic::AtomicUsize,
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
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
    inputs: Vec<Option<Box<dyn Any + Send>>>,
    outputs: Vec<Option<Box<dyn Any + Send>>>,
    output_discards: Vec<Discard>,
    pub(crate) stages: Arc<Vec<StageMeta>>,
    edges: Vec<(String, EdgeKind)>,
    started: Instant,
    plan: Plan,
    pub(crate) mailboxes: Option<Arc<Mailboxes>>,
    pub(crate) workers: usize,
    pub(crate) replicas: Vec<ReplicaControl>,
    stop: StopHandle,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("plan", &self.plan.to_string())
            .field("workers", &self.threads.len())
            .finish()
    }
}

/// Starts pipelines.
#[derive(Debug, Clone, Copy)]
pub struct Runtime;

impl Runtime {
    /// Starts `pipeline` on the workers of `plan`.
    pub fn start(mut pipeline: RuntimePipeline, plan: Plan) -> Result<Running, StartError> {
        let names: Vec<String> = pipeline.nodes.iter().map(|n| n.name.clone()).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let resolved = plan.resolve(&name_refs)?;
        let mut worker_of = vec![0usize; names.len()];
        for (w, worker) in resolved.workers.iter().enumerate() {
            for &node in &worker.nodes {
                worker_of[node] = w;
            }
        }
        let async_tasks = pipeline
            .nodes
            .iter()
            .filter(|n| n.node.kind() == NodeKind::Async)
            .count();
        let worker_signals: Vec<Arc<Signal>> = resolved
            .workers
            .iter()
            .map(|_| Arc::new(Signal::new()))
            .collect();
        // When stages may move, every sync stage is woken through its current owner.
        let adaptive = plan.is_adaptive();
        let worker_table: Arc<Vec<Arc<Signal>>> = Arc::new(worker_signals.clone());
        let owners: Vec<Option<Arc<Owner>>> = (0..names.len())
            .map(|n| {
                (adaptive && pipeline.nodes[n].node.kind() == NodeKind::Sync)
                    .then(|| Arc::new(Owner::new(worker_of[n], worker_table.clone())))
            })
            .collect();
        let mailboxes =
            adaptive.then(|| Arc::new(Mailboxes::new(worker_signals.clone(), owners.clone())));
        let budgets = names.iter().map(|n| plan.activation_for(n)).collect();
        let mut control =
            Control::new(resolved.workers.len(), async_tasks).with_activation_budgets(budgets);
        if let Some(m) = &mailboxes {
            let sync_nodes = owners.iter().filter(|o| o.is_some()).count();
            control = control.with_mailboxes(m.clone(), sync_nodes);
        }
        control.set_busy_poll(plan.busy_poll_window());
        let control = Arc::new(control);
        let node_signals: Vec<Arc<Signal>> = (0..names.len())
            .map(|n| match pipeline.nodes[n].node.kind() {
                NodeKind::Async => Arc::new(Signal::new()),
                NodeKind::Sync => worker_signals[worker_of[n]].clone(),
            })
            .collect();
        for signal in worker_signals.iter().chain(&node_signals) {
            control.add_signal(signal.clone());
        }
        let stop = StopHandle::new(
            worker_signals
                .iter()
                .chain(&node_signals)
                .cloned()
                .collect(),
        );

        for entry in pipeline.nodes.iter_mut() {
            if let Some(burst) = plan.burst_for(&entry.name) {
                entry.node.set_burst(burst);
            }
        }
        let bursts: Vec<usize> = pipeline.nodes.iter().map(|n| n.node.burst()).collect();
        let kinds: Vec<NodeKind> = pipeline.nodes.iter().map(|n| n.node.kind()).collect();
        let node_waker = |node: usize| match &owners[node] {
            Some(owner) => Waker::Owner(owner.clone()),
            None => Waker::Signal(node_signals[node].clone()),
        };

        // Plan every edge: its kind, its capacity, who it wakes.
        let input_events: Vec<Arc<Event>> = pipeline
            .inputs
            .iter()
            .map(|_| Arc::new(Event::new()))
            .collect();
        let output_events: Vec<Arc<Event>> = pipeline
            .outputs
            .iter()
            .map(|_| Arc::new(Event::new()))
            .collect();
        let mut edge_plans = Vec::new();
        for entry in &pipeline.edges {
            let info = &entry.info;
            let consumer_worker = match info.consumer {
                Endpoint::Node { node, .. } => Some(worker_of[node]),
                _ => None,
            };
            let all_local = consumer_worker.is_some()
                && info.producers.iter().all(|p| matches!(*p, Endpoint::Node { node, .. } if Some(worker_of[node]) == consumer_worker));
            let has_input = info
                .producers
                .iter()
                .any(|p| matches!(p, Endpoint::Input(_)));
            let kind = if all_local {
                EdgeKind::Local
            } else if info.producers.len() == 1 && !has_input {
                EdgeKind::Spsc
            } else {
                EdgeKind::Mpsc
            };
            // Sync stages fused on one worker are run in order by its loop: an edge
            // between them needs no wake-ups in either direction.
            let sync_at = |e: &Endpoint| matches!(*e, Endpoint::Node { node, .. } if kinds[node] == NodeKind::Sync);
            let silent = !adaptive
                && kind == EdgeKind::Local
                && sync_at(&info.consumer)
                && info.producers.iter().all(sync_at);
            let (consumer, mut capacity) = match info.consumer {
                Endpoint::Node { .. } if silent => (Waker::Nobody, 0),
                Endpoint::Node { node, .. } => (node_waker(node), plan.ring_for(&names[node])),
                Endpoint::Output(i) => (
                    Waker::External(output_events[i].clone()),
                    plan.ring_for(&pipeline.outputs[i].0),
                ),
                Endpoint::Input(_) => unreachable!("inputs never consume"),
            };
            if kind == EdgeKind::Local {
                // Fused stages hand bursts over directly; the buffer only needs room for
                // a burst in each direction, not a ring's worth of latency.
                let widest = info
                    .producers
                    .iter()
                    .chain(std::iter::once(&info.consumer))
                    .filter_map(|e| match *e {
                        Endpoint::Node { node, .. } => Some(bursts[node]),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(1);
                capacity = 2 * widest;
            }
            let producers = info
                .producers
                .iter()
                .map(|p| match *p {
                    Endpoint::Node { .. } if silent => Waker::Nobody,
                    Endpoint::Node { node, .. } => node_waker(node),
                    Endpoint::Input(i) => Waker::External(input_events[i].clone()),
                    Endpoint::Output(_) => unreachable!("outputs never produce"),
                })
                .collect();
            edge_plans.push(EdgePlan {
                kind,
                capacity,
                link: Arc::new(Link::new(consumer, producers)),
            });
        }
        let edge_kinds: Vec<EdgeKind> = edge_plans.iter().map(|e| e.kind).collect();
        let edge_caps: Vec<usize> = edge_plans.iter().map(|e| e.capacity).collect();
        let transport = RingTransport { edges: edge_plans };

        // Connect edges and bind their ends.
        let mut inputs: Vec<Option<Box<dyn Any + Send>>> =
            pipeline.inputs.iter().map(|_| None).collect();
        let mut outputs: Vec<Option<Box<dyn Any + Send>>> =
            pipeline.outputs.iter().map(|_| None).collect();
        let mut probes: HashMap<usize, DepthProbe> = HashMap::new();
        let mut input_closers = Vec::new();
        let mut output_discards: Vec<Option<Discard>> =
            pipeline.outputs.iter().map(|_| None).collect();
        for e in 0..pipeline.edges.len() {
            let info = pipeline.edges[e].info.clone();
            let connected = pipeline.edges[e].edge.connect(&transport, &info);
            let (senders, receiver, handle) =
                (connected.senders, connected.receiver, connected.handle);
            let fed_by_input = info
                .producers
                .iter()
                .any(|p| matches!(p, Endpoint::Input(_)));
            if fed_by_input {
                if let Some(closer) = handle.closer {
                    input_closers.push(closer);
                }
            }
            for (producer, sender) in info.producers.iter().zip(senders) {
                match *producer {
                    Endpoint::Node { node, port } => {
                        pipeline.nodes[node].node.bind_output(port, sender)?
                    }
                    Endpoint::Input(i) => inputs[i] = Some(sender),
                    Endpoint::Output(_) => unreachable!(),
                }
            }
            match info.consumer {
                Endpoint::Node { node, .. } => {
                    probes.insert(node, handle.probe);
                    pipeline.nodes[node].node.bind_input(receiver)?;
                }
                Endpoint::Output(i) => {
                    output_discards[i] = Some(handle.discard);
                    outputs[i] = Some(receiver);
                }
                Endpoint::Input(_) => unreachable!(),
            }
        }

        // Observers, bursts, per-stage metadata.
        let edge_producers: Vec<Vec<Endpoint>> = pipeline
            .edges
            .iter()
            .map(|e| e.info.producers.clone())
            .collect();
        let mut stages = Vec::new();
        for (id, entry) in pipeline.nodes.iter_mut().enumerate() {
            let stats = Arc::new(StageStats::default());
            entry
                .node
                .bind_observer(Box::new(StatsObserver::new(&entry.name, stats.clone())));
            let input = entry.input.map(|edge| {
                (
                    edge_kinds[edge],
                    edge_caps[edge],
                    probes.remove(&id).expect("every input edge has a probe"),
                )
            });
            let producers = entry
                .input
                .map(|edge| {
                    edge_producers[edge]
                        .iter()
                        .filter_map(|p| match *p {
                            Endpoint::Node { node, .. } => Some(node),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            stages.push(StageMeta {
                producers,
                name: entry.name.clone(),
                worker: worker_of[id],
                owner: owners[id].clone(),
                burst_now: std::sync::atomic::AtomicUsize::new(entry.node.burst()),
                stats,
                input,
            });
        }
        let edges = pipeline
            .edges
            .iter()
            .map(|e| {
                (
                    format!("{:?}->{:?}", e.info.producers, e.info.consumer),
                    edge_kinds[e.info.id],
                )
            })
            .collect();

        // Replicated stages start with the plan's count of active replicas.
        let mut replicas = Vec::new();
        for entry in &pipeline.nodes {
            if let Some(control) = entry.node.replica_control() {
                if let Some(active) = plan.replicas_for(control.stage()) {
                    control.set_initial(active).map_err(PlanError::from)?;
                }
                replicas.push(control);
            }
        }

        // Hand nodes to workers, in pipeline order.
        let mut per_worker: Vec<Vec<_>> = resolved.workers.iter().map(|_| Vec::new()).collect();
        for (id, mut entry) in pipeline.nodes.into_iter().enumerate() {
            entry.node.bind_stop(stop.flag());
            #[cfg(feature = "tracing-spans")]
            {
                entry.node = crate::traced::Traced::wrap(&entry.name, entry.node);
            }
            let own = (entry.node.kind() == NodeKind::Async).then(|| node_signals[id].clone());
            per_worker[worker_of[id]].push((id, entry.node, own));
        }
        control.set_input_closers(input_closers);
        let started = Instant::now();
        let mut threads = Vec::new();
        for (index, (nodes, worker)) in per_worker.into_iter().zip(&resolved.workers).enumerate() {
            let setup = WorkerSetup {
                index,
                core: worker.core,
                signal: worker_signals[index].clone(),
                nodes,
                control: control.clone(),
                uring: worker.uring,
            };
            match worker::spawn(setup) {
                Ok(handle) => threads.push(handle),
                Err(error) => {
                    control.abort();
                    return Err(error.into());
                }
            }
        }
        tracing::info!(target: "pipewright", plan = %plan, workers = threads.len(), "pipeline started");
        let _ = (input_events, output_events);
        Ok(Running {
            control,
            threads,
            inputs,
            outputs,
            output_discards: output_discards
                .into_iter()
                .map(|d| d.expect("every output has an edge"))
                .collect(),
            stages: Arc::new(stages),
            edges,
            started,
            plan,
            mailboxes,
            workers: resolved.workers.len(),
            replicas,
            stop,
        })
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

    /// A sending handle for an application input, or `None` once it is closed.
    pub fn input<T: Send + 'static>(&self, id: &InputId<T>) -> Option<Input<T>> {
        let sender = self
            .inputs
            .get(id.index())?
            .as_ref()?
            .downcast_ref::<RingSender<T>>()
            .expect("InputId type matches its edge");
        let space = sender.space_event();
        sender.try_clone().map(|s| Input::new(s, space))
    }

    /// The receiving handle of an application output (once: outputs have one reader).
    pub fn output<T: Send + 'static>(&mut self, id: &OutputId<T>) -> Option<Output<T>> {
        let boxed = self.outputs.get_mut(id.index())?.take()?;
        let receiver = *boxed
            .downcast::<RingReceiver<T>>()
            .expect("OutputId type matches its edge");
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
    /// `Duration::ZERO` turns polling off. A worker also stops polling when it finds it
    /// was descheduled for longer than the window (its CPU is contended).
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
