//! The interface between a built [`Pipeline`](crate::Pipeline) and an executor.
//!
//! Users do not need this module; executors do. A pipeline is a graph of type-erased
//! *nodes* joined by type-erased *edges*. The executor chooses a [`Transport`] (how an
//! edge carries items: a lock-free ring between workers, a plain buffer between fused
//! stages), asks each edge to [`connect`](ErasedEdge::connect) itself, binds the typed
//! ends into the nodes, then activates nodes. Types were checked when the pipeline was
//! built; binding a wrong end is a [`BindError`], never undefined behaviour.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use crate::stop::StopFlag;

/// How items cross edges. An executor implements this once for all item types.
pub trait Transport: Send + Sync + Sized + 'static {
    /// The producing end of an edge.
    type Sender<T: Send + 'static>: OutPort<T> + 'static;
    /// The consuming end of an edge.
    type Receiver<T: Send + 'static>: InPort<T> + 'static;
    /// A type-erased handle on an edge that the executor keeps for itself (occupancy
    /// probes, closing, discarding), made while the item type is still known.
    type EdgeHandle: Send + 'static;

    /// Makes the channel for one edge: one sender per producer endpoint, in the order of
    /// [`EdgeInfo::producers`], and the receiver.
    fn channel<T: Send + 'static>(
        &self,
        edge: &EdgeInfo,
    ) -> (Vec<Self::Sender<T>>, Self::Receiver<T>);

    /// Makes the executor's handle on an edge from its receiver.
    fn edge_handle<T: Send + 'static>(receiver: &Self::Receiver<T>) -> Self::EdgeHandle;
}

/// An edge's channel, its ends boxed for binding into nodes.
pub struct Connected<X: Transport> {
    /// One sender (an `X::Sender<T>`) per producer, in [`EdgeInfo::producers`] order.
    pub senders: Vec<Box<dyn Any + Send>>,
    /// The receiver (an `X::Receiver<T>`).
    pub receiver: Box<dyn Any + Send>,
    /// The executor's own handle on the edge.
    pub handle: X::EdgeHandle,
}

impl<X: Transport> std::fmt::Debug for Connected<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("senders", &self.senders.len())
            .finish()
    }
}

/// The producing end of an edge, used one burst at a time.
pub trait OutPort<T>: Send {
    /// Moves as many items as fit from the front of `items`; what does not fit stays.
    fn push(&mut self, items: &mut VecDeque<T>);
    /// Marks this producer as finished; the consumer ends once all producers have.
    fn close(&mut self);
    /// Items waiting in the edge as the producer sees them, if the transport knows.
    fn queued(&self) -> Option<usize> {
        None
    }
    /// True when the consumer runs in the producer's own loop (a fused edge into a sync
    /// stage; an async stage on the same worker is a task the loop does not run):
    /// work sent there takes the producer's own core. Replicated stages send their items
    /// to the replica with the least waiting, counting local ones a burst more (see
    /// [`Spreader::pick_shortest`](crate::Spreader::pick_shortest)).
    fn is_local(&self) -> bool {
        false
    }
}

/// The consuming end of an edge, used one burst at a time.
pub trait InPort<T>: Send {
    /// Appends up to `max` items to `items`; returns how many.
    fn pull(&mut self, items: &mut VecDeque<T>, max: usize) -> usize;
    /// True once every producer has closed and every item has been pulled.
    fn is_finished(&self) -> bool;
    /// Items waiting in the edge (may be stale by the time it returns).
    fn len(&self) -> usize;
    /// True when no items are waiting.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Index of a node in [`Pipeline::nodes`](crate::Pipeline).
pub type NodeId = usize;
/// Index of an edge in [`Pipeline::edges`](crate::Pipeline).
pub type EdgeId = usize;

/// One end of an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Output port `port` (or the input) of node `node`.
    Node {
        /// The node.
        node: NodeId,
        /// The port index (0 for single-output nodes and for inputs).
        port: usize,
    },
    /// An input the application sends into, by index in declaration order.
    Input(usize),
    /// An output the application receives from, by index in declaration order.
    Output(usize),
}

