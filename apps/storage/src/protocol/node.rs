//! One node's protocol state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use super::state::{NodeConfig, TxnStatus};
use super::state::{Phase, Txn};

use super::{AbortReason, Action, Ballot, Malformed, Message, Outcome, Prepare, RecordId};
use crate::locks::LockTable;
use crate::log::{Intent, Record, Verdict};
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
    /// may be reordered), with the checkpoint count at arrival; a checkpoint drops
    /// those older than the previous one (their `Prepare` was lost: the transaction
    /// aborts by the decider's timeout).
    pub(super) early: BTreeMap<TxnId, u64>,
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
        out
    }

    pub(super) fn dispatch(&mut self, msg: Message, out: &mut Vec<Action>) {
        match msg {
            Message::Prepare(p) => self.on_prepare(p, out),
            Message::Durable { txn } => self.on_durable(txn, out),
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

    pub(super) fn on_prepare(&mut self, p: Prepare, out: &mut Vec<Action>) {
        if let Some(t) = self.txns.get(&p.txn) {
            // A duplicate. If we already aborted it, the sender is still prepared: tell it.
            if t.phase == Phase::Finished(Verdict::Abort) {
                if let Some(prev) = self.neighbour(&p.chain, -1) {
                    out.push(Action::Send {
                        to: prev,
                        msg: Message::Abort { txn: p.txn },
                    });
                }
            }
            return;
        }
        if self.is_late(p.client, p.txn) {
            // Forgotten here (finished and checkpointed), or overtaken by a later
            // transaction of the same client that was: refused without any state (the
            // mark is durable, so every later copy is refused too). The verdict is not
            // known here, so the client is told just that (`Forgotten`, not an
            // abort: a late copy of a committed transaction must not read as
            // aborted); a predecessor still prepared is told to abort (one that
            // finished ignores it).
            if let Some(prev) = self.neighbour(&p.chain, -1) {
                out.push(Action::Send {
                    to: prev,
                    msg: Message::Abort { txn: p.txn },
                });
            }
            out.push(Action::Reply {
                client: p.client,
                txn: p.txn,
                outcome: Outcome::Forgotten {
                    node: self.id,
                    floor: self.floor,
                },
            });
            return;
        }
        let malformed = if p.chain.is_empty() {
            Some(Malformed::EmptyChain)
        } else if !p.chain.contains(&self.id) {
            Some(Malformed::NotInChain)
        } else if (1..p.chain.len()).any(|i| p.chain[..i].contains(&p.chain[i])) {
            Some(Malformed::RepeatedNode)
        } else {
            None
        };
        if let Some(what) = malformed {
            let reason = AbortReason::Malformed {
                node: self.id,
                what,
            };
            out.push(Action::Reply {
                client: p.client,
                txn: p.txn,
                outcome: Outcome::Aborted(reason),
            });
            return;
        }
        let writes = p.writes_of(self.id).to_vec();
        let wants: Vec<(PageId, Version)> = writes.iter().map(|w| (w.page, w.expected)).collect();
        let versions = &self.versions;
        let analysis = self.check_writes(&writes).and_then(|()| {
            self.locks.prepare(p.txn, &wants, |page| {
                versions.get(&page).copied().unwrap_or(0)
            })
        });
        let is_decider = p.decider() == Some(self.id);
        let is_head = p.chain.first() == Some(&self.id);
        let (txn, client, chain, f) = (p.txn, p.client, p.chain.clone(), p.acceptors);
        let phase = match analysis {
            Err(error) => {
                let reason = AbortReason::Refused {
                    node: self.id,
                    error,
                };
                let record = if is_decider {
                    Record::Decision {
                        txn,
                        client,
                        verdict: Verdict::Abort,
                    }
                } else {
                    Record::Completion {
                        txn,
                        client,
                        verdict: Verdict::Abort,
                    }
                };
                self.persist_then(txn, record, out);
                Phase::Refusing {
                    reason,
                    askers: BTreeSet::new(),
                }
            }
            // The decider logs its intent and decides once every earlier intent is
            // durable (at once when it is the head: a one-node chain).
            Ok(()) if is_decider => Phase::Waiting,
            Ok(()) => {
                let intent = Intent {
                    txn,
                    client,
                    chain: chain.clone(),
                    writes: writes.clone(),
                    acceptors: f,
                };
                self.persist_then(txn, Record::Intent(intent), out);
                // Pipelined: forwarded while the intent is on its way to the log; the
                // decider waits for the `Durable` notice before deciding.
                if let Some(next) = self.neighbour(&p.chain, 1) {
                    out.push(Action::Send {
                        to: next,
                        msg: Message::Prepare(p),
                    });
                }
                Phase::Preparing
            }
        };
        let waiting = phase == Phase::Waiting;
        let mut t = Txn::new(client, chain, writes, phase, f);
        t.upstream = is_head || self.early.remove(&txn).is_some();
        let upstream = t.upstream;
        self.txns.insert(txn, t);
        if waiting && upstream {
            self.decide(txn, out);
        }
    }

    /// The decider: every earlier intent is durable; log its own intent and decide
    /// commit (F = 0), or propose commit to the acceptors once it is durable.
    pub(super) fn decide(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get(&txn) else { return };
        if t.phase != Phase::Waiting {
            return;
        }
        let client = t.client;
        let replicated = !t.acceptor_nodes().is_empty();
        let intent = Intent {
            txn,
            client,
            chain: t.chain.clone(),
            writes: t.writes.clone(),
            acceptors: t.acceptors,
        };
        let phase = if replicated {
            // The commit proposal goes to the acceptors once the intent is durable (a
            // decider restarted without it must be able to presume abort: it never
            // proposed).
            self.persist_then(txn, Record::Intent(intent), out);
            Phase::Proposing {
                sent: false,
                accepted: BTreeSet::new(),
            }
        } else {
            self.persist(Record::Intent(intent), out);
            self.persist_then(
                txn,
                Record::Decision {
                    txn,
                    client,
                    verdict: Verdict::Commit,
                },
                out,
            );
            Phase::Deciding
        };
        self.set_phase(txn, phase);
    }

    /// The decider gives up waiting for the earlier intents: it decides abort
    /// (durably, then tells the client and its predecessor).
    pub(super) fn presume_abort(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get(&txn) else { return };
        let client = t.client;
        self.locks.release(txn);
        self.persist_then(
            txn,
            Record::Decision {
                txn,
                client,
                verdict: Verdict::Abort,
            },
            out,
        );
        let phase = Phase::Refusing {
            reason: AbortReason::Unresolved,
            askers: BTreeSet::new(),
        };
        self.set_phase(txn, phase);
    }

    /// The predecessor's `Durable` notice: every earlier intent is durable. Passed on
    /// once our own intent is durable too; at the decider, it may decide.
    pub(super) fn on_durable(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get_mut(&txn) else {
            // Overtook its `Prepare` (or a late copy of a forgotten transaction,
            // dropped with the early notices at the next checkpoints).
            let now = self.checkpoints;
            self.early.insert(txn, now);
            return;
        };
        if t.upstream {
            return;
        }
        t.upstream = true;
        match t.phase {
            Phase::Waiting => self.decide(txn, out),
            Phase::Prepared { .. } => self.notify_next(txn, out),
            _ => {}
        }
    }

    /// Our intent and every earlier one are durable: tell the next node.
    pub(super) fn notify_next(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        if let Some(next) = self.neighbour(&self.txns[&txn].chain, 1) {
            out.push(Action::Send {
                to: next,
                msg: Message::Durable { txn },
            });
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

    /// Apply a committed transaction's writes here and release its locks.
    pub(super) fn apply(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let writes = self.txns[&txn].writes.clone();
        for w in &writes {
            self.versions.insert(w.page, w.expected + 1);
        }
        self.locks.release(txn);
        if !writes.is_empty() {
            out.push(Action::Apply { txn, writes });
        }
    }

    pub(super) fn send_back(&self, txn: TxnId, msg: Message, out: &mut Vec<Action>) {
        if let Some(prev) = self.neighbour(&self.txns[&txn].chain, -1) {
            out.push(Action::Send { to: prev, msg });
        }
    }

    pub(super) fn on_commit(&mut self, txn: TxnId, decider: NodeId, out: &mut Vec<Action>) {
        let ack = Action::Send {
            to: decider,
            msg: Message::Ack { txn, from: self.id },
        };
        let Some(t) = self.txns.get(&txn) else {
            // A commit decision needs our durable intent, which we keep until the
            // outcome is durable here: a transaction we do not know was completed and
            // then forgotten. The decider re-sent `Commit` (it restarted, or our `Ack`
            // was lost): acknowledge again.
            if decider != self.id {
                out.push(ack);
            }
            return;
        };
        if t.chain.last() == Some(&self.id) {
            // The decider learns a verdict settled by a recovery ballot.
            self.decider_settles(txn, Verdict::Commit, out);
            return;
        }
        match t.phase {
            Phase::Prepared { .. } => {
                let client = t.client;
                self.apply(txn, out);
                self.send_back(txn, Message::Commit { txn, decider }, out);
                self.persist_then(
                    txn,
                    Record::Completion {
                        txn,
                        client,
                        verdict: Verdict::Commit,
                    },
                    out,
                );
                self.set_phase(txn, Phase::Completing);
            }
            // The decider re-sent `Commit` (it restarted, or our `Ack` was lost).
            Phase::Finished(Verdict::Commit) if decider != self.id => out.push(ack),
            _ => {}
        }
    }

    pub(super) fn on_abort(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get(&txn) else { return };
        if t.chain.last() == Some(&self.id) {
            self.decider_settles(txn, Verdict::Abort, out);
            return;
        }
        // An `Abort` reaches a node still making its intent durable from a later node
        // that refused (the `Prepare` went on before the intent was durable), a
        // recovery ballot (abort settled) or a node that knows abort: final.
        if let Phase::Prepared { .. } | Phase::Preparing = t.phase {
            let client = t.client;
            self.locks.release(txn);
            // Presumed abort: the abort record need not be forced; if it is lost, the
            // restarted node asks the decider again and gets abort again.
            self.persist(
                Record::Completion {
                    txn,
                    client,
                    verdict: Verdict::Abort,
                },
                out,
            );
            self.send_back(txn, Message::Abort { txn }, out);
            self.set_phase(txn, Phase::Finished(Verdict::Abort));
        }
    }

    pub(super) fn on_ack(&mut self, txn: TxnId, from: NodeId, out: &mut Vec<Action>) {
        let Some(Txn {
            phase: Phase::AwaitingAcks { awaiting },
            ..
        }) = self.txns.get_mut(&txn)
        else {
            return;
        };
        awaiting.remove(&from);
        if awaiting.is_empty() {
            self.persist(Record::Forget { txn }, out);
            self.set_phase(txn, Phase::Finished(Verdict::Commit));
        }
    }

    pub(super) fn on_resolve(
        &mut self,
        txn: TxnId,
        from: NodeId,
        client: ClientId,
        out: &mut Vec<Action>,
    ) {
        let me = self.id;
        let answer = |verdict| Action::Send {
            to: from,
            msg: match verdict {
                Verdict::Commit => Message::Commit { txn, decider: me },
                Verdict::Abort => Message::Abort { txn },
            },
        };
        let late = self.is_late(client, txn);
        match self.txns.get_mut(&txn).map(|t| &mut t.phase) {
            Some(Phase::AwaitingAcks { .. }) => out.push(answer(Verdict::Commit)),
            Some(Phase::Finished(v)) => out.push(answer(*v)),
            Some(Phase::Refusing { askers, .. }) => {
                askers.insert(from);
            }
            // Our own decision is on its way to the log; the asker retries.
            Some(_) => {}
            // Forgotten: a committed transaction is forgotten only once every node
            // acknowledged it, so no node is still prepared and this `Resolve` is a
            // stale copy; an aborted one, or one whose `Prepare` is refused as late
            // from now on, can only abort. Answer abort, with no record and no reply
            // to the client (whose answer, if any, was given long ago).
            None if late => out.push(answer(Verdict::Abort)),
            None => {
                // Presumed abort: never saw the prepare (or it is still on its way).
                // Decide abort, durably, before answering, so that a late prepare can
                // never make us decide commit.
                self.persist_then(
                    txn,
                    Record::Decision {
                        txn,
                        client,
                        verdict: Verdict::Abort,
                    },
                    out,
                );
                let phase = Phase::Refusing {
                    reason: AbortReason::Unresolved,
                    askers: BTreeSet::from([from]),
                };
                let t = Txn::new(client, Vec::new(), Vec::new(), phase, 0);
                self.txns.insert(txn, t);
            }
        }
    }

    pub(super) fn set_phase(&mut self, txn: TxnId, phase: Phase) {
        if let Some(t) = self.txns.get_mut(&txn) {
            t.phase = phase;
        }
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
        out
    }

    pub(super) fn forget(&mut self, txn: TxnId) {
        if let Some(t) = self.txns.remove(&txn) {
            debug_assert!(matches!(t.phase, Phase::Finished(_)));
            let now = self.checkpoints;
            let mark = self.marks.entry(t.client).or_insert((txn, now));
            *mark = (mark.0.max(txn), now);
        }
    }

    pub(super) fn advance(&mut self, txn: TxnId, out: &mut Vec<Action>) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let phase = std::mem::replace(&mut t.phase, Phase::Finished(Verdict::Abort));
        let client = t.client;
        match phase {
            Phase::Proposing { sent: false, .. } => {
                let ballot = Ballot {
                    round: 0,
                    node: self.id,
                };
                for to in self.txns[&txn].acceptor_nodes().to_vec() {
                    let msg = Message::Accept {
                        txn,
                        ballot,
                        verdict: Verdict::Commit,
                        client,
                    };
                    self.send(to, msg, out);
                }
                self.set_phase(
                    txn,
                    Phase::Proposing {
                        sent: true,
                        accepted: BTreeSet::new(),
                    },
                );
            }
            Phase::Preparing => {
                self.set_phase(txn, Phase::Prepared { in_doubt: false });
                if self.txns[&txn].upstream {
                    self.notify_next(txn, out);
                }
            }
            Phase::Deciding => {
                self.apply(txn, out);
                out.push(Action::Reply {
                    client,
                    txn,
                    outcome: Outcome::Committed,
                });
                let decider = self.id;
                self.send_back(txn, Message::Commit { txn, decider }, out);
                let awaiting: BTreeSet<NodeId> = self.txns[&txn]
                    .chain
                    .iter()
                    .copied()
                    .filter(|&n| n != self.id)
                    .collect();
                if awaiting.is_empty() {
                    self.persist(Record::Forget { txn }, out);
                    self.set_phase(txn, Phase::Finished(Verdict::Commit));
                } else {
                    self.set_phase(txn, Phase::AwaitingAcks { awaiting });
                }
            }
            Phase::Refusing { reason, askers } => {
                out.push(Action::Reply {
                    client,
                    txn,
                    outcome: Outcome::Aborted(reason),
                });
                self.send_back(txn, Message::Abort { txn }, out);
                for to in askers {
                    out.push(Action::Send {
                        to,
                        msg: Message::Abort { txn },
                    });
                }
                // Finished(Abort) already set by the replace above.
            }
            Phase::Completing => {
                if let Some(&decider) = self.txns[&txn].chain.last() {
                    out.push(Action::Send {
                        to: decider,
                        msg: Message::Ack { txn, from: self.id },
                    });
                }
                self.set_phase(txn, Phase::Finished(Verdict::Commit));
            }
            other => self.set_phase(txn, other),
        }
    }
}
