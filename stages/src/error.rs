//! Errors of building a pipeline, of one request through it, and what to do when a
//! stage fails.

/// What the executor does when a stage reports a failed item or panics.
///
/// Set per stage with [`ErrorPolicyLayer`](crate::layer::ErrorPolicyLayer). Routing
/// failures to a typed error output is a type change rather than a policy; see
/// [`RouteErrorsLayer`](crate::layer::RouteErrorsLayer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Drop the failed item, count it (reason `error` or `panic`) and carry on. The
    /// default.
    #[default]
    DropAndCount,
    /// Stop the whole pipeline and report the failure from its `join`.
    FailPipeline,
}

/// A stage failure that stopped a pipeline (under [`ErrorPolicy::FailPipeline`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stage `{stage}` failed: {message}")]
pub struct StageFailure {
    /// Name of the stage, as given to the builder.
    pub stage: String,
    /// The stage's error or panic message.
    pub message: String,
}

/// Why a pipeline description was rejected by [`PipelineBuilder::build`](crate::PipelineBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A stage's output stream was never connected to another stage, an output or a sink.
    #[error("output {port} of stage `{stage}` is not connected: pass the stream to `then`, `route`, `sink` or `output`")]
    UnconnectedOutput {
        /// Name of the stage whose output dangles.
        stage: String,
        /// Index of the output port (0 for single-output stages).
        port: usize,
    },
    /// Two stages, inputs or outputs share a name; names key plans and metrics.
    #[error("the name `{0}` is used twice: stage, input and output names must be unique")]
    DuplicateName(String),
    /// The pipeline has no stages.
    #[error("the pipeline is empty: add at least one stage")]
    Empty,
    /// A burst size of zero would never make progress.
    #[error("stage `{0}` has burst size 0: use at least 1")]
    ZeroBurst(String),
    /// A router was declared with no outputs.
    #[error("router `{0}` has no outputs: declare at least one route")]
    NoRoutes(String),
    /// Replicas of an async stage were asked to keep input order.
    #[error("async stage `{0}` cannot keep input order across replicas (an async burst's outputs are not tied to its inputs): use `Replicas::new(n).unordered()` (keyed or not), or tag each item and reorder downstream")]
    OrderedAsyncReplicas(String),
    /// Streams of two different builders were merged.
    #[error("a stream of another PipelineBuilder was merged into this pipeline: build each pipeline from the streams of its own builder")]
    ForeignStream,
    /// An application input merged straight into a stage's output stream: draining
    /// closes inputs by closing their edge, which would also cut off the stage.
    #[error("input `{input}` is merged with the output of stage `{stage}`: pass the input through a stage of its own first (e.g. `.then(\"{input}-in\", stage::map(|x| x))`) and merge that stage's output")]
    InputMergedWithStage {
        /// The input's name.
        input: String,
        /// The stage whose output it is merged with.
        stage: String,
    },
}

/// A stage's own error for one request, kept typed for the caller.
///
/// `downcast_ref::<E>()` gives back the stage's error value (for async stages built
/// with `then_tagged_async`, whose service errors are `std::error::Error`s).
#[derive(Clone)]
pub struct StageError(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl StageError {
    /// Wraps a stage's error.
    pub fn new<E: std::error::Error + Send + Sync + 'static>(error: E) -> Self {
        Self(std::sync::Arc::new(error))
    }

    /// The stage's error as its own type, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }

    /// The error as a trait object.
    pub fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

/// Two errors are equal when they are the same value or read the same.
impl PartialEq for StageError {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for StageError {}

/// Why a request sent through a pipeline (see [`Tagged`](crate::Tagged)) got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A stage reported an error for this request.
    #[error("stage `{stage}` rejected the request: {message}")]
    Stage {
        /// Name of the stage.
        stage: String,
        /// The stage's error, rendered.
        message: String,
        /// The stage's error itself, where the stage's error type allows it (async
        /// tagged stages): `error.downcast_ref::<E>()`.
        error: Option<StageError>,
    },
    /// A stage produced no output for the request (a filter, for example).
    #[error("stage `{stage}` produced no output for the request")]
    NoOutput {
        /// Name of the stage.
        stage: String,
    },
    /// A stage produced more than one output for one request.
    #[error("stage `{stage}` produced {outputs} outputs for one request; a service stage must produce one")]
    Ambiguous {
        /// Name of the stage.
        stage: String,
        /// How many outputs it produced.
        outputs: usize,
    },
    /// The request was dropped inside the pipeline (panic, shutdown deadline, abort)
    /// before it was answered; the runtime's drop counters say where.
    #[error("the request was dropped inside the pipeline before it was answered")]
    Dropped,
    /// The pipeline no longer accepts requests (drained or shut down).
    #[error("the pipeline is closed and no longer accepts requests")]
    Closed,
}

/// Renders a panic payload for counters and failure reports.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
