//! Node servers in-process on loopback: commits over a chain, reads, a torn log tail
//! truncated on restart, `Busy` from a full in-flight budget.
#![cfg(not(loom))]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use pipewright_storage::client::{ClientError, StorageClient, Transaction};
use pipewright_storage::peers::Peers;
use pipewright_storage::server::{NodeOptions, NodeServer};
use pipewright_storage::{NodeId, PageId};
use tokio::sync::oneshot;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Running {
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

async fn start(opts: NodeOptions) -> (Running, pipewright_storage::server::Recovered) {
    let server = NodeServer::start(opts).await.unwrap();
    let recovered = server.recovered().clone();
    let (stop, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        server
            .run_until(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (Running { stop, done }, recovered)
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.done.await.unwrap();
    }
}

/// The key of the clusters these tests start: connections must be signed with it.
const KEY: &str = "the test cluster's key";

/// Nodes `1..=n` on free loopback ports, data under `dir`, each started with its
/// options as `tune` leaves them; their addresses (the peers file is these and [`KEY`]).
async fn start_nodes(
    dir: &std::path::Path,
    n: u32,
    tune: impl Fn(&mut NodeOptions),
) -> (Vec<Running>, BTreeMap<NodeId, SocketAddr>) {
    let addrs: BTreeMap<NodeId, SocketAddr> = (1..=n).map(|i| (NodeId(i), free_addr())).collect();
    let peers = Peers::new(addrs.clone()).with_key(KEY);
    let mut nodes = Vec::new();
    for (&id, &addr) in &addrs {
        let mut opts = NodeOptions::new(id, addr, dir.join(format!("n{}", id.0)), peers.clone());
        tune(&mut opts);
        nodes.push(start(opts).await.0);
    }
    (nodes, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_truncated_and_committed_data_survives() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let peers = Peers::new(BTreeMap::from([(NodeId(1), addr)]));
    let opts = NodeOptions::new(NodeId(1), addr, dir.path().to_path_buf(), peers.clone());
    let (node, recovered) = start(opts.clone()).await;
    assert_eq!(recovered.records, 0);
    let client = StorageClient::new(peers.clone());
    let txn = Transaction::new()
        .write(NodeId(1), PageId(0), 0, b"zero".to_vec())
        .write(NodeId(1), PageId(7), 0, b"seven".to_vec());
    client.commit(txn).await.unwrap();
    let stale = Transaction::new().write(NodeId(1), PageId(0), 0, b"lost".to_vec());
    assert!(matches!(
        client.commit(stale).await,
        Err(ClientError::Aborted(_))
    ));
    node.stop().await;

    // A torn write at the end of the log: a header announcing more than is there.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("log"))
        .unwrap();
    log.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 9, 9]).unwrap();
    drop(log);

    let (node, recovered) = start(opts.clone()).await;
    assert_eq!(recovered.truncated_bytes, 11, "{recovered:?}");
    assert!(recovered.corruption.is_some());
    assert!(recovered.records >= 3, "{recovered:?}");
    let client = StorageClient::new(peers.clone());
    let page = client.read(NodeId(1), PageId(7)).await.unwrap();
    assert_eq!((page.version, page.data.as_slice()), (1, &b"seven"[..]));
    let next = Transaction::new().write(NodeId(1), PageId(0), 1, b"one".to_vec());
    client.commit(next).await.unwrap();
    node.stop().await;

    let (node, recovered) = start(opts).await;
    assert!(recovered.corruption.is_none(), "{recovered:?}");
    let page = StorageClient::new(peers)
        .read(NodeId(1), PageId(0))
        .await
        .unwrap();
    assert_eq!((page.version, page.data.as_slice()), (2, &b"one"[..]));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_commit_in_any_chain_order_and_refuse_bad_writes() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (nodes, addrs) = start_nodes(dir.path(), 3, |o| o.pages = 16).await;
    let client =
        StorageClient::with_timeout(Peers::new(addrs).with_key(KEY), Duration::from_secs(5));
    let txn = Transaction::new()
        .write(NodeId(1), PageId(1), 0, vec![1])
        .write(NodeId(2), PageId(1), 0, vec![2])
        .write(NodeId(3), PageId(1), 0, vec![3])
        .chain(vec![NodeId(3), NodeId(1), NodeId(2)]);
    client.commit(txn).await.unwrap();
    for i in 1..=3u32 {
        // Non-deciders apply when `Commit` reaches them: poll (a bounded wait of up to
        // 20 s, long enough for a loaded machine).
        let mut page = client.read(NodeId(i), PageId(1)).await.unwrap();
        for _ in 0..2_000 {
            if page.version == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            page = client.read(NodeId(i), PageId(1)).await.unwrap();
        }
        assert_eq!((page.version, page.data), (1, vec![i as u8]));
    }
    // A page beyond the page file is refused, not accepted and then failed.
    let beyond = Transaction::new()
        .write(NodeId(1), PageId(2), 0, vec![1])
        .write(NodeId(2), PageId(99), 0, vec![1]);
    let refused = client.commit(beyond).await;
    assert!(
        matches!(refused, Err(ClientError::Aborted(_))),
        "{refused:?}"
    );
    assert_eq!(client.read(NodeId(1), PageId(2)).await.unwrap().version, 0);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_in_flight_budget_answers_busy() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (nodes, addrs) = start_nodes(dir.path(), 2, |o| o.max_in_flight = 1).await;
    let client = StorageClient::new(Peers::new(addrs).with_key(KEY));
    let calls = (0..50u64).map(|i| {
        let client = client.clone();
        async move {
            let txn = Transaction::new()
                .write(NodeId(1), PageId(i), 0, vec![1])
                .write(NodeId(2), PageId(i), 0, vec![1]);
            client.commit(txn).await
        }
    });
    let results = futures::future::join_all(calls).await;
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(ClientError::Busy { node: NodeId(1) })))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(busy > 0 && ok > 0, "busy {busy}, committed {ok}");
    assert_eq!(busy + ok, 50);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_format_is_refused_with_both_versions_named() {
    use pipewright_storage::log::format::{self, FormatError, LOG_FORMAT};
    use pipewright_storage::server::NodeError;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let peers = Peers::new(BTreeMap::from([(NodeId(1), addr)]));
    let opts = NodeOptions::new(NodeId(1), addr, dir.path().to_path_buf(), peers);
    // A log of an incompatible (here: future) format, and its marker.
    std::fs::write(dir.path().join("log"), b"\x07\x00\x00\x00 not our records").unwrap();
    format::write(dir.path(), LOG_FORMAT + 6).unwrap();
    let err = NodeServer::start(opts.clone()).await.unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        matches!(
            err,
            NodeError::Format(FormatError::Incompatible { found, expected, .. })
                if found == LOG_FORMAT + 6 && expected == LOG_FORMAT
        ),
        "{err:?}"
    );
    assert!(
        msg.contains(&format!("is in storage format {}", LOG_FORMAT + 6)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("this node reads formats 1 to {LOG_FORMAT}")),
        "{msg}"
    );
    // Nothing was touched: the foreign log is still there, byte for byte.
    assert_eq!(
        std::fs::read(dir.path().join("log")).unwrap(),
        b"\x07\x00\x00\x00 not our records"
    );

    // Another program's marker.
    std::fs::write(dir.path().join("format"), "PG 16\n").unwrap();
    let err = NodeServer::start(opts).await.unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, NodeError::Format(FormatError::Foreign { found, .. }) if found == "PG 16"),
        "{err:?}"
    );
}

