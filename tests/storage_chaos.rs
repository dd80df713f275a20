//! The bank workload on real node processes under transport faults (messages
//! between nodes dropped, duplicated, delayed and so reordered, injected on every
//! peer link through `PIPEWRIGHT_STORAGE_NET_FAULTS`) and under random `kill -9`s
//! of random nodes at random times, with small checkpoints so the logs rotate all
//! along. After each phase the bank is audited: the total is constant, no balance is
//! negative, every acknowledged transfer is durable.
//!
//! Needs the node's fault injection: feature `storage-faults` (on with `--all-features`).
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "storage-faults", feature = "cli"))]

mod storage_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_storage::bank::{Bank, Rng};
use pipewright_storage::client::StorageClient;
use pipewright_storage::io_runtime;
use pipewright_storage::server::{CHECKPOINT_BYTES_ENV, NET_FAULTS_ENV};
use storage_common::{audit, spawn_workload, Counts, TestCluster};

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
    let (stop, counts) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Counts::default()),
    );
    let tasks = spawn_workload(&rt, &bank, &cluster, 6, None, &stop, &counts);
    std::thread::sleep(Duration::from_secs(12));
    stop.store(true, Ordering::Relaxed);
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
        "transport faults: transfers {}; injected {dropped} drops, {duplicated} duplicates, \
         {delayed} delayed messages",
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
    let start = Instant::now();
    let (mut kills, mut audits, mut rounds) = (0, 0, 0);
    // Rounds of transfers with random kills, each ending in an audit; ~45 s in all.
    while start.elapsed() < Duration::from_secs(40) {
        rounds += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = spawn_workload(&rt, &bank, &cluster, 4, None, &stop, &counts);
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(rng.u64(200..1500)));
            let victim = ids[rng.usize(0..ids.len())];
            cluster.cluster.kill(victim).unwrap();
            kills += 1;
            std::thread::sleep(Duration::from_millis(rng.u64(0..500)));
            cluster.cluster.restart(victim).unwrap();
        }
        std::thread::sleep(Duration::from_millis(rng.u64(100..800)));
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            rt.block_on(t).unwrap();
        }
        audit(
            &rt,
            &bank,
            &format!("round {rounds}: after {kills} random kills"),
        );
        audits += 1;
    }
    let (dropped, duplicated, delayed) = injected(&rt, &cluster.client());
    println!(
        "random kill -9 (seed {seed}): {rounds} rounds, {kills} kills, {audits} audits of {} accounts; \
         transfers {}; transport faults since the last restarts: {dropped} drops, \
         {duplicated} duplicates, {delayed} delayed",
        bank.accounts().len(),
        counts.line()
    );
    assert!(kills >= 10, "only {kills} kills");
    assert!(
        counts.committed.load(Ordering::Relaxed) > 100,
        "too few transfers committed"
    );
}
