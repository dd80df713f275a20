//! A deterministic, single-threaded executor: runs a pipeline's synchronous stages on
//! the calling thread, in topological order, until nothing can move.
//!
//! For unit tests of stages and graphs, and for examples. Async stages need the
//! threaded runtime (`pipewright-runtime`); an inline run containing one reports
//! [`InlineError::AsyncStage`].

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::exec::{Activation, EdgeInfo, Endpoint, InPort, NodeKind, OutPort, Transport};
use crate::{InputId, OutputId, Pipeline, StageFailure};

/// Items an inline edge holds before its producer is blocked.
pub const INLINE_EDGE_CAPACITY: usize = 1024;

/// The [`Transport`] of inline runs: bounded in-memory queues.
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineTransport;

struct Chan<T> {
    items: VecDeque<T>,
    capacity: usize,
    open_producers: usize,
}

fn lock<T>(chan: &Mutex<Chan<T>>) -> MutexGuard<'_, Chan<T>> {
    // The lock is only held for queue operations that cannot panic midway.
    chan.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sending end of an inline edge.
pub struct InlineSender<T> {
    chan: Arc<Mutex<Chan<T>>>,
    closed: bool,
}

/// Receiving end of an inline edge.
pub struct InlineReceiver<T> {
    chan: Arc<Mutex<Chan<T>>>,
}

impl<T> std::fmt::Debug for InlineSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InlineSender")
    }
}
impl<T> std::fmt::Debug for InlineReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InlineReceiver")
    }
}

impl<T: Send> OutPort<T> for InlineSender<T> {
    fn push(&mut self, items: &mut VecDeque<T>) {
        let mut chan = lock(&self.chan);
        let room = chan
            .capacity
            .saturating_sub(chan.items.len())
            .min(items.len());
        chan.items.extend(items.drain(..room));
    }
    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            lock(&self.chan).open_producers -= 1;
        }
    }
}

impl<T> Drop for InlineSender<T> {
    fn drop(&mut self) {
        if !self.closed {
            self.closed = true;
            lock(&self.chan).open_producers -= 1;
        }
    }
}

impl<T: Send> InPort<T> for InlineReceiver<T> {
    fn pull(&mut self, items: &mut VecDeque<T>, max: usize) -> usize {
        let mut chan = lock(&self.chan);
        let n = chan.items.len().min(max);
        items.extend(chan.items.drain(..n));
        n
    }
    fn is_finished(&self) -> bool {
        let chan = lock(&self.chan);
        chan.open_producers == 0 && chan.items.is_empty()
    }
    fn len(&self) -> usize {
        lock(&self.chan).items.len()
    }
}

impl Transport for InlineTransport {
    type Sender<T: Send + 'static> = InlineSender<T>;
    type Receiver<T: Send + 'static> = InlineReceiver<T>;
    type EdgeHandle = ();

    fn channel<T: Send + 'static>(
        &self,
        edge: &EdgeInfo,
    ) -> (Vec<InlineSender<T>>, InlineReceiver<T>) {
        // Outputs are read after the run; they must not block it.
        let capacity = match edge.consumer {
            Endpoint::Output(_) => usize::MAX,
            _ => INLINE_EDGE_CAPACITY,
        };
        let chan = Arc::new(Mutex::new(Chan {
            items: VecDeque::new(),
            capacity,
            open_producers: edge.producers.len(),
        }));
        let senders = edge
            .producers
            .iter()
            .map(|_| InlineSender {
                chan: chan.clone(),
                closed: false,
            })
            .collect();
        (senders, InlineReceiver { chan })
    }

    fn edge_handle<T: Send + 'static>(_: &InlineReceiver<T>) {}
}

/// Why an inline run stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InlineError {
    /// A stage failed under `ErrorPolicy::FailPipeline`.
    #[error(transparent)]
    Failed(#[from] StageFailure),
    /// The pipeline has an async stage; run it on the threaded runtime instead.
    #[error(
        "stage `{0}` is async: inline runs execute sync stages only; use pipewright's runtime"
    )]
    AsyncStage(String),
    /// A stage is throttled or waiting on an async source; the inline executor does
    /// not sleep.
    #[error("the pipeline stopped making progress before every stage finished")]
    Stalled,
}

type Feed = Box<dyn FnMut(&mut dyn Any) -> (bool, bool)>;

/// A pipeline being run inline; see the [module docs](self).
pub struct InlineRun {
    pipeline: Pipeline<InlineTransport>,
    inputs: Vec<Option<Box<dyn Any + Send>>>,
    outputs: Vec<Box<dyn Any + Send>>,
    /// Per input: items not yet admitted; the closure pushes what fits and reports
    /// `(admitted_any, all_admitted)`.
    pending: Vec<Option<Feed>>,
    finished: Vec<bool>,
}

impl std::fmt::Debug for InlineRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineRun")
            .field("stages", &self.pipeline.stage_names())
            .finish()
    }
}

impl Pipeline<InlineTransport> {
    /// Binds the pipeline to inline queues; drive it with [`InlineRun::send_all`] and
    /// [`InlineRun::finish`].
    pub fn run_inline(self) -> InlineRun {
        InlineRun::new(self)
    }
}