#[test]
fn data_directories_without_a_marker_or_of_an_older_format_are_upgraded() {
    use pipewright_storage::log::format::{check, write, LOG_FORMAT};
    let dir = tempfile::tempdir().unwrap();
    // No marker: format 1 (from before the marker), upgraded to the current one.
    assert_eq!(check(dir.path()).unwrap(), 1);
    let marker = std::fs::read_to_string(dir.path().join("format")).unwrap();
    assert_eq!(marker, format!("pipewright-storage format {LOG_FORMAT}\n"));
    assert_eq!(check(dir.path()).unwrap(), LOG_FORMAT);
    // An older readable marker is upgraded too.
    write(dir.path(), 1).unwrap();
    assert_eq!(check(dir.path()).unwrap(), 1);
    assert_eq!(check(dir.path()).unwrap(), LOG_FORMAT);
}

/// A chain through a node the head's peers file does not list is refused before it
/// starts: nothing sent there would arrive, and the transaction would stay in doubt,
/// its pages locked, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_through_an_unknown_node_is_refused() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, addrs) = start_nodes(dir.path(), 2, |_| {}).await;
    // A node 99 that this client's peers file (and its own) lists, and the head's not.
    let mut theirs = addrs.clone();
    theirs.insert(NodeId(99), free_addr());
    let peers = Peers::new(theirs).with_key(KEY);
    let n99 = dir.path().join("n99");
    let stranger = NodeOptions::new(
        NodeId(99),
        peers.addr(NodeId(99)).unwrap(),
        n99,
        peers.clone(),
    );
    nodes.push(start(stranger).await.0);
    let client = StorageClient::with_timeout(peers, Duration::from_secs(5));
    let txn = Transaction::new()
        .write(NodeId(1), PageId(3), 0, vec![1])
        .write(NodeId(99), PageId(3), 0, vec![2])
        .chain(vec![NodeId(1), NodeId(99)]);
    match client.commit(txn).await {
        Err(ClientError::Aborted(reason)) => {
            assert!(reason.to_string().contains("node 99"), "{reason}")
        }
        other => panic!("expected a refusal naming node 99, got {other:?}"),
    }
    // Nothing was started: the page takes a transaction at once.
    let ok = Transaction::new()
        .write(NodeId(1), PageId(3), 0, vec![1])
        .write(NodeId(2), PageId(3), 0, vec![2]);
    client.commit(ok).await.unwrap();
    for node in nodes {
        node.stop().await;
    }
}

