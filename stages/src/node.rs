//! The executor-facing nodes that wrap stages, sources and routers.
//!
//! Each node owns the buffers its stage works on (reused across activations, so a
//! steady state allocates nothing), applies the stage's error policy, catches panics,
//! and reports one line of accounting per burst to its [`Observer`].

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::time::Instant;

use futures::FutureExt;

use crate::error::panic_message;
use crate::exec::{
    Activation, BindError, DropReason, ErasedNode, InPort, NodeKind, NoopObserver, Observer,
    OutPort, TaskContext, Transport,
};
use crate::{
    AsyncStage, Burst, ErrorPolicy, Failures, Outbox, Source, SourceState, Stage, StageFailure,
};

/// Time one burst in this many; `Instant::now` costs tens of ns, too much per burst of 1.
const TIMING_SAMPLE_MASK: u64 = 7;

pub(crate) const DEFAULT_BURST: usize = 32;

/// One output port: the sender once bound and the items not yet accepted downstream.
pub(crate) struct OutSlot<T: Send + 'static, X: Transport> {
    sender: Option<X::Sender<T>>,
    pub(crate) buf: VecDeque<T>,
    closed: bool,
}

impl<T: Send + 'static, X: Transport> OutSlot<T, X> {
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
    bursts: u64,
}

impl Common {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            burst: DEFAULT_BURST,
            observer: Box::new(NoopObserver),
            bursts: 0,
        }
    }

    #[inline]
    fn start_timer(&mut self) -> Option<Instant> {
        self.bursts = self.bursts.wrapping_add(1);
        (self.bursts & TIMING_SAMPLE_MASK == 0).then(Instant::now)
    }

    fn failure(&self, message: String) -> StageFailure {
        StageFailure {
            stage: self.name.clone(),
            message,
        }
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
        let message = panic_message(payload);
        self.observer.panicked(&message);
        self.observer.dropped(DropReason::Panic, 1);
        (policy == ErrorPolicy::FailPipeline).then(|| self.failure(format!("panicked: {message}")))
    }
}

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
                    if let Some(failure) = self.common.settle_panic(policy, &*payload) {
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
    fn kind(&self) -> NodeKind {
        NodeKind::Sync
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
    fn bind_observer(&mut self, observer: Box<dyn Observer>) {
        self.common.observer = observer;
    }
    fn set_burst(&mut self, burst: usize) {
        self.common.burst = burst.max(1);
    }
    fn burst(&self) -> usize {
        self.common.burst
    }

    #[inline]
    fn activate(&mut self) -> Activation {
        if !self.output.flush() {
            return Activation::Blocked;
        }
        self.input.fill(self.common.burst);
        if self.input.buf.is_empty() {
            return if self.input.finished() {
                self.finish()
            } else {
                Activation::Idle
            };
        }
        let before = self.input.buf.len();
        let timer = self.common.start_timer();
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

    fn into_task(
        self: Box<Self>,
        _cx: Box<dyn TaskContext>,
    ) -> Pin<Box<dyn Future<Output = Activation>>> {
        Box::pin(async {
            Activation::Failed(StageFailure {
                stage: "sync".into(),
                message: "a sync stage cannot run as a task".into(),
            })
        })
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
    fn bind_observer(&mut self, observer: Box<dyn Observer>) {
        self.common.observer = observer;
    }
    fn set_burst(&mut self, burst: usize) {
        self.common.burst = burst.max(1);
    }
    fn burst(&self) -> usize {
        self.common.burst
    }
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
                node.input.fill(node.common.burst);
                if node.input.buf.is_empty() {
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
                let timer = node.common.start_timer();
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
                if let Err(payload) = outcome {
                    if let Some(failure) = node.common.settle_panic(policy, &*payload) {
                        cx.fail(failure.clone());
                        return Activation::Failed(failure);
                    }
                }
                if let Some(failure) = node.common.settle(policy, &mut errors) {
                    cx.fail(failure.clone());
                    return Activation::Failed(failure);
                }
                node.output.flush();
            }
        })
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

/// Wraps a [`Source`].
pub(crate) struct SourceNode<S: Source, X: Transport> {
    common: Common,
    source: S,
    output: OutSlot<S::Out, X>,
    exhausted: bool,
}

impl<S: Source, X: Transport> SourceNode<S, X> {
    pub(crate) fn new(name: String, source: S) -> Self {
        Self {
            common: Common::new(name),
            source,
            output: OutSlot::new(),
            exhausted: false,
        }
    }
}

impl<S: Source, X: Transport> ErasedNode<X> for SourceNode<S, X> {
    fn kind(&self) -> NodeKind {
        NodeKind::Sync
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
    fn bind_observer(&mut self, observer: Box<dyn Observer>) {
        self.common.observer = observer;
    }
    fn set_burst(&mut self, burst: usize) {
        self.common.burst = burst.max(1);
    }
    fn burst(&self) -> usize {
        self.common.burst
    }

    #[inline]
    fn activate(&mut self) -> Activation {
        if !self.output.flush() {
            return Activation::Blocked;
        }
        if self.exhausted {
            self.output.close();
            return Activation::Finished;
        }
        let timer = self.common.start_timer();
        let source = &mut self.source;
        let (out, burst) = (&mut self.output.buf, self.common.burst);
        let state = match catch_unwind(AssertUnwindSafe(|| {
            source.pull(&mut Outbox::new(out), burst)
        })) {
            Ok(state) => state,
            Err(payload) => {
                // A source that panics cannot be trusted to resume: end it.
                let failure = self
                    .common
                    .settle_panic(ErrorPolicy::FailPipeline, &*payload);
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
            SourceState::Exhausted => {
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

    fn into_task(
        self: Box<Self>,
        _cx: Box<dyn TaskContext>,
    ) -> Pin<Box<dyn Future<Output = Activation>>> {
        Box::pin(async { Activation::Idle })
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
    fn kind(&self) -> NodeKind {
        NodeKind::Sync
    }
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
    fn bind_observer(&mut self, observer: Box<dyn Observer>) {
        self.common.observer = observer;
    }
    fn set_burst(&mut self, burst: usize) {
        self.common.burst = burst.max(1);
    }
    fn burst(&self) -> usize {
        self.common.burst
    }

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
        let timer = self.common.start_timer();
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

    fn into_task(
        self: Box<Self>,
        _cx: Box<dyn TaskContext>,
    ) -> Pin<Box<dyn Future<Output = Activation>>> {
        Box::pin(async { Activation::Idle })
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
    fn kind(&self) -> NodeKind {
        NodeKind::Sync
    }
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
    fn bind_observer(&mut self, observer: Box<dyn Observer>) {
        self.common.observer = observer;
    }
    fn set_burst(&mut self, burst: usize) {
        self.common.burst = burst.max(1);
    }
    fn burst(&self) -> usize {
        self.common.burst
    }

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

    fn into_task(
        self: Box<Self>,
        _cx: Box<dyn TaskContext>,
    ) -> Pin<Box<dyn Future<Output = Activation>>> {
        Box::pin(async { Activation::Idle })
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
