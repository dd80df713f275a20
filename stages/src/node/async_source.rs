//! The node of an [`AsyncSource`], run as one long-lived task.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};

use futures::future::{select, Either};
use futures::FutureExt;

use super::{Common, OutSlot};
use crate::exec::{
    Activation, BindError, DropReason, ErasedNode, NodeKind, StopFlag, TaskContext, Transport,
};
use crate::{AsyncSource, ErrorPolicy, Outbox, SourceState};

/// Wraps an [`AsyncSource`]; runs as one task for the pipeline's lifetime.
pub(crate) struct AsyncSourceNode<S: AsyncSource, X: Transport> {
    common: Common,
    source: S,
    output: OutSlot<S::Out, X>,
    stop: Option<StopFlag>,
}

impl<S: AsyncSource, X: Transport> AsyncSourceNode<S, X> {
    pub(crate) fn new(name: String, source: S) -> Self {
        Self {
            common: Common::new(name),
            source,
            output: OutSlot::new(),
            stop: None,
        }
    }
}

/// True once the pipeline's stop flag is raised.
fn stopped(stop: Option<&StopFlag>) -> bool {
    stop.is_some_and(StopFlag::is_raised)
}

/// Resolves once the pipeline is aborted or stopped (checked each time the node is
/// woken; a stop handle wakes every node).
async fn interrupted(cx: &dyn TaskContext, stop: Option<&StopFlag>) {
    while !cx.aborted() && !stopped(stop) {
        cx.park(None).await;
    }
}

impl<S: AsyncSource, X: Transport> ErasedNode<X> for AsyncSourceNode<S, X> {
    fn kind(&self) -> NodeKind {
        NodeKind::Async
    }
    fn outputs(&self) -> usize {
        1
    }
    fn has_input(&self) -> bool {
        false
    }
    fn bind_input(&mut self, _port: Box<dyn Any + Send>) -> Result<(), BindError> {
        Err(BindError::NoSuchPort {
            node: self.common.name.clone(),
            port: 0,
        })
    }
    fn bind_output(&mut self, index: usize, port: Box<dyn Any + Send>) -> Result<(), BindError> {
        if index != 0 {
            return Err(BindError::NoSuchPort {
                node: self.common.name.clone(),
                port: index,
            });
        }
        self.output.bind(&self.common.name, 0, port)
    }
    common_node_methods!();
    fn activate(&mut self) -> Activation {
        Activation::Failed(
            self.common
                .failure("an async source must run as a task".into()),
        )
    }

    fn into_task(
        self: Box<Self>,
        cx: Box<dyn TaskContext>,
    ) -> Pin<Box<dyn Future<Output = Activation>>> {
        let mut node = *self;
        let stop = node.stop.clone();
        Box::pin(async move {
            loop {
                if cx.aborted() {
                    cx.quiesce().await;
                    node.abandon();
                    return Activation::Idle;
                }
                if !node.output.flush() {
                    cx.park(None).await;
                    continue;
                }
                if stopped(stop.as_ref()) {
                    // Stopped from outside and everything emitted is flushed: end.
                    node.output.close();
                    return Activation::Finished;
                }
                let timer = node.common.start_timer(node.common.burst);
                let burst = node.common.burst;
                let pulled = {
                    let (source, out) = (&mut node.source, &mut node.output.buf);
                    let pull =
                        AssertUnwindSafe(
                            async move { source.pull(&mut Outbox::new(out), burst).await },
                        )
                        .catch_unwind();
                    // A source awaiting its next item (a packet, a connection) must not
                    // hold up an abort or a stop: the wait is dropped. On an abort the
                    // items already emitted stay in the output buffer and are counted
                    // as abandoned; on a stop they are counted as emitted and flow on.
                    match select(pin!(pull), pin!(interrupted(&*cx, stop.as_ref()))).await {
                        Either::Left((outcome, _)) => Some(outcome),
                        Either::Right(((), _)) => None,
                    }
                };
                let Some(outcome) = pulled else {
                    let emitted = node.output.buf.len();
                    if !cx.aborted() && emitted > 0 {
                        node.common.observer.burst(0, emitted, None);
                    }
                    continue;
                };
                let state = match outcome {
                    Ok(state) => state,
                    Err(payload) => {
                        let failure = node
                            .common
                            .settle_panic_losing(ErrorPolicy::FailPipeline, &*payload, 0)
                            .expect("fail policy always reports");
                        // The abort branch at the top of the loop waits for every stage to
                        // stop, then counts what this one holds (as for a failing sync node).
                        cx.fail(failure);
                        continue;
                    }
                };
                let nanos = timer.map(|t| t.elapsed().as_nanos() as u64);
                let emitted = node.output.buf.len();
                if emitted > 0 {
                    node.common.observer.burst(0, emitted, nanos);
                }
                node.output.flush();
                match state {
                    SourceState::Exhausted | SourceState::Failed(_) => {
                        if let SourceState::Failed(error) = &state {
                            node.common.observer.source_failed(error);
                        }
                        while !node.output.flush() {
                            if cx.aborted() {
                                break;
                            }
                            cx.park(None).await;
                        }
                        if cx.aborted() {
                            continue;
                        }
                        node.output.close();
                        return Activation::Finished;
                    }
                    SourceState::Idle(Some(wait)) if emitted == 0 => cx.park(Some(wait)).await,
                    // Reported idle without awaiting anything: let the worker's other tasks run.
                    SourceState::Idle(None) if emitted == 0 => cx.yield_now().await,
                    _ => {}
                }
            }
        })
    }

    fn bind_stop(&mut self, stop: StopFlag) {
        self.stop = Some(stop);
    }

    fn abandon(&mut self) -> usize {
        let held = self.output.buf.len();
        self.output.buf.clear();
        if held > 0 {
            self.common.observer.dropped(DropReason::Aborted, held);
        }
        held
    }
}
