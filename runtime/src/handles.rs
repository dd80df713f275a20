//! The application's ends of a running pipeline: [`Input`] to send, [`Output`] to
//! receive. Both block (or await) on backpressure instead of dropping.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::{Event, Listener};
use pipewright_stages::exec::InPort;

use crate::transport::{RingReceiver, RingSender};

/// Why a send did not happen; the item is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError<T> {
    /// The pipeline's input is closed (drained or shut down).
    #[error("the pipeline input is closed")]
    Closed(T),
}

/// Why a non-blocking send did not happen; the item is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// The input ring is full: retry later or use [`Input::send`] to wait.
    #[error("the pipeline input is full")]
    Full(T),
    /// The pipeline's input is closed.
    #[error("the pipeline input is closed")]
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The item that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(t) | TrySendError::Closed(t) => t,
        }
    }
}

/// Sends items into a running pipeline. Cloneable: every clone is one more producer
/// on the input's MPSC ring.
#[derive(Debug)]
pub struct Input<T> {
    sender: RingSender<T>,
    space: Arc<Event>,
    one: VecDeque<T>,
}

impl<T: Send + 'static> Input<T> {
    pub(crate) fn new(sender: RingSender<T>, space: Arc<Event>) -> Self {
        Self {
            sender,
            space,
            one: VecDeque::with_capacity(1),
        }
    }

    /// Sends one item without waiting.
    pub fn try_send(&mut self, item: T) -> Result<(), TrySendError<T>> {
        let Err(item) = self.sender.push_one(item, &mut self.one) else {
            return Ok(());
        };
        if self.sender.is_closed() {
            Err(TrySendError::Closed(item))
        } else {
            Err(TrySendError::Full(item))
        }
    }

    /// Sends one item, waiting (blocking the thread) while the input is full.
    pub fn send(&mut self, item: T) -> Result<(), SendError<T>> {
        self.one.push_back(item);
        let result = self.send_buffered(None);
        result.map_err(|()| SendError::Closed(self.one.pop_front().expect("item not taken")))
    }

    /// Sends every item of `items` in order, waiting while the input is full.
    /// On `Err`, the items not sent are still in `items`.
    pub fn send_burst(&mut self, items: &mut VecDeque<T>) -> Result<(), SendError<()>> {
        std::mem::swap(&mut self.one, items);
        let result = self.send_buffered(None);
        std::mem::swap(&mut self.one, items);
        result.map_err(|()| SendError::Closed(()))
    }

    fn send_buffered(&mut self, deadline: Option<Instant>) -> Result<(), ()> {
        loop {
            self.sender.push_some(&mut self.one);
            if self.one.is_empty() {
                return Ok(());
            }
            if self.sender.is_closed() {
                return Err(());
            }
            let listener = self.space.listen();
            self.sender.arm();
            self.sender.push_some(&mut self.one);
            if self.one.is_empty() {
                return Ok(());
            }
            if self.sender.is_closed() {
                return Err(());
            }
            match deadline {
                Some(d) => {
                    if listener.wait_deadline(d).is_none() && Instant::now() >= d {
                        return Err(());
                    }
                }
                None => listener.wait(),
            }
        }
    }

    /// Sends one item, awaiting while the input is full.
    ///
    /// Cancel-safe: if the future is dropped before the item went in, the item is
    /// dropped with it, and never sent by a later call.
    pub async fn send_async(&mut self, item: T) -> Result<(), SendError<T>> {
        let Self { sender, space, one } = self;
        let pending = Unsent(one);
        pending.0.push_back(item);
        loop {
            sender.push_some(pending.0);
            if pending.0.is_empty() {
                return Ok(());
            }
            if sender.is_closed() {
                break;
            }
            let listener = space.listen();
            sender.arm();
            sender.push_some(pending.0);
            if pending.0.is_empty() {
                return Ok(());
            }
            if sender.is_closed() {
                break;
            }
            listener.await;
        }
        Err(SendError::Closed(
            pending.0.pop_front().expect("item not taken"),
        ))
    }

    /// True once the input no longer accepts items.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Another producer handle, or `None` once the input is closed.
    pub fn try_clone(&self) -> Option<Self> {
        self.sender
            .try_clone()
            .map(|sender| Self::new(sender, self.space.clone()))
    }
}

