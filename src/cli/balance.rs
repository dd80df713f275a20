//! `pipewright balance`: the leasing agent, producers, a consumer load, and status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pipewright_balance::{
    io_runtime, run_load, shutdown_signal, AgentClient, AgentConfig, AgentOptions, AgentRequest,
    AgentResponse, AgentServer, ClusterKey, LoadOptions, Metric, ProducerId, ProducerOptions,
    ProducerServer, ServiceTime, ShedConfig, WeightConfig,
};

#[derive(Args, Debug)]
pub(crate) struct BalanceArgs {
    #[command(subcommand)]
    command: BalanceCommand,
}

#[derive(Subcommand, Debug)]
enum BalanceCommand {
    /// Run a leasing agent (until SIGINT/SIGTERM).
    Agent(AgentArgs),
    /// Run a producer: a TCP service that reports to its agent (until SIGINT/SIGTERM).
    Producer(ProducerArgs),
    /// Run a consumer load through the agent and print latency and outcome counts.
    Consumer(ConsumerArgs),
    /// Show an agent's producers, weights, leases and counters.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct KeyArg {
    /// Cluster key passphrase (or env PIPEWRIGHT_BALANCE_KEY); lease ids and producer
    /// reports are signed with it.
    #[arg(long)]
    key: Option<String>,
}

impl KeyArg {
    fn cluster_key(&self) -> ClusterKey {
        let p = self
            .key
            .clone()
            .or_else(|| std::env::var("PIPEWRIGHT_BALANCE_KEY").ok())
            .unwrap_or_else(|| {
                eprintln!(
                    "warning: no cluster key (--key or PIPEWRIGHT_BALANCE_KEY): using the public \
                     development key, with which anyone who reaches these ports can forge leases, \
                     producer statuses and gossip; set a secret key outside a test"
                );
                "pipewright-dev-key".to_string()
            });
        ClusterKey::from_passphrase(&p)
    }
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Directory of the persisted producer registry.
    #[arg(long, default_value = "balance-agent")]
    data: PathBuf,
    /// Agent id (in lease ids).
    #[arg(long, default_value_t = 0)]
    id: u32,
    /// Lease length, ms.
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    /// Blackout of new producers, ms (gRFC A58: 10 s).
    #[arg(long, default_value_t = 10_000)]
    blackout_ms: u64,
    /// Producer report expiry, ms (gRFC A58: 3 min).
    #[arg(long, default_value_t = 180_000)]
    expiry_ms: u64,
    /// A producer silent this long is dead (no leases), ms.
    #[arg(long, default_value_t = 5_000)]
    dead_after_ms: u64,
    /// Requests inside the agent at once before `Busy`.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Write the weight engine's inputs here at shutdown (replayable trace).
    #[arg(long)]
    trace: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArg,
}

#[derive(Args, Debug)]
struct ProducerArgs {
    /// Producer id (unique within its agent).
    #[arg(long)]
    id: u64,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Its agent.
    #[arg(long)]
    agent: SocketAddr,
    /// Service time: fixed:5ms, uniform:10ms (in [0,10ms)) or exp:20ms (mean).
    #[arg(long, default_value = "exp:2ms")]
    service: ServiceTime,
    /// Requests served at once.
    #[arg(long, default_value_t = 64)]
    capacity: usize,
    /// Waiting requests before `Busy`.
    #[arg(long, default_value_t = 1024)]
    queue_limit: usize,
    /// Fraction of requests that fail.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    error_rate: f64,
    /// Multiply the service time by --degrade-factor after this many ms.
    #[arg(long)]
    degrade_after_ms: Option<u64>,
    /// See --degrade-after-ms.
    #[arg(long, default_value_t = 10.0, value_parser = factor)]
    degrade_factor: f64,
    /// Report/gossip/shedding period, ms.
    #[arg(long, default_value_t = 500)]
    report_ms: u64,
    /// Shed connections when overloaded and peers have room.
    #[arg(long)]
    shed: bool,
    /// Consecutive overloaded intervals before shedding.
    #[arg(long, default_value_t = 3)]
    shed_hits: u32,
    /// Shed on `connections` or `utilisation`.
    #[arg(long, default_value = "connections")]
    shed_metric: String,
    #[command(flatten)]
    key: KeyArg,
}

#[derive(Args, Debug)]
struct ConsumerArgs {
    /// Agents (comma-separated).
    #[arg(long, value_delimiter = ',')]
    agent: Vec<SocketAddr>,
    /// Consumer clients (each with its own leases).
    #[arg(long, default_value_t = 4)]
    consumers: u64,
    /// Leases per consumer.
    #[arg(long, default_value_t = 2)]
    leases: usize,
    /// Requests in flight per consumer.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Total requests.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Mark requests idempotent (retried on a lost connection).
    #[arg(long)]
    idempotent: bool,
    /// First consumer id.
    #[arg(long, default_value_t = 1)]
    first_id: u64,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The agent.
    #[arg(long, default_value = "127.0.0.1:7400")]
    agent: SocketAddr,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: BalanceArgs) -> anyhow::Result<()> {
    let rt = io_runtime().context("starting the I/O runtime")?;
    match args.command {
        BalanceCommand::Agent(a) => rt.block_on(agent(a)),
        BalanceCommand::Producer(p) => rt.block_on(producer(p)),
        BalanceCommand::Consumer(c) => rt.block_on(consumer(c)),
        BalanceCommand::Status(s) => rt.block_on(status(s)),
    }
}