/// What an executor knows about one edge when it builds its channel.
#[derive(Debug, Clone)]
pub struct EdgeInfo {
    /// The edge's index.
    pub id: EdgeId,
    /// Who pushes into it (more than one for a merge).
    pub producers: Vec<Endpoint>,
    /// Who pulls from it.
    pub consumer: Endpoint,
    /// `std::any::type_name` of the items, for diagnostics.
    pub item_type: &'static str,
}

/// Why a typed end could not be bound into a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The end carried another item type than the port expects.
    #[error("edge end of the wrong type for port {port} of `{node}`")]
    WrongType {
        /// The node's name.
        node: String,
        /// The port index.
        port: usize,
    },
    /// The node has no such port.
    #[error("`{node}` has no port {port}")]
    NoSuchPort {
        /// The node's name.
        node: String,
        /// The port index.
        port: usize,
    },
}

/// What one activation of a node achieved; the executor schedules by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// Items were consumed or emitted.
    Progress,
    /// No input is waiting.
    Idle,
    /// Output is full; the node will not take input until it drains.
    Blocked,
    /// The stage holds input it may not process yet (rate limit); retry after this long.
    Throttled(Duration),
    /// Input ended, everything was emitted, outputs are closed.
    Finished,
    /// The stage failed under [`ErrorPolicy::FailPipeline`](crate::ErrorPolicy).
    Failed(crate::StageFailure),
}

/// Why items were dropped, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The stage reported an error for the item.
    Error,
    /// The stage panicked while processing the item.
    Panic,
    /// A router's key chose no existing route.
    Unrouted,
    /// The pipeline was aborted (failure or shutdown deadline) with the item in flight.
    Aborted,
    /// A timeout layer gave up on the item.
    Timeout,
}

impl DropReason {
    /// The label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Error => "error",
            DropReason::Panic => "panic",
            DropReason::Unrouted => "unrouted",
            DropReason::Aborted => "aborted",
            DropReason::Timeout => "timeout",
        }
    }

    /// Every reason, for exporters that pre-register counters.
    pub const ALL: [DropReason; 5] = [
        DropReason::Error,
        DropReason::Panic,
        DropReason::Unrouted,
        DropReason::Aborted,
        DropReason::Timeout,
    ];
}

/// Receives a node's per-burst accounting. Called once per burst, never per item.
pub trait Observer: Send {
    /// A burst took `items_in` items and emitted `items_out`; `nanos` is the burst's
    /// service time when this burst was timed (the node samples).
    fn burst(&mut self, items_in: usize, items_out: usize, nanos: Option<u64>);
    /// `count` items were dropped for `reason`.
    fn dropped(&mut self, reason: DropReason, count: usize);
    /// The stage panicked (the item in hand is also reported as dropped).
    fn panicked(&mut self, message: &str);
    /// A source reported an error ([`SourceState::Failed`](crate::SourceState::Failed))
    /// and was ended; called once per source at most.
    fn source_failed(&mut self, _error: &crate::StageError) {}
}

/// An observer that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl Observer for NoopObserver {
    fn burst(&mut self, _: usize, _: usize, _: Option<u64>) {}
    fn dropped(&mut self, _: DropReason, _: usize) {}
    fn panicked(&mut self, _: &str) {}
}

/// How a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Called from the worker's loop: [`ErasedNode::activate`].
    Sync,
    /// Runs as one long-lived task on the worker's async runtime:
    /// [`ErasedNode::into_task`].
    Async,
}

