//! Live re-planning: commands sent to workers, and stages handed between them.
//!
//! A stage moves at a burst boundary: its worker detaches it (with its input buffer,
//! pending output and its edge ends), points the stage's [`Owner`] at the new worker,
//! and posts it there. Edges are untouched — rings and fused buffers work from any
//! thread — so no item is lost, duplicated or reordered by a move.

#[cfg(not(loom))]
use pipewright_stages::exec::ErasedNode;

use crate::signal::{Owner, Signal};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Mutex, Ordering};
#[cfg(not(loom))]
use crate::transport::RingTransport;

/// A command for one worker.
#[cfg(not(loom))]
pub(crate) enum Command {
    /// Stop running node `node` and hand it to worker `to` (the `seq`-th move of it:
    /// only the latest is carried out).
    Detach { node: usize, to: usize, seq: usize },
    /// Start running this node.
    Attach {
        node: usize,
        boxed: Box<dyn ErasedNode<RingTransport>>,
    },
    /// Set node `node`'s burst size (the `seq`-th change of it: only the latest is).
    SetBurst {
        node: usize,
        burst: usize,
        seq: usize,
    },
}

#[cfg(not(loom))]
impl Command {
    /// The node the command is about.
    pub(crate) fn node(&self) -> usize {
        match self {
            Command::Detach { node, .. }
            | Command::Attach { node, .. }
            | Command::SetBurst { node, .. } => *node,
        }
    }
}

/// One mailbox per worker. Generic over the command only so that the loom model
/// below checks this very code with a plain command type.
#[cfg(not(loom))]
pub(crate) type Mailboxes = WorkerMailboxes<Command>;

/// One mailbox of commands `C` per worker: a locked queue, a flag that makes the
/// empty check one atomic load on the worker's hot path, and the worker's signal.
#[cfg_attr(loom, allow(dead_code))] // the loom model needs only send and take
pub(crate) struct WorkerMailboxes<C> {
    boxes: Vec<Mutex<Vec<C>>>,
    flags: Vec<AtomicBool>,
    signals: Vec<Arc<Signal>>,
    /// The owner of every movable (sync) node; `None` for async nodes.
    pub(crate) owners: Vec<Option<Arc<Owner>>>,
    /// Per node, how many moves and burst changes were asked for: a command older
    /// than the latest of its kind is superseded.
    moves: Vec<AtomicUsize>,
    bursts: Vec<AtomicUsize>,
}

impl<C> std::fmt::Debug for WorkerMailboxes<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailboxes")
            .field("workers", &self.boxes.len())
            .finish()
    }
}

// Under loom only the in-crate models use it (the worker loop is compiled out).
#[cfg_attr(loom, allow(dead_code))]
impl<C> WorkerMailboxes<C> {
    pub(crate) fn new(signals: Vec<Arc<Signal>>, owners: Vec<Option<Arc<Owner>>>) -> Self {
        Self {
            boxes: signals.iter().map(|_| Mutex::new(Vec::new())).collect(),
            flags: signals.iter().map(|_| AtomicBool::new(false)).collect(),
            signals,
            moves: owners.iter().map(|_| AtomicUsize::new(0)).collect(),
            bursts: owners.iter().map(|_| AtomicUsize::new(0)).collect(),
            owners,
        }
    }

