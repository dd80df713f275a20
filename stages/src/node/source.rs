//! The node of a [`Source`].

use std::any::Any;
use std::panic::AssertUnwindSafe;

use super::catch_unwind;
use super::{Common, OutSlot};
use crate::exec::{Activation, BindError, DropReason, ErasedNode, StopFlag, Transport};
use crate::{ErrorPolicy, Outbox, Source, SourceState};

/// Wraps a [`Source`].
pub(crate) struct SourceNode<S: Source, X: Transport> {
    common: Common,
    source: S,
    output: OutSlot<S::Out, X>,
    exhausted: bool,
    stop: Option<StopFlag>,
}

impl<S: Source, X: Transport> SourceNode<S, X> {
    pub(crate) fn new(name: String, source: S) -> Self {
        Self {
            common: Common::new(name),
            source,
            output: OutSlot::new(),
            exhausted: false,
            stop: None,
        }
    }
}

impl<S: Source, X: Transport> ErasedNode<X> for SourceNode<S, X> {
    sync_node_methods!();
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

    #[inline]
    fn activate(&mut self) -> Activation {
        if !self.output.flush() {
            return Activation::Blocked;
        }
        if self.exhausted || self.stop.as_ref().is_some_and(StopFlag::is_raised) {
            // Stopped from outside: pull no more; what was emitted has been flushed.
            self.exhausted = true;
            self.output.close();
            return Activation::Finished;
        }
        let timer = self.common.start_timer(self.common.burst);
        let source = &mut self.source;
        let (out, burst) = (&mut self.output.buf, self.common.burst);
        let state = match catch_unwind(AssertUnwindSafe(|| {
            source.pull(&mut Outbox::new(out), burst)
        })) {
            Ok(state) => state,
            Err(payload) => {
                // A source that panics cannot be trusted to resume: end it.
                let failure =
                    self.common
                        .settle_panic_losing(ErrorPolicy::FailPipeline, &*payload, 0);
                return Activation::Failed(failure.expect("fail policy always reports"));
            }
        };
        let nanos = timer.map(|t| t.elapsed().as_nanos() as u64);
        let emitted = self.output.buf.len();
        if emitted > 0 {
            self.common.observer.burst(0, emitted, nanos);
        }
        self.output.flush();
        match state {
            SourceState::Exhausted | SourceState::Failed(_) => {
                if let SourceState::Failed(error) = &state {
                    self.common.observer.source_failed(error);
                }
                self.exhausted = true;
                if self.output.flush() {
                    self.output.close();
                    Activation::Finished
                } else {
                    Activation::Blocked
                }
            }
            _ if emitted > 0 => Activation::Progress,
            SourceState::Ready => Activation::Progress,
            SourceState::Idle(Some(wait)) => Activation::Throttled(wait),
            SourceState::Idle(None) => Activation::Idle,
        }
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
