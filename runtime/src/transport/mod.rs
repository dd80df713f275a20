//! [`RingTransport`]: how the runtime carries items across each edge.
//!
//! Per edge, chosen from the plan: a plain buffer when every producer and the consumer
//! are fused on one worker (without a lock when nothing can move them: [`silent`]); an
//! SPSC ring for one producer on another worker; an MPSC ring for merges and
//! application inputs.

mod silent;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use pipewright_stages::exec::{EdgeInfo, InPort, OutPort, Transport};

use crate::link::Link;
use crate::ring::{MpscConsumer, MpscProducer, SpscConsumer, SpscProducer};
use silent::SilentQueue;

/// How one edge is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// Producers and consumer are fused on one worker: a reused buffer (without a
    /// lock between sync stages of a plan that is not adaptive, [`silent`]).
    Local,
    /// One producer, another worker: lock-free SPSC ring.
    Spsc,
    /// Several producers or an application input: lock-free MPSC ring.
    Mpsc,
}

impl EdgeKind {
    /// Short lowercase name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Local => "fused",
            EdgeKind::Spsc => "spsc",
            EdgeKind::Mpsc => "mpsc",
        }
    }
}

#[derive(Debug)]
pub(crate) struct EdgePlan {
    pub(crate) kind: EdgeKind,
    pub(crate) capacity: usize,
    pub(crate) link: Arc<Link>,
    /// A local edge whose consumer is a sync stage, run by the producer's own worker
    /// loop (an async consumer on the same worker is a task, which that loop does
    /// not run).
    pub(crate) consumer_in_loop: bool,
    /// A local edge between sync stages that can never move (a plan that is not
    /// adaptive): its
    /// ends stay on one worker for good, and its buffer needs no lock ([`silent`]).
    pub(crate) silent: bool,
}

/// The runtime's [`Transport`]; built by the runtime from a plan, not by users.
#[derive(Debug)]
pub struct RingTransport {
    pub(crate) edges: Vec<EdgePlan>,
}

struct LocalQueue<T> {
    items: VecDeque<T>,
    open_producers: usize,
}

impl<T> LocalQueue<T> {
    /// Moves what fits under `capacity` from `items` (the whole burst without moving
    /// an item when the queue is empty and it all fits).
    #[inline]
    fn push_from(&mut self, items: &mut VecDeque<T>, capacity: usize) {
        let room = capacity.saturating_sub(self.items.len()).min(items.len());
        if room == items.len() && self.items.is_empty() {
            std::mem::swap(&mut self.items, items);
        } else {
            self.items.extend(items.drain(..room));
        }
    }

    /// Moves up to `max` items into `items`; returns how many.
    #[inline]
    fn pull_into(&mut self, items: &mut VecDeque<T>, max: usize) -> usize {
        if items.is_empty() && self.items.len() <= max {
            let n = self.items.len();
            std::mem::swap(&mut self.items, items);
            n
        } else {
            let n = self.items.len().min(max);
            items.extend(self.items.drain(..n));
            n
        }
    }

    fn is_finished(&self) -> bool {
        self.open_producers == 0 && self.items.is_empty()
    }
}

fn lock<T>(q: &Mutex<LocalQueue<T>>) -> MutexGuard<'_, LocalQueue<T>> {
    // Held only for queue moves that cannot panic midway.
    q.lock().unwrap_or_else(|p| p.into_inner())
}

/// The producing end of an edge.
pub struct RingSender<T> {
    inner: SenderInner<T>,
    link: Arc<Link>,
    closed: bool,
}

enum SenderInner<T> {
    Local {
        queue: Arc<Mutex<LocalQueue<T>>>,
        capacity: usize,
        consumer_in_loop: bool,
    },
    Silent {
        queue: Arc<SilentQueue<T>>,
        capacity: usize,
    },
    Spsc(SpscProducer<T>),
    Mpsc(MpscProducer<T>),
}

/// The consuming end of an edge.
pub struct RingReceiver<T> {
    inner: ReceiverInner<T>,
    link: Arc<Link>,
}

