//! Pipelined prepares: the `Durable` notice, and prepares refused before any work.

use super::*;

/// Pipelined prepares: the head forwards the `Prepare` before its intent is durable;
/// the decider logs and decides nothing until the `Durable` notice arrives, and
/// presumes abort (durably, then tells the client and the head) if it never does.
#[test]
fn the_decider_decides_only_after_the_durable_notice_and_presumes_abort_without_it() {
    let chain = vec![NodeId(0), NodeId(1)];
    let prepare = |txn| Prepare {
        txn: TxnId(txn),
        client: ClientId(7),
        chain: chain.clone(),
        writes: vec![(NodeId(0), w(txn, 0)), (NodeId(1), w(txn, 0))],
        acceptors: 0,
    };
    let config = NodeConfig {
        patience: 2,
        ..NodeConfig::default()
    };
    let mut head = Node::new(NodeId(0), config, Default::default());
    let mut decider = Node::new(NodeId(1), config, Default::default());
    for (txn, notice) in [(1, true), (2, false)] {
        let out = head.handle(Message::Prepare(prepare(txn)));
        // The intent is asked for and the `Prepare` forwarded in the same step.
        let intent = out.iter().find_map(|a| match a {
            Action::Persist {
                id,
                record: Record::Intent(_),
            } => Some(*id),
            _ => None,
        });
        let forwarded = out.iter().find_map(|a| match a {
            Action::Send {
                to: NodeId(1),
                msg: m @ Message::Prepare(_),
            } => Some(m.clone()),
            _ => None,
        });
        let (intent, forwarded) = (intent.expect("intent"), forwarded.expect("forwarded"));
        assert!(out.iter().all(|a| !matches!(
            a,
            Action::Send {
                msg: Message::Durable { .. },
                ..
            }
        )));
        // The decider takes its locks but logs nothing before the notice.
        let out = decider.handle(forwarded);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(decider.status(TxnId(txn)), TxnStatus::Preparing);
        if notice {
            let out = head.persisted(intent);
            let notice = out
                .into_iter()
                .find_map(|a| match a {
                    Action::Send {
                        msg: m @ Message::Durable { .. },
                        ..
                    } => Some(m),
                    _ => None,
                })
                .expect("the notice once the intent is durable");
            let out = decider.handle(notice);
            let decision = out.iter().find_map(|a| match a {
                Action::Persist {
                    id,
                    record:
                        Record::Decision {
                            verdict: Verdict::Commit,
                            ..
                        },
                } => Some(*id),
                _ => None,
            });
            let out = decider.persisted(decision.expect("a commit decision after the notice"));
            assert!(out.iter().any(|a| matches!(
                a,
                Action::Reply {
                    outcome: Outcome::Committed,
                    ..
                }
            )));
        } else {
            // No notice: after `patience` ticks the decider presumes abort.
            let mut abort = None;
            for _ in 0..=config.patience {
                for a in decider.tick() {
                    if let Action::Persist {
                        id,
                        record:
                            Record::Decision {
                                verdict: Verdict::Abort,
                                ..
                            },
                    } = a
                    {
                        abort = Some(id);
                    }
                }
            }
            let out = decider.persisted(abort.expect("an abort decision after patience ticks"));
            assert!(out.iter().any(|a| matches!(
                a,
                Action::Reply {
                    outcome: Outcome::Aborted(AbortReason::Unresolved),
                    ..
                }
            )));
            assert!(out.iter().any(|a| matches!(
                a,
                Action::Send {
                    to: NodeId(0),
                    msg: Message::Abort { .. }
                }
            )));
            assert_eq!(
                decider.status(TxnId(txn)),
                TxnStatus::Finished(Verdict::Abort)
            );
        }
    }
}

