//! Routers: one input, several typed outputs.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use super::catch_unwind;
use super::{Common, InSlot, OutSlot};
use crate::exec::{Activation, BindError, DropReason, ErasedNode, Transport};
use crate::ErrorPolicy;

/// Splits one stream over several outputs of the same type by a key function.
pub(crate) struct RouterNode<T: Send + 'static, R, X: Transport> {
    common: Common,
    route: R,
    input: InSlot<T, X>,
    outputs: Vec<OutSlot<T, X>>,
}

impl<T: Send + 'static, R, X: Transport> RouterNode<T, R, X>
where
    R: FnMut(&T) -> usize + Send + 'static,
{
    pub(crate) fn new(name: String, route: R, outputs: usize) -> Self {
        Self {
            common: Common::new(name),
            route,
            input: InSlot::new(),
            outputs: (0..outputs).map(|_| OutSlot::new()).collect(),
        }
    }

    fn flush_all(&mut self) -> bool {
        let mut clear = true;
        for out in &mut self.outputs {
            clear &= out.flush();
        }
        clear
    }
}

impl<T: Send + 'static, R, X: Transport> ErasedNode<X> for RouterNode<T, R, X>
where
    R: FnMut(&T) -> usize + Send + 'static,
{
    sync_node_methods!();
    fn outputs(&self) -> usize {
        self.outputs.len()
    }
    fn has_input(&self) -> bool {
        true
    }
    fn bind_input(&mut self, port: Box<dyn Any + Send>) -> Result<(), BindError> {
        self.input.bind(&self.common.name, port)
    }
    fn bind_output(&mut self, index: usize, port: Box<dyn Any + Send>) -> Result<(), BindError> {
        let name = self.common.name.clone();
        match self.outputs.get_mut(index) {
            Some(slot) => slot.bind(&name, index, port),
            None => Err(BindError::NoSuchPort {
                node: name,
                port: index,
            }),
        }
    }
    common_node_methods!();

    fn activate(&mut self) -> Activation {
        // One blocked route holds back the router: keeping per-route order and memory
        // bounded matters more than letting the other routes run ahead.
        if !self.flush_all() {
            return Activation::Blocked;
        }
        self.input.fill(self.common.burst);
        if self.input.buf.is_empty() {
            if self.input.finished() {
                for out in &mut self.outputs {
                    out.close();
                }
                return Activation::Finished;
            }
            return Activation::Idle;
        }
        let timer = self.common.start_timer(self.input.buf.len());
        let taken = self.input.buf.len();
        let mut unrouted = 0;
        let route = &mut self.route;
        let outputs = &mut self.outputs;
        let inbuf = &mut self.input.buf;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            while let Some(item) = inbuf.pop_front() {
                match outputs.get_mut(route(&item)) {
                    Some(out) => out.buf.push_back(item),
                    None => unrouted += 1,
                }
            }
        }));
        let nanos = timer.map(|t| t.elapsed().as_nanos() as u64);
        let taken = taken - self.input.buf.len();
        self.common.observer.burst(taken, taken - unrouted, nanos);
        if unrouted > 0 {
            self.common.observer.dropped(DropReason::Unrouted, unrouted);
        }
        if let Err(payload) = outcome {
            if let Some(failure) = self
                .common
                .settle_panic(ErrorPolicy::DropAndCount, &*payload)
            {
                return Activation::Failed(failure);
            }
        }
        self.flush_all();
        Activation::Progress
    }

    fn abandon(&mut self) -> usize {
        let mut held = self.input.discard();
        for out in &mut self.outputs {
            held += out.buf.len();
            out.buf.clear();
        }
        if held > 0 {
            self.common.observer.dropped(DropReason::Aborted, held);
        }
        held
    }
}

/// Splits a stream of `Result<T, E>` into its successes and its failures.
pub(crate) struct SplitNode<T: Send + 'static, E: Send + 'static, X: Transport> {
    common: Common,
    input: InSlot<Result<T, E>, X>,
    ok: OutSlot<T, X>,
    err: OutSlot<E, X>,
}

impl<T: Send + 'static, E: Send + 'static, X: Transport> SplitNode<T, E, X> {
    pub(crate) fn new(name: String) -> Self {
        Self {
            common: Common::new(name),
            input: InSlot::new(),
            ok: OutSlot::new(),
            err: OutSlot::new(),
        }
    }
}

impl<T: Send + 'static, E: Send + 'static, X: Transport> ErasedNode<X> for SplitNode<T, E, X> {
    sync_node_methods!();
    fn outputs(&self) -> usize {
        2
    }
    fn has_input(&self) -> bool {
        true
    }
    fn bind_input(&mut self, port: Box<dyn Any + Send>) -> Result<(), BindError> {
        self.input.bind(&self.common.name, port)
    }
    fn bind_output(&mut self, index: usize, port: Box<dyn Any + Send>) -> Result<(), BindError> {
        match index {
            0 => self.ok.bind(&self.common.name, 0, port),
            1 => self.err.bind(&self.common.name, 1, port),
            _ => Err(BindError::NoSuchPort {
                node: self.common.name.clone(),
                port: index,
            }),
        }
    }
    common_node_methods!();

    fn activate(&mut self) -> Activation {
        let ok_clear = self.ok.flush();
        if !(self.err.flush() && ok_clear) {
            return Activation::Blocked;
        }
        self.input.fill(self.common.burst);
        if self.input.buf.is_empty() {
            if self.input.finished() {
                self.ok.close();
                self.err.close();
                return Activation::Finished;
            }
            return Activation::Idle;
        }
        let taken = self.input.buf.len();
        for item in self.input.buf.drain(..) {
            match item {
                Ok(v) => self.ok.buf.push_back(v),
                Err(e) => self.err.buf.push_back(e),
            }
        }
        self.common.observer.burst(taken, taken, None);
        self.ok.flush();
        self.err.flush();
        Activation::Progress
    }

    fn abandon(&mut self) -> usize {
        let held = self.input.discard() + self.ok.buf.len() + self.err.buf.len();
        self.ok.buf.clear();
        self.err.buf.clear();
        if held > 0 {
            self.common.observer.dropped(DropReason::Aborted, held);
        }
        held
    }
}