/// Two nodes of a keyed cluster (their links sign with the key: the commit crosses
/// them): a client with another key is refused with words, a peer's hello forged with
/// the public development key, or with the client key a client holds, is refused
/// before any protocol message is read, all are counted, and a client with the
/// clients' peers file (no cluster key) commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_the_cluster_key_are_refused_and_counted() {
    use futures::{SinkExt, StreamExt};
    use hmac::{Hmac, Mac};
    use pipewright_storage::auth::{ClusterKey, SignedHello};
    use pipewright_storage::wire::{self, Challenge, ClientResponse, Hello};
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (nodes, addrs) = start_nodes(dir.path(), 2, |_| {}).await;
    let txn = || {
        Transaction::new()
            .write(NodeId(1), PageId(3), 0, vec![1])
            .write(NodeId(2), PageId(3), 0, vec![2])
    };

    let stranger = StorageClient::with_timeout(
        Peers::new(addrs.clone()).with_key("another cluster's key"),
        Duration::from_secs(5),
    );
    let error = stranger.commit(txn()).await.unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Denied {
                node: NodeId(1),
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("key"), "{error}");

    // A hello as node 2, signed by `sign` over node 1's challenge: refused and closed.
    let pose_as_node_2 = |sign: Box<dyn Fn(&Challenge) -> SignedHello + Send>| {
        let addr = addrs[&NodeId(1)];
        async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut framed = tokio_util::codec::Framed::new(stream, wire::codec());
            let challenge: Challenge =
                wire::decode(&framed.next().await.unwrap().unwrap()).unwrap();
            framed.send(wire::encode(&sign(&challenge))).await.unwrap();
            // A hello taken as a peer's gets no answer at all: the wait is bounded.
            let limit = Duration::from_secs(30);
            let answer = tokio::time::timeout(limit, framed.next())
                .await
                .expect("no answer to a forged hello: was it taken as a peer's?");
            let answer: ClientResponse = wire::decode(&answer.unwrap().unwrap()).unwrap();
            assert!(
                matches!(answer, ClientResponse::Denied { .. }),
                "{answer:?}"
            );
            let after = tokio::time::timeout(limit, framed.next()).await;
            assert!(
                matches!(after, Ok(None | Some(Err(_)))),
                "the connection stays open"
            );
        }
    };
    pose_as_node_2(Box::new(|challenge| {
        SignedHello::sign(
            &ClusterKey::development(),
            challenge,
            Hello::Peer { from: NodeId(2) },
        )
    }))
    .await;
    // A client holds the client key (the bytes of its peers file): a peer's hello
    // tagged with it, as the hello tag is computed, is still refused.
    let clients_file = Peers::new(addrs.clone()).with_key(KEY).for_clients();
    let client_key = clients_file.client_key().to_hex();
    let client_key: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&client_key[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    pose_as_node_2(Box::new(move |challenge| {
        let hello = Hello::Peer { from: NodeId(2) };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&client_key).unwrap();
        mac.update(b"pipewright-storage hello v1");
        mac.update(&wire::encode(challenge));
        mac.update(&wire::encode(&hello));
        SignedHello {
            hello,
            tag: mac.finalize().into_bytes().into(),
        }
    }))
    .await;

    // A peers file that puts node 1 at node 2's address: node 2 says who it is, and the
    // client refuses to sign for it.
    let wrong = BTreeMap::from([
        (NodeId(1), addrs[&NodeId(2)]),
        (NodeId(2), addrs[&NodeId(2)]),
    ]);
    let confused =
        StorageClient::with_timeout(Peers::new(wrong).with_key(KEY), Duration::from_secs(5));
    let error = confused.status(NodeId(1)).await.unwrap_err();
    assert!(
        error.to_string().contains("is node 2, not node 1"),
        "{error}"
    );

    // The clients' file, as a client reads it: it commits, and cannot start a node.
    let clients_file = Peers::parse(&clients_file.to_toml()).unwrap();
    let started = NodeServer::start(NodeOptions::new(
        NodeId(3),
        free_addr(),
        dir.path().join("n3"),
        clients_file.clone(),
    ))
    .await;
    let Err(refused) = started else {
        panic!("a node started from the clients' file");
    };
    assert!(refused.to_string().contains("client"), "{refused}");
    let client = StorageClient::with_timeout(clients_file, Duration::from_secs(5));
    client.commit(txn()).await.unwrap();
    let status = client.status(NodeId(1)).await.unwrap();
    assert_eq!(status.auth_failures, 3);
    for node in nodes {
        node.stop().await;
    }
}
