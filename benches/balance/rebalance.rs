//! Rebalancing: all clients on one node, three nodes join; our shedding rule against
//! simpler ones.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright::balance::{
    AgentConfig, AgentOptions, AgentServer, BalancedClient, ClientOptions, ConsumerId, ProducerId,
    ProducerOptions, ProducerServer, ServiceTime, ShedConfig, WeightConfig,
};

use crate::drive::NEXT_DIR;
use crate::key;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Rule {
    Ours,
    None,
    ThresholdOnly,
    RatioToAverage,
}

impl Rule {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::None => "no-rebalance",
            Self::ThresholdOnly => "threshold-only",
            Self::RatioToAverage => "ratio-to-average",
        }
    }

    pub(crate) fn config(self, clients: u32, nodes: u32) -> Option<ShedConfig> {
        let ours = ShedConfig {
            stale_after: Duration::from_millis(400),
            ..ShedConfig::default()
        };
        match self {
            Self::Ours => Some(ours),
            Self::None => None,
            // A static threshold (20 % over the even share), no peer-capacity check.
            Self::ThresholdOnly => Some(ShedConfig {
                threshold: f64::from(clients) / f64::from(nodes) * 1.2,
                ratio: -1.0,
                require_peer_capacity: false,
                ..ours
            }),
            // piko: shed everything above average * (1 + 15 %) at once.
            Self::RatioToAverage => Some(ShedConfig {
                hits: 1,
                require_peer_capacity: false,
                max_rate: 1e9,
                burst: 1e9,
                jitter: 0.0,
                ..ours
            }),
        }
    }
}

pub(crate) struct Converge {
    pub(crate) converge_ms: f64,
    pub(crate) closures: u64,
    pub(crate) errors: u64,
    pub(crate) flips: u64,
    pub(crate) final_conns: Vec<u32>,
}

pub(crate) async fn rebalance(rule: Rule, clients_n: u32, window: Duration) -> Converge {
    let dir = std::env::temp_dir().join(format!(
        "pw-balance-bench-r-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let agent = AgentServer::start(AgentOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir,
        key: key(),
        config: AgentConfig {
            lease_ttl: Duration::from_secs(3),
            // Only the nodes' shedding moves connections in this comparison.
            rebalance_leases: false,
            weights: WeightConfig {
                blackout: Duration::from_millis(300),
                dead_after: Duration::from_millis(600),
                ..WeightConfig::default()
            },
            ..AgentConfig::default()
        },
        max_in_flight: 4096,
        trace: None,
    })
    .await
    .unwrap();
    let shed = rule.config(clients_n, 4);
    let node = |id: u64| {
        ProducerServer::start(ProducerOptions {
            id: ProducerId(id),
            agent: Some(agent.local_addr()),
            key: key(),
            service_time: ServiceTime::Fixed(Duration::from_micros(200)),
            report_every: Duration::from_millis(100),
            shed,
            seed: id,
            ..ProducerOptions::default()
        })
    };
    let mut nodes = vec![node(0).await.unwrap()];
    while agent.status().producers.is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let clients: Vec<BalancedClient> = (0..clients_n)
        .map(|i| {
            BalancedClient::new(ClientOptions {
                consumer: ConsumerId(u64::from(i)),
                agents: vec![agent.local_addr()],
                leases: 1,
                renew_every: Duration::from_millis(250),
                ..ClientOptions::default()
            })
        })
        .collect();
    for c in &clients {
        c.wait_ready(Duration::from_secs(10)).await;
    }
    for id in 1..4 {
        nodes.push(node(id).await.unwrap());
    }
    let joined = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = clients
        .iter()
        .map(|c| {
            let (c, stop, errors) = (c.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if c.send(false, vec![1]).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let mut converge = None;
    let mut last: Vec<u32> = Vec::new();
    let mut dir = [0i64; 4];
    let mut flips = 0;
    while joined.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let conns: Vec<u32> = nodes
            .iter()
            .map(|n| n.stats().connections.load(Ordering::Relaxed))
            .collect();
        let mean = conns.iter().sum::<u32>() as f64 / 4.0;
        let max = *conns.iter().max().unwrap() as f64;
        if converge.is_none() && mean > 0.0 && max <= 1.2 * mean {
            converge = Some(joined.elapsed());
        }
        if !last.is_empty() {
            for i in 0..4 {
                let d = (i64::from(conns[i]) - i64::from(last[i])).signum();
                if d != 0 {
                    if dir[i] != 0 && d != dir[i] {
                        flips += 1;
                    }
                    dir[i] = d;
                }
            }
        }
        last = conns;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    let closures = nodes
        .iter()
        .map(|n| n.stats().shed.load(Ordering::Relaxed))
        .sum();
    let _ = agent.run_until(async {}).await;
    Converge {
        converge_ms: converge.map_or(window.as_secs_f64() * 1000.0, |d| d.as_secs_f64() * 1000.0),
        closures,
        errors: errors.load(Ordering::Relaxed),
        flips,
        final_conns: last,
    }
}
