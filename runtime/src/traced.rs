//! Spans per stage activation (feature `tracing-spans`): each node is wrapped so its
//! activations run inside a `trace`-level span named `activation` with the stage's
//! name, and its outcome recorded. Without the feature nothing is wrapped.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use pipewright_stages::exec::{
    Activation, BindError, ErasedNode, NodeKind, Observer, StopFlag, TaskContext,
};
use tracing::Instrument;

use crate::transport::RingTransport;

/// A node whose activations are traced.
pub(crate) struct Traced {
    name: String,
    inner: Box<dyn ErasedNode<RingTransport>>,
}

impl Traced {
    pub(crate) fn wrap(
        name: &str,
        inner: Box<dyn ErasedNode<RingTransport>>,
    ) -> Box<dyn ErasedNode<RingTransport>> {
        Box::new(Self {
            name: name.to_string(),
            inner,
        })
    }
}

fn outcome(activation: &Activation) -> &'static str {
    match activation {
        Activation::Progress => "progress",
        Activation::Idle => "idle",
        Activation::Blocked => "blocked",
        Activation::Throttled(_) => "throttled",
        Activation::Finished => "finished",
        Activation::Failed(_) => "failed",
    }
}

impl ErasedNode<RingTransport> for Traced {
    fn kind(&self) -> NodeKind {
        self.inner.kind()
    }
    fn outputs(&self) -> usize {
        self.inner.outputs()
    }
    fn has_input(&self) -> bool {
        self.inner.has_input()
    }
    fn bind_input(&mut self, port: Box<dyn Any + Send>) -> Result<(), BindError> {
        self.inner.bind_input(port)
    }
    fn bind_output(&mut self, index: usize, port: Box<dyn Any + Send>) -> Result<(), BindError> {
        self.inner.bind_output(index, port)
    }
    fn bind_observer(&mut self, observer: Box<dyn Observer>) {
        self.inner.bind_observer(observer)
    }
    fn set_burst(&mut self, burst: usize) {
        self.inner.set_burst(burst)
    }
    fn burst(&self) -> usize {
        self.inner.burst()
    }
    fn activate(&mut self) -> Activation {
        let span = tracing::trace_span!(
            target: "pipewright",
            "activation",
            stage = %self.name,
            burst = self.inner.burst(),
            outcome = tracing::field::Empty
        );
        let _entered = span.enter();
        let activation = self.inner.activate();
        span.record("outcome", outcome(&activation));
        activation
    }
    fn into_task(
        self: Box<Self>,
        cx: Box<dyn TaskContext>,
    ) -> Pin<Box<dyn Future<Output = Activation>>> {
        // An async stage is one long-lived task: its span is entered on every poll.
        let span = tracing::trace_span!(target: "pipewright", "task", stage = %self.name);
        Box::pin(self.inner.into_task(cx).instrument(span))
    }
    fn abandon(&mut self) -> usize {
        self.inner.abandon()
    }
    fn replica_control(&self) -> Option<pipewright_stages::ReplicaControl> {
        self.inner.replica_control()
    }
    fn bind_stop(&mut self, stop: StopFlag) {
        self.inner.bind_stop(stop)
    }
}
