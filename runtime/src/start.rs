//! Starting a pipeline: its plan resolved to workers, its edges to rings or fused
//! buffers, its stages bound and handed to their workers.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use event_listener::Event;
use pipewright_stages::exec::{Endpoint, NodeKind};

use crate::control::Control;
use crate::link::{Link, Waker};
use crate::mailbox::Mailboxes;
use crate::outcome::StartError;
use crate::plan::{Plan, PlanError};
use crate::running::{DepthProbe, Discard, Running, RuntimePipeline, StageMeta};
use crate::signal::{Owner, Signal};
use crate::stats::{StageStats, StatsObserver};
use crate::stop::StopHandle;
use crate::transport::{EdgeKind, EdgePlan, RingTransport};
use crate::worker::{self, WorkerSetup};

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
                capacity = widest.saturating_mul(2);
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
                consumer_in_loop: kind == EdgeKind::Local && sync_at(&info.consumer),
                silent,
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
                burst_now: std::sync::Mutex::new((0, entry.node.burst())),
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
