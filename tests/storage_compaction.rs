//! Log truncation with real node processes: checkpoints keep the log's disk use and
//! the transactions a node remembers bounded over thousands of transactions,
//! recovery after compaction keeps every acknowledged transaction, and a `kill -9` at
//! each step of a checkpoint (before it, with a torn checkpoint in the new segment,
//! after it is durable but before the old segment is deleted) recovers correctly.
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "storage", feature = "cli"))]

mod storage_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_storage::bank::Bank;
use pipewright_storage::io_runtime;
use pipewright_storage::log::segments;
use pipewright_storage::server::CHECKPOINT_BYTES_ENV;
#[cfg(feature = "storage-faults")]
use pipewright_storage::{server::Step, NodeId};
use storage_common::{audit, spawn_workload, Counts, TestCluster};

const CHECKPOINT_BYTES: u64 = 64 << 10;
/// Committed transfers the bounded-state test runs.
const TRANSACTIONS: u64 = 5000;

#[test]
fn log_and_memory_stay_bounded_over_thousands_of_transactions() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let env = [(CHECKPOINT_BYTES_ENV, "65536")];
    let mut cluster = TestCluster::start_with_env("compaction", &["--tick-ms", "100"], &env);
    let rt = io_runtime(2).unwrap();
    let bank = Arc::new(Bank::new(cluster.client(), 16));
    rt.block_on(bank.open(1000)).unwrap();
    let client = cluster.client();
    let (stop, counts) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Counts::default()),
    );
    let tasks = spawn_workload(&rt, &bank, &cluster, 6, None, &stop, &counts);
    let start = Instant::now();
    let (mut max_disk, mut max_remembered, mut samples) = (0u64, 0u64, 0);
    // A fixed amount of work, not a time window: how many transactions a node
    // remembers depends on the log bytes per checkpoint interval, so the bound below
    // needs enough commits whatever the machine's speed (the deadline only stops a
    // hung run).
    while counts.committed.load(Ordering::Relaxed) < TRANSACTIONS {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {} of {TRANSACTIONS} transactions committed in 300 s: {}",
            counts.committed.load(Ordering::Relaxed),
            counts.line()
        );
        std::thread::sleep(Duration::from_millis(250));
        for id in cluster.cluster.peers().ids() {
            let s = rt.block_on(client.status(id)).unwrap();
            // Also measured on disk, independently of the node's own counter.
            let on_disk = segments::disk_bytes(&cluster.cluster.data_dir(id));
            max_disk = max_disk.max(s.log_disk_bytes).max(on_disk);
            max_remembered = max_remembered.max(s.remembered);
            samples += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let mut appended = 0;
    let mut checkpoints = 0;
    for id in cluster.cluster.peers().ids() {
        let s = rt.block_on(client.status(id)).unwrap();
        println!(
            "node {}: {} log bytes appended, {} on disk, {} checkpoints, {} txns remembered, {} client marks",
            id.0, s.log_bytes, s.log_disk_bytes, s.checkpoints, s.remembered, s.low_water_marks
        );
        appended += s.log_bytes;
        checkpoints += s.checkpoints;
    }
    let committed = counts.committed.load(Ordering::Relaxed);
    println!(
        "bounded: {} over {samples} samples; max log on disk {max_disk} bytes (appended {appended} in total), \
         max remembered txns per node {max_remembered}, {checkpoints} checkpoints",
        counts.line()
    );
    assert!(
        committed >= TRANSACTIONS,
        "too few transactions committed: {committed}"
    );
    assert!(checkpoints >= 6, "too few checkpoints: {checkpoints}");
    // One segment of up to CHECKPOINT_BYTES plus a burst and a checkpoint record,
    // two segments for a moment during rotation.
    assert!(
        max_disk <= 3 * CHECKPOINT_BYTES,
        "the log grew to {max_disk} bytes"
    );
    assert!(
        appended > 4 * max_disk,
        "appended {appended} bytes: not enough to show truncation"
    );
    // Transactions finished in the last two checkpoint intervals plus those in flight:
    // far below the number committed, and within what three intervals of log hold at
    // this run's log bytes per attempt and node (a bound from the checkpoint interval,
    // not from the machine's speed; the checkpoint record itself does not count
    // towards an interval).
    let attempts = committed + counts.aborted.load(Ordering::Relaxed);
    let nodes = cluster.cluster.peers().ids().len() as u64;
    let bytes_per_attempt = appended as f64 / (nodes * attempts.max(1)) as f64;
    let interval_bound = 3.0 * CHECKPOINT_BYTES as f64 / bytes_per_attempt + 64.0;
    println!(
        "{bytes_per_attempt:.0} log bytes per attempt and node: at most {interval_bound:.0} remembered"
    );
    assert!(
        max_remembered < committed.max(1) / 2 && (max_remembered as f64) < interval_bound,
        "a node remembered {max_remembered} transactions of {committed}"
    );
    audit(&rt, &bank, "after compaction");

    // Recovery after compaction: kill -9 every node, restart from the checkpointed
    // segments, audit again.
    for id in cluster.cluster.peers().ids() {
        cluster.cluster.kill(id).unwrap();
    }
    for id in cluster.cluster.peers().ids() {
        cluster.cluster.restart(id).unwrap();
    }
    audit(&rt, &bank, "kill -9 of every node after compaction");
}

/// Needs the node's crash points (feature `storage-faults`).
#[cfg(feature = "storage-faults")]
#[test]
fn kill_9_at_each_checkpoint_step() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let env = [(CHECKPOINT_BYTES_ENV, "16384")];
    let mut cluster = TestCluster::start_with_env("checkpoint-crash", &["--tick-ms", "100"], &env);
    let rt = io_runtime(2).unwrap();
    let bank = Arc::new(Bank::new(cluster.client(), 8));
    rt.block_on(bank.open(1000)).unwrap();
    let counts = Arc::new(Counts::default());
    let steps = [
        Step::BeforeCheckpoint,
        Step::CheckpointTorn,
        Step::AfterCheckpoint,
    ];
    let mut kills = 0;
    let mut checks = 0;
    for node in [NodeId(1), NodeId(2), NodeId(3)] {
        for step in steps {
            let crash = vec!["--crash-at".to_string(), format!("{}:1", step.name())];
            cluster.cluster.restart_with(node, &crash).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let tasks = spawn_workload(&rt, &bank, &cluster, 3, Some(3), &stop, &counts);
            let crashed = cluster
                .cluster
                .wait_exit(node, Duration::from_secs(30))
                .unwrap();
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                rt.block_on(t).unwrap();
            }
            assert!(crashed, "node {} never reached {}", node.0, step.name());
            kills += 1;
            let dir = cluster.cluster.data_dir(node);
            let before = segments::segments(&dir).unwrap();
            cluster.cluster.restart(node).unwrap();
            let after = segments::segments(&dir).unwrap();
            audit(
                &rt,
                &bank,
                &format!(
                    "node {} killed at {} (segments {before:?} -> {after:?})",
                    node.0,
                    step.name()
                ),
            );
            checks += 1;
            assert_eq!(after.len(), 1, "recovery left segments {after:?}");
        }
    }
    println!(
        "checkpoint crash points: {kills} kills, {checks} audits; transfers {}",
        counts.line()
    );
}
