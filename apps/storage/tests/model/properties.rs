//! The properties the model checks: safety (atomicity, agreement, validity, no
//! unilateral abort, no lost update) and, where asked, liveness.

use pipewright_storage::log::Verdict;
use pipewright_storage::protocol::TxnStatus;
use pipewright_storage::TxnId;
use stateright::Property;

use crate::chain::{ChainModel, State};

/// Every property of `model`.
pub(crate) fn all(model: &ChainModel) -> Vec<Property<ChainModel>> {
    let mut props = vec![
        Property::always("atomicity", |_, s: &State| {
            let committed = |t| {
                s.outcomes
                    .iter()
                    .any(|&(_, x, v)| x == t && v == Verdict::Commit)
                    || s.replies.contains(&(t, true))
            };
            let aborted = |t| {
                s.outcomes
                    .iter()
                    .any(|&(_, x, v)| x == t && v == Verdict::Abort)
                    || s.replies.contains(&(t, false))
            };
            s.outcomes
                .iter()
                .all(|&(_, t, _)| !(committed(t) && aborted(t)))
                && s.replies
                    .iter()
                    .all(|&(t, _)| !(committed(t) && aborted(t)))
        }),
        Property::always(
            "commit applied or replied only after a durable decision",
            |_, s: &State| !s.commit_before_decision,
        ),
        Property::always("a yes-voter never aborts on its own", |_, s: &State| {
            !s.unilateral_abort
        }),
        Property::always(
            "agreement: no transaction is decided both ways",
            |_, s: &State| {
                s.decided
                    .iter()
                    .all(|&(t, v)| v == Verdict::Abort || !s.decided.contains(&(t, Verdict::Abort)))
            },
        ),
        Property::always(
            "validity: a commit needs every chain node's durable intent",
            |m: &ChainModel, s: &State| {
                let committed = |t: TxnId| {
                    s.outcomes
                        .iter()
                        .any(|&(_, x, v)| x == t && v == Verdict::Commit)
                        || s.replies.contains(&(t, true))
                        || s.decided.contains(&(t, Verdict::Commit))
                };
                m.txns.iter().all(|p| {
                    !committed(p.txn)
                        || p.chain
                            .iter()
                            .all(|n| s.intents.contains(&(n.0 as usize, p.txn)))
                })
            },
        ),
        Property::always(
            "a forgotten transaction never comes back",
            |_, s: &State| !s.revived,
        ),
        Property::always("no lost update", |_, s: &State| {
            let keys: Vec<_> = s.applied.iter().map(|&(n, p, v, _)| (n, p, v)).collect();
            keys.windows(2).all(|w| w[0] != w[1])
        }),
        Property::always(
            "the O(1) joinable and unfinished counts equal their definitions over the statuses",
            |m: &ChainModel, s: &State| {
                s.nodes.iter().flatten().all(|node| {
                    let by_status = m
                        .txns
                        .iter()
                        .filter(|p| {
                            matches!(
                                node.status(p.txn),
                                TxnStatus::Preparing
                                    | TxnStatus::Replicating
                                    | TxnStatus::Deciding
                                    | TxnStatus::Refusing
                                    | TxnStatus::Completing
                            )
                        })
                        .count();
                    let open = m
                        .txns
                        .iter()
                        .filter(|p| {
                            !matches!(
                                node.status(p.txn),
                                TxnStatus::Unknown | TxnStatus::Finished(_)
                            )
                        })
                        .count();
                    node.joinable() == by_status && node.unfinished() == open
                })
            },
        ),
        Property::sometimes("a transaction commits", |_, s: &State| {
            s.replies.iter().any(|r| r.1)
        }),
        Property::sometimes("a transaction aborts", |_, s: &State| {
            s.replies.iter().any(|r| !r.1)
        }),
    ];
    if model.faults.checkpoints > 0 {
        props.push(Property::sometimes(
            "a checkpoint forgets a transaction",
            |_, s: &State| !s.forgotten.is_empty(),
        ));
    }
    if model.liveness {
        props.push(Property::eventually(
            "every transaction is decided everywhere (on every live node)",
            |m: &ChainModel, s| m.settled(s),
        ));
    }
    props
}
