//! Shared by the storage cluster tests: a cluster of node processes in a temporary
//! directory, a concurrent bank workload and the audit.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pipewright_storage::bank::{Bank, Rng};
use pipewright_storage::client::{ClientError, StorageClient};
use pipewright_storage::cluster::LocalCluster;

pub(crate) const EXE: &str = env!("CARGO_BIN_EXE_pipewright");

/// A cluster in its own temporary directory, removed afterwards.
pub(crate) struct TestCluster {
    pub(crate) cluster: LocalCluster,
    dir: PathBuf,
    /// F of the transactions of [`client`](Self::client)s (0: plain two-phase commit).
    pub(crate) acceptors: u8,
    /// The timeout of [`client`](Self::client)s.
    pub(crate) client_timeout: Duration,
}

impl TestCluster {
    pub(crate) fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_with_env(name, extra, &[])
    }

    /// With environment variables for the node processes (checkpoint size, network
    /// faults).
    pub(crate) fn start_with_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_at(name, &[localhost; 3], extra, env)
    }

    /// `nodes` nodes (at most 7), each on a loopback address of its own,
    /// `127.(16 + 8n + id).(pid / 256 % 256).(pid % 256)` for this process's `n`-th
    /// such cluster, so that a [`Partition`] of one address cuts one node off and no
    /// other test process (pid differing in its low 16 bits) shares it.
    ///
    /// [`Partition`]: pipewright_testkit::Partition
    pub(crate) fn start_on_own_addresses(
        name: &str,
        nodes: u8,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        static CLUSTERS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        assert!(nodes <= 7, "at most 7 nodes on own addresses");
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed) % 25;
        let pid = std::process::id();
        let addrs: Vec<SocketAddr> = (1..=nodes)
            .map(|id| {
                let ip = [127, 16 + 8 * n + id, (pid >> 8) as u8, pid as u8];
                SocketAddr::from((ip, 0))
            })
            .collect();
        Self::start_at(name, &addrs, extra, env)
    }

    fn start_at(name: &str, addrs: &[SocketAddr], extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("pw-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cluster = LocalCluster::start_at(Path::new(EXE), &dir, addrs, &extra, &env)
            .unwrap_or_else(|e| panic!("starting the cluster: {e}"));
        Self {
            cluster,
            dir,
            acceptors: 0,
            client_timeout: Duration::from_secs(3),
        }
    }

    pub(crate) fn client(&self) -> StorageClient {
        let client = StorageClient::with_timeout(self.cluster.peers().clone(), self.client_timeout);
        client.set_acceptors(self.acceptors);
        client
    }

    /// A node's address.
    pub(crate) fn ip(&self, node: pipewright_storage::NodeId) -> std::net::IpAddr {
        self.cluster
            .peers()
            .addr(node)
            .expect("a node of the cluster")
            .ip()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.cluster.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("node logs kept in {}", self.dir.display());
        }
    }
}

#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) committed: AtomicU64,
    pub(crate) aborted: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) other: AtomicU64,
}

impl Counts {
    pub(crate) fn line(&self) -> String {
        format!(
            "committed {}, aborted+retried {}, busy {}, timeouts/io {}",
            self.committed.load(Ordering::Relaxed),
            self.aborted.load(Ordering::Relaxed),
            self.busy.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed)
        )
    }
}

/// Run transfers from `clients` concurrent clients until `stop` is set.
pub(crate) fn spawn_workload(
    rt: &tokio::runtime::Runtime,
    bank: &Arc<Bank>,
    cluster: &TestCluster,
    clients: usize,
    span: Option<usize>,
    stop: &Arc<AtomicBool>,
    counts: &Arc<Counts>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|i| {
            let (bank, stop, counts) = (bank.clone(), stop.clone(), counts.clone());
            let client = cluster.client();
            rt.spawn(async move {
                let mut rng = Rng::with_seed(i as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    let span = span.unwrap_or_else(|| 2 + rng.usize(0..2));
                    let counter = match bank.transfer_via(&client, span, &mut rng).await {
                        Ok(()) => &counts.committed,
                        Err(ClientError::Aborted(_)) => &counts.aborted,
                        Err(ClientError::Busy { .. }) => &counts.busy,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            &counts.other
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

pub(crate) fn audit(rt: &tokio::runtime::Runtime, bank: &Bank, what: &str) {
    bank.clear_cache();
    rt.block_on(bank.settle(Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("{what}: the cluster did not settle: {e}"));
    let audit = rt.block_on(bank.audit()).expect("audit");
    println!(
        "{what}: audited {} accounts: total {} (expected {}), min balance {}, lost acknowledged commits {}",
        audit.accounts,
        audit.total,
        bank.expected_total(),
        audit.min,
        audit.lost.len()
    );
    assert_eq!(
        audit.total,
        bank.expected_total(),
        "{what}: money created or destroyed"
    );
    assert!(audit.min >= 0, "{what}: negative balance");
    assert!(
        audit.lost.is_empty(),
        "{what}: acknowledged commits lost: {:?}",
        audit.lost
    );
}

/// Run exactly `transfers` transfer attempts from `clients` concurrent clients (each
/// takes the next attempt until none is left), whatever the machine's speed; `done`
/// counts the attempts finished so far (committed or not).
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_counted_workload(
    rt: &tokio::runtime::Runtime,
    bank: &Arc<Bank>,
    cluster: &TestCluster,
    clients: usize,
    span: Option<usize>,
    transfers: u64,
    done: &Arc<AtomicU64>,
    counts: &Arc<Counts>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let issued = Arc::new(AtomicU64::new(0));
    (0..clients)
        .map(|i| {
            let (bank, counts) = (bank.clone(), counts.clone());
            let (issued, done) = (issued.clone(), done.clone());
            let client = cluster.client();
            rt.spawn(async move {
                let mut rng = Rng::with_seed(i as u64 + 1);
                while issued.fetch_add(1, Ordering::Relaxed) < transfers {
                    let span = span.unwrap_or_else(|| 2 + rng.usize(0..2));
                    let counter = match bank.transfer_via(&client, span, &mut rng).await {
                        Ok(()) => &counts.committed,
                        Err(ClientError::Aborted(_)) => &counts.aborted,
                        Err(ClientError::Busy { .. }) => &counts.busy,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            &counts.other
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// Waits until `done` reaches `target`; false if no attempt finished for `patience`
/// (nothing is moving: a liveness problem, or every attempt waits on a stopped node).
pub(crate) fn wait_for_attempts(done: &AtomicU64, target: u64, patience: Duration) -> bool {
    let mut last = done.load(Ordering::Relaxed);
    let mut since = std::time::Instant::now();
    loop {
        let now = done.load(Ordering::Relaxed);
        if now >= target {
            return true;
        }
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        } else if since.elapsed() >= patience {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
