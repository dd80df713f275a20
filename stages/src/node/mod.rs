//! The executor-facing nodes that wrap stages, sources and routers.
//!
//! Each node owns the buffers its stage works on (reused across activations, so a
//! steady state allocates nothing), applies the stage's error policy, catches panics,
//! and reports one line of accounting per burst to its [`Observer`].

use std::any::Any;
use std::collections::VecDeque;
use std::time::Instant;

use crate::error::panic_message;
use crate::exec::{BindError, DropReason, InPort, NoopObserver, Observer, OutPort, Transport};
use crate::{ErrorPolicy, StageFailure};

/// Time one burst per this many items: `Instant::now` costs tens of ns, too much to pay
/// on every burst when bursts are small.
const TIMING_SAMPLE_ITEMS: usize = 256;

pub(crate) const DEFAULT_BURST: usize = 32;

/// Runs a stage's, source's or router's code, catching a panic so that the node can
/// apply the error policy. Under `--cfg loom` nothing is caught: a panic there is a
/// failed check of the model (loom's own, or an assertion in the user's stage) and must
/// reach `loom::model`, which reports it with the schedule that caused it.
pub(crate) fn catch_unwind<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
) -> std::thread::Result<R> {
    #[cfg(not(loom))]
    return std::panic::catch_unwind(f);
    #[cfg(loom)]
    return Ok(f());
}

/// One output port: the sender once bound and the items not yet accepted downstream.
pub(crate) struct OutSlot<T: Send + 'static, X: Transport> {
    sender: Option<X::Sender<T>>,
    pub(crate) buf: VecDeque<T>,
    closed: bool,
}

impl<T: Send + 'static, X: Transport> OutSlot<T, X> {
    /// Items waiting in the edge and whether its consumer shares this worker; `None`
    /// when unbound or the transport cannot tell.
    pub(crate) fn queued(&self) -> Option<(usize, bool)> {
        let sender = self.sender.as_ref()?;
        Some((sender.queued()?, sender.is_local()))
    }

    pub(crate) fn new() -> Self {
        Self {
            sender: None,
            buf: VecDeque::new(),
            closed: false,
        }
    }

    fn bind(
        &mut self,
        node: &str,
        port: usize,
        boxed: Box<dyn Any + Send>,
    ) -> Result<(), BindError> {
        let sender = boxed
            .downcast::<X::Sender<T>>()
            .map_err(|_| BindError::WrongType {
                node: node.to_string(),
                port,
            })?;
        self.sender = Some(*sender);
        Ok(())
    }

    /// Hands pending items downstream; true when nothing is left pending.
    #[inline]
    pub(crate) fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        match &mut self.sender {
            Some(sender) => sender.push(&mut self.buf),
            // An unbound output is a sink's: nothing downstream wants the items.
            None => self.buf.clear(),
        }
        self.buf.is_empty()
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            if let Some(sender) = &mut self.sender {
                sender.close();
            }
        }
    }
}

pub(crate) struct InSlot<T: Send + 'static, X: Transport> {
    receiver: Option<X::Receiver<T>>,
    pub(crate) buf: VecDeque<T>,
}

impl<T: Send + 'static, X: Transport> InSlot<T, X> {
    pub(crate) fn new() -> Self {
        Self {
            receiver: None,
            buf: VecDeque::new(),
        }
    }

    fn bind(&mut self, node: &str, boxed: Box<dyn Any + Send>) -> Result<(), BindError> {
        let receiver = boxed
            .downcast::<X::Receiver<T>>()
            .map_err(|_| BindError::WrongType {
                node: node.to_string(),
                port: 0,
            })?;
        self.receiver = Some(*receiver);
        Ok(())
    }

    /// Tops the burst buffer up to `max` items.
    #[inline]
    fn fill(&mut self, max: usize) {
        let have = self.buf.len();
        if have < max {
            if let Some(receiver) = &mut self.receiver {
                receiver.pull(&mut self.buf, max - have);
            }
        }
    }

    /// Drops the burst buffer and everything waiting in the edge; returns how many.
    fn discard(&mut self) -> usize {
        let mut dropped = self.buf.len();
        self.buf.clear();
        if let Some(receiver) = &mut self.receiver {
            loop {
                let n = receiver.pull(&mut self.buf, 1024);
                if n == 0 {
                    break;
                }
                dropped += n;
                self.buf.clear();
            }
        }
        dropped
    }

    fn finished(&self) -> bool {
        self.buf.is_empty() && self.receiver.as_ref().is_none_or(|r| r.is_finished())
    }
}

