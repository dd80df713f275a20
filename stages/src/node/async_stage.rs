//! The node of an [`AsyncStage`], run as one long-lived task.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use super::{Common, InSlot, OutSlot};
use crate::exec::{Activation, BindError, DropReason, ErasedNode, Transport};
use std::future::Future;
use std::pin::Pin;

use futures::FutureExt;

use crate::exec::{NodeKind, TaskContext, TASK_TURN};
use crate::{AsyncStage, Burst, Failures, Outbox};

/// Wraps an [`AsyncStage`]; runs as one task for the pipeline's lifetime.
pub(crate) struct AsyncStageNode<S: AsyncStage, X: Transport> {
    common: Common,
    stage: S,
    input: InSlot<S::In, X>,
    output: OutSlot<S::Out, X>,
}

impl<S: AsyncStage, X: Transport> AsyncStageNode<S, X> {
    pub(crate) fn new(name: String, stage: S) -> Self {
        Self {
            common: Common::new(name),
            stage,
            input: InSlot::new(),
            output: OutSlot::new(),
        }
    }
}

impl<S: AsyncStage, X: Transport> ErasedNode<X> for AsyncStageNode<S, X> {
    fn kind(&self) -> NodeKind {
        NodeKind::Async
    }
    fn outputs(&self) -> usize {
        1
    }
    fn has_input(&self) -> bool {
        true
    }
    fn bind_input(&mut self, port: Box<dyn Any + Send>) -> Result<(), BindError> {
        self.input.bind(&self.common.name, port)
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
                .failure("an async stage must run as a task".into()),
        )
    }

    fn into_task(
        self: Box<Self>,
        cx: Box<dyn TaskContext>,
    ) -> Pin<Box<dyn Future<Output = Activation>>> {
        let mut node = *self;
        Box::pin(async move {
            let mut errors: Vec<S::Error> = Vec::new();
            let mut turn = std::time::Instant::now();
            loop {
                // The task may run without tokio's cooperative budget (a budget of 128
                // polls, shared by thousands of calls in flight, starved the stage:
                // 44k calls/s with 8192 in flight), so it yields on its own clock.
                if turn.elapsed() >= TASK_TURN {
                    cx.yield_now().await;
                    turn = std::time::Instant::now();
                }
                if cx.aborted() {
                    cx.quiesce().await;
                    node.abandon();
                    return Activation::Idle;
                }
                if !node.output.flush() {
                    cx.park(None).await;
                    continue;
                }
                node.input.fill(node.common.burst);
                if node.input.buf.is_empty() {
                    if node.stage.pending() > 0 {
                        // Calls in flight: emit their results as they complete, and
                        // stop waiting for them as soon as new input arrives.
                        let before = node.output.buf.len();
                        let panicked = {
                            let mut outbox = Outbox::new(&mut node.output.buf);
                            let mut failures = Failures::new(&mut errors);
                            // A call that panics while it completes here is caught as
                            // one in `process_burst` is: counted, under the policy.
                            let progress =
                                AssertUnwindSafe(node.stage.progress(&mut outbox, &mut failures))
                                    .catch_unwind();
                            // Parking also ends on an abort, so a hung call cannot
                            // hold up a shutdown.
                            let park = cx.park(None);
                            futures::pin_mut!(progress);
                            match futures::future::select(progress, park).await {
                                futures::future::Either::Left((Err(payload), _)) => Some(payload),
                                _ => None,
                            }
                        };
                        let emitted = node.output.buf.len() - before;
                        node.common.observer.burst(0, emitted, None);
                        let policy = node.stage.error_policy();
                        let panic = panicked.as_deref();
                        if let Some(failure) =
                            node.common.settle_outcome(policy, panic, &mut errors)
                        {
                            // The abort branch at the top of the loop waits for every stage to
                            // stop, then counts what this one holds (as for a failing sync node).
                            cx.fail(failure);
                            continue;
                        }
                        node.output.flush();
                        continue;
                    }
                    if node.input.finished() {
                        if !node.output.flush() {
                            cx.park(None).await;
                            continue;
                        }
                        node.output.close();
                        return Activation::Finished;
                    }
                    cx.park(None).await;
                    continue;
                }
                let before = node.input.buf.len();
                let timer = node.common.start_timer(before);
                let policy = node.stage.error_policy();
                let outcome = {
                    let (stage, inbuf, outbuf) =
                        (&mut node.stage, &mut node.input.buf, &mut node.output.buf);
                    let errs = &mut errors;
                    AssertUnwindSafe(async move {
                        stage
                            .process_burst(
                                &mut Burst::new(inbuf),
                                &mut Outbox::new(outbuf),
                                &mut Failures::new(errs),
                            )
                            .await
                    })
                    .catch_unwind()
                    .await
                };
                let nanos = timer.map(|t| t.elapsed().as_nanos() as u64);
                let taken = before - node.input.buf.len();
                node.common
                    .observer
                    .burst(taken, node.output.buf.len(), nanos);
                let panic = outcome.err();
                if let Some(failure) =
                    node.common
                        .settle_outcome(policy, panic.as_deref(), &mut errors)
                {
                    // See the calls-in-flight branch above.
                    cx.fail(failure);
                    continue;
                }
                node.output.flush();
            }
        })
    }

    fn abandon(&mut self) -> usize {
        // Calls still in flight are dropped with the stage: count them with the rest.
        let held = self.input.discard() + self.output.buf.len() + self.stage.pending();
        self.output.buf.clear();
        if held > 0 {
            self.common.observer.dropped(DropReason::Aborted, held);
        }
        held
    }
}
