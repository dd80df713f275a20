//! The lease balancer with real processes on loopback: `pipewright balance agent` and
//! `producer` processes killed with SIGKILL mid-run, an agent restarted, a producer
//! degrading, a node joining. The consumers are `BalancedClient`s in the test process.
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "balance", feature = "cli"))]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pipewright::balance::{
    AgentClient, AgentRequest, AgentResponse, AgentStatus, BalanceError, BalancedClient,
    ClientOptions, ConsumerId,
};

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "pw-balance-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pipewright"))
            .arg("balance")
            .args(args)
            .env("PIPEWRIGHT_BALANCE_KEY", "process tests")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pipewright");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Self { child, addr }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn agent(dir: &Path, listen: &str) -> Proc {
    agent_leasing(dir, listen, "3000")
}

/// An agent whose leases last `lease_ms`.
fn agent_leasing(dir: &Path, listen: &str, lease_ms: &str) -> Proc {
    Proc::spawn(&[
        "agent",
        "--listen",
        listen,
        "--data",
        dir.to_str().unwrap(),
        "--lease-ms",
        lease_ms,
        "--blackout-ms",
        "300",
        "--dead-after-ms",
        "600",
    ])
}

fn producer(id: u64, agent: SocketAddr, extra: &[&str]) -> Proc {
    let id = id.to_string();
    let agent = agent.to_string();
    let mut args = vec![
        "producer",
        "--id",
        &id,
        "--agent",
        &agent,
        "--report-ms",
        "100",
        "--service",
        "exp:1ms",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

async fn status(agent: SocketAddr) -> Option<AgentStatus> {
    let mut c = AgentClient::connect(agent).await.ok()?;
    match c.call(&AgentRequest::Status).await.ok()? {
        AgentResponse::Status(s) => Some(s),
        _ => None,
    }
}

async fn wait_live(agent: SocketAddr, n: usize) {
    for _ in 0..500 {
        if let Some(s) = status(agent).await {
            if s.producers.iter().filter(|p| !p.weight.dead).count() >= n {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} producers never became live");
}

fn clients(agent: SocketAddr, n: u64, leases: usize) -> Vec<BalancedClient> {
    (0..n)
        .map(|i| {
            BalancedClient::new(ClientOptions {
                consumer: ConsumerId(100 + i),
                agents: vec![agent],
                leases,
                renew_every: Duration::from_millis(200),
                timeout: Duration::from_secs(10),
                ..ClientOptions::default()
            })
        })
        .collect()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    interrupted: AtomicU64,
    other: AtomicU64,
}

/// Sends `total` requests from `clients` at `per_client` concurrency; odd requests are
/// idempotent. Calls `at(done)` after each completion (to inject faults).
async fn drive(
    clients: &[BalancedClient],
    per_client: usize,
    total: u64,
    tally: Arc<Tally>,
) -> Vec<String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in clients {
        for _ in 0..per_client {
            let (c, next, tally) = (c.clone(), next.clone(), tally.clone());
            tasks.push(tokio::spawn(async move {
                let mut errs = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return errs;
                    }
                    let idem = i % 2 == 1;
                    match c.send(idem, i.to_le_bytes().to_vec()).await {
                        Ok(p) => {
                            assert_eq!(p, i.to_le_bytes().to_vec(), "answer to another request");
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(BalanceError::Interrupted(_)) => {
                            assert!(!idem, "an idempotent request was not retried");
                            tally.interrupted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tally.other.fetch_add(1, Ordering::Relaxed);
                            errs.push(e.to_string());
                        }
                    }
                }
            }));
        }
    }
    let mut errs = Vec::new();
    for t in tasks {
        errs.extend(t.await.unwrap());
    }
    errs
}

async fn wait_done(tally: &Tally, n: u64) {
    while tally.ok.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_killed_mid_run() {
    let dir = TempDir::new();
    let a = agent(dir.path(), "127.0.0.1:0");
    let mut ps: Vec<Proc> = (1..=3).map(|i| producer(i, a.addr, &[])).collect();
    wait_live(a.addr, 3).await;
    let cs = clients(a.addr, 8, 2);
    for c in &cs {
        assert!(c.wait_ready(Duration::from_secs(10)).await);
    }
    let total = 6_000;
    let tally = Arc::new(Tally::default());
    let load = {
        let (cs, tally) = (cs.clone(), tally.clone());
        tokio::spawn(async move { drive(&cs, 4, total, tally).await })
    };
    wait_done(&tally, 1_500).await;
    ps[0].kill9();
    let errs = load.await.unwrap();
    let (ok, int) = (
        tally.ok.load(Ordering::Relaxed),
        tally.interrupted.load(Ordering::Relaxed),
    );
    println!("producer kill -9: {ok} ok, {int} interrupted (non-idempotent, in flight), other errors {errs:?}");
    // Every request completed once or failed visibly; only requests in flight at the
    // kill can be interrupted (8 clients x 4 in flight).
    assert_eq!(ok + int + errs.len() as u64, total);
    assert!(errs.is_empty(), "{errs:?}");
    assert!(int <= 32, "{int}");
    // The agent declares the producer dead once its reports stop for the dead-after
    // time; the load may finish before that, so wait for the verdict (the deadline only
    // turns a hang into a failure).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(a.addr).await.unwrap();
        let dead = s
            .producers
            .iter()
            .find(|p| p.weight.producer.0 == 1)
            .unwrap()
            .clone();
        if dead.weight.dead {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{dead:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The dead producer is no longer leased (clients that sent it nothing since the
    // kill drop it at their next renewal).
    for c in &cs {
        while c.producers().iter().any(|p| p.0 == 1) {
            assert!(
                std::time::Instant::now() < deadline,
                "a client still leases producer 1"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A lease length no outage in these tests comes near.
const LONG_LEASE_MS: &str = "60000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_and_restarted() {
    let dir = TempDir::new();
    // Leases far longer than the outage, however long it lasts on a slow machine: the
    // clients work on them meanwhile, and the restarted agent adopts them unexpired.
    let mut a = agent_leasing(dir.path(), "127.0.0.1:0", LONG_LEASE_MS);
    let addr = a.addr;
    let _ps: Vec<Proc> = (1..=3).map(|i| producer(i, addr, &[])).collect();
    wait_live(addr, 3).await;
    let cs = clients(addr, 6, 2);
    for c in &cs {
        assert!(c.wait_ready(Duration::from_secs(10)).await);
    }
    let total = 6_000;
    let tally = Arc::new(Tally::default());
    let load = {
        let (cs, tally) = (cs.clone(), tally.clone());
        tokio::spawn(async move { drive(&cs, 4, total, tally).await })
    };
    wait_done(&tally, 1_000).await;
    a.kill9();
    // Consumers keep working on their leases while the agent is down.
    let down_at = tally.ok.load(Ordering::Relaxed);
    wait_done(&tally, (down_at + 1_000).min(total - 100)).await;
    let a2 = agent_leasing(dir.path(), &addr.to_string(), LONG_LEASE_MS);
    assert_eq!(a2.addr, addr);
    // The registry brought every producer back before any reported.
    let s = status(addr).await.unwrap();
    assert_eq!(s.producers.len(), 3, "{s:?}");
    let errs = load.await.unwrap();
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(ok, total);
    // Leases issued by the first agent were renewed by the second (the deadline only
    // turns a hang into a failure).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if status(addr).await.is_some_and(|s| s.renewed > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = status(addr).await.unwrap();
    println!(
        "agent kill -9 + restart: {ok} ok, 0 errors; after restart {} renewed, {} granted",
        s.renewed, s.granted
    );
    assert!(s.renewed > 0);
}

/// The degrading producer's delays, tried in turn: a longer one only if the phase
/// measured before the degradation did not end inside the shorter one on this machine.
const DEGRADE_AFTER_MS: [u64; 3] = [2_500, 10_000, 40_000];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degrading_producer_loses_share() {
    for after_ms in DEGRADE_AFTER_MS {
        match degrade_run(Duration::from_millis(after_ms)).await {
            Some((before, after)) => {
                println!("degrading producer: share {before:.3} -> {after:.3}");
                assert!(after < before / 3.0, "{before} -> {after}");
                return;
            }
            None => println!(
                "degrading producer: the phase before the degradation outlasted {after_ms} ms; \
                 again with a longer delay"
            ),
        }
    }
    panic!("the phase before the degradation outlasted every delay in {DEGRADE_AFTER_MS:?} ms");
}

/// Producer 3's share of the completions (from the producers' own completion rates)
/// before and after it degrades `degrade_after` from its start, or `None` if the
/// phase before did not provably end before the degradation.
async fn degrade_run(degrade_after: Duration) -> Option<(f64, f64)> {
    let dir = TempDir::new();
    let a = agent(dir.path(), "127.0.0.1:0");
    let _p1 = producer(1, a.addr, &[]);
    let _p2 = producer(2, a.addr, &[]);
    let degrade_after_ms = degrade_after.as_millis().to_string();
    // Its clock starts after this and before it prints its address: it degrades no
    // sooner than `spawned + degrade_after`, and no later than `listening + degrade_after`.
    let spawned = std::time::Instant::now();
    let _p3 = producer(
        3,
        a.addr,
        &[
            "--degrade-after-ms",
            &degrade_after_ms,
            "--degrade-factor",
            "30",
        ],
    );
    let listening = std::time::Instant::now();
    wait_live(a.addr, 3).await;
    let cs = clients(a.addr, 6, 2);
    for c in &cs {
        assert!(c.wait_ready(Duration::from_secs(10)).await);
    }
    // One phase before the degradation and one after (fixed request counts, not time
    // windows).
    let share3 = |s: &AgentStatus| {
        let total: f64 = s.producers.iter().map(|p| p.report.rps).sum();
        let p3 = s
            .producers
            .iter()
            .find(|p| p.weight.producer.0 == 3)
            .unwrap();
        p3.report.rps / total.max(1e-9)
    };
    let tally = Arc::new(Tally::default());
    assert!(drive(&cs, 4, 1_500, tally.clone()).await.is_empty());
    let before = share3(&status(a.addr).await.unwrap());
    // Every report in `before` was made before now: undegraded only if now is before
    // the earliest moment the degradation can begin.
    if spawned.elapsed() >= degrade_after {
        return None;
    }
    // Until the degradation has certainly begun (its clock), then keep loading.
    tokio::time::sleep_until((listening + degrade_after).into()).await;
    let mut after = 1.0;
    for _round in 0..40 {
        assert!(drive(&cs, 4, 500, tally.clone()).await.is_empty());
        after = share3(&status(a.addr).await.unwrap());
        if after < before / 3.0 {
            break;
        }
    }
    Some((before, after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_joins_and_takes_connections() {
    let dir = TempDir::new();
    let a = agent(dir.path(), "127.0.0.1:0");
    let shed = ["--shed", "--shed-hits", "2"];
    let _p1 = producer(1, a.addr, &shed);
    let _p2 = producer(2, a.addr, &shed);
    wait_live(a.addr, 2).await;
    let cs = clients(a.addr, 18, 1);
    for c in &cs {
        assert!(c.wait_ready(Duration::from_secs(10)).await);
    }
    let _p3 = producer(3, a.addr, &shed);
    let tally = Arc::new(Tally::default());
    let mut conns = Vec::new();
    for _round in 0..200 {
        let errs = drive(&cs, 1, 18 * 20, tally.clone()).await;
        assert!(
            errs.is_empty(),
            "client-visible errors while a node joins: {errs:?}"
        );
        assert_eq!(tally.interrupted.load(Ordering::Relaxed), 0);
        let s = status(a.addr).await.unwrap();
        conns = s
            .producers
            .iter()
            .map(|p| p.indicators.connections)
            .collect();
        if conns.len() == 3 && conns[2] >= 4 {
            break;
        }
    }
    let s = status(a.addr).await.unwrap();
    let shed_total: u64 = s.producers.iter().map(|p| p.shed_total).sum();
    println!(
        "node join: connections {conns:?}, {shed_total} shed, {} requests, 0 errors",
        tally.ok.load(Ordering::Relaxed)
    );
    assert!(conns.len() == 3 && conns[2] >= 4, "{conns:?}");
}