/// Every node sends its `Durable` notice straight to the decider once its own intent
/// is durable (not hop by hop): the decider decides only once the notices of all the
/// other chain nodes arrived, whatever their order, and keeps a notice that overtook
/// its `Prepare`.
#[test]
fn the_decider_decides_only_once_every_other_node_sent_its_notice() {
    let ids = [NodeId(0), NodeId(1), NodeId(2)];
    let prepare = |txn| Prepare {
        txn: TxnId(txn),
        client: ClientId(7),
        chain: ids.to_vec(),
        writes: ids.iter().map(|&n| (n, w(txn, 0))).collect(),
        acceptors: 0,
    };
    let intent_of = |out: &[Action]| {
        out.iter()
            .find_map(|a| match a {
                Action::Persist {
                    id,
                    record: Record::Intent(_),
                } => Some(*id),
                _ => None,
            })
            .expect("an intent")
    };
    let forwarded = |out: &[Action]| {
        out.iter()
            .find_map(|a| match a {
                Action::Send {
                    msg: m @ Message::Prepare(_),
                    ..
                } => Some(m.clone()),
                _ => None,
            })
            .expect("the forwarded prepare")
    };
    let notice_to_decider = |out: Vec<Action>| {
        let notices: Vec<Message> = out
            .into_iter()
            .filter_map(|a| match a {
                Action::Send {
                    to,
                    msg: m @ Message::Durable { .. },
                } => {
                    assert_eq!(to, NodeId(2), "notices go straight to the decider");
                    Some(m)
                }
                _ => None,
            })
            .collect();
        assert_eq!(notices.len(), 1, "{notices:?}");
        notices.into_iter().next().expect("one")
    };
    let decides = |out: &[Action]| {
        out.iter().any(|a| {
            matches!(
                a,
                Action::Persist {
                    record: Record::Decision {
                        verdict: Verdict::Commit,
                        ..
                    },
                    ..
                }
            )
        })
    };
    // Transaction 1: the middle node's intent is durable first; transaction 2: the
    // head's, and both notices reach the decider before the `Prepare`.
    for (txn, head_first) in [(1, false), (2, true)] {
        let mut nodes: Vec<Node> = ids
            .iter()
            .map(|&id| Node::new(id, NodeConfig::default(), Default::default()))
            .collect();
        let out = nodes[0].handle(Message::Prepare(prepare(txn)));
        let (i0, p1) = (intent_of(&out), forwarded(&out));
        let out = nodes[1].handle(p1);
        let (i1, p2) = (intent_of(&out), forwarded(&out));
        let n0 = notice_to_decider(nodes[0].persisted(i0));
        let n1 = notice_to_decider(nodes[1].persisted(i1));
        let (first, second) = if head_first { (n0, n1) } else { (n1, n0) };
        if head_first {
            assert!(nodes[2].handle(first).is_empty());
            assert!(nodes[2].handle(second).is_empty());
            assert!(decides(&nodes[2].handle(p2)));
        } else {
            assert!(nodes[2].handle(p2).is_empty());
            let out = nodes[2].handle(first.clone());
            assert!(!decides(&out), "decided on one notice of two: {out:?}");
            // A repeat of the same notice does not count twice.
            assert!(!decides(&nodes[2].handle(first)));
            assert!(decides(&nodes[2].handle(second)));
        }
        assert_eq!(nodes[2].status(TxnId(txn)), TxnStatus::Deciding);
    }
}

/// A hostile prepare naming a huge chain is refused as malformed before any quadratic
/// check runs; a repeated page is refused; nothing stays locked.
#[test]
fn huge_chains_and_page_lists_are_refused_quickly() {
    use pipewright_storage::protocol::Malformed;
    let mut c = Cluster::new(1);
    let mut p = txn(7, &[0], 1);
    p.chain = (0..1_000_000u32).map(NodeId).collect();
    let actions = c.nodes[0].handle(Message::Prepare(p));
    c.run(0, actions);
    assert!(
        matches!(
            &c.replies[..],
            [(
                TxnId(7),
                Outcome::Aborted(AbortReason::Malformed {
                    what: Malformed::ChainTooLong,
                    ..
                })
            )]
        ),
        "{:?}",
        c.replies
    );
    // Every page of the node, then the first one again.
    let mut p = txn(8, &[0], 1);
    let writes: Vec<PageWrite> = (0..9u64)
        .map(|page| PageWrite {
            page: PageId(page % 8),
            expected: 0,
            data: vec![1].into(),
        })
        .collect();
    p.writes = vec![(NodeId(0), writes)];
    let actions = c.nodes[0].handle(Message::Prepare(p));
    c.run(0, actions);
    assert!(
        matches!(
            c.replies.last(),
            Some((
                TxnId(8),
                Outcome::Aborted(AbortReason::Refused {
                    error: PrepareError::DuplicatePage { .. },
                    ..
                })
            ))
        ),
        "{:?}",
        c.replies
    );
    assert!(c.nodes[0].locks().is_empty());
}
