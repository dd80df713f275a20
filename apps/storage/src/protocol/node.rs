//! One node's protocol state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use super::state::{NodeConfig, TxnStatus};
use super::state::{Phase, Txn};

use super::{Action, Message, RecordId};
use crate::locks::LockTable;
use crate::log::Record;
use crate::types::{ClientId, NodeId, PageId, TxnId, Version};

/// One storage node's side of the linear two-phase commit.
///
/// A two-node chain `[1, 2]` committing one write on each node (the host loop is the
/// test's: deliver each `Send`, acknowledge each `Persist` at once):
///
/// ```
/// use pipewright_storage::log::PageWrite;
/// use pipewright_storage::protocol::{Action, Message, Node, NodeConfig, Outcome, Prepare};
/// use pipewright_storage::{ClientId, NodeId, PageId, TxnId};
/// use std::collections::VecDeque;
///
/// let ids = [NodeId(1), NodeId(2)];
/// let mut nodes: Vec<Node> =
///     ids.iter().map(|&id| Node::new(id, NodeConfig::default(), Default::default())).collect();
/// let write = |page| vec![PageWrite { page: PageId(page), expected: 0, data: vec![7].into() }];
/// let prepare = Prepare {
///     txn: TxnId(1),
///     client: ClientId(9),
///     chain: ids.to_vec(),
///     writes: vec![(ids[0], write(0)), (ids[1], write(5))],
///     acceptors: 0,
/// };
/// let mut inbox = VecDeque::from([(0, Message::Prepare(prepare))]);
/// let mut replies = Vec::new();
/// while let Some((at, msg)) = inbox.pop_front() {
///     let mut todo = nodes[at].handle(msg);
///     while let Some(action) = todo.pop() {
///         match action {
///             Action::Send { to, msg } => inbox.push_back(((to.0 - 1) as usize, msg)),
///             Action::Persist { id, .. } => todo.extend(nodes[at].persisted(id)),
///             Action::Apply { .. } => {}
///             Action::Reply { outcome, .. } => replies.push(outcome),
///         }
///     }
/// }
/// assert_eq!(replies, vec![Outcome::Committed]);
/// assert_eq!(nodes[0].version(PageId(0)), 1);
/// assert_eq!(nodes[1].version(PageId(5)), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub(super) id: NodeId,
    pub(super) page_capacity: u64,
    pub(super) next_record: u64,
    pub(super) versions: BTreeMap<PageId, Version>,
    pub(super) locks: LockTable,
    pub(super) txns: BTreeMap<TxnId, Txn>,
    /// Record id → what waits for it to be durable.
    pub(super) waiting: BTreeMap<RecordId, Then>,
    /// Ticks a node in doubt waits for its decider before a recovery ballot.
    pub(super) patience: u32,
    /// Messages to this node itself (an acceptor running a recovery ballot), handled
    /// before the call returns; always empty between calls.
    pub(super) loopback: VecDeque<Message>,
    /// Per client, the highest forgotten transaction id (see [`Checkpoint::marks`])
    /// and the checkpoint (a count of [`checkpoint`](Node::checkpoint) calls in this
    /// incarnation) at which it was last raised.
    pub(super) marks: BTreeMap<ClientId, (TxnId, u64)>,
    /// Every transaction at or below it is late, whatever its client (see
    /// [`Checkpoint::floor`]): the marks of clients idle past the horizon, folded.
    pub(super) floor: TxnId,
    /// Checkpoints started in this incarnation.
    pub(super) checkpoints: u64,
    /// A mark not raised during this many checkpoints is folded into the floor.
    pub(super) mark_horizon: u32,
    /// A checkpoint on its way to the log: its record id and the transactions it
    /// forgets once durable.
    pub(super) checkpointing: Option<Checkpointing>,
    /// [`Message::Durable`] notices that arrived before their `Prepare` (messages
    /// may be reordered): their senders, with the checkpoint count at the first
    /// arrival; a checkpoint drops
    /// those older than the previous one (their `Prepare` was lost: the transaction
    /// aborts by the decider's timeout).
    pub(super) early: BTreeMap<TxnId, (BTreeSet<NodeId>, u64)>,
    /// How many of `txns` are in a phase that [`Phase::joins`] (see
    /// [`Node::joinable`]), kept up to date by every change of `txns` (through
    /// [`insert_txn`](Node::insert_txn), [`set_phase`](Node::set_phase) and
    /// [`forget`](Node::forget)).
    pub(super) joining: usize,
    /// How many of `txns` are not finished (see [`Node::unfinished`]), kept up to
    /// date like `joining`.
    pub(super) open: usize,
}

