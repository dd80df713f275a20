//! Our side: a [`LocalCluster`] of real `pipewright storage node` processes on loopback
//! (each logging through its io_uring group-commit sink, one `fdatasync` per burst),
//! driven by `concurrency` coordinators, each a [`StorageClient`] of its own (its own
//! connections, like a peer coordinator's) used as a `tower::Service<Transaction>`.
//! Coordinator `t` owns pages `4t..4t+3` on every node, so transactions never
//! conflict; each writes one full page (8 KiB, incompressible) on every node of the
//! chain (ascending node ids; the last node decides).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use pipewright_storage::client::{ClientError, StorageClient, Transaction};
use pipewright_storage::cluster::LocalCluster;
use pipewright_storage::pages::PAGE_SIZE;
use pipewright_storage::peers::Peers;
use pipewright_storage::{Bytes, NodeId, PageId, Version};
use tower::{Service, ServiceExt};

use super::{payload, Measured, PAGES_PER_COORDINATOR};

/// A running cluster of `nodes` node processes.
pub struct Ours {
    cluster: LocalCluster,
    nodes: u32,
}

impl Ours {
    /// Start `nodes` node processes of `exe` with their data under `dir`.
    pub fn start(exe: &Path, dir: &Path, nodes: u32, extra: &[String]) -> Result<Self> {
        let cluster = LocalCluster::start(exe, dir, nodes, None, extra)
            .with_context(|| format!("starting a {nodes}-node cluster in {}", dir.display()))?;
        Ok(Self { cluster, nodes })
    }

    /// Run transactions for `warmup` + `window`; measure the `window`.
    pub fn run(
        &mut self,
        rt: &tokio::runtime::Runtime,
        concurrency: usize,
        warmup: Duration,
        window: Duration,
    ) -> Result<Measured> {
        self.run_f(rt, concurrency, warmup, window, 0)
    }

    /// [`run`](Self::run) with `acceptors` (F) on every transaction.
    pub fn run_f(
        &mut self,
        rt: &tokio::runtime::Runtime,
        concurrency: usize,
        warmup: Duration,
        window: Duration,
        acceptors: u8,
    ) -> Result<Measured> {
        let nodes: Vec<NodeId> = (1..=self.nodes).map(NodeId).collect();
        let peers = self.cluster.peers().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let all = Arc::new(AtomicU64::new(0));
        let before = rt.block_on(log_counters(&peers, &nodes));
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
        let mut m = rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..concurrency {
                let mut client = StorageClient::new(peers.clone());
                client.set_acceptors(acceptors);
                let nodes = nodes.clone();
                let (stop, measuring) = (stop.clone(), measuring.clone());
                let (committed, failed, hist) = (committed.clone(), failed.clone(), hist.clone());
                let all = all.clone();
                tasks.push(tokio::spawn(async move {
                    let pages: Vec<PageId> = (0..PAGES_PER_COORDINATOR)
                        .map(|i| PageId((t * PAGES_PER_COORDINATOR + i) as u64))
                        .collect();
                    let mut versions = read_versions(&client, &nodes, &pages).await?;
                    let mut data = payload(t, PAGE_SIZE);
                    let mut local = Histogram::<u64>::new(3).expect("histogram");
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let slot = n % pages.len();
                        data[..8].copy_from_slice(&(n as u64).to_le_bytes());
                        // One copy of the page per transaction, shared by its writes.
                        let page = Bytes::copy_from_slice(&data);
                        let mut txn = Transaction::new();
                        for (i, &node) in nodes.iter().enumerate() {
                            txn = txn.write(node, pages[slot], versions[i][slot], page.clone());
                        }
                        let counted = measuring.load(Ordering::Relaxed);
                        let start = Instant::now();
                        let r = client.ready().await?.call(txn).await;
                        match r {
                            Ok(_) => {
                                for v in &mut versions {
                                    v[slot] += 1;
                                }
                                all.fetch_add(1, Ordering::Relaxed);
                                if counted && !stop.load(Ordering::Relaxed) {
                                    committed.fetch_add(1, Ordering::Relaxed);
                                    let _ = local.record(start.elapsed().as_micros().max(1) as u64);
                                }
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if failed.load(Ordering::Relaxed) <= 5 {
                                    eprintln!("commit_chain:   ours: coordinator {t}: {e}");
                                }
                                if matches!(e, ClientError::Busy { .. }) {
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                                versions = read_versions(&client, &nodes, &pages).await?;
                            }
                        }
                        n += 1;
                    }
                    hist.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add(&local)
                        .ok();
                    Ok::<_, ClientError>(())
                }));
            }
            tokio::time::sleep(warmup).await;
            measuring.store(true, Ordering::Relaxed);
            let start = Instant::now();
            tokio::time::sleep(window).await;
            stop.store(true, Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            for task in tasks {
                task.await
                    .map_err(|e| anyhow!("coordinator task: {e}"))?
                    .context("coordinator")?;
            }
            let h = hist.lock().unwrap_or_else(|p| p.into_inner());
            Ok::<_, anyhow::Error>(Measured::from(committed.load(Ordering::Relaxed), secs, &h))
        })?;
        if !self.cluster.all_running() {
            return Err(anyhow!("a node process exited during the run"));
        }
        let after = rt.block_on(log_counters(&peers, &nodes));
        let txns = all.load(Ordering::Relaxed).max(1) as f64;
        let per_sync: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| txns / a.0.saturating_sub(b.0).max(1) as f64)
            .collect();
        m.txn_per_sync = per_sync.iter().sum::<f64>() / per_sync.len().max(1) as f64;
        let per_node: Vec<String> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| {
                let syncs = a.0.saturating_sub(b.0);
                let bytes = a.1.saturating_sub(b.1);
                format!(
                    "{syncs} ({:.1} txn/sync, {:.0} B/txn)",
                    txns / syncs.max(1) as f64,
                    bytes as f64 / txns
                )
            })
            .collect();
        eprintln!(
            "commit_chain:   ours: {} txns in all; log fdatasyncs per node: {}",
            txns,
            per_node.join(", ")
        );
        let failed = failed.load(Ordering::Relaxed);
        if failed > 0 {
            eprintln!("commit_chain:   ours: {failed} transactions failed (retried)");
        }
        Ok(m)
    }

    /// Stop the node processes (SIGTERM).
    pub fn stop(mut self) {
        self.cluster.stop();
    }
}