    /// Numbers a new move of `node`: the command to carry it.
    pub(crate) fn next_move(&self, node: usize) -> usize {
        self.moves[node].fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether move `seq` of `node` is the latest asked for.
    pub(crate) fn is_latest_move(&self, node: usize, seq: usize) -> bool {
        self.moves[node].load(Ordering::Acquire) == seq
    }

    /// Numbers a new burst change of `node`.
    pub(crate) fn next_burst(&self, node: usize) -> usize {
        self.bursts[node].fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether burst change `seq` of `node` is the latest asked for.
    pub(crate) fn is_latest_burst(&self, node: usize, seq: usize) -> bool {
        self.bursts[node].load(Ordering::Acquire) == seq
    }

    /// Posts `command` to `worker` and wakes it.
    pub(crate) fn send(&self, worker: usize, command: C) {
        self.boxes[worker]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(command);
        self.flags[worker].store(true, Ordering::Release);
        self.signals[worker].notify();
    }

    /// Takes `worker`'s commands, if any (one atomic load when there are none).
    #[inline]
    pub(crate) fn take(&self, worker: usize, into: &mut Vec<C>) -> bool {
        if !self.flags[worker].load(Ordering::Acquire)
            || !self.flags[worker].swap(false, Ordering::AcqRel)
        {
            return false;
        }
        into.append(&mut self.boxes[worker].lock().unwrap_or_else(|p| p.into_inner()));
        true
    }

    /// Wakes every worker (the last stage finished, or an abort).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn wake_all(&self) {
        for s in &self.signals {
            s.notify();
        }
    }
}

/// The shipped mailbox under loom: a command posted while its worker checks its
/// mailbox and parks is taken exactly once, and the worker is never left parked
/// with a command waiting (a lost wake-up shows as a loom deadlock). Posting the
/// flag before the command, or loading it `Relaxed`, fails this model.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;

    #[test]
    fn a_posted_command_is_taken_once_and_never_missed() {
        loom::model(|| {
            let signal = Arc::new(Signal::new());
            let boxes = Arc::new(WorkerMailboxes::<u32>::new(
                vec![signal.clone()],
                vec![None],
            ));
            let sender = {
                let boxes = boxes.clone();
                loom::thread::spawn(move || {
                    boxes.send(0, 1);
                    boxes.send(0, 2);
                })
            };
            let mut got = Vec::new();
            while got.len() < 2 {
                if !boxes.take(0, &mut got) {
                    loom::future::block_on(signal.park());
                }
            }
            sender.join().unwrap();
            assert_eq!(got, [1, 2], "in order, once each");
            // A flag raised after its command was already taken makes one spurious
            // `true` (the worker does one more pass): harmless, but nothing may remain.
            let mut rest = Vec::new();
            boxes.take(0, &mut rest);
            assert!(rest.is_empty(), "nothing left over");
        });
    }

    /// A live move as the runtime does it: worker A points the stage's owner at B
    /// and posts the stage (its input end) to B's mailbox, while a producer pushes
    /// into the stage's input and wakes its owner. B always gets the stage and the
    /// item, exactly once: the producer's wake-up reaches A or B, never nobody.
    #[test]
    fn a_stage_handed_over_through_the_mailbox_loses_no_wake_up() {
        use std::collections::VecDeque;
        loom::model(|| {
            let signals = Arc::new(vec![Arc::new(Signal::new()), Arc::new(Signal::new())]);
            let owner = Arc::new(Owner::new(0, signals.clone()));
            let boxes = Arc::new(WorkerMailboxes::new(
                signals.to_vec(),
                vec![Some(owner.clone())],
            ));
            let (mut tx, rx) = crate::ring::spsc::<u32>(2);
            let producer = {
                let owner = owner.clone();
                loom::thread::spawn(move || {
                    tx.push(7).unwrap();
                    owner.notify();
                })
            };
            let worker_a = {
                let (owner, boxes) = (owner.clone(), boxes.clone());
                loom::thread::spawn(move || {
                    // Detach at a burst boundary: new owner first, then the stage.
                    owner.hand_over(1);
                    boxes.send(1, rx);
                })
            };
            // Worker B: its mailbox, then the stage's input, parking in between.
            let mut stages = Vec::new();
            while stages.is_empty() {
                if !boxes.take(1, &mut stages) {
                    loom::future::block_on(signals[1].park());
                }
            }
            let mut rx = stages.pop().unwrap();
            let mut got = VecDeque::new();
            while rx.pop_burst(&mut got, 4) == 0 {
                loom::future::block_on(signals[1].park());
            }
            assert_eq!(got, [7]);
            producer.join().unwrap();
            worker_a.join().unwrap();
            assert_eq!(rx.pop_burst(&mut got, 4), 0, "delivered once");
        });
    }
}