/// A checkpoint on its way to the log, and what its durability changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Checkpointing {
    /// Its record.
    pub(super) id: RecordId,
    /// The transactions it forgets.
    pub(super) forget: Vec<TxnId>,
    /// The clients whose marks it folds into the floor.
    pub(super) fold: Vec<ClientId>,
    /// The floor it holds.
    pub(super) floor: TxnId,
}

/// What a record's durability releases.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Then {
    /// The transaction's next step.
    Advance(TxnId),
    /// An acceptor's answer (sent only once its promise or acceptance is durable).
    Send(NodeId, Message),
}

impl Node {
    /// A fresh node with the committed page versions of its page store (pages absent
    /// from `versions` are at version 0) and an empty log.
    pub fn new(id: NodeId, config: NodeConfig, versions: BTreeMap<PageId, Version>) -> Self {
        Self {
            id,
            page_capacity: config.page_capacity,
            next_record: 0,
            versions,
            locks: LockTable::new(config.lock_capacity),
            txns: BTreeMap::new(),
            waiting: BTreeMap::new(),
            patience: config.patience,
            loopback: VecDeque::new(),
            marks: BTreeMap::new(),
            floor: TxnId(0),
            checkpoints: 0,
            mark_horizon: config.mark_horizon,
            checkpointing: None,
            early: BTreeMap::new(),
            joining: 0,
            open: 0,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The lock table (shareable with other tasks of the node: it is `Sync`).
    pub fn locks(&self) -> &LockTable {
        &self.locks
    }

    /// A page's committed version as this node knows it.
    pub fn version(&self, page: PageId) -> Version {
        self.versions.get(&page).copied().unwrap_or(0)
    }

    /// Transactions that voted yes here and wait for their outcome (prepared, or in
    /// doubt after a restart): each with its decider (if known) and whether it was
    /// recovered from the log. Ascending by id.
    pub fn prepared(&self) -> Vec<(TxnId, Option<NodeId>, bool)> {
        self.txns
            .iter()
            .filter_map(|(&txn, t)| match t.phase {
                Phase::Prepared { in_doubt } => Some((txn, t.chain.last().copied(), in_doubt)),
                _ => None,
            })
            .collect()
    }

    /// Where `txn` stands on this node.
    pub fn status(&self, txn: TxnId) -> TxnStatus {
        match self.txns.get(&txn).map(|t| &t.phase) {
            None => TxnStatus::Unknown,
            Some(Phase::Preparing | Phase::Waiting) => TxnStatus::Preparing,
            Some(Phase::Prepared { in_doubt }) => TxnStatus::Prepared {
                in_doubt: *in_doubt,
            },
            Some(Phase::Proposing { .. }) => TxnStatus::Replicating,
            Some(Phase::Deciding) => TxnStatus::Deciding,
            Some(Phase::Refusing { .. }) => TxnStatus::Refusing,
            Some(Phase::Completing) => TxnStatus::Completing,
            Some(Phase::AwaitingAcks { .. }) => TxnStatus::AwaitingAcks,
            Some(Phase::Finished(v)) => TxnStatus::Finished(*v),
        }
    }

    pub(super) fn persist(&mut self, record: Record, out: &mut Vec<Action>) -> RecordId {
        let id = RecordId(self.next_record);
        self.next_record += 1;
        out.push(Action::Persist { id, record });
        id
    }

    pub(super) fn persist_then(&mut self, txn: TxnId, record: Record, out: &mut Vec<Action>) {
        let id = self.persist(record, out);
        self.waiting.insert(id, Then::Advance(txn));
    }

    /// Send `msg` to `to` once `record` is durable.
    pub(super) fn persist_then_send(
        &mut self,
        record: Record,
        to: NodeId,
        msg: Message,
        out: &mut Vec<Action>,
    ) {
        let id = self.persist(record, out);
        self.waiting.insert(id, Then::Send(to, msg));
    }

    /// Send `msg` to `to` (to this node itself: handled before the call returns).
    pub(super) fn send(&mut self, to: NodeId, msg: Message, out: &mut Vec<Action>) {
        if to == self.id {
            self.loopback.push_back(msg);
        } else {
            out.push(Action::Send { to, msg });
        }
    }

    pub(super) fn drain(&mut self, out: &mut Vec<Action>) {
        while let Some(msg) = self.loopback.pop_front() {
            self.dispatch(msg, out);
        }
    }

    pub(super) fn neighbour(&self, chain: &[NodeId], step: isize) -> Option<NodeId> {
        let at = chain.iter().position(|&n| n == self.id)? as isize + step;
        usize::try_from(at).ok().and_then(|i| chain.get(i).copied())
    }

    /// Handle a message from a peer or (for `Prepare` at the head) a client.
    pub fn handle(&mut self, msg: Message) -> Vec<Action> {
        let mut out = Vec::new();
        self.dispatch(msg, &mut out);
        self.drain(&mut out);
        self.check_joining();
        out
    }

    pub(super) fn dispatch(&mut self, msg: Message, out: &mut Vec<Action>) {
        match msg {
            Message::Prepare(p) => self.on_prepare(p, out),
            Message::Durable { txn, from } => self.on_durable(txn, from, out),
            Message::Commit { txn, decider } => self.on_commit(txn, decider, out),
            Message::Abort { txn } => self.on_abort(txn, out),
            Message::Ack { txn, from } => self.on_ack(txn, from, out),
            Message::Resolve { txn, from, client } => self.on_resolve(txn, from, client, out),
            Message::Query {
                txn,
                ballot,
                client,
            } => self.on_query(txn, ballot, client, out),
            Message::Promise {
                txn,
                ballot,
                from,
                accepted,
            } => self.on_promise(txn, ballot, from, accepted, out),
            Message::Accept {
                txn,
                ballot,
                verdict,
                client,
            } => self.on_accept(txn, ballot, verdict, client, out),
            Message::Accepted { txn, ballot, from } => self.on_accepted(txn, ballot, from, out),
            Message::Nack {
                txn,
                ballot,
                promised,
                ..
            } => self.on_nack(txn, ballot, promised),
        }
    }

    /// Whether `txn` of `client` is at or below the client's low-water mark, or at or
    /// below the floor (any client's).
    pub(super) fn is_late(&self, client: ClientId, txn: TxnId) -> bool {
        txn <= self.floor
            || self
                .marks
                .get(&client)
                .is_some_and(|&(mark, _)| txn <= mark)
    }

    pub(super) fn set_phase(&mut self, txn: TxnId, phase: Phase) {
        if let Some(t) = self.txns.get_mut(&txn) {
            let was = t.phase.joins();
            self.joining = self.joining + usize::from(phase.joins()) - usize::from(was);
            let was_open = t.phase.is_open();
            self.open = self.open + usize::from(phase.is_open()) - usize::from(was_open);
            t.phase = phase;
        }
    }

    /// Remember `t` as `txn` (replacing any earlier state of it), counting it in
    /// [`joinable`](Node::joinable).
    pub(super) fn insert_txn(&mut self, txn: TxnId, t: Txn) {
        self.joining += usize::from(t.phase.joins());
        self.open += usize::from(t.phase.is_open());
        if let Some(old) = self.txns.insert(txn, t) {
            self.joining -= usize::from(old.phase.joins());
            self.open -= usize::from(old.phase.is_open());
        }
    }

    /// Check the incremental count against its definition (debug builds only: it
    /// walks every remembered transaction).
    pub(super) fn check_joining(&self) {
        debug_assert_eq!(
            self.joining,
            self.txns.values().filter(|t| t.phase.joins()).count(),
            "node {:?}: the joinable count drifted from its definition",
            self.id
        );
        debug_assert_eq!(
            self.open,
            self.txns.values().filter(|t| t.phase.is_open()).count(),
            "node {:?}: the unfinished count drifted from its definition",
            self.id
        );
    }

    /// Every record up to and including `id` is durable: take the steps that waited.
    pub fn persisted(&mut self, id: RecordId) -> Vec<Action> {
        let mut out = Vec::new();
        let later = self.waiting.split_off(&RecordId(id.0 + 1));
        let ready = std::mem::replace(&mut self.waiting, later);
        for then in ready.into_values() {
            match then {
                Then::Advance(txn) => self.advance(txn, &mut out),
                Then::Send(to, msg) => self.send(to, msg, &mut out),
            }
        }
        if self.checkpointing.as_ref().is_some_and(|c| c.id <= id) {
            let done = self.checkpointing.take().expect("checked");
            // Folded first: a mark raised by this checkpoint's forgetting stays.
            for client in done.fold {
                self.marks.remove(&client);
            }
            self.floor = self.floor.max(done.floor);
            for txn in done.forget {
                self.forget(txn);
            }
        }
        self.drain(&mut out);
        self.check_joining();
        out
    }

    pub(super) fn forget(&mut self, txn: TxnId) {
        if let Some(t) = self.txns.remove(&txn) {
            debug_assert!(matches!(t.phase, Phase::Finished(_)));
            self.joining -= usize::from(t.phase.joins());
            self.open -= usize::from(t.phase.is_open());
            let now = self.checkpoints;
            let mark = self.marks.entry(t.client).or_insert((txn, now));
            *mark = (mark.0.max(txn), now);
        }
    }
}
