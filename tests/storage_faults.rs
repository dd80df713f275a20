//! The `kill -9` fault matrix with real node processes: each role of a three-node
//! chain (head, middle, decider) crashes at each protocol step it takes part in, and
//! the coordinator (a client process) is killed mid-run; after each crash the node is
//! restarted and the bank is audited (total constant, no negative balance, every
//! acknowledged transfer durable).
//!
//! Needs the node's crash points: feature `storage-faults` (on with `--all-features`).
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "storage-faults", feature = "cli"))]

mod storage_common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pipewright_storage::bank::Bank;
use pipewright_storage::client::{ClientError, StorageClient, Transaction};
use pipewright_storage::log::Verdict;
use pipewright_storage::server::Step;
use pipewright_storage::{io_runtime, NodeId, PageId, TxnId};
use storage_common::{audit, spawn_workload, Counts, TestCluster, EXE};

#[test]
fn kill_9_of_each_role_at_each_protocol_step() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let mut cluster = TestCluster::start("faults", &["--tick-ms", "100"]);
    let rt = io_runtime(2).unwrap();
    let bank = Arc::new(Bank::new(cluster.client(), 8));
    rt.block_on(bank.open(1000)).unwrap();
    // Transfers over all three nodes: chain [1, 2, 3], so node 1 is the head, node 2
    // the middle node and node 3 the decider.
    let roles = [
        (NodeId(1), "head"),
        (NodeId(2), "middle"),
        (NodeId(3), "decider"),
    ];
    let counts = Arc::new(Counts::default());
    let mut kills = 0;
    for (node, role) in roles {
        let steps: &[Step] = if role == "decider" {
            &[Step::BeforeIntent, Step::AfterDecision]
        } else {
            &[
                Step::BeforeIntent,
                Step::AfterIntent,
                Step::BeforeCompletion,
                Step::AfterCompletion,
            ]
        };
        for &step in steps {
            let crash = vec!["--crash-at".to_string(), format!("{}:5", step.name())];
            cluster.cluster.restart_with(node, &crash).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let tasks = spawn_workload(&rt, &bank, &cluster, 3, Some(3), &stop, &counts);
            let crashed = cluster
                .cluster
                .wait_exit(node, Duration::from_secs(20))
                .unwrap();
            // Keep the survivors busy for a moment while the node is down.
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                rt.block_on(t).unwrap();
            }
            assert!(crashed, "{role} never reached {}", step.name());
            kills += 1;
            cluster.cluster.restart(node).unwrap();
            audit(
                &rt,
                &bank,
                &format!("{role} (node {}) killed {}", node.0, step.name()),
            );
        }
    }
    println!("fault matrix: {kills} kills; transfers {}", counts.line());

    // The coordinator: a client process running transfers, killed with -9 mid-run.
    let mut coordinator = Command::new(EXE)
        .args(["storage", "bench", "--seconds", "30", "--concurrency", "4"])
        .args(["--accounts", "8", "--peers"])
        .arg(cluster.cluster.peers_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    let status = rt.block_on(cluster.client().status(NodeId(1))).unwrap();
    println!(
        "coordinator killed after 2 s of transfers ({} log syncs on node 1 so far)",
        status.log_syncs
    );
    audit(&rt, &bank, "coordinator (client process) killed");
}

/// Asks `node` to settle its in-doubt transactions now (the nodes of these tests never
/// do on their own: their patience is 10 minutes, so that nothing settles before the
/// test has killed what it kills).
fn resolve(rt: &tokio::runtime::Runtime, client: &StorageClient, node: NodeId) {
    rt.block_on(client.resolve(node))
        .unwrap_or_else(|e| panic!("asking node {} to resolve: {e}", node.0));
}

