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
use pipewright_storage::server::Step;
use pipewright_storage::{io_runtime, NodeId};
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
