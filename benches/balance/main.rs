//! Suite `balance`: the lease balancer against client-side and server-load balancers,
//! and connection rebalancing against simpler shedding rules.
//!
//! Every contender talks to the same kind of producers (in-process `ProducerServer`s,
//! real TCP on loopback, fresh ones per run with the same seeds), at the same fixed
//! concurrency, for the same number of requests; faults (a producer degrading, one
//! crashing) are injected at the same request counts.
//!
//! - `p999-heterogeneous` (+ `p50-`, `p99-`, `throughput-`): 10 producers with
//!   different service-time distributions; producer 8 becomes 10x slower at 30 % of
//!   the requests, producer 9 crashes at 50 %. Ours (agent + `BalancedClient`s) vs
//!   `tower-p2c-peak-ewma` (tower's `balance::p2c::Balance` over `PeakEwma`),
//!   `round-robin` (skipping dead endpoints) and `wrr-server-load` (smooth weighted
//!   round robin by gRFC A58 weights from the producers' reports only: blackout 10 s,
//!   expiry 3 min, update 1 s, error penalty 1.0).
//! - `tower76-p999`: tower-rs/tower#76's scenario: 10 endpoints with latency uniform
//!   in [0, max) for max = 1, 10x4, 100x4, 1000 ms; concurrency 50; PeakEwma decay 10 s,
//!   initial estimate 0.5 ms.
//! - `rebalance-converge` / `rebalance-closures` / `rebalance-oscillations`: all
//!   clients on one node, three nodes join; time until max/mean connections <= 1.2,
//!   connections closed, direction changes; peers `no-rebalance`, `threshold-only`,
//!   `ratio-to-average`.
//! - `pulsar-low-load-closures`, `pulsar-one-empty-overshoot`: the shedding rule on
//!   apache/pulsar#18215's load shapes (simulated, sans-I/O).
//!
//! `PIPEWRIGHT_BENCH_QUICK=1`: fewer requests and shorter windows.
//!
//! Files: `endpoint` (a direct producer connection as a tower service), `contenders`
//! (ours and the peers, the producer fleet), `drive` (a scenario run and the
//! comparison), `rebalance`, `pulsar` (the simulated shedding cases), `agent` (the
//! agent's memory and CPU cost).

#![allow(clippy::needless_range_loop)]

mod agent;
#[path = "../common/mod.rs"]
#[allow(dead_code)]
mod common;
mod contenders;
mod drive;
mod endpoint;
mod pulsar;
mod rebalance;

use std::time::Duration;

use pipewright::balance::{ClusterKey, ServiceTime};

use agent::{agent_cost, agent_memory};
use contenders::Contender;
use drive::{compare, Scenario};
use pulsar::pulsar_cases;
use rebalance::{rebalance, Rule};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn key() -> ClusterKey {
    ClusterKey::from_passphrase("bench")
}

pub(crate) fn result(case: &str, ours: f64, peer: &str, theirs: f64, unit: &str, better: &str) {
    let ratio = if theirs == 0.0 {
        if ours == 0.0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        ours / theirs
    };
    println!(
        "RESULT suite=balance case={case} ours={ours:.3} peer={peer}:{theirs:.3} unit={unit} better={better} ratio={ratio:.3}"
    );
}

fn main() {
    let quick = common::quick();
    let filter = common::case_filter();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    eprintln!("balance suite (quick={quick}, load {})", common::loadavg());
    if common::wants(filter.as_deref(), "agent-cost") {
        // Before any runtime work, so nothing else allocates meanwhile.
        agent_memory(
            if quick { 1_000 } else { 2_000 },
            if quick { 20_000 } else { 100_000 },
        );
    }
    rt.block_on(async {
        let peers = [Contender::TowerP2c, Contender::RoundRobin, Contender::Wrr];
        if common::wants(filter.as_deref(), "p999-heterogeneous") {
            let ms = Duration::from_millis;
            let sc = Scenario {
                services: vec![
                    ServiceTime::Exp(ms(1)),
                    ServiceTime::Exp(ms(2)),
                    ServiceTime::Uniform(ms(4)),
                    ServiceTime::Fixed(ms(3)),
                    ServiceTime::Exp(ms(5)),
                    ServiceTime::Uniform(ms(10)),
                    ServiceTime::Exp(ms(10)),
                    ServiceTime::Exp(ms(20)),
                    ServiceTime::Exp(ms(2)),
                    ServiceTime::Exp(ms(3)),
                ],
                capacity: 8,
                total: if quick { 6_000 } else { 40_000 },
                concurrency: 50,
                degrade: Some((8, 0.3, 10.0)),
                crash: Some((9, 0.5)),
                decay: Duration::from_secs(10),
                rtt0: Duration::from_micros(500),
                warmup: if quick { 1_000 } else { 5_000 },
            };
            compare("p999-heterogeneous", &sc, if quick { 1 } else { 3 }, &peers, true).await;
        }
        if common::wants(filter.as_deref(), "tower76") {
            let ms = Duration::from_millis;
            let mut services = vec![ServiceTime::Uniform(ms(1))];
            services.extend([ServiceTime::Uniform(ms(10)); 4]);
            services.extend([ServiceTime::Uniform(ms(100)); 4]);
            services.push(ServiceTime::Uniform(ms(1000)));
            let sc = Scenario {
                services,
                capacity: 1 << 16,
                total: if quick { 2_500 } else { 20_000 },
                concurrency: 50,
                degrade: None,
                crash: None,
                decay: Duration::from_secs(10),
                rtt0: Duration::from_micros(500),
                warmup: 0,
            };
            compare("tower76-p999", &sc, if quick { 1 } else { 3 }, &[Contender::TowerP2c, Contender::RoundRobin], false).await;
        }
        if common::wants(filter.as_deref(), "rebalance") {
            let window = Duration::from_secs(if quick { 5 } else { 15 });
            let n = 48;
            let ours = rebalance(Rule::Ours, n, window).await;
            eprintln!("  rebalance ours: converge {:.0} ms, closures {} (minimum {}), errors {}, flips {}, final {:?}", ours.converge_ms, ours.closures, n - n / 4, ours.errors, ours.flips, ours.final_conns);
            for r in [Rule::None, Rule::ThresholdOnly, Rule::RatioToAverage] {
                let p = rebalance(r, n, window).await;
                eprintln!("  rebalance {}: converge {:.0} ms, closures {}, errors {}, flips {}, final {:?}", r.name(), p.converge_ms, p.closures, p.errors, p.flips, p.final_conns);
                result("rebalance-converge", ours.converge_ms, r.name(), p.converge_ms, "ms", "lower");
                if !matches!(r, Rule::None) {
                    result("rebalance-closures", ours.closures as f64, r.name(), p.closures as f64, "connections", "lower");
                }
                result("rebalance-client-errors", ours.errors as f64, r.name(), p.errors as f64, "requests", "lower");
            }
        }
        if common::wants(filter.as_deref(), "pulsar") {
            pulsar_cases();
        }
        if common::wants(filter.as_deref(), "agent-cost") {
            agent_cost(if quick { 20_000 } else { 200_000 }).await;
        }
    });
}