/// The item of a `send_async` in progress: dropped with the future if it is cancelled
/// before the item went in (left in the buffer, a later send would send it).
struct Unsent<'a, T>(&'a mut VecDeque<T>);

impl<T> Drop for Unsent<'_, T> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

impl<T: Send + 'static> Clone for Input<T> {
    /// # Panics
    /// If the input is already closed; use [`Input::try_clone`] to check.
    fn clone(&self) -> Self {
        self.try_clone()
            .expect("cloning a closed pipeline input; use try_clone")
    }
}

/// Receives items from a running pipeline's output.
#[derive(Debug)]
pub struct Output<T> {
    receiver: RingReceiver<T>,
    ready: Arc<Event>,
    buf: VecDeque<T>,
}

/// Items taken from an output ring per pull.
const OUTPUT_BURST: usize = 256;

impl<T: Send + 'static> Output<T> {
    pub(crate) fn new(receiver: RingReceiver<T>, ready: Arc<Event>) -> Self {
        Self {
            receiver,
            ready,
            buf: VecDeque::new(),
        }
    }

    /// Takes an item if one is ready.
    pub fn try_recv(&mut self) -> Option<T> {
        if self.buf.is_empty() {
            self.receiver.pull(&mut self.buf, OUTPUT_BURST);
        }
        self.buf.pop_front()
    }

    /// Waits (blocking the thread) for the next item; `None` once the output has
    /// ended (every producing stage finished) and is empty.
    pub fn recv(&mut self) -> Option<T> {
        self.recv_deadline(None).ok().flatten()
    }

    /// Like [`recv`](Output::recv) but gives up after `timeout` with `Err(())`.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<T>, ()> {
        self.recv_deadline(Some(Instant::now() + timeout))
    }

    fn recv_deadline(&mut self, deadline: Option<Instant>) -> Result<Option<T>, ()> {
        loop {
            if let Some(item) = self.try_recv() {
                return Ok(Some(item));
            }
            if self.receiver.is_finished() {
                return Ok(None);
            }
            let listener = self.ready.listen();
            if let Some(item) = self.try_recv() {
                return Ok(Some(item));
            }
            if self.receiver.is_finished() {
                return Ok(None);
            }
            match deadline {
                Some(d) => {
                    if listener.wait_deadline(d).is_none() && Instant::now() >= d {
                        return Err(());
                    }
                }
                None => listener.wait(),
            }
        }
    }

    /// Awaits the next item; `None` once the output has ended and is empty.
    pub async fn recv_async(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if self.receiver.is_finished() {
                return None;
            }
            let listener = self.ready.listen();
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if self.receiver.is_finished() {
                return None;
            }
            listener.await;
        }
    }

    /// Moves every item ready now into `into`; returns how many.
    pub fn drain_ready(&mut self, into: &mut Vec<T>) -> usize {
        let before = into.len();
        into.extend(self.buf.drain(..));
        while self.receiver.pull(&mut self.buf, OUTPUT_BURST) > 0 {
            into.extend(self.buf.drain(..));
        }
        into.len() - before
    }

    /// Receives until the output ends; returns everything.
    pub fn collect(mut self) -> Vec<T> {
        let mut all = Vec::new();
        while let Some(item) = self.recv() {
            all.push(item);
        }
        all
    }

    /// True once every producing stage finished and nothing is left.
    pub fn is_finished(&self) -> bool {
        self.buf.is_empty() && self.receiver.is_finished()
    }
}

impl<T: Send + 'static> Iterator for Output<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.recv()
    }
}
