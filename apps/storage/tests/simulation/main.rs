//! Deterministic simulation of a storage cluster: several real [`Node`] state
//! machines over a simulated network driven by a seeded RNG — message loss,
//! duplication (some copies arriving thousands of steps late, after checkpoints
//! forgot their transaction), delay and reordering — with group-commit log flushes,
//! checkpoints that rotate the log, and crashes that lose unflushed records and
//! unsynced page writes. A bank workload of thousands of transfers runs on it; at the
//! end every node crashes and recovers once more, and the run checks:
//!
//! - **atomicity**: every transaction is applied on every node that writes, or on
//!   none; an applied transaction has a durable commit decision; no client is told
//!   both outcomes, and a client told `Committed` sees its writes everywhere;
//! - **no lost update**: no two transactions are applied over the same version of a
//!   page, and the bank's total is unchanged with no negative balance;
//! - **bounded state**: the transactions a node remembers and its log (records in
//!   the live segment) stay bounded over the whole run.
//!
//! Every run prints its seed and counts; a failure names the seed to replay.
//!
//! `sim` is the simulated cluster (network, clients, transfers), `nodes` what
//! happens to a node (actions, flushes, crashes, recovery, ticks), `checks` the
//! end-of-run checks; this file runs them.

mod checks;
mod nodes;
mod sim;

use std::collections::BTreeSet;

use pipewright_storage::log::Verdict;
use sim::*;

fn run(seed: u64, faults: Faults, steps: u64) -> Stats {
    run_f(seed, faults, steps, 0)
}

fn run_f(seed: u64, faults: Faults, steps: u64, f: u8) -> Stats {
    let mut sim = Sim::new(seed, faults);
    sim.f = f;
    for _ in 0..steps {
        sim.step(true, true);
    }
    // Let in-flight work finish without new faults (late duplicates still arrive).
    sim.faults.drop = 0.0;
    sim.faults.dup = 0.0;
    let mut settle = 0;
    while !sim.quiet() && settle < 20_000 {
        sim.step(false, false);
        settle += 1;
    }
    assert!(sim.quiet(), "seed {seed}: the cluster did not settle");
    // Crash every node once more (unsynced page writes may be lost), recover, settle.
    for n in 0..NODES as usize {
        sim.crash(n, 1);
    }
    let mut settle = 0;
    while (!sim.quiet() || !sim.net.is_empty()) && settle < 20_000 {
        sim.step(false, false);
        settle += 1;
    }
    assert!(
        sim.quiet(),
        "seed {seed}: the cluster did not settle after the restart"
    );
    sim.check(&format!("seed {seed}"));
    let remembered: Vec<usize> = sim
        .nodes
        .iter()
        .map(|s| s.node.as_ref().unwrap().remembered())
        .collect();
    let s = &sim.stats;
    println!(
        "seed {seed}: {} steps, {} transfers ({} committed, {} aborted, {} timed out), \
         {} messages delivered, {} dropped, {} duplicated ({} late), {} crashes, \
         {} checkpoints; max remembered txns per node {}, max log records {}, \
         remembered at the end {remembered:?}",
        sim.now,
        s.started,
        s.committed,
        s.aborted,
        s.timed_out,
        s.delivered,
        s.dropped,
        s.duplicated,
        s.late,
        s.crashes,
        s.checkpoints,
        s.max_remembered,
        s.max_log_records,
    );
    // Bounded state: a node remembers at most the transactions of ~2 checkpoint
    // intervals (each ≥ CHECKPOINT_RECORDS records) plus those in flight.
    let bound = 3 * CHECKPOINT_RECORDS + 8 * CLIENTS as usize;
    assert!(
        s.max_remembered <= bound,
        "seed {seed}: a node remembered {} transactions (bound {bound})",
        s.max_remembered
    );
    assert!(
        s.max_log_records <= 2 * bound,
        "seed {seed}: a log segment grew to {} records",
        s.max_log_records
    );
    std::mem::take(&mut sim.stats)
}

const FAULTS: Faults = Faults {
    drop: 0.03,
    dup: 0.05,
    late_dup: 0.3,
    max_delay: 15,
    crash: 0.0008,
};

