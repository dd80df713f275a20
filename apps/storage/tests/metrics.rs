//! The node's operational metrics through the `metrics` facade: recovery time, and
//! the in-doubt count and oldest intent age of a node restarted with an intent whose
//! decider is unreachable (also listed, as recovered, in its status answer).
#![cfg(not(loom))]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use pipewright_storage::log::{encode, Intent, PageWrite, Record};
use pipewright_storage::peers::Peers;
use pipewright_storage::server::{NodeOptions, NodeServer};
use pipewright_storage::{ClientId, NodeId, PageId, TxnId};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn value(snapshotter: &Snapshotter, name: &str) -> Option<DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == name)
        .map(|(.., value)| value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_count_oldest_intent_age_and_recovery_time_are_published() {
    // The node logs through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    // A log holding one intent of a transaction decided by node 2, which is down.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    let intent = Intent {
        txn: TxnId(42),
        client: ClientId(7),
        chain: vec![NodeId(1), NodeId(2)],
        writes: vec![PageWrite {
            page: PageId(3),
            expected: 0,
            data: b"in doubt".to_vec().into(),
        }],
        acceptors: 0,
    };
    encode(&Record::Intent(intent), &mut log).unwrap();
    std::fs::write(dir.path().join("log"), &log).unwrap();
    let (addr, down) = (free_addr(), free_addr());
    let peers = Peers::new(BTreeMap::from([(NodeId(1), addr), (NodeId(2), down)]));
    let mut opts = NodeOptions::new(NodeId(1), addr, dir.path().to_path_buf(), peers);
    opts.tick = Duration::from_millis(20);

    let server = NodeServer::start(opts).await.unwrap();
    assert_eq!(server.recovered().in_doubt, 1);
    match value(&snapshotter, "storage_recovery_seconds") {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 1),
        other => panic!("no recovery histogram: {other:?}"),
    }
    // Wait (polling a bounded number of times, up to 30 s) until the retry timer has seen
    // the transaction waiting for a while.
    let mut status = server.status();
    for _ in 0..3000 {
        status = server.status();
        if status.in_doubt.first().is_some_and(|t| t.age_ms >= 100) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status.in_doubt.len(), 1, "{status:?}");
    let t = &status.in_doubt[0];
    assert_eq!(
        (t.txn, t.decider, t.recovered),
        (TxnId(42), Some(NodeId(2)), true)
    );
    assert!(t.age_ms >= 100, "{t:?}");
    // The gauges are set on each tick: wait for one after the age passed 100 ms.
    let mut published = (None, None);
    for _ in 0..3000 {
        published = (
            value(&snapshotter, "storage_in_doubt"),
            value(&snapshotter, "storage_oldest_intent_age_seconds"),
        );
        if matches!(published.1, Some(DebugValue::Gauge(age)) if age.0 >= 0.1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match published {
        (Some(DebugValue::Gauge(n)), Some(DebugValue::Gauge(age))) => {
            assert_eq!(n.0, 1.0, "one transaction in doubt");
            assert!(age.0 >= 0.1, "oldest intent age {}", age.0);
        }
        other => panic!("gauges not published: {other:?}"),
    }
}