async fn agent(a: AgentArgs) -> anyhow::Result<()> {
    let opts = AgentOptions {
        listen: a.listen,
        data: a.data,
        key: a.key.cluster_key(),
        config: AgentConfig {
            agent: a.id,
            lease_ttl: Duration::from_millis(a.lease_ms),
            weights: WeightConfig {
                blackout: Duration::from_millis(a.blackout_ms),
                weight_expiry: Duration::from_millis(a.expiry_ms),
                dead_after: Duration::from_millis(a.dead_after_ms),
                ..WeightConfig::default()
            },
            ..AgentConfig::default()
        },
        max_in_flight: a.max_in_flight,
        trace: a.trace,
    };
    let server = AgentServer::start(opts).await?;
    let st = server.status();
    println!(
        "agent {} listening on {} ({} producers from the registry)",
        st.agent,
        server.local_addr(),
        st.producers.len()
    );
    server.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn producer(p: ProducerArgs) -> anyhow::Result<()> {
    let metric = match p.shed_metric.as_str() {
        "connections" => Metric::Connections,
        "utilisation" | "utilization" => Metric::Utilisation,
        other => bail!("unknown --shed-metric {other:?}: use connections or utilisation"),
    };
    let report = Duration::from_millis(p.report_ms.max(1));
    let opts = ProducerOptions {
        id: ProducerId(p.id),
        listen: p.listen,
        agent: Some(p.agent),
        key: p.key.cluster_key(),
        service_time: p.service,
        capacity: p.capacity,
        queue_limit: p.queue_limit,
        error_rate: p.error_rate,
        degrade_after: p.degrade_after_ms.map(Duration::from_millis),
        degrade_factor: p.degrade_factor,
        report_every: report,
        shed: p.shed.then_some(ShedConfig {
            metric,
            hits: p.shed_hits,
            stale_after: report * 4,
            ..ShedConfig::default()
        }),
        seed: p.id,
        ..ProducerOptions::default()
    };
    let server = ProducerServer::start(opts).await?;
    println!("producer {} listening on {}", p.id, server.local_addr());
    shutdown_signal().await;
    server.leave().await;
    Ok(())
}

async fn consumer(c: ConsumerArgs) -> anyhow::Result<()> {
    if c.agent.is_empty() {
        bail!("give at least one --agent");
    }
    let report = run_load(LoadOptions {
        agents: c.agent,
        consumers: c.consumers,
        first_id: c.first_id,
        leases: c.leases,
        concurrency: c.concurrency,
        requests: c.requests,
        idempotent: c.idempotent,
        progress: true,
    })
    .await;
    println!("{}", report.to_json());
    Ok(())
}

async fn status(s: StatusArgs) -> anyhow::Result<()> {
    let mut c = AgentClient::connect(s.agent).await?;
    let st = match c.call(&AgentRequest::Status).await? {
        AgentResponse::Status(st) => st,
        AgentResponse::Busy => bail!("the agent is busy (at its in-flight limit): try again shortly"),
        AgentResponse::Refused(why) => bail!("the agent refused: {why}"),
        _ => bail!(
            "the agent answered something other than its status: check that agent and CLI are the same pipewright version"
        ),
    };
    if s.json {
        println!("{}", pipewright_balance::status_json(&st));
        return Ok(());
    }
    println!(
        "agent {}: {} leases out; granted {} renewed {} refused {}; reports ok {} rejected {}; forged status {}; busy {}; malformed {}",
        st.agent, st.active_leases, st.granted, st.renewed, st.refused, st.reports_accepted,
        st.reports_rejected, st.forged_status, st.busy, st.malformed
    );
    println!(
        "{:>4} {:<21} {:>10} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>5} {:>5} {:>6} {:<14}",
        "id",
        "addr",
        "weight",
        "base",
        "lat",
        "err",
        "leases",
        "util",
        "conns",
        "black",
        "dead",
        "shed",
        "verdict"
    );
    for p in &st.producers {
        let w = &p.weight;
        println!(
            "{:>4} {:<21} {:>10.1} {:>8.1} {:>6.2} {:>6.2} {:>6} {:>6.2} {:>6} {:>5} {:>5} {:>6} {:<14}",
            w.producer.0,
            p.addr,
            w.weight,
            w.base,
            w.latency_factor,
            w.error_factor,
            w.active_leases,
            p.report.utilisation,
            p.indicators.connections,
            w.blackout,
            w.dead,
            p.shed_total,
            p.last_verdict.map_or("-".to_string(), |v| format!("{v:?}"))
        );
    }
    Ok(())
}

/// A fraction in [0, 1].
fn fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "{s:?} is not a fraction: use a number from 0 to 1, e.g. 0.01"
        )),
    }
}

/// A finite, non-negative factor.
fn factor(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 => Ok(f),
        _ => Err(format!(
            "{s:?} is not a factor: use a non-negative number, e.g. 10 for ten times slower"
        )),
    }
}