enum ReceiverInner<T> {
    Local(Arc<Mutex<LocalQueue<T>>>),
    Silent(Arc<SilentQueue<T>>),
    Spsc(SpscConsumer<T>),
    Mpsc(MpscConsumer<T>),
}

impl<T> std::fmt::Debug for RingSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingSender")
    }
}
impl<T> std::fmt::Debug for RingReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingReceiver")
    }
}

impl<T: Send> RingSender<T> {
    #[inline]
    fn try_push(&mut self, items: &mut VecDeque<T>) -> usize {
        let before = items.len();
        match &mut self.inner {
            SenderInner::Local {
                queue, capacity, ..
            } => lock(queue).push_from(items, *capacity),
            SenderInner::Silent { queue, capacity } => {
                queue.with(|q| q.push_from(items, *capacity));
            }
            SenderInner::Spsc(p) => {
                p.push_burst(items);
            }
            SenderInner::Mpsc(p) => {
                let _full_or_closed = p.push_burst(items);
            }
        }
        before - items.len()
    }

    /// Pushes what fits and wakes the consumer; returns how many went in.
    #[inline]
    pub(crate) fn push_some(&mut self, items: &mut VecDeque<T>) -> usize {
        let pushed = self.try_push(items);
        if pushed > 0 {
            self.link.pushed();
        }
        pushed
    }

    /// Pushes one item if it fits and wakes the consumer; hands it back otherwise. An
    /// MPSC edge (an application input) takes it without a buffer in between.
    #[inline]
    pub(crate) fn push_one(&mut self, item: T, spare: &mut VecDeque<T>) -> Result<(), T> {
        if let SenderInner::Mpsc(p) = &mut self.inner {
            return match p.push(item) {
                Ok(()) => {
                    self.link.pushed();
                    Ok(())
                }
                Err((item, _full_or_closed)) => Err(item),
            };
        }
        spare.push_back(item);
        if self.push_some(spare) > 0 {
            return Ok(());
        }
        Err(spare.pop_front().expect("item not taken"))
    }

    /// Tells the consumer a producer waits for space.
    pub(crate) fn arm(&self) {
        self.link.arm();
    }

    /// True once the edge no longer accepts items.
    pub(crate) fn is_closed(&self) -> bool {
        match &self.inner {
            SenderInner::Mpsc(p) => p.is_closed(),
            _ => self.closed,
        }
    }

    /// Another handle onto the same MPSC edge (application inputs are cloneable).
    pub(crate) fn try_clone(&self) -> Option<Self> {
        match &self.inner {
            SenderInner::Mpsc(p) => p.try_clone().map(|p| RingSender {
                inner: SenderInner::Mpsc(p),
                link: self.link.clone(),
                closed: false,
            }),
            _ => None,
        }
    }
}

impl<T: Send> OutPort<T> for RingSender<T> {
    fn queued(&self) -> Option<usize> {
        Some(match &self.inner {
            SenderInner::Local { queue, .. } => lock(queue).items.len(),
            SenderInner::Silent { queue, .. } => queue.depth(),
            SenderInner::Spsc(p) => p.len(),
            SenderInner::Mpsc(p) => p.len(),
        })
    }

    fn is_local(&self) -> bool {
        matches!(
            self.inner,
            SenderInner::Local {
                consumer_in_loop: true,
                ..
            } | SenderInner::Silent { .. }
        )
    }

    #[inline]
    fn push(&mut self, items: &mut VecDeque<T>) {
        let mut pushed = self.try_push(items);
        if !items.is_empty() {
            // Short: tell the consumer we wait for space, then look once more so a pop
            // that raced with the arm is not missed (see `Doorbell`).
            self.link.arm();
            pushed += self.try_push(items);
        }
        if pushed > 0 {
            self.link.pushed();
        }
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        match &mut self.inner {
            SenderInner::Local { queue, .. } => lock(queue).open_producers -= 1,
            SenderInner::Silent { queue, .. } => queue.with(|q| q.open_producers -= 1),
            SenderInner::Spsc(p) => p.close(),
            SenderInner::Mpsc(p) => p.close(),
        }
        // The consumer may be parked waiting for input that will now never come.
        self.link.pushed();
    }
}