/// What a long-lived async node task needs from its executor.
pub trait TaskContext: 'static {
    /// Waits until woken by an edge (input arrived, output space freed) or until
    /// `timeout`; spurious returns are allowed.
    fn park(&self, timeout: Option<Duration>) -> Pin<Box<dyn Future<Output = ()> + '_>>;
    /// True once the pipeline is aborting; the task then calls [`quiesce`](TaskContext::quiesce),
    /// [`ErasedNode::abandon`]s what it holds, and returns.
    fn aborted(&self) -> bool;
    /// After an abort: waits until no stage anywhere in the pipeline produces any more,
    /// so that what is then discarded (and counted) is final.
    fn quiesce(&self) -> Pin<Box<dyn Future<Output = ()> + '_>>;
    /// Reports a failure under [`ErrorPolicy::FailPipeline`](crate::ErrorPolicy): the
    /// pipeline aborts, and [`aborted`](TaskContext::aborted) is true from the return
    /// of this call on (a failed task relies on it to stop pulling or processing).
    fn fail(&self, failure: crate::StageFailure);
    /// Lets the other tasks and stages of the worker run before this task goes on. An
    /// async stage's task calls it after each turn of work (see [`TASK_TURN`]): its
    /// executor may run it without a cooperative budget, so this is what keeps it
    /// from starving its neighbours. The default yields once to the executor.
    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(yield_once())
    }
}

/// How long an async stage's task works (taking bursts, settling calls) before it
/// yields to its worker's other stages and tasks: about one burst of a sync stage.
pub const TASK_TURN: Duration = Duration::from_micros(50);

/// Returns `Pending` once, waking itself: the executor runs its other ready tasks
/// before this one resumes.
pub(crate) async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// A type-erased pipeline node, ready to be bound and run.
pub trait ErasedNode<X: Transport>: Send {
    /// How the node runs.
    fn kind(&self) -> NodeKind;
    /// Number of output ports.
    fn outputs(&self) -> usize;
    /// Whether the node has an input port (sources do not).
    fn has_input(&self) -> bool;
    /// Binds the receiver of the node's input edge (an `X::Receiver<In>`).
    fn bind_input(&mut self, port: Box<dyn Any + Send>) -> Result<(), BindError>;
    /// Binds the sender of output port `index` (an `X::Sender<Out>`).
    fn bind_output(&mut self, index: usize, port: Box<dyn Any + Send>) -> Result<(), BindError>;
    /// Sets where per-burst accounting goes.
    fn bind_observer(&mut self, observer: Box<dyn Observer>);
    /// Sets the most items taken per activation (at least 1).
    fn set_burst(&mut self, burst: usize);
    /// The burst size in use.
    fn burst(&self) -> usize;
    /// One activation of a [`NodeKind::Sync`] node.
    fn activate(&mut self) -> Activation;
    /// Turns a [`NodeKind::Async`] node into its task (called once, at start).
    fn into_task(
        self: Box<Self>,
        cx: Box<dyn TaskContext>,
    ) -> Pin<Box<dyn Future<Output = Activation>>>;
    /// Drops everything the node holds (abort), returning how many items it held.
    fn abandon(&mut self) -> usize;

    /// Gives a source node the pipeline's stop flag: once it is raised the source
    /// pulls no more, emits what it holds and closes its output. Other nodes ignore it.
    fn bind_stop(&mut self, _stop: StopFlag) {}

    /// The live control of a replicated stage's split node (`None` for every other
    /// node): the runtime sets the plan's replica count through it.
    fn replica_control(&self) -> Option<crate::replica::ReplicaControl> {
        None
    }
}

/// A type-erased edge, able to build its typed channel from a transport.
pub trait ErasedEdge<X: Transport>: Send {
    /// Builds the channel.
    fn connect(&self, transport: &X, info: &EdgeInfo) -> Connected<X>;
}

pub(crate) struct TypedEdge<T>(pub(crate) std::marker::PhantomData<fn(T)>);

impl<X: Transport, T: Send + 'static> ErasedEdge<X> for TypedEdge<T> {
    fn connect(&self, transport: &X, info: &EdgeInfo) -> Connected<X> {
        let (senders, receiver) = transport.channel::<T>(info);
        let handle = X::edge_handle::<T>(&receiver);
        Connected {
            senders: senders
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn Any + Send>)
                .collect(),
            receiver: Box::new(receiver),
            handle,
        }
    }
}
