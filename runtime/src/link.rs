//! Who to wake across one edge: the consumer when items arrive, the producers when
//! space frees up. Type-independent, so the runtime builds links before it knows the
//! edge's item type.

use std::sync::Arc;

use event_listener::Event;

use crate::signal::{Doorbell, Signal};

/// How a consumer or producer is woken.
#[derive(Debug, Clone)]
pub(crate) enum Waker {
    /// A worker loop or an async stage task.
    Signal(Arc<Signal>),
    /// Application threads or tasks holding an `Input`/`Output` handle.
    External(Arc<Event>),
}

impl Waker {
    #[inline]
    pub(crate) fn wake(&self) {
        match self {
            Waker::Signal(signal) => signal.notify(),
            Waker::External(event) => {
                event.notify(usize::MAX);
            }
        }
    }
}

/// The wake-up wiring of one edge.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) consumer: Waker,
    pub(crate) producers: Vec<Waker>,
    pub(crate) space: Doorbell,
}

impl Link {
    pub(crate) fn new(consumer: Waker, producers: Vec<Waker>) -> Self {
        Self {
            consumer,
            producers,
            space: Doorbell::new(),
        }
    }

    /// Items were pushed.
    #[inline]
    pub(crate) fn pushed(&self) {
        self.consumer.wake();
    }

    /// Items were popped: wake producers if one was waiting for space.
    #[inline]
    pub(crate) fn popped(&self) {
        if self.space.take() {
            for producer in &self.producers {
                producer.wake();
            }
        }
    }
}
