//! Deterministic scenarios of the protocol, with real log bytes and page files.

use std::collections::VecDeque;

use pipewright_storage::locks::PrepareError;
use pipewright_storage::log::{encode, replay, PageWrite, Record, Verdict};
use pipewright_storage::pages::PageStore;
use pipewright_storage::protocol::{
    AbortReason, Action, Message, Node, NodeConfig, Outcome, Prepare, RecordId, TxnStatus,
};
use pipewright_storage::{ClientId, NodeId, PageId, TxnId};

mod cluster;
mod notices;

use cluster::{txn, w, Cluster};

#[test]
fn three_node_commit_sends_each_chain_message_2n_minus_2_times() {
    let mut c = Cluster::new(3);
    c.start(txn(1, &[0, 1, 2], 4));
    c.deliver_all();
    assert_eq!(c.replies, vec![(TxnId(1), Outcome::Committed)]);
    let count = |f: fn(&Message) -> bool| c.sent.iter().filter(|m| f(m)).count();
    assert_eq!(count(|m| matches!(m, Message::Prepare(_))), 2);
    // The pipelined prepare's notice follows it down the chain, hop by hop.
    assert_eq!(count(|m| matches!(m, Message::Durable { .. })), 2);
    assert_eq!(count(|m| matches!(m, Message::Commit { .. })), 2);
    assert_eq!(count(|m| matches!(m, Message::Ack { .. })), 2);
    for n in 0..3 {
        assert_eq!(c.pages[n].read(PageId(4)).unwrap().0, 1);
        assert_eq!(
            c.nodes[n].status(TxnId(1)),
            TxnStatus::Finished(Verdict::Commit)
        );
        assert!(c.nodes[n].locks().is_empty());
    }
    // The decider logged intent, decision and, after both acks, forget.
    let decider_log = replay(&c.logs[2]).records;
    assert!(matches!(
        decider_log[..],
        [
            Record::Intent(_),
            Record::Decision { .. },
            Record::Forget { .. }
        ]
    ));
}

#[test]
fn failed_analysis_aborts_back_to_the_head_and_releases_locks() {
    let mut c = Cluster::new(3);
    // Node 1's page is already at version 1: the transaction's expected 0 is stale.
    c.pages[1].apply(PageId(4), 1, b"newer").unwrap();
    let versions = c.pages[1].scan().unwrap().versions;
    c.nodes[1] = Node::new(NodeId(1), NodeConfig::default(), versions);
    c.start(txn(1, &[0, 1, 2], 4));
    c.deliver_all();
    let reason = AbortReason::Refused {
        node: NodeId(1),
        error: PrepareError::VersionMismatch {
            page: PageId(4),
            expected: 0,
            found: 1,
        },
    };
    assert_eq!(c.replies, vec![(TxnId(1), Outcome::Aborted(reason))]);
    assert_eq!(
        c.nodes[0].status(TxnId(1)),
        TxnStatus::Finished(Verdict::Abort)
    );
    assert!(c.nodes[0].locks().is_empty());
    assert_eq!(c.nodes[2].status(TxnId(1)), TxnStatus::Unknown);
    assert_eq!(c.pages[0].read(PageId(4)).unwrap().0, 0);
}

#[test]
fn overlapping_transactions_conflict_without_waiting() {
    let mut c = Cluster::new(2);
    c.start(txn(1, &[0, 1], 3));
    // Deliver only the first hop: txn 1 is prepared on node 0 and holds page 3.
    let (to, msg) = c.net.pop_front().unwrap();
    let actions = c.nodes[to.0 as usize].handle(msg);
    c.run(0, actions);
    let held = c.net.pop_front().unwrap();
    c.start(txn(2, &[0, 1], 3));
    c.deliver_all();
    let conflict = PrepareError::Conflict {
        page: PageId(3),
        holder: TxnId(1),
    };
    assert_eq!(
        c.replies,
        vec![(
            TxnId(2),
            Outcome::Aborted(AbortReason::Refused {
                node: NodeId(0),
                error: conflict
            })
        )]
    );
    c.net.push_back(held);
    c.deliver_all();
    assert_eq!(c.replies[1], (TxnId(1), Outcome::Committed));
}

#[test]
fn client_is_answered_only_once_the_decision_is_durable() {
    let mut decider = Node::new(NodeId(0), NodeConfig::default(), Default::default());
    let actions = decider.handle(Message::Prepare(txn(1, &[0], 1)));
    assert!(actions.iter().all(|a| matches!(a, Action::Persist { .. })));
    let last = actions.iter().filter_map(|a| match a {
        Action::Persist { id, .. } => Some(*id),
        _ => None,
    });
    let last = last.max().unwrap();
    // The intent alone being durable is not enough.
    assert!(decider.persisted(RecordId(last.0 - 1)).is_empty());
    let after = decider.persisted(last);
    assert!(after.iter().any(|a| matches!(
        a,
        Action::Reply {
            outcome: Outcome::Committed,
            ..
        }
    )));
}

