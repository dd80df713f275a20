//! The bank workload on real node processes under transport faults (messages
//! between nodes dropped, duplicated, delayed and so reordered, injected on every
//! peer link through `PIPEWRIGHT_STORAGE_NET_FAULTS`) and under random `kill -9`s
//! of random nodes at random times, with small checkpoints so the logs rotate all
//! along. After each phase the bank is audited: the total is constant, no balance is
//! negative, every acknowledged transfer is durable.
//!
//! Both tests do a fixed amount of work (a number of transfer attempts; the kills at
//! random points of that work, counted in finished attempts), not a time window, so what they check does not depend
//! on the machine's speed; each prints how much it did.
//!
//! Needs the node's fault injection: feature `storage-faults` (on with `--all-features`).
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "storage-faults", feature = "cli"))]

mod storage_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pipewright_storage::bank::{Bank, Rng};
use pipewright_storage::client::StorageClient;
use pipewright_storage::io_runtime;
use pipewright_storage::server::{CHECKPOINT_BYTES_ENV, NET_FAULTS_ENV};
use storage_common::{audit, spawn_counted_workload, wait_for_attempts, Counts, TestCluster};

/// The injected faults, summed over the nodes (counters restart with a node).
fn injected(rt: &tokio::runtime::Runtime, client: &StorageClient) -> (u64, u64, u64) {
    let mut sum = (0, 0, 0);
    for id in client.peers().ids() {
        if let Ok(s) = rt.block_on(client.status(id)) {
            sum.0 += s.net_dropped;
            sum.1 += s.net_duplicated;
            sum.2 += s.net_delayed;
        }
    }
    sum
}

/// Transfer attempts of the lossy-links test.
const LOSSY_TRANSFERS: u64 = 2000;
/// Rounds of the kill -9 test; each runs a fixed number of transfer attempts with
/// `KILLS_PER_ROUND` kills at random points of them, then an audit.
const KILL_ROUNDS: u64 = 8;
const KILLS_PER_ROUND: u64 = 3;
const ROUND_TRANSFERS: u64 = 120;

#[test]
fn bank_over_lossy_duplicating_reordering_links() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let env = [
        (NET_FAULTS_ENV, "drop=0.05,dup=0.05,delay-ms=20,seed=7"),
        (CHECKPOINT_BYTES_ENV, "65536"),
    ];
    let extra = ["--tick-ms", "100", "--resolve-after-ms", "300"];
    let cluster = TestCluster::start_with_env("netfaults", &extra, &env);
    let rt = io_runtime(2).unwrap();
    let bank = Arc::new(Bank::new(cluster.client(), 8));
    rt.block_on(bank.open(1000)).unwrap();
    let counts = Arc::new(Counts::default());
    let done = Arc::new(AtomicU64::new(0));
    let tasks = spawn_counted_workload(
        &rt,
        &bank,
        &cluster,
        6,
        None,
        LOSSY_TRANSFERS,
        &done,
        &counts,
    );
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let client = cluster.client();
    audit(
        &rt,
        &bank,
        "links dropping, duplicating and delaying messages",
    );
    let (dropped, duplicated, delayed) = injected(&rt, &client);
    println!(
        "transport faults: {} transfer attempts ({}); injected {dropped} drops, \
         {duplicated} duplicates, {delayed} delayed messages",
        done.load(Ordering::Relaxed),
        counts.line()
    );
    assert!(
        counts.committed.load(Ordering::Relaxed) > 100,
        "too few transfers committed"
    );
    assert!(dropped > 10 && duplicated > 10 && delayed > 100);
}

#[test]
fn random_kill_9_during_the_bank_workload() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let env = [
        (NET_FAULTS_ENV, "drop=0.02,dup=0.02,delay-ms=10,seed=11"),
        (CHECKPOINT_BYTES_ENV, "65536"),
    ];
    let extra = ["--tick-ms", "100", "--resolve-after-ms", "300"];
    let mut cluster = TestCluster::start_with_env("random-kill", &extra, &env);
    let rt = io_runtime(2).unwrap();
    let bank = Arc::new(Bank::new(cluster.client(), 8));
    rt.block_on(bank.open(1000)).unwrap();
    let counts = Arc::new(Counts::default());
    let seed = std::env::var("STORAGE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = Rng::with_seed(seed);
    let ids = cluster.cluster.peers().ids();
    let (mut kills, mut audits) = (0, 0);
    for round in 1..=KILL_ROUNDS {
        let done = Arc::new(AtomicU64::new(0));
        let tasks = spawn_counted_workload(
            &rt,
            &bank,
            &cluster,
            4,
            None,
            ROUND_TRANSFERS,
            &done,
            &counts,
        );
        // Kill points are counted in finished attempts of this round.
        let mut points: Vec<u64> = (0..KILLS_PER_ROUND)
            .map(|_| rng.u64(0..ROUND_TRANSFERS * 3 / 4))
            .collect();
        points.sort_unstable();
        for point in points {
            assert!(
                wait_for_attempts(&done, point, Duration::from_secs(60)),
                "round {round}: no transfer finished for 60 s with every node up"
            );
            let victim = ids[rng.usize(0..ids.len())];
            cluster.cluster.kill(victim).unwrap();
            kills += 1;
            // Down for a random moment, as before (transfers through it time out or
            // abort meanwhile; the amount of work does not change).
            std::thread::sleep(Duration::from_millis(rng.u64(0..500)));
            cluster.cluster.restart(victim).unwrap();
        }
        for t in tasks {
            rt.block_on(t).unwrap();
        }
        assert_eq!(done.load(Ordering::Relaxed), ROUND_TRANSFERS);
        audit(
            &rt,
            &bank,
            &format!("round {round}: after {kills} random kills"),
        );
        audits += 1;
    }
    let (dropped, duplicated, delayed) = injected(&rt, &cluster.client());
    println!(
        "random kill -9 (seed {seed}): {KILL_ROUNDS} rounds, {kills} kills, {audits} audits of \
         {} accounts; {} transfer attempts ({}); transport faults since the last restarts: \
         {dropped} drops, {duplicated} duplicates, {delayed} delayed",
        bank.accounts().len(),
        KILL_ROUNDS * ROUND_TRANSFERS,
        counts.line()
    );
    assert_eq!(kills, KILL_ROUNDS * KILLS_PER_ROUND);
    assert!(
        counts.committed.load(Ordering::Relaxed) > 100,
        "too few transfers committed"
    );
}
