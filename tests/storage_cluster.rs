//! The storage commit chain with real node processes on loopback: a bank workload with
//! concurrent clients, `kill -9` of every node and restart, malformed frames, and
//! admission control.
#![cfg(feature = "storage")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_storage::bank::{Bank, Rng};
use pipewright_storage::client::{ClientError, StorageClient, Transaction};
use pipewright_storage::cluster::LocalCluster;
use pipewright_storage::{io_runtime, NodeId, PageId};
use tower::{Service, ServiceExt};

const EXE: &str = env!("CARGO_BIN_EXE_pipewright");

/// A cluster in its own temporary directory, removed afterwards.
struct TestCluster {
    cluster: LocalCluster,
    dir: PathBuf,
}

impl TestCluster {
    fn start(name: &str, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("pw-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let cluster = LocalCluster::start(Path::new(EXE), &dir, 3, None, &extra)
            .unwrap_or_else(|e| panic!("starting the cluster: {e}"));
        Self { cluster, dir }
    }

    fn client(&self) -> StorageClient {
        StorageClient::with_timeout(self.cluster.peers().clone(), Duration::from_secs(3))
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
struct Counts {
    committed: AtomicU64,
    aborted: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
}

impl Counts {
    fn line(&self) -> String {
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
fn spawn_workload(
    rt: &tokio::runtime::Runtime,
    bank: &Arc<Bank>,
    cluster: &TestCluster,
    clients: usize,
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
                    let span = 2 + rng.usize(0..2);
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

fn audit(rt: &tokio::runtime::Runtime, bank: &Bank, what: &str) {
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

#[test]
fn bank_with_concurrent_clients_keeps_its_total() {
    let cluster = TestCluster::start("bank", &[]);
    let rt = io_runtime(2).unwrap();
    let bank = Arc::new(Bank::new(cluster.client(), 8));
    rt.block_on(bank.open(1000)).unwrap();
    let (stop, counts) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Counts::default()),
    );
    let tasks = spawn_workload(&rt, &bank, &cluster, 4, &stop, &counts);
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    println!("bank: {}", counts.line());
    assert!(
        counts.committed.load(Ordering::Relaxed) > 20,
        "too few transfers committed"
    );
    audit(&rt, &bank, "bank");

    // The client is also a tower::Service.
    let mut client = cluster.client();
    let page = rt.block_on(client.read(NodeId(1), PageId(100))).unwrap();
    let txn = Transaction::new()
        .write(NodeId(1), PageId(100), page.version, b"svc".to_vec())
        .write(NodeId(3), PageId(100), 0, b"svc".to_vec());
    let committed = rt.block_on(async { client.ready().await?.call(txn).await });
    assert!(committed.is_ok(), "{committed:?}");
}

#[test]
fn acknowledged_transactions_survive_kill_9_of_every_node() {
    let mut cluster = TestCluster::start("kill9", &["--tick-ms", "100"]);
    let rt = io_runtime(2).unwrap();
    let bank = Arc::new(Bank::new(cluster.client(), 8));
    rt.block_on(bank.open(1000)).unwrap();
    let counts = Arc::new(Counts::default());
    let rounds = 3;
    for round in 1..=rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = spawn_workload(&rt, &bank, &cluster, 4, &stop, &counts);
        std::thread::sleep(Duration::from_millis(1500));
        // kill -9 every node while transfers are in flight, then bring them back.
        for id in cluster.cluster.peers().ids() {
            cluster.cluster.kill(id).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            rt.block_on(t).unwrap();
        }
        for id in cluster.cluster.peers().ids() {
            cluster.cluster.restart(id).unwrap();
        }
        println!("round {round}: {}", counts.line());
        audit(
            &rt,
            &bank,
            &format!("after kill -9 of all 3 nodes, round {round}"),
        );
    }
    println!(
        "kill -9 of every node: {rounds} rounds, {} kills",
        rounds * 3
    );
}

/// A frame with a valid length prefix and a payload that is nothing we know.
fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = [0u8; 64];
    // Closed by the node: read returns 0 (EOF) or a reset.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue, // a Welcome before the bad frame; keep reading
        }
    }
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let cluster = TestCluster::start("malformed", &[]);
    let rt = io_runtime(2).unwrap();
    let client = cluster.client();
    let addr = cluster.cluster.peers().addr(NodeId(2)).unwrap();
    // A client connection that keeps working throughout.
    rt.block_on(client.read(NodeId(2), PageId(0))).unwrap();

    let garbage_hello = [&4u32.to_be_bytes()[..], &[0xff, 0xff, 0xff, 0xff]].concat();
    assert!(send_raw(addr, &garbage_hello), "bad hello not closed");
    let mut after_hello = vec![0, 0, 0, 2, 1, 7]; // Hello::Client { id: 7 }
    after_hello.extend_from_slice(&[0, 0, 0, 3, 9, 9, 9]); // not a ClientRequest
    assert!(send_raw(addr, &after_hello), "bad request not closed");
    let huge = (64u32 << 20).to_be_bytes(); // longer than MAX_FRAME
    assert!(send_raw(addr, &huge), "oversized frame not closed");
    let mut peer_junk = vec![0, 0, 0, 2, 0, 1]; // Hello::Peer { from: 1 }
    peer_junk.extend_from_slice(&[0, 0, 0, 2, 200, 1]); // not a Message
    assert!(send_raw(addr, &peer_junk), "bad peer message not closed");

    // The node still serves its other connections, old and new.
    let txn = Transaction::new()
        .write(NodeId(1), PageId(0), 0, vec![1])
        .write(NodeId(2), PageId(0), 0, vec![2]);
    rt.block_on(client.commit(txn))
        .expect("commit after malformed frames");
    let page = rt.block_on(client.read(NodeId(2), PageId(0))).unwrap();
    assert_eq!((page.version, page.data), (1, vec![2]));
    let status = rt.block_on(client.status(NodeId(2))).unwrap();
    println!(
        "malformed frames counted by node 2: {}",
        status.malformed_frames
    );
    assert_eq!(status.malformed_frames, 4);
}

#[test]
fn busy_under_a_tiny_in_flight_budget_loses_nothing() {
    let cluster = TestCluster::start("busy", &["--max-in-flight", "1"]);
    let rt = io_runtime(2).unwrap();
    let client = cluster.client();
    // 200 transactions at once, each writing its own fresh page on nodes 1 and 3.
    let n = 200u64;
    let results: Vec<_> = rt.block_on(async {
        let calls = (0..n).map(|i| {
            let client = client.clone();
            async move {
                let txn = Transaction::new()
                    .write(NodeId(1), PageId(i), 0, i.to_le_bytes().to_vec())
                    .write(NodeId(3), PageId(i), 0, i.to_le_bytes().to_vec());
                client.commit(txn).await
            }
        });
        futures::future::join_all(calls).await
    });
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(ClientError::Busy { .. })))
        .count();
    let committed = results.iter().filter(|r| r.is_ok()).count();
    println!("tiny budget: {committed} committed, {busy} busy of {n}");
    assert!(busy > 0, "no Busy with an in-flight budget of 1");
    assert_eq!(busy + committed, n as usize, "{results:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(client.status(NodeId(1))).unwrap().unfinished > 0 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Committed transactions are applied on both nodes; Busy ones nowhere.
    for (i, r) in results.iter().enumerate() {
        let want = if r.is_ok() { 1 } else { 0 };
        for node in [NodeId(1), NodeId(3)] {
            let page = rt.block_on(client.read(node, PageId(i as u64))).unwrap();
            assert_eq!(page.version, want, "txn {i} on {node}: {r:?}");
        }
    }
    let status = rt.block_on(client.status(NodeId(1))).unwrap();
    assert_eq!(status.busy, busy as u64);
    assert_eq!(status.in_flight, 0, "in-flight budget not given back");
}