#[test]
fn an_in_doubt_node_keeps_its_locks_and_asks_the_decider() {
    let mut c = Cluster::new(3);
    c.start(txn(1, &[0, 1, 2], 5));
    // Run until the decider has decided, then lose the Commit to node 1 and crash it.
    while let Some((to, msg)) = c.net.pop_front() {
        if to == NodeId(1) && matches!(msg, Message::Commit { .. }) {
            break;
        }
        let actions = c.nodes[to.0 as usize].handle(msg);
        c.run(to.0 as usize, actions);
    }
    assert_eq!(c.replies, vec![(TxnId(1), Outcome::Committed)]);
    c.net.clear();
    c.crash_and_recover(1);
    assert_eq!(
        c.nodes[1].status(TxnId(1)),
        TxnStatus::Prepared { in_doubt: true }
    );
    assert_eq!(c.nodes[1].locks().holder(PageId(5)), Some(TxnId(1)));
    assert!(matches!(
        c.net.front(),
        Some((NodeId(2), Message::Resolve { .. }))
    ));
    c.deliver_all();
    assert_eq!(
        c.nodes[1].status(TxnId(1)),
        TxnStatus::Finished(Verdict::Commit)
    );
    assert_eq!(c.pages[1].read(PageId(5)).unwrap().0, 1);
    // Node 1 passed the Commit on to node 0, and both acknowledged.
    assert_eq!(c.pages[0].read(PageId(5)).unwrap().0, 1);
    assert_eq!(
        c.nodes[2].status(TxnId(1)),
        TxnStatus::Finished(Verdict::Commit)
    );
}

#[test]
fn the_decider_re_sends_commit_until_every_node_acknowledges() {
    let mut c = Cluster::new(2);
    c.start(txn(1, &[0, 1], 6));
    while let Some((to, msg)) = c.net.pop_front() {
        if matches!(msg, Message::Commit { .. }) {
            continue; // lost
        }
        let actions = c.nodes[to.0 as usize].handle(msg);
        c.run(to.0 as usize, actions);
    }
    assert_eq!(c.nodes[1].status(TxnId(1)), TxnStatus::AwaitingAcks);
    assert_eq!(
        c.nodes[0].status(TxnId(1)),
        TxnStatus::Prepared { in_doubt: false }
    );
    let tick = c.nodes[1].tick();
    assert_eq!(
        tick,
        vec![Action::Send {
            to: NodeId(0),
            msg: Message::Commit {
                txn: TxnId(1),
                decider: NodeId(1)
            }
        }]
    );
    c.run(1, tick);
    c.deliver_all();
    assert_eq!(c.pages[0].read(PageId(6)).unwrap().0, 1);
    assert_eq!(
        c.nodes[1].status(TxnId(1)),
        TxnStatus::Finished(Verdict::Commit)
    );
    // After a restart the decider has forgotten nothing it must remember.
    c.crash_and_recover(1);
    assert_eq!(
        c.nodes[1].status(TxnId(1)),
        TxnStatus::Finished(Verdict::Commit)
    );
    assert!(c.net.is_empty());
}

