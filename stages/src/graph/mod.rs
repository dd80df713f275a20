//! The typed pipeline builder and the built, type-erased pipeline graph.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use crate::exec::{
    EdgeId, EdgeInfo, Endpoint, ErasedEdge, ErasedNode, NodeId, Transport, TypedEdge,
};
use crate::node::{
    AsyncSourceNode, AsyncStageNode, RouterNode, SourceNode, SplitNode, StageNode, DEFAULT_BURST,
};

mod replicated;
use crate::{AsyncStage, BuildError, Source, Stage};

/// A handle to an application input of item type `T`, used to send into a running
/// pipeline.
pub struct InputId<T> {
    pub(crate) index: usize,
    _t: PhantomData<fn(T)>,
}

/// A handle to an application output of item type `T`, used to receive from a running
/// pipeline.
pub struct OutputId<T> {
    pub(crate) index: usize,
    _t: PhantomData<fn() -> T>,
}

macro_rules! id_impls {
    ($name:ident) => {
        impl<T> $name<T> {
            /// Position in declaration order.
            pub fn index(&self) -> usize {
                self.index
            }
        }
        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<T> Copy for $name<T> {}
        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.index)
            }
        }
    };
}
id_impls!(InputId);
id_impls!(OutputId);

/// The producers feeding a new edge, its typed builder and its item type's name.
type EdgeFeed<X> = (Vec<Endpoint>, Box<dyn ErasedEdge<X>>, &'static str);

/// One node of a built pipeline.
pub struct NodeEntry<X: Transport> {
    /// The unique name given to the builder.
    pub name: String,
    /// The executable node.
    pub node: Box<dyn ErasedNode<X>>,
    /// The edge feeding it, if it has an input.
    pub input: Option<EdgeId>,
    /// The edge on each output port (`None` for a sink's discarded output).
    pub outputs: Vec<Option<EdgeId>>,
}

impl<X: Transport> fmt::Debug for NodeEntry<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeEntry")
            .field("name", &self.name)
            .field("kind", &self.node.kind())
            .field("input", &self.input)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// One edge of a built pipeline.
pub struct EdgeEntry<X: Transport> {
    /// Where it runs from and to.
    pub info: EdgeInfo,
    /// Builds its typed channel.
    pub edge: Box<dyn ErasedEdge<X>>,
}

impl<X: Transport> fmt::Debug for EdgeEntry<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.info.fmt(f)
    }
}

struct Graph<X: Transport> {
    nodes: Vec<NodeEntry<X>>,
    edges: Vec<EdgeEntry<X>>,
    inputs: Vec<(String, Option<EdgeId>)>,
    outputs: Vec<(String, EdgeId)>,
    open: Vec<Endpoint>,
    names: HashSet<String>,
    error: Option<BuildError>,
    default_burst: usize,
}

/// Composes stages into a pipeline whose stage-to-stage types are checked by the
/// compiler; [`build`](PipelineBuilder::build) validates the rest.
///
/// `X` is the executor's [`Transport`]: `pipewright::PipelineBuilder` fixes it to the
/// threaded runtime, [`inline::InlineTransport`](crate::inline::InlineTransport) runs
/// the graph on the calling thread.
///
/// ```
/// use pipewright::{graph::PipelineBuilder, inline::InlineTransport, stage};
///
/// let b = PipelineBuilder::<InlineTransport>::new();
/// let (input, words) = b.input::<&'static str>("words");
/// let [short, long] = words.route("by-length", |w: &&str| usize::from(w.len() > 3));
/// let long = long.then("upper", stage::map(|w: &str| w.to_uppercase()));
/// let short = short.then("own", stage::map(|w: &str| w.to_string()));
/// let all = short.merge(long).output("all");
/// let mut run = b.build()?.run_inline();
/// run.send_all(&input, ["a", "pipe", "of", "words"]);
/// run.finish()?;
/// let mut got = run.take_output(&all);
/// got.sort();
/// assert_eq!(got, ["PIPE", "WORDS", "a", "of"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PipelineBuilder<X: Transport> {
    graph: RefCell<Graph<X>>,
}