impl InlineRun {
    fn new(mut pipeline: Pipeline<InlineTransport>) -> Self {
        let mut inputs: Vec<Option<Box<dyn Any + Send>>> =
            (0..pipeline.inputs.len()).map(|_| None).collect();
        let mut outputs: Vec<Option<Box<dyn Any + Send>>> =
            (0..pipeline.outputs.len()).map(|_| None).collect();
        for e in 0..pipeline.edges.len() {
            let info = pipeline.edges[e].info.clone();
            let connected = pipeline.edges[e].edge.connect(&InlineTransport, &info);
            let (senders, receiver) = (connected.senders, connected.receiver);
            for (producer, sender) in info.producers.iter().zip(senders) {
                match *producer {
                    Endpoint::Node { node, port } => pipeline.nodes[node]
                        .node
                        .bind_output(port, sender)
                        .expect("types checked at build"),
                    Endpoint::Input(i) => inputs[i] = Some(sender),
                    Endpoint::Output(_) => unreachable!(),
                }
            }
            match info.consumer {
                Endpoint::Node { node, .. } => pipeline.nodes[node]
                    .node
                    .bind_input(receiver)
                    .expect("types checked at build"),
                Endpoint::Output(i) => outputs[i] = Some(receiver),
                Endpoint::Input(_) => unreachable!(),
            }
        }
        let n = pipeline.nodes.len();
        let n_inputs = inputs.len();
        Self {
            pipeline,
            inputs,
            outputs: outputs
                .into_iter()
                .map(|o| o.expect("every output has an edge"))
                .collect(),
            pending: (0..n_inputs).map(|_| None).collect(),
            finished: vec![false; n],
        }
    }

    fn input_sender<T: Send + 'static>(
        &mut self,
        input: &InputId<T>,
    ) -> Option<&mut InlineSender<T>> {
        self.inputs[input.index].as_mut().map(|s| {
            s.downcast_mut::<InlineSender<T>>()
                .expect("InputId type matches its edge")
        })
    }

    /// Queues items on an input; they enter the pipeline as it makes room.
    ///
    /// # Panics
    ///
    /// After [`finish`](InlineRun::finish), which closed the inputs (the items would
    /// be lost without a trace).
    pub fn send_all<T: Send + 'static>(
        &mut self,
        input: &InputId<T>,
        items: impl IntoIterator<Item = T>,
    ) {
        assert!(
            self.inputs[input.index].is_some(),
            "InlineRun::send_all after finish(): the inputs are closed; send every item before finishing"
        );
        let mut queue: VecDeque<T> = items.into_iter().collect();
        if let Some(sender) = self.input_sender(input) {
            sender.push(&mut queue);
        }
        if queue.is_empty() {
            return;
        }
        let mut previous = self.pending[input.index].take();
        self.pending[input.index] = Some(Box::new(move |sender: &mut dyn Any| {
            if let Some(prev) = previous.as_mut() {
                let (moved, done) = prev(sender);
                if !done {
                    return (moved, false);
                }
                previous = None;
            }
            let before = queue.len();
            sender
                .downcast_mut::<InlineSender<T>>()
                .expect("InputId type matches its edge")
                .push(&mut queue);
            (queue.len() < before, queue.is_empty())
        }));
    }

    /// Runs stages until no stage can make progress; returns whether anything moved.
    pub fn run_until_stalled(&mut self) -> Result<bool, InlineError> {
        let mut moved_any = false;
        loop {
            let mut moved = false;
            for (i, slot) in self.pending.iter_mut().enumerate() {
                if let (Some(feed), Some(sender)) = (slot.as_mut(), self.inputs[i].as_mut()) {
                    let (admitted, done) = feed(sender.as_mut());
                    if done {
                        *slot = None;
                    }
                    moved |= admitted;
                }
            }
            for (i, entry) in self.pipeline.nodes.iter_mut().enumerate() {
                if self.finished[i] {
                    continue;
                }
                if entry.node.kind() == NodeKind::Async {
                    return Err(InlineError::AsyncStage(entry.name.clone()));
                }
                match entry.node.activate() {
                    Activation::Progress => moved = true,
                    Activation::Finished => {
                        self.finished[i] = true;
                        moved = true;
                    }
                    Activation::Failed(failure) => return Err(failure.into()),
                    Activation::Idle | Activation::Blocked | Activation::Throttled(_) => {}
                }
            }
            let pending_left = self.pending.iter().any(Option::is_some);
            if !moved || (!pending_left && self.finished.iter().all(|f| *f)) {
                return Ok(moved_any);
            }
            moved_any = true;
        }
    }

    /// Closes every input once its queued items are in, and runs to completion.
    pub fn finish(&mut self) -> Result<(), InlineError> {
        loop {
            let moved = self.run_until_stalled()?;
            if self.pending.iter().all(Option::is_none) {
                break;
            }
            if !moved {
                return Err(InlineError::Stalled);
            }
        }
        // Dropping an input's sender closes it.
        for input in self.inputs.iter_mut() {
            drop(input.take());
        }
        self.run_until_stalled()?;
        if self.finished.iter().all(|f| *f) {
            Ok(())
        } else {
            Err(InlineError::Stalled)
        }
    }

    /// Takes everything an output has received so far.
    pub fn take_output<T: Send + 'static>(&mut self, output: &OutputId<T>) -> Vec<T> {
        let receiver = self.outputs[output.index]
            .downcast_mut::<InlineReceiver<T>>()
            .expect("OutputId type matches its edge");
        let mut items = VecDeque::new();
        receiver.pull(&mut items, usize::MAX);
        items.into()
    }
}
