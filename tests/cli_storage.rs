//! `pipewright storage` as a person meets it: the real binary against real node
//! processes on loopback. Readable messages (never a Rust debug dump, never a
//! backtrace for an expected outcome even with `RUST_BACKTRACE=1`), exit codes that
//! tell committed / aborted / unknown outcome / unreachable apart, `--json` and
//! `--timeout`, `read` showing exactly the bytes written, and `status` when nodes are
//! down.
#![cfg(feature = "storage")]

mod storage_common;

use std::path::Path;
use std::process::Command;

use pipewright_storage::NodeId;
use storage_common::{TestCluster, EXE};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `pipewright storage ARGS --peers PEERS` with `RUST_BACKTRACE=1`.
fn storage(peers: &Path, args: &[&str]) -> Run {
    let out = Command::new(EXE)
        .arg("storage")
        .args(args)
        .arg("--peers")
        .arg(peers)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("running pipewright");
    let run = Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "$ storage {}\n  exit {}\n  stdout: {}\n  stderr: {}",
        args.join(" "),
        run.code,
        run.stdout.trim(),
        run.stderr.trim()
    );
    run
}

/// No Rust debug dump, no backtrace.
fn assert_readable(run: &Run) {
    let all = format!("{}{}", run.stdout, run.stderr);
    for dump in [
        "NodeId",
        "PageId",
        "TxnId",
        "Refused {",
        "VersionMismatch",
        "backtrace",
        "Backtrace",
        "NodeStatus",
        "Os {",
    ] {
        assert!(!all.contains(dump), "`{dump}` in the output:\n{all}");
    }
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", run.stdout))
}