impl<T> Drop for RingSender<T> {
    fn drop(&mut self) {
        if !self.closed {
            self.closed = true;
            match &mut self.inner {
                SenderInner::Local { queue, .. } => lock(queue).open_producers -= 1,
                SenderInner::Silent { queue, .. } => queue.with(|q| q.open_producers -= 1),
                // Closed before the wake-up below (their own drop, which would close
                // them too, runs only after this body): a consumer woken by it must
                // find the ring closed, or it parks with nothing left to wake it.
                SenderInner::Spsc(p) => p.close(),
                SenderInner::Mpsc(p) => p.close(),
            }
            self.link.pushed();
        }
    }
}

impl<T: Send> InPort<T> for RingReceiver<T> {
    #[inline]
    fn pull(&mut self, items: &mut VecDeque<T>, max: usize) -> usize {
        let n = match &mut self.inner {
            ReceiverInner::Local(queue) => lock(queue).pull_into(items, max),
            ReceiverInner::Silent(queue) => queue.with(|q| q.pull_into(items, max)),
            ReceiverInner::Spsc(c) => c.pop_burst(items, max),
            ReceiverInner::Mpsc(c) => c.pop_burst(items, max),
        };
        if n > 0 {
            self.link.popped();
        }
        n
    }

    fn is_finished(&self) -> bool {
        match &self.inner {
            ReceiverInner::Local(queue) => lock(queue).is_finished(),
            ReceiverInner::Silent(queue) => queue.with(|q| q.is_finished()),
            ReceiverInner::Spsc(c) => c.is_finished(),
            ReceiverInner::Mpsc(c) => c.is_finished(),
        }
    }

    fn len(&self) -> usize {
        match &self.inner {
            ReceiverInner::Local(queue) => lock(queue).items.len(),
            ReceiverInner::Silent(queue) => queue.depth(),
            ReceiverInner::Spsc(c) => c.len(),
            ReceiverInner::Mpsc(c) => c.len(),
        }
    }
}

impl<T: Send> RingReceiver<T> {
    /// Reports the edge's occupancy from any thread.
    pub(crate) fn depth_probe(&self) -> Box<dyn Fn() -> usize + Send + Sync>
    where
        T: 'static,
    {
        match &self.inner {
            ReceiverInner::Local(queue) => {
                let queue = queue.clone();
                Box::new(move || lock(&queue).items.len())
            }
            ReceiverInner::Silent(queue) => {
                let queue = queue.clone();
                Box::new(move || queue.depth())
            }
            ReceiverInner::Spsc(c) => Box::new(c.depth_probe()),
            ReceiverInner::Mpsc(c) => Box::new(c.depth_probe()),
        }
    }

    /// Closes the edge from any thread, if it is an MPSC ring (application inputs).
    pub(crate) fn closer(&self) -> Option<Box<dyn Fn() + Send + Sync>>
    where
        T: 'static,
    {
        match &self.inner {
            ReceiverInner::Mpsc(c) => Some(Box::new(c.closer())),
            _ => None,
        }
    }
}

impl Transport for RingTransport {
    type Sender<T: Send + 'static> = RingSender<T>;
    type Receiver<T: Send + 'static> = RingReceiver<T>;
    type EdgeHandle = EdgeHandle;