impl<X: Transport> fmt::Debug for PipelineBuilder<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.graph.borrow();
        f.debug_struct("PipelineBuilder")
            .field(
                "nodes",
                &g.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<X: Transport> Default for PipelineBuilder<X> {
    fn default() -> Self {
        Self::new()
    }
}

impl<X: Transport> PipelineBuilder<X> {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            graph: RefCell::new(Graph {
                nodes: Vec::new(),
                edges: Vec::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                open: Vec::new(),
                names: HashSet::new(),
                error: None,
                default_burst: DEFAULT_BURST,
            }),
        }
    }

    /// Sets the burst size of stages added after this call (default 32).
    pub fn default_burst(self, burst: usize) -> Self {
        {
            let mut g = self.graph.borrow_mut();
            if burst == 0 {
                // Stages take at least one item; say so at build time, as for a
                // stage's own burst of 0.
                g.error
                    .get_or_insert(BuildError::ZeroBurst("(default burst)".into()));
            }
            g.default_burst = burst.max(1);
        }
        self
    }

    /// Declares an application input: the returned id sends into the running pipeline,
    /// the stream feeds stages.
    pub fn input<T: Send + 'static>(&self, name: &str) -> (InputId<T>, Stream<'_, T, X>) {
        let mut g = self.graph.borrow_mut();
        g.claim_name(name);
        let index = g.inputs.len();
        g.inputs.push((name.to_string(), None));
        let endpoint = Endpoint::Input(index);
        g.open.push(endpoint);
        (
            InputId {
                index,
                _t: PhantomData,
            },
            Stream::new(self, vec![endpoint]),
        )
    }

    /// Adds a source stage driven by a worker.
    pub fn source<S: Source>(&self, name: &str, source: S) -> Stream<'_, S::Out, X> {
        let id = self.add_node(
            name,
            Box::new(SourceNode::<S, X>::new(name.to_string(), source)),
            None,
            1,
        );
        Stream::new(self, vec![Endpoint::Node { node: id, port: 0 }])
    }

    /// Adds an [`AsyncSource`](crate::AsyncSource): it runs as a task on its worker and
    /// awaits its items (sockets, ports) instead of being polled.
    pub fn source_async<S: crate::AsyncSource>(
        &self,
        name: &str,
        source: S,
    ) -> Stream<'_, S::Out, X> {
        let id = self.add_node(
            name,
            Box::new(AsyncSourceNode::<S, X>::new(name.to_string(), source)),
            None,
            1,
        );
        Stream::new(self, vec![Endpoint::Node { node: id, port: 0 }])
    }

    /// Merges streams of one type into one (the consumer sees them interleaved; each
    /// producer's order is kept).
    pub fn merge<'b, T: Send + 'static>(
        &'b self,
        streams: impl IntoIterator<Item = Stream<'b, T, X>>,
    ) -> Stream<'b, T, X> {
        let mut producers = Vec::new();
        for s in streams {
            if std::ptr::eq(s.builder, self) {
                producers.extend(s.into_producers());
            } else {
                // Its endpoints index the other builder's stages: never connected here.
                self.foreign_stream();
            }
        }
        Stream::new(self, producers)
    }

    /// A stream of another builder was handed to this one: its endpoints mean nothing
    /// here.
    fn foreign_stream(&self) {
        let mut g = self.graph.borrow_mut();
        g.error.get_or_insert(BuildError::ForeignStream);
    }

    /// Validates the graph.
    pub fn build(self) -> Result<Pipeline<X>, BuildError> {
        let g = self.graph.into_inner();
        if let Some(error) = g.error {
            return Err(error);
        }
        if g.nodes.is_empty() {
            return Err(BuildError::Empty);
        }
        if let Some(open) = g.open.first() {
            return Err(match *open {
                Endpoint::Node { node, port } => BuildError::UnconnectedOutput {
                    stage: g.nodes[node].name.clone(),
                    port,
                },
                Endpoint::Input(i) => BuildError::UnconnectedOutput {
                    stage: g.inputs[i].0.clone(),
                    port: 0,
                },
                Endpoint::Output(i) => BuildError::UnconnectedOutput {
                    stage: g.outputs[i].0.clone(),
                    port: 0,
                },
            });
        }
        for node in &g.nodes {
            if node.node.burst() == 0 {
                return Err(BuildError::ZeroBurst(node.name.clone()));
            }
        }
        for edge in &g.edges {
            let producers = &edge.info.producers;
            let input = producers.iter().find_map(|p| match p {
                Endpoint::Input(i) => Some(*i),
                _ => None,
            });
            let stage = producers.iter().find_map(|p| match p {
                Endpoint::Node { node, .. } => Some(*node),
                _ => None,
            });
            if let (Some(i), Some(n)) = (input, stage) {
                return Err(BuildError::InputMergedWithStage {
                    input: g.inputs[i].0.clone(),
                    stage: g.nodes[n].name.clone(),
                });
            }
        }
        Ok(Pipeline {
            nodes: g.nodes,
            edges: g.edges,
            inputs: g
                .inputs
                .into_iter()
                .map(|(n, e)| (n, e.expect("inputs are connected when open is empty")))
                .collect(),
            outputs: g.outputs,
        })
    }

    fn add_node(
        &self,
        name: &str,
        mut node: Box<dyn ErasedNode<X>>,
        input: Option<EdgeFeed<X>>,
        outputs: usize,
    ) -> NodeId {
        let mut g = self.graph.borrow_mut();
        g.claim_name(name);
        node.set_burst(g.default_burst);
        let id = g.nodes.len();
        let input_edge = input.map(|(producers, edge, item_type)| {
            g.connect(
                producers,
                Endpoint::Node { node: id, port: 0 },
                edge,
                item_type,
            )
        });
        g.nodes.push(NodeEntry {
            name: name.to_string(),
            node,
            input: input_edge,
            outputs: vec![None; outputs],
        });
        for port in 0..outputs {
            g.open.push(Endpoint::Node { node: id, port });
        }
        id
    }
}

