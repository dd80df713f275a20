//! The node of a synchronous [`Stage`].

use std::any::Any;
use std::panic::AssertUnwindSafe;

use super::catch_unwind;
use super::{Common, InSlot, OutSlot};
use crate::exec::{Activation, BindError, DropReason, ErasedNode, Transport};
use crate::{Burst, Failures, Outbox, Stage};

/// Wraps a synchronous [`Stage`].
pub(crate) struct StageNode<S: Stage, X: Transport> {
    common: Common,
    stage: S,
    input: InSlot<S::In, X>,
    output: OutSlot<S::Out, X>,
    errors: Vec<S::Error>,
    flushed: bool,
}

impl<S: Stage, X: Transport> StageNode<S, X> {
    pub(crate) fn new(name: String, stage: S) -> Self {
        Self {
            common: Common::new(name),
            stage,
            input: InSlot::new(),
            output: OutSlot::new(),
            errors: Vec::new(),
            flushed: false,
        }
    }

    /// No input waiting: give a stage with timers its turn ([`Stage::on_idle`]).
    #[inline]
    fn idle(&mut self) -> Activation {
        let stage = &mut self.stage;
        let out = &mut self.output.buf;
        let wait = match catch_unwind(AssertUnwindSafe(|| stage.on_idle(&mut Outbox::new(out)))) {
            Ok(wait) => wait,
            Err(payload) => {
                let policy = self.stage.error_policy();
                if let Some(failure) = self.common.settle_panic_losing(policy, &*payload, 0) {
                    return Activation::Failed(failure);
                }
                None
            }
        };
        let emitted = self.output.buf.len();
        if emitted > 0 {
            self.common.observer.burst(0, emitted, None);
            self.output.flush();
            return Activation::Progress;
        }
        match wait {
            Some(wait) => Activation::Throttled(wait),
            None => Activation::Idle,
        }
    }

    fn finish(&mut self) -> Activation {
        if !self.flushed {
            self.flushed = true;
            let policy = self.stage.error_policy();
            let stage = &mut self.stage;
            let out = &mut self.output.buf;
            match catch_unwind(AssertUnwindSafe(|| stage.flush(&mut Outbox::new(out)))) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    self.errors.push(error);
                    if let Some(failure) = self.common.settle(policy, &mut self.errors) {
                        return Activation::Failed(failure);
                    }
                }
                Err(payload) => {
                    if let Some(failure) = self.common.settle_panic_losing(policy, &*payload, 0) {
                        return Activation::Failed(failure);
                    }
                }
            }
        }
        if !self.output.flush() {
            return Activation::Blocked;
        }
        self.output.close();
        Activation::Finished
    }
}

impl<S: Stage, X: Transport> ErasedNode<X> for StageNode<S, X> {
    sync_node_methods!();
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

    #[inline]
    fn activate(&mut self) -> Activation {
        if !self.output.flush() {
            return Activation::Blocked;
        }
        self.input.fill(self.common.burst);
        if self.input.buf.is_empty() {
            if self.input.finished() {
                return self.finish();
            }
            return self.idle();
        }
        let before = self.input.buf.len();
        let timer = self.common.start_timer(before);
        let policy = self.stage.error_policy();
        let stage = &mut self.stage;
        let (inbuf, outbuf, errors) = (&mut self.input.buf, &mut self.output.buf, &mut self.errors);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            stage.process_burst(
                &mut Burst::new(inbuf),
                &mut Outbox::new(outbuf),
                &mut Failures::new(errors),
            )
        }));
        let nanos = timer.map(|t| t.elapsed().as_nanos() as u64);
        let taken = before - self.input.buf.len();
        self.common
            .observer
            .burst(taken, self.output.buf.len(), nanos);
        if let Err(payload) = outcome {
            if let Some(failure) = self.common.settle_panic(policy, &*payload) {
                return Activation::Failed(failure);
            }
        }
        if let Some(failure) = self.common.settle(policy, &mut self.errors) {
            return Activation::Failed(failure);
        }
        self.output.flush();
        if taken == 0 {
            // Nothing taken: the stage is throttled. Without a hint, retry soon rather
            // than spin on a stage that declines its input.
            let wait = self
                .stage
                .backoff()
                .unwrap_or(std::time::Duration::from_millis(1));
            return Activation::Throttled(wait);
        }
        Activation::Progress
    }

    fn abandon(&mut self) -> usize {
        let held = self.input.discard() + self.output.buf.len();
        self.output.buf.clear();
        if held > 0 {
            self.common.observer.dropped(DropReason::Aborted, held);
        }
        held
    }
}