#[test]
fn txn_read_and_status_speak_plainly_with_exit_codes() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let cluster = TestCluster::start("cli", &[]);
    let peers = cluster.cluster.peers_path();

    // An unwritten page says so (no `version 0 data `).
    let r = storage(&peers, &["read", "--node", "1", "--page", "100"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("never written"), "{}", r.stdout);
    let r = storage(&peers, &["read", "--json", "--node", "1", "--page", "100"]);
    assert_eq!(r.code, 0);
    let v = json(&r);
    assert_eq!(
        (v["written"].as_bool(), v["version"].as_u64()),
        (Some(false), Some(0))
    );

    // A commit, with trailing zero bytes that must read back exactly.
    let r = storage(
        &peers,
        &[
            "txn",
            "--write",
            "1:100:0:00ff0000",
            "--write",
            "2:100:0:01",
        ],
    );
    assert_eq!(r.code, 0, "committed is exit 0");
    assert!(
        r.stdout.starts_with("committed transaction "),
        "{}",
        r.stdout
    );
    assert_readable(&r);
    let r = storage(&peers, &["read", "--node", "1", "--page", "100"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("version 1 (4 bytes): 00ff0000"),
        "trailing zeros kept: {}",
        r.stdout
    );
    let v = json(&storage(
        &peers,
        &["read", "--json", "--node", "1", "--page", "100"],
    ));
    assert_eq!(v["data"], "00ff0000");
    assert_eq!(v["version"], 1);

    // A stale version: aborted (exit 3), said in words, no backtrace.
    let r = storage(
        &peers,
        &["txn", "--write", "1:100:0:aa", "--write", "2:100:1:bb"],
    );
    assert_eq!(r.code, 3, "aborted is exit 3");
    assert!(
        r.stderr.contains(
            "aborted: node 1 refused: page 100 is at version 1, the transaction expected 0 — read it again and retry"
        ),
        "{}",
        r.stderr
    );
    assert_readable(&r);
    let r = storage(
        &peers,
        &[
            "txn",
            "--json",
            "--write",
            "1:100:0:aa",
            "--write",
            "2:100:1:bb",
        ],
    );
    assert_eq!(r.code, 3);
    assert_eq!(json(&r)["outcome"], "aborted");

    // A JSON commit.
    let r = storage(
        &peers,
        &[
            "txn",
            "--json",
            "--write",
            "1:100:1:cc",
            "--write",
            "2:100:1:dd",
        ],
    );
    assert_eq!(r.code, 0);
    let v = json(&r);
    assert_eq!(v["outcome"], "committed");
    assert!(v["txn"].as_u64().is_some());

    // Status: every node readable, exit 0.
    let r = storage(&peers, &["status", "--timeout", "5"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("3 of 3 nodes reachable"), "{}", r.stdout);
    assert!(r.stdout.contains("node 2 ("), "{}", r.stdout);
    assert_readable(&r);
    let v = json(&storage(&peers, &["status", "--json"]));
    assert_eq!(v["reachable"], 3);
    assert_eq!(v["nodes"][0]["status"]["node"], 1);
}

#[test]
fn unreachable_nodes_mean_the_transaction_did_not_start() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let mut cluster = TestCluster::start("cli-down", &[]);
    let peers = cluster.cluster.peers_path();

    // One node down: status still exits 0 and names the dead one.
    cluster.cluster.kill(NodeId(3)).unwrap();
    let r = storage(&peers, &["status", "--timeout", "2"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("2 of 3 nodes reachable"), "{}", r.stdout);
    assert!(r.stdout.contains("node 3 ("), "{}", r.stdout);
    assert!(r.stdout.contains("DOWN"), "{}", r.stdout);
    assert_readable(&r);

    // A transaction touching the dead node: unreachable (exit 5), safe to retry.
    let r = storage(
        &peers,
        &[
            "txn",
            "--timeout",
            "2",
            "--write",
            "1:5:0:01",
            "--write",
            "3:5:0:02",
        ],
    );
    assert_eq!(r.code, 5, "unreachable is exit 5");
    assert!(r.stderr.contains("cannot reach node 3"), "{}", r.stderr);
    assert!(r.stderr.contains("no transaction started"), "{}", r.stderr);
    assert!(r.stderr.contains("safe to retry"), "{}", r.stderr);
    assert_readable(&r);
    // ... and indeed nothing of it exists: node 1's page is still unwritten.
    let r = storage(&peers, &["read", "--json", "--node", "1", "--page", "5"]);
    assert_eq!(json(&r)["written"], false);

    // Every node down: status exits 5.
    cluster.cluster.kill(NodeId(1)).unwrap();
    cluster.cluster.kill(NodeId(2)).unwrap();
    let r = storage(&peers, &["status", "--timeout", "2"]);
    assert_eq!(r.code, 5, "no node reachable is exit 5");
    assert!(r.stdout.contains("0 of 3 nodes reachable"), "{}", r.stdout);
    assert_readable(&r);
    let r = storage(&peers, &["status", "--json", "--timeout", "2"]);
    assert_eq!(r.code, 5);
    assert_eq!(json(&r)["reachable"], 0);
    let r = storage(&peers, &["read", "--json", "--node", "2", "--page", "5"]);
    assert_eq!(r.code, 5);
    assert_eq!(json(&r)["outcome"], "unreachable");
}

/// The decider dies after the prepare reached it: the client cannot know the outcome
/// (exit 4), and says so; `status` lists the transaction in doubt on the node that
/// prepared it, with its decider and age, until the decider is back and settles it.
#[cfg(feature = "storage-faults")]
#[test]
fn a_decider_dying_mid_transaction_is_an_unknown_outcome_listed_in_doubt() {
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let mut cluster = TestCluster::start("cli-unknown", &[]);
    let peers = cluster.cluster.peers_path();
    let crash = ["--crash-at".to_string(), "before-intent:1".to_string()];
    cluster.cluster.restart_with(NodeId(2), &crash).unwrap();
    let r = storage(
        &peers,
        &[
            "txn",
            "--timeout",
            "3",
            "--write",
            "1:7:0:01",
            "--write",
            "2:7:0:02",
        ],
    );
    assert_eq!(r.code, 4, "unknown outcome is exit 4");
    assert!(
        r.stderr.contains("outcome of transaction") && r.stderr.contains("unknown"),
        "{}",
        r.stderr
    );
    assert_readable(&r);
    assert!(
        cluster
            .cluster
            .wait_exit(NodeId(2), std::time::Duration::from_secs(10))
            .unwrap(),
        "the decider did not crash where asked"
    );
    let r = storage(
        &peers,
        &[
            "txn",
            "--json",
            "--timeout",
            "2",
            "--write",
            "1:8:0:01",
            "--write",
            "3:8:0:02",
        ],
    );
    assert_eq!(r.code, 0, "pages elsewhere are not blocked");

    // Node 1 holds the intent and waits for node 2.
    let r = storage(&peers, &["status", "--json", "--timeout", "2"]);
    assert_eq!(r.code, 0);
    let v = json(&r);
    assert_eq!(v["reachable"], 2);
    let node1 = &v["nodes"][0]["status"];
    let in_doubt = node1["in_doubt"].as_array().expect("an in_doubt list");
    assert_eq!(in_doubt.len(), 1, "{node1}");
    assert_eq!(in_doubt[0]["decider"], 2);
    assert_eq!(in_doubt[0]["recovered"], false);
    assert!(
        in_doubt[0]["age_ms"].as_u64().unwrap() > 0,
        "the tick has seen it waiting for the whole client timeout: {node1}"
    );
    let txn = in_doubt[0]["txn"].as_u64().unwrap();
    let r = storage(&peers, &["status", "--timeout", "2"]);
    assert!(
        r.stdout.contains(&format!("transaction {txn}: waiting"))
            && r.stdout.contains("for decider node 2")
            && r.stdout.contains("in doubt: 1 transactions")
            && r.stdout.contains("oldest intent"),
        "{}",
        r.stdout
    );
    assert_readable(&r);

    // The decider comes back: presumed abort settles it (no timing assumption: poll
    // a bounded number of times).
    cluster.cluster.restart(NodeId(2)).unwrap();
    let mut settled = false;
    for _ in 0..100 {
        let v = json(&storage(&peers, &["status", "--json", "--timeout", "2"]));
        if v["nodes"][0]["status"]["in_doubt"].as_array().map(Vec::len) == Some(0) {
            settled = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(settled, "node 1 never learnt the outcome");
    let v = json(&storage(
        &peers,
        &["read", "--json", "--node", "1", "--page", "7"],
    ));
    assert_eq!(v["written"], false, "presumed abort: nothing applied");
}

/// `storage cluster --json` (and through it `storage node`): one JSON line naming the
/// nodes and the peers file, usable at once by `status --json`, and a stop line.
#[test]
fn cluster_json_names_nodes_and_peers_and_reports_its_stop() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    // The nodes log through io_uring.
    if !pipewright_testkit::io_uring() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pw-storage-cli-json-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(EXE)
        .args(["storage", "cluster", "--json", "--nodes", "2", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the cluster");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["event"], "running");
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2));
    let peers = std::path::PathBuf::from(v["peers"].as_str().unwrap());
    let r = storage(&peers, &["status", "--json"]);
    assert_eq!(r.code, 0);
    assert_eq!(json(&r)["reachable"], 2);
    // The clients' file serves a client, is what `client-peers` writes, and starts no
    // node (it has no cluster key).
    let clients = std::path::PathBuf::from(v["client_peers"].as_str().unwrap());
    let r = storage(&clients, &["status", "--json"]);
    assert_eq!(r.code, 0);
    assert_eq!(json(&r)["reachable"], 2);
    let again = dir.join("clients-again.toml");
    let r = storage(&peers, &["client-peers", "--out", again.to_str().unwrap()]);
    assert_eq!(r.code, 0);
    let text = std::fs::read_to_string(&clients).unwrap();
    assert_eq!(std::fs::read_to_string(&again).unwrap(), text);
    // Never over the nodes' file: that would lose the cluster key.
    let r = storage(&peers, &["client-peers", "--out", peers.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("lose the cluster key"), "{}", r.stderr);
    assert!(std::fs::read_to_string(&peers).unwrap().contains("key = "));
    assert!(
        text.contains("client_key") && !text.contains("\nkey"),
        "{text}"
    );
    let data = dir.join("not-a-node");
    let r = storage(
        &clients,
        &[
            "node",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:1",
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("client's peers file"), "{}", r.stderr);
    assert_readable(&r);
    // SIGTERM stops the cluster (and its nodes) cleanly.
    // SAFETY: kill(2) on our own child's pid, no memory involved.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let last: serde_json::Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(last["event"], "stopped");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Send `signal` (e.g. `-STOP`, `-KILL`) to a node process with the real `kill`.
fn signal(cluster: &pipewright_storage::cluster::LocalCluster, node: u32, signal: &str) {
    let pid = cluster.pid(NodeId(node)).expect("the node runs");
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("running kill")
        .success();
    assert!(ok, "kill {signal} {pid}");
    if signal == "-STOP" {
        // `kill` returns once the signal is sent; each thread stops only when it next
        // runs. Wait until every thread is stopped, so that nothing the test sends
        // next is handled by the node (a decider that still took a `Prepare` would
        // commit it).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !all_threads_stopped(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "node {node} (pid {pid}) did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in its `stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // `pid (comm) state ...`: the state follows the last `)`.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                == Some("T")
        })
    })
}

/// Start transactions over the chain 1 → 2 → 3 (decider 3) while node 3 is frozen
/// (SIGSTOP; the client connected to it before): nodes 1 and 2 prepare them and
/// node 3 never answers (the outcome is unknown); then `kill -9` node 3. Returns the
/// transaction ids.
fn prepare_then_kill_decider(cluster: &mut TestCluster, acceptors: u8) -> Vec<u64> {
    use pipewright_storage::client::{ClientError, Transaction};
    use pipewright_storage::PageId;
    let client = cluster.client();
    client.set_acceptors(acceptors);
    let rt = pipewright_storage::io_runtime(1).unwrap();
    // Connect to every node first (the client sends a `Prepare` only once it is
    // connected to the whole chain).
    for n in 1..=3 {
        rt.block_on(client.read(NodeId(n), PageId(0))).unwrap();
    }
    signal(&cluster.cluster, 3, "-STOP");
    let mut txns = Vec::new();
    for page in 20..23 {
        let t = Transaction::new()
            .write(NodeId(1), PageId(page), 0, vec![1])
            .write(NodeId(2), PageId(page), 0, vec![2])
            .write(NodeId(3), PageId(page), 0, vec![3]);
        match rt.block_on(client.commit(t)) {
            Err(ClientError::Timeout { txn: Some(t), .. }) => txns.push(t.0),
            other => panic!("the decider is frozen: expected an unknown outcome, got {other:?}"),
        }
    }
    signal(&cluster.cluster, 3, "-KILL");
    assert!(cluster
        .cluster
        .wait_exit(NodeId(3), std::time::Duration::from_secs(10))
        .unwrap());
    txns
}

/// Every reachable node's view of `txns` as `resolve --json` reports it, checking
/// that no node disagrees: the outcome names per transaction.
fn resolve_outcomes(peers: &Path, expect_code: i32) -> Vec<(u64, String)> {
    let r = storage(peers, &["resolve", "--json", "--timeout", "20"]);
    assert_eq!(r.code, expect_code, "{}", r.stdout);
    assert_readable(&r);
    let v = json(&r);
    v["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .map(|t| {
            assert_ne!(t["outcome"], "disagreement", "{v}");
            (
                t["txn"].as_u64().unwrap(),
                t["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// F = 1: transactions prepared on nodes 1 and 2, the decider `kill -9`ed. The nodes
/// would wait 10 minutes before settling on their own; `storage resolve` asks the
/// acceptor quorum (node 2) at once and settles them all as abort (no acceptor held a
/// commit), with the decider still down; the pages take new transactions at once;
/// after the decider restarts, every node agrees.
#[test]
fn resolve_settles_in_doubt_transactions_without_the_killed_decider() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let mut cluster = TestCluster::start("cli-resolve-f1", &["--settle-after-ms", "600000"]);
    let peers = cluster.cluster.peers_path();
    let txns = prepare_then_kill_decider(&mut cluster, 1);
    let v = json(&storage(&peers, &["status", "--json", "--timeout", "2"]));
    let in_doubt = v["nodes"][0]["status"]["in_doubt"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(in_doubt, 3, "node 1 holds the three intents: {v}");

    let outcomes = resolve_outcomes(&peers, 0);
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    for (txn, outcome) in &outcomes {
        assert!(txns.contains(txn), "{txn} not one of ours");
        assert_eq!(outcome, "aborted", "{txn}: no acceptor held a commit");
    }
    let v = json(&storage(&peers, &["status", "--json", "--timeout", "2"]));
    for n in 0..2 {
        assert_eq!(
            v["nodes"][n]["status"]["in_doubt"]
                .as_array()
                .unwrap()
                .len(),
            0,
            "{v}"
        );
    }
    // The pages are free while the decider is still down.
    let r = storage(
        &peers,
        &[
            "txn",
            "--json",
            "--acceptors",
            "1",
            "--write",
            "1:20:0:0a",
            "--write",
            "2:20:0:0b",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stdout);

    // The decider comes back (it had the intents or not: it learns abort either way).
    cluster.cluster.restart(NodeId(3)).unwrap();
    let outcomes = resolve_outcomes(&peers, 0);
    assert!(
        outcomes.iter().all(|(_, o)| o != "committed"),
        "{outcomes:?}"
    );
    let r = storage(&peers, &["resolve", "--timeout", "5"]);
    assert_eq!(r.code, 0);
    assert_readable(&r);
    for node in ["1", "3"] {
        let v = json(&storage(
            &peers,
            &["read", "--json", "--node", node, "--page", "21"],
        ));
        assert_eq!(v["written"], false, "aborted everywhere: {v}");
    }
}

/// F = 0 (plain two-phase commit) for contrast: with the decider killed, `resolve`
/// cannot settle (exit 4, the transactions still in doubt); once the decider is back,
/// they settle, by `resolve` or by the nodes themselves, and no node disagrees.
#[test]
fn resolve_without_acceptors_waits_for_the_decider() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let mut cluster = TestCluster::start("cli-resolve-f0", &[]);
    let peers = cluster.cluster.peers_path();
    let txns = prepare_then_kill_decider(&mut cluster, 0);
    let r = storage(&peers, &["resolve", "--timeout", "2"]);
    assert_eq!(r.code, 4, "in doubt while the decider is down");
    assert!(r.stdout.contains("still in doubt"), "{}", r.stdout);
    assert_readable(&r);
    cluster.cluster.restart(NodeId(3)).unwrap();
    // Whatever is still in doubt now, `resolve` settles. Mostly as aborted (presumed
    // abort), but node 2 may still hold its `Prepare` for the decider, queued while the
    // frozen node 3 never sent its challenge: delivered to the restarted decider before
    // any `Resolve`, it commits the transaction (the client was told the outcome is
    // unknown: it may still commit). Either way every node agrees.
    let mut settled = std::collections::BTreeMap::new();
    for (txn, outcome) in resolve_outcomes(&peers, 0) {
        assert!(txns.contains(&txn));
        assert!(
            ["aborted", "committed", "settled-forgotten"].contains(&outcome.as_str()),
            "{txn}: {outcome}"
        );
        settled.insert(txn, outcome);
    }
    // Settled everywhere, by whichever path: nothing in doubt, and each transaction's
    // page written on all three nodes or on none, as its outcome says.
    assert!(resolve_outcomes(&peers, 0).is_empty());
    for (txn, page) in txns.iter().zip(["20", "21", "22"]) {
        let written: Vec<bool> = ["1", "2", "3"]
            .iter()
            .map(|node| {
                let v = json(&storage(
                    &peers,
                    &["read", "--json", "--node", node, "--page", page],
                ));
                v["written"] == true
            })
            .collect();
        assert!(
            written.iter().all(|w| *w == written[0]),
            "transaction {txn}: page {page} written on some nodes only: {written:?}"
        );
        match settled.get(txn).map(String::as_str) {
            Some("aborted") => assert!(!written[0], "{txn} aborted, page {page} written"),
            Some("committed") => assert!(written[0], "{txn} committed, page {page} not written"),
            _ => {}
        }
    }
}