impl<X: Transport> Graph<X> {
    fn claim_name(&mut self, name: &str) {
        if !self.names.insert(name.to_string()) && self.error.is_none() {
            self.error = Some(BuildError::DuplicateName(name.to_string()));
        }
    }

    fn connect(
        &mut self,
        producers: Vec<Endpoint>,
        consumer: Endpoint,
        edge: Box<dyn ErasedEdge<X>>,
        item_type: &'static str,
    ) -> EdgeId {
        let id = self.edges.len();
        for p in &producers {
            self.open.retain(|o| o != p);
            match *p {
                Endpoint::Node { node, port } => self.nodes[node].outputs[port] = Some(id),
                Endpoint::Input(i) => self.inputs[i].1 = Some(id),
                Endpoint::Output(_) => unreachable!("outputs never produce"),
            }
        }
        self.edges.push(EdgeEntry {
            info: EdgeInfo {
                id,
                producers,
                consumer,
                item_type,
            },
            edge,
        });
        id
    }
}

/// A typed stream of `T` flowing out of one or more producers, not yet consumed.
///
/// Every stream must be consumed (by [`then`](Stream::then), [`route`](Stream::route),
/// [`sink`](Stream::sink), [`output`](Stream::output), ...); one left over is reported
/// by [`PipelineBuilder::build`] as [`BuildError::UnconnectedOutput`].
#[must_use = "a stream must be consumed by a stage, a sink or an output"]
pub struct Stream<'b, T, X: Transport> {
    builder: &'b PipelineBuilder<X>,
    producers: Vec<Endpoint>,
    _t: PhantomData<fn() -> T>,
}

impl<T, X: Transport> fmt::Debug for Stream<'_, T, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("item", &std::any::type_name::<T>())
            .field("producers", &self.producers)
            .finish()
    }
}

