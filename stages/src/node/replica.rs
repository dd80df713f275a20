//! The split and reorder nodes around a replicated stage.

use std::any::Any;
use std::collections::VecDeque;

use std::panic::AssertUnwindSafe;

use super::{catch_unwind, Common, InSlot, OutSlot};
use crate::exec::{Activation, BindError, DropReason, ErasedNode, Transport};
use crate::replica::{Emitted, KeyFn, Numbered, Position, ReplicaControl, Settled, Spreader};
use crate::ErrorPolicy;

/// How the split wraps an item for its replica: numbered (ordered) or as it is.
pub(crate) trait Envelope<T>: Send + 'static {
    type Out: Send + 'static;
    fn wrap(seq: u64, item: T) -> Self::Out;
}

/// Ordered replicas: items carry their number to the reorder stage.
pub(crate) struct Numbering;
impl<T: Send + 'static> Envelope<T> for Numbering {
    type Out = Numbered<T>;
    #[inline]
    fn wrap(seq: u64, item: T) -> Numbered<T> {
        Numbered { seq, item }
    }
}

/// Unordered replicas: items go as they are.
pub(crate) struct Bare;
impl<T: Send + 'static> Envelope<T> for Bare {
    type Out = T;
    #[inline]
    fn wrap(_seq: u64, item: T) -> T {
        item
    }
}

/// Spreads one stream over the active replicas of a stage.
pub(crate) struct SplitNode<T: Send + 'static, E: Envelope<T>, X: Transport> {
    common: Common,
    control: ReplicaControl,
    key: Option<KeyFn<T>>,
    /// Strict round robin (ordered): a full replica holds the split back, which bounds
    /// how far the others can run ahead of it (and so the reorder buffer).
    strict: bool,
    input: InSlot<T, X>,
    outputs: Vec<OutSlot<E::Out, X>>,
    spreader: Spreader,
    /// Per replica, during a burst: items in its edge plus those given to it (for a
    /// replica sharing the split's worker, or of unknown depth: `usize::MAX`).
    depth: Vec<usize>,
}

impl<T: Send + 'static, E: Envelope<T>, X: Transport> SplitNode<T, E, X> {
    pub(crate) fn new(
        name: String,
        control: ReplicaControl,
        key: Option<KeyFn<T>>,
        strict: bool,
    ) -> Self {
        let outputs = (0..control.max()).map(|_| OutSlot::new()).collect();
        Self {
            common: Common::new(name),
            control,
            key,
            strict,
            input: InSlot::new(),
            outputs,
            spreader: Spreader::new(strict),
            depth: Vec::new(),
        }
    }

    /// Flushes every replica's pending items; the number still holding some.
    fn flush_all(&mut self) -> usize {
        let mut held = 0;
        for out in &mut self.outputs {
            held += usize::from(!out.flush());
        }
        held
    }
}

impl<T: Send + 'static, E: Envelope<T>, X: Transport> ErasedNode<X> for SplitNode<T, E, X> {
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
    fn replica_control(&self) -> Option<ReplicaControl> {
        Some(self.control.clone())
    }

    fn activate(&mut self) -> Activation {
        let active = self.control.active().clamp(1, self.outputs.len());
        let held = self.flush_all();
        let keyed = self.key.is_some();
        if (self.strict || keyed) && held > 0 || held >= active {
            return Activation::Blocked;
        }
        self.input.fill(self.common.burst);
        if self.input.buf.is_empty() {
            if self.input.finished() {
                if held > 0 {
                    return Activation::Blocked;
                }
                for out in &mut self.outputs {
                    out.close();
                }
                return Activation::Finished;
            }
            return Activation::Idle;
        }
        let taken = self.input.buf.len();
        let burst = self.common.burst;
        // Unordered: the replica with the least waiting (in its edge and what this
        // burst gave it) first; the one on this worker counts a burst more, as this
        // worker also runs what feeds the split.
        let balance = !self.strict && self.key.is_none();
        self.depth.clear();
        let mut local = false;
        if balance {
            self.depth
                .extend(self.outputs.iter().map(|o| match o.queued() {
                    Some((queued, true)) => {
                        local = true;
                        queued + o.buf.len() + burst
                    }
                    Some((queued, false)) => queued + o.buf.len(),
                    None => o.buf.len(),
                }));
        }
        // Work is not handed out early: with every replica two bursts deep, the rest
        // waits here (and upstream), to go to whichever replica drains first. Only
        // with a replica on this worker, which has work then and runs next (with
        // none here, the edges' own capacity holds the split back and wakes it).
        let cap = 2 * burst;
        let hold_back = balance && local;
        let mut unplaced = 0;
        let mut held_back = false;
        while !self.input.buf.is_empty() {
            if hold_back && self.depth.iter().take(active).all(|&d| d >= cap) {
                held_back = true;
                break;
            }
            let item = self.input.buf.pop_front().expect("not empty");
            let key = match self.key.as_mut() {
                None => None,
                // A key function that panics on an item (a malformed record) costs
                // that item, counted as a panic, not the worker.
                Some(key) => match catch_unwind(AssertUnwindSafe(|| key(&item))) {
                    Ok(k) => Some(k),
                    Err(payload) => {
                        unplaced += 1;
                        if let Some(failure) = self
                            .common
                            .settle_panic(ErrorPolicy::DropAndCount, &*payload)
                        {
                            return Activation::Failed(failure);
                        }
                        continue;
                    }
                },
            };
            let outputs = &self.outputs;
            let depth = &self.depth;
            let (replica, seq) = if balance {
                self.spreader.pick_shortest(
                    active,
                    key,
                    |r| outputs[r].buf.len() >= burst,
                    |r| depth[r],
                )
            } else {
                self.spreader
                    .pick(active, key, |r| outputs[r].buf.len() >= burst)
            };
            if let Some(d) = self.depth.get_mut(replica) {
                *d = d.saturating_add(1);
            }
            self.outputs[replica].buf.push_back(E::wrap(seq, item));
        }
        let sent = taken - self.input.buf.len();
        self.common.observer.burst(sent, sent - unplaced, None);
        self.flush_all();
        if sent == 0 {
            // Held back for a replica on this worker: it runs next and the split is
            // activated after it. If that replica has moved away meanwhile (a live
            // move), nothing would wake the split: look again shortly.
            if held_back {
                return Activation::Throttled(HOLD_BACK_RECHECK);
            }
            return Activation::Blocked;
        }
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

/// How soon a split that held work back for its local replica looks again.
const HOLD_BACK_RECHECK: std::time::Duration = std::time::Duration::from_micros(200);

/// Puts the outputs of an ordered replicated stage back in input order.
pub(crate) struct ReorderNode<T: Send + 'static, X: Transport> {
    common: Common,
    input: InSlot<Settled<T>, X>,
    output: OutSlot<T, X>,
    /// Outputs of inputs `next..`, by `seq - next`; `None` until that input settled.
    waiting: VecDeque<Option<Emitted<T>>>,
    next: u64,
    /// What replicas emitted when their input ended (after every numbered item).
    tail: VecDeque<T>,
}

