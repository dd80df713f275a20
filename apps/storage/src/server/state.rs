//! The node's shared state and the host side of the protocol: carrying out
//! [`Action`]s.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

#[cfg(feature = "faults")]
use super::faults::Armed;
use crate::log::{self, EncodeError, Record};
use crate::pages::{PageError, PageStore};
use crate::protocol::{Action, Message, Node, RecordId, TxnStatus};
use crate::types::{ClientId, NodeId, TxnId};
use crate::wire::{ClientResponse, InDoubt, NodeStatus};

/// A stage of the node's pipeline could not carry out an action: the node stops
/// (fail-stop) and its restart recovers from the log.
#[derive(Debug, thiserror::Error)]
pub enum NodeFault {
    /// A record could not be encoded for the log.
    #[error("encoding a log record: {0}")]
    Encode(#[from] EncodeError),
    /// A committed write could not be applied to the page file.
    #[error("applying a committed write: {0}")]
    Page(#[from] PageError),
    /// The log write or its `fdatasync` failed: nothing of that burst is acknowledged.
    #[error("log write: {0}")]
    Log(#[from] std::io::Error),
}

/// What the node's stages share under one mutex (see the [module docs](super) for
/// why).
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) node: Node,
    pub(crate) pages: PageStore,
    /// Encoded records not yet handed to the log stage, in id order.
    pending: Vec<u8>,
    /// The id of the last record in `pending`.
    pending_last: Option<RecordId>,
    /// Where in `pending` a checkpoint record starts (a new log segment).
    pending_rotate: Option<usize>,
    /// Log bytes encoded since the last checkpoint was started.
    since_checkpoint: u64,
    /// Start a checkpoint once this many log bytes were written since the last.
    checkpoint_bytes: u64,
    /// Client transactions admitted at this node and not yet finished here.
    admitted: HashSet<TxnId>,
    /// How long a transaction stays prepared before the tick asks its decider.
    resolve_after: Duration,
    /// When each prepared transaction was first seen waiting by the tick.
    prepared_since: HashMap<TxnId, Instant>,
    /// How long recovery took when the node started.
    pub(crate) recovery_ms: u64,
}

/// A run of encoded log records for the group-commit sink: every record up to `last`
/// not handed over before.
#[derive(Debug)]
pub(crate) struct LogBatch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) last: RecordId,
    /// The offset in `bytes` of a checkpoint record: it and what follows go to a new
    /// log segment.
    pub(crate) rotate_at: Option<usize>,
}

/// Counters of a node (also published through the `metrics` facade).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) in_flight: AtomicUsize,
    pub(crate) busy: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) dropped_sends: AtomicU64,
    pub(crate) log_bytes: AtomicU64,
    pub(crate) log_syncs: AtomicU64,
    /// Records written (in `log_syncs` bursts).
    pub(crate) log_records: AtomicU64,
    /// Microseconds the log spent lingering for fuller bursts.
    pub(crate) linger_us: AtomicU64,
    pub(crate) log_disk_bytes: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) net_dropped: AtomicU64,
    pub(crate) net_duplicated: AtomicU64,
    pub(crate) net_delayed: AtomicU64,
}

/// Where a node's actions go: peer links and client connections.
#[derive(Debug)]
pub(crate) struct Effects {
    pub(crate) id: NodeId,
    pub(crate) links: HashMap<NodeId, mpsc::Sender<Message>>,
    pub(crate) clients: Mutex<HashMap<ClientId, mpsc::Sender<ClientResponse>>>,
    pub(crate) stats: Stats,
    pub(crate) max_in_flight: usize,
    /// A crash point for fault tests.
    #[cfg(feature = "faults")]
    pub(crate) crash: Option<Armed>,
}

impl Effects {
    /// Queue `msg` for node `to`; best effort (a full link queue drops and counts).
    pub(crate) fn send(&self, to: NodeId, msg: Message) {
        let sent = self.links.get(&to).is_some_and(|l| l.try_send(msg).is_ok());
        if !sent {
            self.stats.dropped_sends.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("storage_dropped_sends_total").increment(1);
        }
    }