/// Polls `node`'s verdict on `txn` until it has one (or 30 s pass: `None`).
fn verdict_of(
    rt: &tokio::runtime::Runtime,
    client: &StorageClient,
    node: NodeId,
    txn: TxnId,
) -> Option<Verdict> {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(v) = rt.block_on(client.verdicts(node, vec![txn])) {
            if let Some((_, Some(verdict))) = v.first() {
                return Some(*verdict);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Asks `nodes` to resolve, then checks that each settles `txn` as committed (`why`
/// completes the failure message after "node N").
fn settle_commit(
    rt: &tokio::runtime::Runtime,
    client: &StorageClient,
    nodes: std::ops::RangeInclusive<u32>,
    txn: TxnId,
    why: &str,
) {
    for n in nodes.clone() {
        resolve(rt, client, NodeId(n));
    }
    for n in nodes {
        assert_eq!(
            verdict_of(rt, client, NodeId(n), txn),
            Some(Verdict::Commit),
            "node {n} {why}"
        );
    }
}

/// A transaction over the five nodes of `cluster` writing `page` (byte `n` on node
/// `n`), committed by a decider (node 5) that crashes right after its commit decision:
/// the client never hears the outcome. Returns the transaction's id.
fn commit_then_lose_decider(
    rt: &tokio::runtime::Runtime,
    cluster: &mut TestCluster,
    client: &StorageClient,
    page: u64,
) -> TxnId {
    let decider = NodeId(5);
    let crash = vec!["--crash-at".to_string(), "after-decision:1".to_string()];
    cluster.cluster.restart_with(decider, &crash).unwrap();
    let t = (1..=5).fold(Transaction::new(), |t, n| {
        t.write(NodeId(n), PageId(page), 0, vec![n as u8])
    });
    let txn = match rt.block_on(client.commit(t)) {
        Err(ClientError::Timeout { txn: Some(txn), .. }) => txn,
        other => panic!("the decider crashes after deciding: expected no answer, got {other:?}"),
    };
    assert!(
        cluster
            .cluster
            .wait_exit(decider, Duration::from_secs(20))
            .unwrap(),
        "the decider did not reach its crash point"
    );
    txn
}

/// F = 3 over five nodes: the acceptors are nodes 2, 3 and 4, a recovery needs two of
/// them. The decider decides commit (all three acceptors accepted) and crashes before
/// telling anyone, and acceptor 4 is `kill -9`ed too — a minority of the decision
/// quorum lost, with the decider. The three survivors settle the transaction as
/// **commit** (what the decider decided) without them, their pages take new
/// transactions at once, and the two lost nodes learn commit when they return. Then
/// a majority lost (the decider and acceptors 3 and 4) for contrast: the survivors
/// stay in doubt, never guessing, and settle once the acceptors return.
#[test]
fn a_minority_of_the_decision_quorum_lost_settles_without_it() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let extra = ["--tick-ms", "100", "--settle-after-ms", "600000"];
    let mut cluster = TestCluster::start_on_own_addresses("minority", 5, &extra, &[]);
    cluster.acceptors = 3;
    let rt = io_runtime(1).unwrap();
    let client = cluster.client();
    let txn = commit_then_lose_decider(&rt, &mut cluster, &client, 7);
    cluster.cluster.kill(NodeId(4)).unwrap();
    settle_commit(
        &rt,
        &client,
        1..=3,
        txn,
        "settles what the decider decided, with acceptors 2 and 3",
    );
    for n in 1..=3 {
        let page = rt.block_on(client.read(NodeId(n), PageId(7))).unwrap();
        assert_eq!(page.data, vec![n as u8], "node {n} applied the commit");
    }
    // The pages are free while nodes 4 and 5 are down (a three-node transaction over
    // version 1 of the pages: F = 1, acceptor 2, decider 3).
    client.set_acceptors(1);
    let again = (1..=3).fold(Transaction::new(), |t, n| {
        t.write(NodeId(n), PageId(7), 1, vec![10 + n as u8])
    });
    rt.block_on(client.commit(again))
        .expect("the survivors' pages take new transactions");
    // The lost nodes return and learn commit.
    for n in [4, 5] {
        cluster.cluster.restart(NodeId(n)).unwrap();
    }
    settle_commit(&rt, &client, 4..=5, txn, "learns commit after its restart");
    for n in [4, 5] {
        let page = rt.block_on(client.read(NodeId(n), PageId(7))).unwrap();
        assert_eq!(page.data, vec![n as u8], "node {n} applied the commit");
    }
    println!("minority lost (decider and acceptor 4 of 2, 3, 4): every node committed {txn:?}");

    // A majority lost: the decider and acceptors 3 and 4.
    client.set_acceptors(3);
    let txn = commit_then_lose_decider(&rt, &mut cluster, &client, 8);
    cluster.cluster.kill(NodeId(3)).unwrap();
    cluster.cluster.kill(NodeId(4)).unwrap();
    for n in 1..=2 {
        resolve(&rt, &client, NodeId(n));
    }
    // Many recovery rounds' worth (a round per 100 ms tick): nodes 1 and 2 still do
    // not know, and say so.
    std::thread::sleep(Duration::from_secs(2));
    for n in 1..=2 {
        let v = rt.block_on(client.verdicts(NodeId(n), vec![txn])).unwrap();
        assert_eq!(v, vec![(txn, None)], "node {n} must stay in doubt");
        let status = rt.block_on(client.status(NodeId(n))).unwrap();
        assert!(
            status.in_doubt.iter().any(|d| d.txn == txn),
            "node {n} lists {txn:?} in doubt"
        );
    }
    for n in [3, 4] {
        cluster.cluster.restart(NodeId(n)).unwrap();
    }
    settle_commit(
        &rt,
        &client,
        1..=4,
        txn,
        "settles commit once a majority of the acceptors is back",
    );
    println!(
        "majority lost (decider, acceptors 3 and 4): nodes 1 and 2 waited, then committed {txn:?}"
    );
}
