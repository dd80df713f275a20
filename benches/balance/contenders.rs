//! The contenders: ours (agent + `BalancedClient`s) and the peers' senders, and the
//! fleet of producers they all talk to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipewright::balance::{
    AgentConfig, AgentOptions, AgentServer, BalancedClient, ProducerId, ProducerOptions,
    ProducerServer, ServiceTime, WeightConfig,
};
use tower::Service;

use crate::drive::NEXT_DIR;
use crate::endpoint::Endpoint;
use crate::key;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Contender {
    Ours,
    TowerP2c,
    RoundRobin,
    Wrr,
}

impl Contender {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::TowerP2c => "tower-p2c-peak-ewma",
            Self::RoundRobin => "round-robin",
            Self::Wrr => "wrr-server-load",
        }
    }
}

/// Sends requests through whichever balancer.
#[derive(Clone)]
pub(crate) enum Sender {
    Ours(Vec<BalancedClient>),
    Tower(Arc<tokio::sync::Mutex<TowerBalance>>),
    RoundRobin(Arc<Vec<Endpoint>>, Arc<AtomicU64>),
    Wrr(Arc<Vec<Endpoint>>, Arc<Mutex<Swrr>>),
}

pub(crate) type TowerBalance = tower::balance::p2c::Balance<
    tower::discover::ServiceList<
        Vec<tower::load::PeakEwma<Endpoint, tower::load::CompleteOnResponse>>,
    >,
    Vec<u8>,
>;

/// Smooth weighted round robin (nginx) over weights from a gRFC A58 engine.
pub(crate) struct Swrr {
    pub(crate) weights: Vec<f64>,
    pub(crate) current: Vec<f64>,
}

impl Swrr {
    pub(crate) fn pick(&mut self, eps: &[Endpoint]) -> Option<usize> {
        let mut total = 0.0;
        let mut best: Option<usize> = None;
        for i in 0..eps.len() {
            if eps[i].is_dead() || self.weights[i] <= 0.0 {
                continue;
            }
            self.current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }
}

impl Sender {
    pub(crate) async fn send(&self, worker: usize, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        match self {
            Self::Ours(clients) => clients[worker % clients.len()]
                .send(false, payload)
                .await
                .map_err(|e| e.to_string()),
            Self::Tower(b) => {
                let fut = {
                    let mut b = b.lock().await;
                    let svc = tower::ServiceExt::ready(&mut *b)
                        .await
                        .map_err(|e| e.to_string())?;
                    svc.call(payload)
                };
                fut.await.map_err(|e| e.to_string())
            }
            Self::RoundRobin(eps, next) => {
                for _ in 0..eps.len() {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize % eps.len();
                    if !eps[i].is_dead() {
                        return eps[i]
                            .clone()
                            .call(payload)
                            .await
                            .map_err(|e| e.to_string());
                    }
                }
                Err("no live endpoint".into())
            }
            Self::Wrr(eps, swrr) => {
                let i = swrr.lock().unwrap().pick(eps).ok_or("no live endpoint")?;
                eps[i]
                    .clone()
                    .call(payload)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

pub(crate) struct Fleet {
    pub(crate) agent: AgentServer,
    pub(crate) producers: Vec<Option<ProducerServer>>,
}

pub(crate) async fn fleet(services: &[ServiceTime], capacity: usize, blackout: Duration) -> Fleet {
    let dir = std::env::temp_dir().join(format!(
        "pw-balance-bench-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let agent = AgentServer::start(AgentOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir,
        key: key(),
        config: AgentConfig {
            lease_ttl: Duration::from_secs(3),
            weights: WeightConfig {
                blackout,
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
    let mut producers = Vec::new();
    for (i, st) in services.iter().enumerate() {
        producers.push(Some(
            ProducerServer::start(ProducerOptions {
                id: ProducerId(i as u64),
                agent: Some(agent.local_addr()),
                key: key(),
                service_time: *st,
                capacity,
                queue_limit: 1 << 20,
                report_every: Duration::from_millis(200),
                seed: 1000 + i as u64,
                ..ProducerOptions::default()
            })
            .await
            .unwrap(),
        ));
    }
    // Every producer registered.
    for _ in 0..500 {
        if agent.status().producers.len() == services.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Fleet { agent, producers }
}