impl<'b, T: Send + 'static, X: Transport> Stream<'b, T, X> {
    fn new(builder: &'b PipelineBuilder<X>, producers: Vec<Endpoint>) -> Self {
        Self {
            builder,
            producers,
            _t: PhantomData,
        }
    }

    fn into_producers(self) -> Vec<Endpoint> {
        self.producers
    }

    /// Ends the stream here: its producers' outputs are discarded (a sink's).
    fn discard(self) {
        let b = self.builder;
        let producers = self.producers;
        b.graph.borrow_mut().open.retain(|o| !producers.contains(o));
    }

    fn feed(self) -> (&'b PipelineBuilder<X>, Option<EdgeFeed<X>>) {
        let edge: Box<dyn ErasedEdge<X>> = Box::new(TypedEdge::<T>(PhantomData));
        (
            self.builder,
            Some((self.producers, edge, std::any::type_name::<T>())),
        )
    }

    /// Feeds the stream into a synchronous stage.
    pub fn then<S: Stage<In = T>>(self, name: &str, stage: S) -> Stream<'b, S::Out, X> {
        let (b, input) = self.feed();
        let id = b.add_node(
            name,
            Box::new(StageNode::<S, X>::new(name.to_string(), stage)),
            input,
            1,
        );
        Stream::new(b, vec![Endpoint::Node { node: id, port: 0 }])
    }

    /// Feeds the stream into an async stage (runs as a task on its worker's runtime).
    pub fn then_async<S: AsyncStage<In = T>>(self, name: &str, stage: S) -> Stream<'b, S::Out, X> {
        let (b, input) = self.feed();
        let id = b.add_node(
            name,
            Box::new(AsyncStageNode::<S, X>::new(name.to_string(), stage)),
            input,
            1,
        );
        Stream::new(b, vec![Endpoint::Node { node: id, port: 0 }])
    }

    /// Splits the stream over `N` typed outputs: `route` returns the output index for
    /// each item. Items whose index is `N` or more are dropped and counted as `unrouted`.
    pub fn route<const N: usize, R>(self, name: &str, route: R) -> [Stream<'b, T, X>; N]
    where
        R: FnMut(&T) -> usize + Send + 'static,
    {
        let (b, input) = self.feed();
        if N == 0 {
            let mut g = b.graph.borrow_mut();
            if g.error.is_none() {
                g.error = Some(BuildError::NoRoutes(name.to_string()));
            }
        }
        let id = b.add_node(
            name,
            Box::new(RouterNode::<T, R, X>::new(name.to_string(), route, N)),
            input,
            N,
        );
        std::array::from_fn(|port| Stream::new(b, vec![Endpoint::Node { node: id, port }]))
    }

    /// Merges another stream of the same type into this one.
    pub fn merge(mut self, other: Stream<'b, T, X>) -> Stream<'b, T, X> {
        if std::ptr::eq(self.builder, other.builder) {
            self.producers.extend(other.into_producers());
        } else {
            // Its endpoints index the other builder's stages: never connected here.
            self.builder.foreign_stream();
        }
        self
    }

    /// Ends the stream in a stage whose outputs are discarded (a sink).
    pub fn sink<S: Stage<In = T>>(self, name: &str, stage: S) {
        self.then(name, stage).discard();
    }

    /// Ends the stream in an async stage whose outputs are discarded (an I/O sink: a
    /// socket, a file).
    pub fn sink_async<S: AsyncStage<In = T>>(self, name: &str, stage: S) {
        self.then_async(name, stage).discard();
    }

    /// Ends the stream in a closure called for every item.
    pub fn for_each<F: FnMut(T) + Send + 'static>(self, name: &str, f: F) {
        self.sink(name, crate::stage::for_each(f));
    }

    /// Ends the stream in an application output.
    pub fn output(self, name: &str) -> OutputId<T> {
        let (b, input) = self.feed();
        let (producers, edge, item_type) = input.expect("feed always yields an edge");
        let mut g = b.graph.borrow_mut();
        g.claim_name(name);
        let index = g.outputs.len();
        let edge_id = g.connect(producers, Endpoint::Output(index), edge, item_type);
        g.outputs.push((name.to_string(), edge_id));
        OutputId {
            index,
            _t: PhantomData,
        }
    }

    /// Sets the burst size of the stage(s) producing this stream.
    pub fn burst(self, burst: usize) -> Self {
        {
            let mut g = self.builder.graph.borrow_mut();
            for p in &self.producers {
                if let Endpoint::Node { node, .. } = *p {
                    let name = g.nodes[node].name.clone();
                    if burst == 0 && g.error.is_none() {
                        g.error = Some(BuildError::ZeroBurst(name));
                    }
                    g.nodes[node].node.set_burst(burst);
                }
            }
        }
        self
    }
}

impl<'b, T: Send + 'static, E: Send + 'static, X: Transport> Stream<'b, Result<T, E>, X> {
    /// Splits a stream of results into its successes and its failures: the typed error
    /// output of a stage wrapped in [`RouteErrorsLayer`](crate::layer::RouteErrorsLayer).
    pub fn split_errors(self, name: &str) -> (Stream<'b, T, X>, Stream<'b, E, X>) {
        let (b, input) = self.feed();
        let id = b.add_node(
            name,
            Box::new(SplitNode::<T, E, X>::new(name.to_string())),
            input,
            2,
        );
        (
            Stream::new(b, vec![Endpoint::Node { node: id, port: 0 }]),
            Stream::new(b, vec![Endpoint::Node { node: id, port: 1 }]),
        )
    }
}

/// A validated pipeline graph, ready for an executor.
pub struct Pipeline<X: Transport> {
    /// Nodes in topological order (every edge runs from a lower to a higher index).
    pub nodes: Vec<NodeEntry<X>>,
    /// Edges by id.
    pub edges: Vec<EdgeEntry<X>>,
    /// Application inputs: name and the edge they feed.
    pub inputs: Vec<(String, EdgeId)>,
    /// Application outputs: name and the edge they drain.
    pub outputs: Vec<(String, EdgeId)>,
}

impl<X: Transport> fmt::Debug for Pipeline<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("nodes", &self.nodes)
            .field("edges", &self.edges)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl<X: Transport> Pipeline<X> {
    /// The live controls of the pipeline's replicated stages, in pipeline order.
    pub fn replica_controls(&self) -> Vec<crate::ReplicaControl> {
        self.nodes
            .iter()
            .filter_map(|n| n.node.replica_control())
            .collect()
    }

    /// Stage names in topological order.
    pub fn stage_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// Index of the node named `name`.
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }
}