#[test]
fn bank_over_a_lossy_network_with_crashes_and_checkpoints() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED")],
        Err(_) => (1..=4).collect(),
    };
    let mut total = Stats::default();
    for seed in seeds {
        let s = run(seed, FAULTS, 20_000);
        total.started += s.started;
        total.committed += s.committed;
        total.crashes += s.crashes;
        total.checkpoints += s.checkpoints;
        assert!(s.committed > 300, "seed {seed}: too few commits");
        assert!(s.checkpoints > 10, "seed {seed}: too few checkpoints");
    }
    println!(
        "simulation: {} transfers, {} committed, {} crashes, {} checkpoints",
        total.started, total.committed, total.crashes, total.checkpoints
    );
}

#[test]
fn long_run_without_faults_keeps_memory_and_log_bounded() {
    let faults = Faults {
        drop: 0.0,
        dup: 0.0,
        late_dup: 0.0,
        max_delay: 3,
        crash: 0.0,
    };
    let s = run(99, faults, 40_000);
    assert!(s.committed > 3000, "too few commits: {}", s.committed);
}

/// F = 1 under the same faults (loss, duplication with very late copies, crashes of
/// any node, deciders included, at random steps, checkpoints): atomicity,
/// agreement (no transaction chosen both ways by deciders and acceptors), no lost
/// update, bounded state.
#[test]
fn bank_with_one_acceptor_over_a_lossy_network_with_crashes() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED")],
        Err(_) => (11..=12).collect(),
    };
    for seed in seeds {
        let s = run_f(seed, FAULTS, 20_000, 1);
        assert!(s.committed > 300, "seed {seed}: too few commits");
    }
}

/// F = 1, chain 0 → 1 → 2 (decider 2, acceptor 1): the decider is killed at every
/// step of one transfer's life (losing a random part of its unflushed log) and stays
/// down. Nodes 0 and 1 settle the transfer without it; a transfer over their pages
/// then commits while it is still down; after it restarts, every node agrees
/// (atomicity, agreement, no lost update, the bank's total).
#[test]
fn decider_killed_at_every_step_the_others_settle_without_it() {
    let quiet_without = |sim: &Sim| {
        (0..2).all(|n| {
            let s = &sim.nodes[n];
            s.node
                .as_ref()
                .is_some_and(|node| node.unfinished() == 0 && s.pending.is_empty())
        })
    };
    let (mut committed, mut aborted) = (0, 0);
    for kill_at in 0..80u64 {
        let faults = Faults {
            drop: 0.0,
            dup: 0.0,
            late_dup: 0.0,
            max_delay: 2,
            crash: 0.0,
        };
        let mut sim = Sim::new(1000 + kill_at, faults);
        sim.f = 1;
        let first = sim.start_transfer_on(0, &[0, 1, 2]);
        for _ in 0..kill_at {
            sim.step(false, false);
        }
        sim.crash(2, 1 << 40);
        let mut steps = 0;
        while !quiet_without(&sim) && steps < 20_000 {
            sim.step(false, false);
            steps += 1;
        }
        assert!(
            quiet_without(&sim),
            "killed at step {kill_at}: nodes 0 and 1 did not settle {first} without the decider"
        );
        match sim.decided.get(&first) {
            Some(Verdict::Commit) => committed += 1,
            _ => aborted += 1,
        }
        // The pages are writable again while the decider is down.
        let second = sim.start_transfer_on(1, &[0, 1]);
        let mut steps = 0;
        while !sim.replies.contains_key(&second) && steps < 20_000 {
            sim.step(false, false);
            steps += 1;
        }
        assert_eq!(
            sim.replies.get(&second),
            Some(&BTreeSet::from([true])),
            "killed at step {kill_at}: a transfer on nodes 0 and 1 did not commit while the decider is down"
        );
        // The decider comes back and agrees.
        sim.nodes[2].down_until = sim.now;
        let mut steps = 0;
        while (!sim.quiet() || !sim.net.is_empty()) && steps < 20_000 {
            sim.step(false, false);
            steps += 1;
        }
        assert!(
            sim.quiet(),
            "killed at step {kill_at}: no quiet after the restart"
        );
        sim.check(&format!("killed at step {kill_at}"));
    }
    println!(
        "decider killed at steps 0..80: the first transfer committed {committed} times, \
         aborted {aborted} times, always settled without the decider"
    );
    assert!(
        committed > 0 && aborted > 0,
        "the sweep should cover both outcomes"
    );
}
