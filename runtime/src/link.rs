//! Who to wake across one edge: the consumer when items arrive, the producers when
//! space frees up. Type-independent, so the runtime builds links before it knows the
//! edge's item type.

use std::sync::Arc;

use crossbeam_utils::CachePadded;
use event_listener::Event;

use crate::signal::{Doorbell, Signal};

/// How a consumer or producer is woken.
#[derive(Debug, Clone)]
pub(crate) enum Waker {
    /// A worker loop or an async stage task.
    Signal(Arc<Signal>),
    /// Application threads or tasks holding an `Input`/`Output` handle.
    External(Arc<Event>),
    /// Nobody: a fused edge between sync stages of one worker, whose loop runs the
    /// consumer right after the producer anyway.
    Nobody,
    /// Whichever worker currently runs a stage that can move.
    Owner(Arc<crate::signal::Owner>),
}

impl Waker {
    #[inline]
    pub(crate) fn wake(&self) {
        match self {
            Waker::Signal(signal) => signal.notify(),
            Waker::External(event) => {
                event.notify(usize::MAX);
            }
            Waker::Nobody => {}
            Waker::Owner(owner) => owner.notify(),
        }
    }
}

/// The wake-up wiring of one edge.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) consumer: Waker,
    pub(crate) producers: Vec<Waker>,
    /// Written by the consumer on every pop: kept off the line the producer reads.
    pub(crate) space: CachePadded<Doorbell>,
    /// True when no side ever needs waking (see [`Waker::Nobody`]).
    quiet: bool,
}

impl Link {
    pub(crate) fn new(consumer: Waker, producers: Vec<Waker>) -> Self {
        let quiet = matches!(consumer, Waker::Nobody)
            && producers.iter().all(|p| matches!(p, Waker::Nobody));
        Self {
            consumer,
            producers,
            space: CachePadded::new(Doorbell::new()),
            quiet,
        }
    }

    /// Items were pushed.
    #[inline]
    pub(crate) fn pushed(&self) {
        self.consumer.wake();
    }

    /// A producer found no room and is about to wait.
    #[inline]
    pub(crate) fn arm(&self) {
        if !self.quiet {
            self.space.arm();
        }
    }

    /// Items were popped: wake producers if one was waiting for space.
    #[inline]
    pub(crate) fn popped(&self) {
        if !self.quiet && self.space.take() {
            for producer in &self.producers {
                producer.wake();
            }
        }
    }
}
