//! The storage commit chain with real node processes on loopback: a bank workload with
//! concurrent clients, `kill -9` of every node and restart, malformed frames, and
//! admission control.
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "storage", feature = "cli"))]

mod storage_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipewright_storage::auth::{ClusterKey, SignedHello};
use pipewright_storage::bank::Bank;
use pipewright_storage::client::{ClientError, Transaction};
use pipewright_storage::wire::{self, Challenge, Hello};
use pipewright_storage::{io_runtime, ClientId, NodeId, PageId};
use storage_common::{
    audit, spawn_counted_workload, spawn_workload, wait_for_attempts, Counts, TestCluster,
};
use tower::{Service, ServiceExt};

#[test]
fn bank_with_concurrent_clients_keeps_its_total() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let cluster = TestCluster::start("bank", &[]);
    let rt = io_runtime(2).unwrap();
    let bank = Arc::new(Bank::new(cluster.client(), 8));
    rt.block_on(bank.open(1000)).unwrap();
    // A fixed number of transfer attempts, however long they take on this machine.
    let transfers = 200;
    let (done, counts) = (Arc::new(AtomicU64::new(0)), Arc::new(Counts::default()));
    let tasks = spawn_counted_workload(&rt, &bank, &cluster, 4, None, transfers, &done, &counts);
    assert!(
        wait_for_attempts(&done, transfers, Duration::from_secs(60)),
        "no transfer finished for 60 s: {}",
        counts.line()
    );
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    println!("bank: {}", counts.line());
    assert!(
        counts.committed.load(Ordering::Relaxed) > 20,
        "too few of {transfers} transfers committed: {}",
        counts.line()
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
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let mut cluster = TestCluster::start("kill9", &["--tick-ms", "100"]);
    let rt = io_runtime(2).unwrap();
    let bank = Arc::new(Bank::new(cluster.client(), 8));
    rt.block_on(bank.open(1000)).unwrap();
    let counts = Arc::new(Counts::default());
    let rounds = 3;
    for round in 1..=rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = spawn_workload(&rt, &bank, &cluster, 4, None, &stop, &counts);
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

/// Sends `bytes` on a new connection to `addr`, after its hello if there is one
/// (signed with `key` over the node's challenge); true once the node closed it.
fn send_raw(addr: std::net::SocketAddr, hello: Option<(&ClusterKey, Hello)>, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if let Some((key, hello)) = hello {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut challenge = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut challenge).unwrap();
        let challenge: Challenge = wire::decode(&challenge).unwrap();
        let signed = wire::encode(&SignedHello::sign(key, &challenge, hello));
        s.write_all(&(signed.len() as u32).to_be_bytes()).unwrap();
        s.write_all(&signed).unwrap();
    }
    s.write_all(bytes).unwrap();
    let mut buf = [0u8; 64];
    // Closed by the node: read returns 0 (EOF) or a reset.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue, // its challenge, a Welcome before the bad frame; keep reading
        }
    }
}

#[test]
fn malformed_frames_close_only_their_connection() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let cluster = TestCluster::start("malformed", &[]);
    let rt = io_runtime(2).unwrap();
    let client = cluster.client();
    let addr = cluster.cluster.peers().addr(NodeId(2)).unwrap();
    // A client connection that keeps working throughout.
    rt.block_on(client.read(NodeId(2), PageId(0))).unwrap();

    let key = cluster.cluster.peers().cluster_key().unwrap();
    let garbage_hello = [&4u32.to_be_bytes()[..], &[0xff, 0xff, 0xff, 0xff]].concat();
    assert!(send_raw(addr, None, &garbage_hello), "bad hello not closed");
    let client_hello = Hello::Client { id: ClientId(7) };
    let not_a_request = [0, 0, 0, 3, 9, 9, 9];
    assert!(
        send_raw(addr, Some((&key, client_hello)), &not_a_request),
        "bad request not closed"
    );
    let huge = (64u32 << 20).to_be_bytes(); // longer than MAX_FRAME
    assert!(send_raw(addr, None, &huge), "oversized frame not closed");
    let peer_hello = Hello::Peer { from: NodeId(1) };
    let not_a_message = [0, 0, 0, 2, 200, 1];
    assert!(
        send_raw(addr, Some((&key, peer_hello)), &not_a_message),
        "bad peer message not closed"
    );

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
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
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