    /// Answer a client, if it is connected here.
    pub(crate) fn reply(&self, client: ClientId, response: ClientResponse) {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = clients.get(&client) {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(response) {
                metrics::counter!("storage_client_answers_dropped_total").increment(1);
            }
        }
    }

    /// Take one unit of the in-flight budget; false when it is spent.
    pub(crate) fn admit(&self) -> bool {
        let admitted = self
            .stats
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("storage_busy_total").increment(1);
        }
        admitted
    }

    fn release(&self) {
        self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The state behind its mutex.
pub(crate) type Shared = Arc<Mutex<State>>;

/// Lock the shared state. A panic inside a critical section stops the pipeline
/// (fail-stop), so a poisoned mutex is only ever seen on the way down.
pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    pub(crate) fn new(
        node: Node,
        pages: PageStore,
        resolve_after: Duration,
        checkpoint_bytes: u64,
    ) -> Self {
        Self {
            node,
            pages,
            pending: Vec::new(),
            pending_last: None,
            pending_rotate: None,
            since_checkpoint: 0,
            checkpoint_bytes: checkpoint_bytes.max(1),
            admitted: HashSet::new(),
            resolve_after,
            prepared_since: HashMap::new(),
            recovery_ms: 0,
        }
    }

    /// The retry timer: [`Node::tick`], except that a transaction prepared in this
    /// incarnation asks its decider (`Resolve`) only once it has waited
    /// `resolve_after`. A decider that has not yet seen the `Prepare` answers a
    /// `Resolve` with abort (presumed abort), so asking at once would abort
    /// transactions that are merely still travelling down the chain. In-doubt
    /// transactions found by recovery ask at once (recovery sends their `Resolve`).
    pub(crate) fn tick(&mut self, fx: &Effects) -> Result<(), NodeFault> {
        let now = Instant::now();
        let mut actions = self.node.tick();
        let mut waiting = HashSet::new();
        actions.retain(|action| match action {
            Action::Send {
                msg: Message::Resolve { txn, .. },
                ..
            } => {
                waiting.insert(*txn);
                let since = *self.prepared_since.entry(*txn).or_insert(now);
                now.duration_since(since) >= self.resolve_after
            }
            _ => true,
        });
        self.prepared_since.retain(|txn, _| waiting.contains(txn));
        let oldest = self
            .prepared_since
            .values()
            .min()
            .map(|&t| now.duration_since(t));
        metrics::gauge!("storage_in_doubt").set(self.prepared_since.len() as f64);
        metrics::gauge!("storage_oldest_intent_age_seconds")
            .set(oldest.unwrap_or_default().as_secs_f64());
        self.execute(fx, actions)
    }

    /// Carry out `actions` in order: sends are queued on the links, page writes go to
    /// the page file, records are encoded into the pending log bytes, replies go to
    /// client connections.
    pub(crate) fn execute(&mut self, fx: &Effects, actions: Vec<Action>) -> Result<(), NodeFault> {
        #[cfg(feature = "faults")]
        if let Some(crash) = &fx.crash {
            crash.check(&actions);
        }
        for action in actions {
            match action {
                Action::Send { to, msg } => fx.send(to, msg),
                Action::Persist { id, record } => {
                    let start = self.pending.len();
                    match log::encode(&record, &mut self.pending) {
                        // The checkpoint record itself does not count: with many open
                        // transactions or marks it may exceed `checkpoint_bytes`, and
                        // counting it would start a checkpoint at every append.
                        Ok(_) if matches!(record, Record::Checkpoint(_)) => {}
                        Ok(len) => self.since_checkpoint += len as u64,
                        // A checkpoint too large for one record (a huge number of
                        // open transactions): skip it, the next one is tried later.
                        Err(EncodeError::TooLong(_)) if matches!(record, Record::Checkpoint(_)) => {
                            self.node.cancel_checkpoint();
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    if matches!(record, Record::Checkpoint(_)) {
                        self.pending_rotate = Some(start);
                    }
                    self.pending_last = Some(id);
                }
                Action::Apply { writes, .. } => {
                    for w in writes {
                        self.pages.apply(w.page, w.expected + 1, &w.data)?;
                    }
                }
                Action::Reply {
                    client,
                    txn,
                    outcome,
                } => fx.reply(client, ClientResponse::Outcome { txn, outcome }),
            }
        }
        Ok(())
    }

    /// Handle a client's `Prepare` admitted by [`Effects::admit`].
    pub(crate) fn client_prepare(
        &mut self,
        fx: &Effects,
        prepare: crate::protocol::Prepare,
    ) -> Result<(), NodeFault> {
        let txn = prepare.txn;
        let duplicate = self.node.status(txn) != TxnStatus::Unknown;
        let actions = self.node.handle(Message::Prepare(prepare));
        self.execute(fx, actions)?;
        let done = matches!(
            self.node.status(txn),
            TxnStatus::Unknown | TxnStatus::Finished(_)
        );
        if duplicate || done || !self.admitted.insert(txn) {
            fx.release();
        }
        Ok(())
    }

    /// Give back the in-flight budget of admitted transactions that finished here.
    pub(crate) fn sweep_admitted(&mut self, fx: &Effects) {
        let node = &self.node;
        self.admitted.retain(|&txn| {
            let done = matches!(
                node.status(txn),
                TxnStatus::Unknown | TxnStatus::Finished(_)
            );
            if done {
                fx.release();
            }
            !done
        });
    }

    /// Start a checkpoint if enough log was written since the last one (and none is
    /// on its way to the log).
    pub(crate) fn maybe_checkpoint(&mut self, fx: &Effects) -> Result<(), NodeFault> {
        if self.since_checkpoint < self.checkpoint_bytes || self.node.checkpoint_in_progress() {
            return Ok(());
        }
        self.since_checkpoint = 0;
        let actions = self.node.checkpoint();
        self.execute(fx, actions)
    }

    /// Whether records wait for the log stage.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending_last.is_some()
    }

    /// The records encoded since the last call, for the log stage.
    pub(crate) fn take_pending(&mut self) -> Option<LogBatch> {
        let last = self.pending_last.take()?;
        Some(LogBatch {
            bytes: std::mem::take(&mut self.pending),
            last,
            rotate_at: self.pending_rotate.take(),
        })
    }

    /// The node's status and counters.
    pub(crate) fn status(&self, fx: &Effects) -> NodeStatus {
        let s = &fx.stats;
        NodeStatus {
            node: fx.id,
            unfinished: self.node.unfinished() as u64,
            in_flight: s.in_flight.load(Ordering::Relaxed) as u64,
            busy: s.busy.load(Ordering::Relaxed),
            malformed_frames: s.malformed.load(Ordering::Relaxed),
            auth_failures: s.auth_failures.load(Ordering::Relaxed),
            dropped_sends: s.dropped_sends.load(Ordering::Relaxed),
            log_bytes: s.log_bytes.load(Ordering::Relaxed),
            log_syncs: s.log_syncs.load(Ordering::Relaxed),
            log_records: s.log_records.load(Ordering::Relaxed),
            linger_us: s.linger_us.load(Ordering::Relaxed),
            log_disk_bytes: s.log_disk_bytes.load(Ordering::Relaxed),
            checkpoints: s.checkpoints.load(Ordering::Relaxed),
            remembered: self.node.remembered() as u64,
            low_water_marks: self.node.clients_with_marks() as u64,
            net_dropped: s.net_dropped.load(Ordering::Relaxed),
            net_duplicated: s.net_duplicated.load(Ordering::Relaxed),
            net_delayed: s.net_delayed.load(Ordering::Relaxed),
            in_doubt: self.in_doubt(),
            recovery_ms: self.recovery_ms,
        }
    }

    /// The transactions waiting for their outcome here, oldest first.
    fn in_doubt(&self) -> Vec<InDoubt> {
        let now = Instant::now();
        let mut out: Vec<InDoubt> = self
            .node
            .prepared()
            .into_iter()
            .map(|(txn, decider, recovered)| InDoubt {
                txn,
                decider,
                recovered,
                age_ms: self
                    .prepared_since
                    .get(&txn)
                    .map_or(0, |&t| now.duration_since(t).as_millis() as u64),
            })
            .collect();
        out.sort_by(|a, b| b.age_ms.cmp(&a.age_ms).then(a.txn.cmp(&b.txn)));
        out
    }
}