impl<T: Send + 'static, X: Transport> ReorderNode<T, X> {
    pub(crate) fn new(name: String) -> Self {
        Self {
            common: Common::new(name),
            input: InSlot::new(),
            output: OutSlot::new(),
            waiting: VecDeque::new(),
            next: 0,
            tail: VecDeque::new(),
        }
    }

    fn release(&mut self) -> usize {
        let mut emitted = 0;
        while let Some(Some(_)) = self.waiting.front() {
            let outputs = self.waiting.pop_front().flatten().expect("checked above");
            self.next += 1;
            emitted += outputs.move_to(&mut self.output.buf);
        }
        emitted
    }
}

impl<T: Send + 'static, X: Transport> ErasedNode<X> for ReorderNode<T, X> {
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

    fn activate(&mut self) -> Activation {
        if !self.output.flush() {
            return Activation::Blocked;
        }
        self.input.fill(self.common.burst);
        if self.input.buf.is_empty() {
            if self.input.finished() {
                // Every number settled unless the pipeline was aborted; emit what is
                // left in order either way, then the replicas' end-of-input outputs.
                while let Some(slot) = self.waiting.pop_front() {
                    if let Some(outputs) = slot {
                        outputs.move_to(&mut self.output.buf);
                    }
                }
                self.output.buf.append(&mut self.tail);
                if !self.output.flush() {
                    return Activation::Blocked;
                }
                self.output.close();
                return Activation::Finished;
            }
            return Activation::Idle;
        }
        let taken = self.input.buf.len();
        // Timer outputs of inputs already released go out at once.
        let mut released = 0;
        while let Some(Settled { at, outputs }) = self.input.buf.pop_front() {
            match at {
                Position::Of(seq) => {
                    let offset = (seq - self.next) as usize;
                    if self.waiting.len() <= offset {
                        self.waiting.resize_with(offset + 1, || None);
                    }
                    self.waiting[offset] = Some(outputs);
                }
                // The replica settled `seq` before (its outputs come down the same
                // ring first): waiting, or already released.
                Position::After(Some(seq))
                    if seq >= self.next
                        && matches!(
                            self.waiting.get((seq - self.next) as usize),
                            Some(Some(_))
                        ) =>
                {
                    if let Some(Some(held)) = self.waiting.get_mut((seq - self.next) as usize) {
                        held.append(outputs);
                    }
                }
                Position::After(_) => released += outputs.move_to(&mut self.output.buf),
                Position::End => {
                    outputs.move_to(&mut self.tail);
                }
            }
        }
        let emitted = released + self.release();
        self.common.observer.burst(taken, emitted, None);
        self.output.flush();
        Activation::Progress
    }

    fn abandon(&mut self) -> usize {
        let mut held = self.input.discard() + self.output.buf.len() + self.tail.len();
        held += self.waiting.iter().filter(|s| s.is_some()).count();
        self.output.buf.clear();
        self.tail.clear();
        self.waiting.clear();
        if held > 0 {
            self.common.observer.dropped(DropReason::Aborted, held);
        }
        held
    }
}