/// The committed versions of `pages` on every node (`[node][page]`).
async fn read_versions(
    client: &StorageClient,
    nodes: &[NodeId],
    pages: &[PageId],
) -> Result<Vec<Vec<Version>>, ClientError> {
    let mut out = Vec::with_capacity(nodes.len());
    for &node in nodes {
        let mut v = Vec::with_capacity(pages.len());
        for &page in pages {
            v.push(client.read(node, page).await?.version);
        }
        out.push(v);
    }
    Ok(out)
}

/// Each node's (log fdatasyncs, log bytes) so far; zeros if a node does not answer.
async fn log_counters(peers: &Peers, nodes: &[NodeId]) -> Vec<(u64, u64)> {
    let client = StorageClient::new(peers.clone());
    let mut out = Vec::with_capacity(nodes.len());
    for &node in nodes {
        out.push(match client.status(node).await {
            Ok(s) => (s.log_syncs, s.log_bytes),
            Err(_) => (0, 0),
        });
    }
    out
}

/// What `decider-down-availability` counted while the decider was down.
pub struct Outage {
    /// Transactions on the surviving nodes that committed during the outage.
    pub committed: u64,
    /// Transactions on the surviving nodes attempted during the outage.
    pub attempted: u64,
}

impl Outage {
    /// The share that committed.
    pub fn share(&self) -> f64 {
        self.committed as f64 / self.attempted.max(1) as f64
    }
}

impl Ours {
    /// `decider-down-availability`: `concurrency` coordinators write their pages on
    /// every node (the last node decides) with `acceptors` (F) for `warmup`; then the
    /// decider is killed (`kill -9`) with transactions in flight, and for `outage`
    /// the coordinators write the same pages on the surviving nodes only (their
    /// transactions do not need the decider, only the pages its in-doubt
    /// transactions may hold). Counts what committed during the outage, then
    /// restarts the decider.
    pub fn decider_down(
        &mut self,
        rt: &tokio::runtime::Runtime,
        concurrency: usize,
        acceptors: u8,
        warmup: Duration,
        outage: Duration,
    ) -> Result<Outage> {
        let all_nodes: Vec<NodeId> = (1..=self.nodes).map(NodeId).collect();
        let decider = *all_nodes.last().context("no nodes")?;
        let survivors: Vec<NodeId> = all_nodes[..all_nodes.len() - 1].to_vec();
        let peers = self.cluster.peers().clone();
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let attempted = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let mut client = StorageClient::with_timeout(peers.clone(), Duration::from_secs(1));
                client.set_acceptors(acceptors);
                let (all_nodes, survivors) = (all_nodes.clone(), survivors.clone());
                let (down, stop) = (down.clone(), stop.clone());
                let (committed, attempted) = (committed.clone(), attempted.clone());
                rt.spawn(async move {
                    let pages: Vec<PageId> = (0..PAGES_PER_COORDINATOR)
                        .map(|i| PageId((t * PAGES_PER_COORDINATOR + i) as u64))
                        .collect();
                    let data = Bytes::from(payload(t, PAGE_SIZE));
                    let mut n = 0usize;
                    let mut was_down = false;
                    let mut versions = read_versions(&client, &all_nodes, &pages).await.ok();
                    while !stop.load(Ordering::Relaxed) {
                        let is_down = down.load(Ordering::Relaxed);
                        let nodes = if is_down { &survivors } else { &all_nodes };
                        if is_down != was_down || versions.is_none() {
                            versions = read_versions(&client, nodes, &pages).await.ok();
                            was_down = is_down;
                        }
                        let Some(v) = versions.as_mut() else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        let slot = n % pages.len();
                        n += 1;
                        let mut txn = Transaction::new();
                        for (i, &node) in nodes.iter().enumerate() {
                            txn = txn.write(node, pages[slot], v[i][slot], data.clone());
                        }
                        let r = client.ready().await;
                        let r = match r {
                            Ok(c) => c.call(txn).await,
                            Err(e) => Err(e),
                        };
                        // Counted only when the whole attempt ran during the outage.
                        let counted = is_down && down.load(Ordering::Relaxed);
                        if counted {
                            attempted.fetch_add(1, Ordering::Relaxed);
                        }
                        match r {
                            Ok(_) => {
                                for v in v.iter_mut() {
                                    v[slot] += 1;
                                }
                                if counted {
                                    committed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => versions = None,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(warmup);
        self.cluster.kill(decider).context("killing the decider")?;
        down.store(true, Ordering::Relaxed);
        std::thread::sleep(outage);
        down.store(false, Ordering::Relaxed);
        let out = Outage {
            committed: committed.load(Ordering::Relaxed),
            attempted: attempted.load(Ordering::Relaxed),
        };
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            rt.block_on(task)
                .map_err(|e| anyhow!("coordinator task: {e}"))?;
        }
        self.cluster
            .restart(decider)
            .context("restarting the decider")?;
        Ok(out)
    }
}
