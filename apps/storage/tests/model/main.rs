//! Model check of the commit-chain protocol with `stateright`.
//!
//! The model drives the real [`Node`] state machines (no re-implementation) over a
//! network that loses, duplicates and reorders messages, with per-record log flushes
//! (a crash can fall between any two log writes), node crashes (volatile state and
//! unflushed log records lost; the page file survives, as with `kill -9`), restarts
//! through [`Node::recover`] from the durable records, retry timer ticks, and
//! checkpoints (a flushed checkpoint record replaces the durable log, as the new log
//! segment does; the node then forgets transactions finished at the previous one).
//! Faults are bounded by per-run budgets so the state space is finite.
//!
//! Sized to finish in well under 60 s in the default debug test profile on 2 cores;
//! each case prints its state count and time.
mod chain;
mod properties;

use std::time::Instant;

use pipewright_storage::log::PageWrite;
use pipewright_storage::protocol::Prepare;
use pipewright_storage::{ClientId, NodeId, PageId, TxnId};
use stateright::{Checker, Model};

use chain::{Budget, ChainModel};

fn write(page: u64) -> Vec<PageWrite> {
    vec![PageWrite {
        page: PageId(page),
        expected: 0,
        data: vec![page as u8 + 1].into(),
    }]
}

/// Transaction 1 writes page 0 on every node, chain 0 → 1 → … (decider: the last node).
/// Transaction 2 writes page 0 on node 0 (conflicting with transaction 1) and page 1 on
/// node 1, over the reversed two-node chain 1 → 0 (another decider).
fn txns(nodes: usize, count: usize) -> Vec<Prepare> {
    txns_f(nodes, count, 0)
}

/// [`txns`] with `f` acceptors besides each decider.
fn txns_f(nodes: usize, count: usize, f: u8) -> Vec<Prepare> {
    let chain: Vec<NodeId> = (0..nodes as u32).map(NodeId).collect();
    let mut out = vec![Prepare {
        txn: TxnId(1),
        client: ClientId(1),
        writes: chain.iter().map(|&n| (n, write(0))).collect(),
        acceptors: f,
        chain,
    }];
    if count > 1 {
        out.push(Prepare {
            txn: TxnId(2),
            client: ClientId(2),
            chain: vec![NodeId(1), NodeId(0)],
            writes: vec![(NodeId(0), write(0)), (NodeId(1), write(1))],
            acceptors: f,
        });
    }
    out
}

fn check(name: &str, model: ChainModel) {
    let start = Instant::now();
    let checker = model.checker().threads(2).spawn_bfs().join();
    let elapsed = start.elapsed();
    println!(
        "model {name}: {} unique states ({} visited), max depth {}, {:.1?}",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        elapsed
    );
    checker.assert_properties();
}

const NO_FAULTS: Budget = Budget {
    crashes: 0,
    losses: 0,
    dups: 0,
    ticks: 0,
    checkpoints: 0,
};

#[test]
fn two_nodes_two_txns_no_faults_all_decided() {
    let faults = Budget {
        dups: 1,
        ..NO_FAULTS
    };
    check(
        "n2-t2-dup",
        ChainModel {
            nodes: 2,
            txns: txns(2, 2),
            faults,
            liveness: true,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

#[test]
fn three_nodes_two_txns_no_faults_all_decided() {
    let faults = Budget {
        dups: 1,
        ..NO_FAULTS
    };
    check(
        "n3-t2-dup",
        ChainModel {
            nodes: 3,
            txns: txns(3, 2),
            faults,
            liveness: true,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

#[test]
fn two_nodes_two_txns_with_crash_loss_dup() {
    // No duplicate here: with the pipelined prepare's Durable notice, a duplicate on
    // top of a crash, a loss and two transactions took 2 M states (about 4 minutes of
    // CI on 2 cores). Duplicates with a crash are covered by the one-transaction
    // cases below (which also catch a notice sent before the intent is durable).
    let faults = Budget {
        crashes: 1,
        losses: 1,
        dups: 0,
        ticks: 1,
        checkpoints: 0,
    };
    check(
        "n2-t2-faults",
        ChainModel {
            nodes: 2,
            txns: txns(2, 2),
            faults,
            liveness: false,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

#[test]
fn three_nodes_one_txn_with_crash_loss_dup() {
    let faults = Budget {
        crashes: 1,
        losses: 1,
        dups: 1,
        ticks: 1,
        checkpoints: 0,
    };
    check(
        "n3-t1-faults",
        ChainModel {
            nodes: 3,
            txns: txns(3, 1),
            faults,
            liveness: false,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

/// Checkpoints forget finished transactions (after two of them); a late duplicate
/// `Prepare` or `Resolve` must still be refused, and every transaction still decided
/// everywhere.
#[test]
fn two_nodes_two_txns_with_checkpoints_and_dups_all_decided() {
    let faults = Budget {
        dups: 1,
        checkpoints: 2,
        ..NO_FAULTS
    };
    check(
        "n2-t2-checkpoints",
        ChainModel {
            nodes: 2,
            txns: txns(2, 2),
            faults,
            liveness: true,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

/// Recovery from a checkpoint keeps every in-doubt intent and undelivered commit
/// decision, across a crash at any point (before, during or after the checkpoint).
#[test]
fn two_nodes_one_txn_with_checkpoints_crash_dup() {
    let faults = Budget {
        crashes: 1,
        losses: 0,
        dups: 1,
        ticks: 1,
        checkpoints: 2,
    };
    check(
        "n2-t1-checkpoints-crash",
        ChainModel {
            nodes: 2,
            txns: txns(2, 1),
            faults,
            liveness: false,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}

/// F = 1 (chain 0 → 1 → 2, acceptor: node 1): safety (atomicity, agreement,
/// validity, no unilateral abort, no lost update) with the decider crashing at any
/// step and restarting (a recovery ballot racing its restart), one retry tick.
#[test]
fn f1_three_nodes_one_txn_decider_crash_anywhere() {
    let faults = Budget {
        crashes: 1,
        losses: 0,
        dups: 0,
        ticks: 1,
        checkpoints: 0,
    };
    check(
        "f1-n3-t1-crash",
        ChainModel {
            nodes: 3,
            txns: txns_f(3, 1, 1),
            faults,
            liveness: false,
            killable: None,
            tickers: Vec::new(),
            crashers: vec![2],
        },
    );
}

/// F = 1: the decider (node 2) dies for good at any step; every live node still
/// settles the transaction (liveness), by a recovery ballot with the acceptor
/// (node 1), and all properties hold. Node 0 (the head) runs the retry timer.
#[test]
fn f1_decider_killed_at_any_step_others_settle() {
    let faults = Budget {
        ticks: 1,
        ..NO_FAULTS
    };
    check(
        "f1-n3-t1-decider-killed",
        ChainModel {
            nodes: 3,
            txns: txns_f(3, 1, 1),
            faults,
            liveness: true,
            killable: Some(2),
            tickers: vec![0],
            crashers: Vec::new(),
        },
    );
}

/// F = 1 with two transactions of different deciders (node 2 for chain 0 → 1 → 2,
/// node 0 for chain 1 → 0) and a duplicate: every transaction decided everywhere.
#[test]
fn f1_three_nodes_two_txns_all_decided() {
    let faults = Budget {
        dups: 1,
        ..NO_FAULTS
    };
    check(
        "f1-n3-t2-dup",
        ChainModel {
            nodes: 3,
            txns: txns_f(3, 2, 1),
            faults,
            liveness: true,
            killable: None,
            tickers: Vec::new(),
            crashers: Vec::new(),
        },
    );
}