/// Bookkeeping shared by every node kind.
pub(crate) struct Common {
    pub(crate) name: String,
    pub(crate) burst: usize,
    pub(crate) observer: Box<dyn Observer>,
    untimed_items: usize,
}

impl Common {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            burst: DEFAULT_BURST,
            observer: Box::new(NoopObserver),
            untimed_items: 0,
        }
    }

    #[inline]
    fn start_timer(&mut self, items: usize) -> Option<Instant> {
        self.untimed_items += items;
        if self.untimed_items < TIMING_SAMPLE_ITEMS {
            return None;
        }
        self.untimed_items = 0;
        Some(Instant::now())
    }

    fn failure(&self, message: String) -> StageFailure {
        StageFailure {
            stage: self.name.clone(),
            message,
        }
    }

    /// A burst's outcome under `policy`: its panic, if it panicked, then its errors
    /// (counted either way, so that what the burst took in adds up); `Some` stops the
    /// pipeline, with the panic's failure first.
    fn settle_outcome<E: std::fmt::Display>(
        &mut self,
        policy: ErrorPolicy,
        panic: Option<&(dyn Any + Send)>,
        errors: &mut Vec<E>,
    ) -> Option<StageFailure> {
        let panicked = panic.and_then(|payload| self.settle_panic(policy, payload));
        let failed = self.settle(policy, errors);
        panicked.or(failed)
    }

    /// Applies the error policy to a burst's failures; `Some` stops the pipeline.
    fn settle<E: std::fmt::Display>(
        &mut self,
        policy: ErrorPolicy,
        errors: &mut Vec<E>,
    ) -> Option<StageFailure> {
        if errors.is_empty() {
            return None;
        }
        let count = errors.len();
        self.observer.dropped(DropReason::Error, count);
        let failure =
            (policy == ErrorPolicy::FailPipeline).then(|| self.failure(errors[0].to_string()));
        errors.clear();
        failure
    }

    /// Accounts a caught panic; `Some` stops the pipeline.
    fn settle_panic(
        &mut self,
        policy: ErrorPolicy,
        payload: &(dyn Any + Send),
    ) -> Option<StageFailure> {
        self.settle_panic_losing(policy, payload, 1)
    }

    /// A panic that cost `lost` items (0 for one in `on_idle` or `flush`, where no
    /// item is in hand).
    fn settle_panic_losing(
        &mut self,
        policy: ErrorPolicy,
        payload: &(dyn Any + Send),
        lost: usize,
    ) -> Option<StageFailure> {
        let message = panic_message(payload);
        self.observer.panicked(&message);
        if lost > 0 {
            self.observer.dropped(DropReason::Panic, lost);
        }
        (policy == ErrorPolicy::FailPipeline).then(|| self.failure(format!("panicked: {message}")))
    }
}

/// The accessors every node implements the same way (they need `self.common`).
macro_rules! common_node_methods {
    () => {
        fn bind_observer(&mut self, observer: Box<dyn crate::exec::Observer>) {
            self.common.observer = observer;
        }
        fn set_burst(&mut self, burst: usize) {
            self.common.burst = burst.max(1);
        }
        fn burst(&self) -> usize {
            self.common.burst
        }
    };
}

/// `kind` and `into_task` of nodes driven from the worker loop.
macro_rules! sync_node_methods {
    () => {
        fn kind(&self) -> crate::exec::NodeKind {
            crate::exec::NodeKind::Sync
        }
        fn into_task(
            self: Box<Self>,
            _cx: Box<dyn crate::exec::TaskContext>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::exec::Activation>>> {
            let failure = self
                .common
                .failure("a sync node cannot run as a task".into());
            Box::pin(async move { crate::exec::Activation::Failed(failure) })
        }
    };
}

mod async_source;
mod async_stage;
mod replica;
mod router;
mod source;
mod stage;

pub(crate) use async_source::AsyncSourceNode;
pub(crate) use async_stage::AsyncStageNode;
pub(crate) use replica::{Bare, Numbering, ReorderNode, SplitNode as ReplicaSplitNode};
pub(crate) use router::{RouterNode, SplitNode};
pub(crate) use source::SourceNode;
pub(crate) use stage::StageNode;