#[test]
fn a_decider_that_never_saw_the_prepare_aborts_durably_before_answering() {
    let mut decider = Node::new(NodeId(2), NodeConfig::default(), Default::default());
    let actions = decider.handle(Message::Resolve {
        txn: TxnId(7),
        from: NodeId(0),
        client: ClientId(7),
    });
    let [Action::Persist { id, record }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(
        record,
        &Record::Decision {
            txn: TxnId(7),
            client: ClientId(7),
            verdict: Verdict::Abort
        }
    );
    let after = decider.persisted(*id);
    assert!(after.contains(&Action::Send {
        to: NodeId(0),
        msg: Message::Abort { txn: TxnId(7) }
    }));
    // The late prepare can no longer commit it.
    let late = decider.handle(Message::Prepare(txn(7, &[0, 2], 1)));
    assert_eq!(
        late,
        vec![Action::Send {
            to: NodeId(0),
            msg: Message::Abort { txn: TxnId(7) }
        }]
    );
}

#[test]
fn recovery_redoes_committed_writes_in_commit_order() {
    let mut c = Cluster::new(1);
    c.start(txn(1, &[0], 2));
    c.deliver_all();
    let mut second = txn(2, &[0], 2);
    second.writes = vec![(NodeId(0), w(2, 1))];
    c.start(second);
    c.deliver_all();
    assert_eq!(c.pages[0].read(PageId(2)).unwrap().0, 2);
    // The page file lost both writes (never synced); the log redoes them in order.
    let dir = tempfile::tempdir().unwrap();
    c.pages[0] = PageStore::open(dir.path().join("fresh"), 8).unwrap();
    c.crash_and_recover(0);
    let (version, data) = c.pages[0].read(PageId(2)).unwrap();
    assert_eq!((version, &data[..2]), (2, &[2u8, 1][..]));
    assert_eq!(c.nodes[0].version(PageId(2)), 2);
}

#[test]
fn a_prepare_overtaken_by_a_later_forgotten_transaction_of_its_client_is_answered() {
    let mut c = Cluster::new(2);
    let client = ClientId(77);
    let prepare = |id: u64, page: u64| Prepare {
        txn: TxnId(id),
        client,
        chain: vec![NodeId(0), NodeId(1)],
        writes: vec![(NodeId(0), w(page, 0)), (NodeId(1), w(page, 0))],
        acceptors: 0,
    };
    // Transaction 10 of the client commits, then two checkpoints forget it on both
    // nodes: their low-water mark for the client is 10.
    c.start(prepare(10, 3));
    c.deliver_all();
    assert_eq!(c.replies, vec![(TxnId(10), Outcome::Committed)]);
    for _ in 0..2 {
        for n in 0..2 {
            let actions = c.nodes[n].checkpoint();
            c.run(n, actions);
        }
    }
    assert_eq!(
        c.nodes[0].status(TxnId(10)),
        TxnStatus::Unknown,
        "forgotten"
    );
    // Transaction 9, sent earlier but overtaken, arrives now at the head: refused
    // without state, and the client is told (not left to time out), with an answer
    // that is not a verdict.
    c.replies.clear();
    c.start(prepare(9, 4));
    c.deliver_all();
    assert_eq!(
        c.replies,
        vec![(
            TxnId(9),
            Outcome::Forgotten {
                node: NodeId(0),
                floor: TxnId(0)
            }
        )]
    );
    assert_eq!(c.nodes[0].status(TxnId(9)), TxnStatus::Unknown);
    assert!(c.nodes[0].locks().is_empty());
    // Arriving at the second node (as forwarded by a head that had not forgotten
    // the client's later transaction yet): the same answer, and the head, which
    // prepared it, is told to abort.
    let late = c.nodes[1].handle(Message::Prepare(prepare(8, 5)));
    assert!(late.iter().any(|a| matches!(
        a,
        Action::Send {
            to: NodeId(0),
            msg: Message::Abort { txn: TxnId(8) }
        }
    )));
    assert!(late.iter().any(|a| matches!(
        a,
        Action::Reply {
            txn: TxnId(8),
            outcome: Outcome::Forgotten {
                node: NodeId(1),
                ..
            },
            ..
        }
    )));
}

/// A node in the middle of the chain that finished a committed transaction and forgot
/// it (two checkpoints) while its predecessor, whose `Commit` was lost, is still
/// prepared: a late duplicate `Prepare` there must not make the predecessor abort what
/// the decider committed. The predecessor learns the verdict from the decider.
#[test]
fn a_late_duplicate_prepare_at_a_node_that_forgot_a_commit_does_not_abort_it() {
    let mut c = Cluster::new(3);
    let p = txn(1, &[0, 1, 2], 7);
    c.start(p.clone());
    while let Some((to, msg)) = c.net.pop_front() {
        if to == NodeId(0) && matches!(msg, Message::Commit { .. }) {
            continue; // lost
        }
        let actions = c.nodes[to.0 as usize].handle(msg);
        c.run(to.0 as usize, actions);
    }
    assert_eq!(c.replies, vec![(TxnId(1), Outcome::Committed)]);
    assert_eq!(
        c.nodes[0].status(TxnId(1)),
        TxnStatus::Prepared { in_doubt: false }
    );
    for _ in 0..2 {
        let actions = c.nodes[1].checkpoint();
        c.run(1, actions);
    }
    assert_eq!(c.nodes[1].status(TxnId(1)), TxnStatus::Unknown, "forgotten");
    // The duplicate arrives at node 1.
    let late = c.nodes[1].handle(Message::Prepare(p));
    assert!(
        !late.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: Message::Abort { .. },
                ..
            }
        )),
        "a node that forgot the verdict told its predecessor to abort: {late:?}"
    );
    c.run(1, late);
    c.deliver_all();
    // The predecessor's retry timer asks the decider, which still awaits its
    // acknowledgement: commit.
    let tick = c.nodes[0].tick();
    c.run(0, tick);
    c.deliver_all();
    assert_eq!(
        c.nodes[0].status(TxnId(1)),
        TxnStatus::Finished(Verdict::Commit)
    );
    assert_eq!(c.pages[0].read(PageId(7)).unwrap().0, 1);
    assert_eq!(
        c.nodes[2].status(TxnId(1)),
        TxnStatus::Finished(Verdict::Commit)
    );
}