    fn edge_handle<T: Send + 'static>(receiver: &RingReceiver<T>) -> EdgeHandle {
        EdgeHandle {
            probe: receiver.depth_probe(),
            closer: receiver.closer(),
            discard: discard::<T>,
        }
    }

    fn channel<T: Send + 'static>(&self, edge: &EdgeInfo) -> (Vec<RingSender<T>>, RingReceiver<T>) {
        let plan = &self.edges[edge.id];
        let link = plan.link.clone();
        let producers = edge.producers.len();
        let sender = |inner| RingSender {
            inner,
            link: link.clone(),
            closed: false,
        };
        match plan.kind {
            EdgeKind::Local if plan.silent => {
                let queue = silent_queue(producers);
                let senders = (0..producers)
                    .map(|_| {
                        sender(SenderInner::Silent {
                            queue: queue.clone(),
                            capacity: plan.capacity,
                        })
                    })
                    .collect();
                (
                    senders,
                    RingReceiver {
                        inner: ReceiverInner::Silent(queue),
                        link: link.clone(),
                    },
                )
            }
            EdgeKind::Local => {
                let queue = Arc::new(Mutex::new(LocalQueue {
                    items: VecDeque::new(),
                    open_producers: producers,
                }));
                let senders = (0..producers)
                    .map(|_| {
                        sender(SenderInner::Local {
                            queue: queue.clone(),
                            capacity: plan.capacity,
                            consumer_in_loop: plan.consumer_in_loop,
                        })
                    })
                    .collect();
                (
                    senders,
                    RingReceiver {
                        inner: ReceiverInner::Local(queue),
                        link: link.clone(),
                    },
                )
            }
            EdgeKind::Spsc => {
                let (p, c) = crate::ring::spsc(plan.capacity);
                (
                    vec![sender(SenderInner::Spsc(p))],
                    RingReceiver {
                        inner: ReceiverInner::Spsc(c),
                        link: link.clone(),
                    },
                )
            }
            EdgeKind::Mpsc => {
                let (ps, c) = crate::ring::mpsc(plan.capacity, producers);
                let senders = ps
                    .into_iter()
                    .map(|p| sender(SenderInner::Mpsc(p)))
                    .collect();
                (
                    senders,
                    RingReceiver {
                        inner: ReceiverInner::Mpsc(c),
                        link: link.clone(),
                    },
                )
            }
        }
    }
}

/// The buffer of a silent edge ([`EdgePlan::silent`]).
#[allow(unsafe_code)]
fn silent_queue<T>(producers: usize) -> Arc<SilentQueue<T>> {
    // SAFETY: `start` marks an edge silent only between sync stages of one worker in a
    // plan that is not adaptive, which never moves a stage: both ends are bound on the
    // building thread, then used only by that worker (its loop, abort and drop), whose
    // spawn and join order its accesses with the building thread's.
    Arc::new(unsafe { SilentQueue::new(producers) })
}

/// The runtime's own handle on an edge.
pub struct EdgeHandle {
    pub(crate) probe: Box<dyn Fn() -> usize + Send + Sync>,
    pub(crate) closer: Option<Box<dyn Fn() + Send + Sync>>,
    /// Pulls and drops everything waiting in a boxed `RingReceiver<T>`; returns how many.
    pub(crate) discard: fn(&mut (dyn std::any::Any + Send)) -> u64,
}

impl std::fmt::Debug for EdgeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeHandle")
            .field("depth", &(self.probe)())
            .finish()
    }
}

fn discard<T: Send + 'static>(receiver: &mut (dyn std::any::Any + Send)) -> u64 {
    let Some(receiver) = receiver.downcast_mut::<RingReceiver<T>>() else {
        return 0;
    };
    let mut sink = VecDeque::new();
    let mut total = 0;
    loop {
        let n = receiver.pull(&mut sink, 1024);
        if n == 0 {
            return total;
        }
        total += n as u64;
        sink.clear();
    }
}

impl<T> RingSender<T> {
    /// The event application producers on this edge wait on for space.
    pub(crate) fn space_event(&self) -> std::sync::Arc<event_listener::Event> {
        self.link
            .producers
            .iter()
            .find_map(|w| match w {
                crate::link::Waker::External(e) => Some(e.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }
}

impl<T> RingReceiver<T> {
    /// The event an application consumer of this edge waits on for items.
    pub(crate) fn ready_event(&self) -> std::sync::Arc<event_listener::Event> {
        match &self.link.consumer {
            crate::link::Waker::External(e) => e.clone(),
            _ => Default::default(),
        }
    }
}
