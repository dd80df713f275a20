//! `pipewright storage`: the storage commit chain's node process, a local cluster,
//! transactions, reads and the bank benchmark.
//!
//! Expected outcomes (an abort, an unreachable node, an unknown outcome) are printed
//! with their readable message and end the process with an exit code (see
//! [`EXIT_CODES`]); they never go through `anyhow` (which would add a backtrace under
//! `RUST_BACKTRACE=1`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pipewright_storage::bench::{self, BenchOptions};
use pipewright_storage::client::{ClientError, StorageClient, Transaction};
use pipewright_storage::cluster::LocalCluster;
use pipewright_storage::peers::Peers;
#[cfg(feature = "storage-faults")]
use pipewright_storage::server::CrashAt;
use pipewright_storage::server::{NodeOptions, NodeServer};
use pipewright_storage::{io_runtime, shutdown_signal, NodeId, PageId};

mod in_doubt;
mod processes;
use in_doubt::{resolve, status};
use processes::{client_peers, cluster, node};

/// The exit codes of `txn`, `read`, `status` and `bench`, shown in `--help`.
const EXIT_CODES: &str = "Exit codes: 0 committed / success; 1 any other error (bad \
arguments, unreadable peers file, a node's error); 2 usage error; 3 aborted (no node \
applied anything; see the message for why, then retry); 4 outcome unknown (the \
transaction was sent but no answer came in time: it may still commit; read the pages \
before retrying); 5 unreachable (nothing was sent, no transaction started: safe to \
retry; for `status`: no node answered); 6 busy (the head node refused to start it: \
safe to retry later).";

const EXIT_ABORTED: i32 = 3;
const EXIT_UNKNOWN: i32 = 4;
const EXIT_UNREACHABLE: i32 = 5;
const EXIT_BUSY: i32 = 6;

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct StorageArgs {
    #[command(subcommand)]
    command: StorageCommand,
}

#[derive(Subcommand, Debug)]
enum StorageCommand {
    /// Run one storage node (until SIGINT/SIGTERM).
    Node(NodeArgs),
    /// Start N node processes on loopback, print their addresses, stop them on Ctrl-C.
    Cluster(ClusterArgs),
    /// Run one transaction: `--write NODE:PAGE:VERSION:HEX` per page write.
    #[command(after_help = EXIT_CODES)]
    Txn(TxnArgs),
    /// Read a committed page (exactly the bytes written; unwritten pages say so).
    #[command(after_help = EXIT_CODES)]
    Read(ReadArgs),
    /// Show each node's status and counters (exit 5 if no node answers).
    #[command(after_help = EXIT_CODES)]
    Status(PeersArg),
    /// Bank transfers from concurrent clients: throughput, p50/p99 latency, audit.
    #[command(after_help = EXIT_CODES)]
    Bench(BenchArgs),
    /// Settle in-doubt transactions now: each node asks the decider and (for
    /// transactions with acceptors, F >= 1) the acceptor quorum; waits until none is
    /// left in doubt on a reachable node and prints each outcome (exit 4 if some are
    /// still in doubt at the timeout, 5 if no node answers, 1 if nodes disagree).
    #[command(after_help = EXIT_CODES)]
    Resolve(PeersArg),
    /// Write the clients' peers file from the nodes' one: the same nodes and, in place
    /// of the cluster key, the key clients sign with (it cannot pose as a node).
    ClientPeers(ClientPeersArgs),
}

#[derive(Args, Debug)]
struct ClientPeersArgs {
    /// The nodes' peers file (with `key`).
    #[arg(long)]
    peers: PathBuf,
    /// Where to write the clients' file (created readable by its owner only).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct NodeTunables {
    /// Pages in each node's page file (8 KiB each; at most 2^31, 16 TiB).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 31))]
    pages: u64,
    /// Client transactions admitted per node (as chain head) at once; beyond it
    /// clients get `Busy`.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Retry timer (in-doubt resolve, commit re-sends), in milliseconds.
    #[arg(long, default_value_t = 200)]
    tick_ms: u64,
    /// How long a prepared transaction waits before asking its decider, in ms.
    #[arg(long, default_value_t = 1000)]
    resolve_after_ms: u64,
    /// With acceptors (F >= 1): how long an in-doubt transaction waits for its
    /// decider before settling it with the acceptors, in ms.
    #[arg(long, default_value_t = 2000)]
    settle_after_ms: u64,
    /// Group commit: the longest a tiny log burst waits for more records before its
    /// fdatasync while other transactions are open, in microseconds (0: never).
    #[arg(long, default_value_t = 1000)]
    linger_us: u64,
}

impl NodeTunables {
    fn args(&self) -> Vec<String> {
        vec![
            "--pages".into(),
            self.pages.to_string(),
            "--max-in-flight".into(),
            self.max_in_flight.to_string(),
            "--tick-ms".into(),
            self.tick_ms.to_string(),
            "--resolve-after-ms".into(),
            self.resolve_after_ms.to_string(),
            "--settle-after-ms".into(),
            self.settle_after_ms.to_string(),
            "--linger-us".into(),
            self.linger_us.to_string(),
        ]
    }
}

#[derive(Args, Debug)]
struct NodeArgs {
    /// This node's id (a key of the peers file).
    #[arg(long)]
    id: u32,
    /// Address to listen on for peers and clients.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Data directory (log and page file).
    #[arg(long)]
    data: PathBuf,
    /// Peers file: a TOML `[nodes]` table of `id = "address"`, after the cluster's
    /// `key = "<passphrase>"` (the same on every node and client).
    #[arg(long)]
    peers: PathBuf,
    #[command(flatten)]
    tunables: NodeTunables,
    /// Print the start (address, what recovery found) and stop as JSON lines.
    #[arg(long)]
    json: bool,
    /// Fault tests: abort the process the N-th time it reaches STEP
    /// (before-intent, after-intent, after-decision, before-completion,
    /// after-completion), as `STEP:N` (feature `storage-faults`).
    #[cfg(feature = "storage-faults")]
    #[arg(long, hide = true)]
    crash_at: Option<CrashAt>,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// Number of nodes (ids 1..=N, at most 255).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=255))]
    nodes: u32,
    /// Directory for the peers file, node data and logs (default: a new temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Node N listens on 127.0.0.1:(P + N) (default: free ports).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=65_000))]
    base_port: Option<u16>,
    #[command(flatten)]
    tunables: NodeTunables,
    /// Print the nodes and the peers file as one JSON line (then one at stop).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct PeersArg {
    /// Peers file of the cluster.
    #[arg(long)]
    peers: PathBuf,
    /// Seconds to wait for a connection, a read or a transaction's outcome.
    #[arg(long, default_value_t = 10.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Print one JSON object on stdout instead of text (errors included).
    #[arg(long)]
    json: bool,
}

use crate::cli::parse_seconds as parse_timeout;

#[derive(Args, Debug)]
struct TxnArgs {
    #[command(flatten)]
    peers: PeersArg,
    /// A page write `NODE:PAGE:VERSION:HEX` (VERSION is the page's current version).
    #[arg(long = "write", required = true)]
    writes: Vec<String>,
    /// Chain order, e.g. `3,1,2` (default: ascending node ids; the last decides).
    #[arg(long, value_delimiter = ',')]
    chain: Vec<u32>,
    /// F: chain nodes besides the decider that hold the commit decision durably
    /// before it takes effect, so in-doubt nodes can settle while the decider is
    /// down (0: plain two-phase commit).
    #[arg(long, default_value_t = 0)]
    acceptors: u8,
}

#[derive(Args, Debug)]
struct ReadArgs {
    #[command(flatten)]
    peers: PeersArg,
    /// The node.
    #[arg(long)]
    node: u32,
    /// The page.
    #[arg(long)]
    page: u64,
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    peers: PeersArg,
    /// How long to run.
    #[arg(long, default_value_t = 10.0, value_parser = parse_timeout)]
    seconds: f64,
    /// Concurrent transfer loops.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Nodes each transfer touches (one page on each).
    #[arg(long, default_value_t = 3)]
    span: usize,
    /// Accounts (pages) per node.
    #[arg(long, default_value_t = 256)]
    accounts: u64,
    /// F for every transfer (see `txn --acceptors`).
    #[arg(long, default_value_t = 0)]
    acceptors: u8,
}

pub(crate) fn run(args: StorageArgs) -> anyhow::Result<()> {
    match args.command {
        StorageCommand::Node(a) => node(a),
        StorageCommand::Cluster(a) => cluster(a),
        StorageCommand::Txn(a) => txn(a),
        StorageCommand::Read(a) => read(a),
        StorageCommand::Status(a) => status(a),
        StorageCommand::Bench(a) => bench(a),
        StorageCommand::Resolve(a) => resolve(a),
        StorageCommand::ClientPeers(a) => client_peers(a),
    }
}

fn client(peers: &PeersArg) -> anyhow::Result<StorageClient> {
    Ok(StorageClient::with_timeout(
        Peers::load(&peers.peers)?,
        Duration::from_secs_f64(peers.timeout),
    ))
}

/// The exit code for a client error, and its outcome name in JSON.
fn classify(e: &ClientError) -> (i32, &'static str) {
    match e {
        ClientError::Aborted(_) => (EXIT_ABORTED, "aborted"),
        ClientError::Busy { .. } => (EXIT_BUSY, "busy"),
        e if e.outcome_unknown() => (EXIT_UNKNOWN, "unknown"),
        e if e.is_unreachable() => (EXIT_UNREACHABLE, "unreachable"),
        _ => (1, "error"),
    }
}

/// Print an expected failure readably (stderr, or a JSON object on stdout) and exit
/// with its code — no `anyhow`, so no backtrace.
fn fail(json: bool, what: &str, e: &ClientError) -> ! {
    let (code, outcome) = classify(e);
    if json {
        let txn = match e {
            ClientError::Timeout { txn: Some(t), .. } | ClientError::Forgotten { txn: t, .. } => {
                Some(t.0)
            }
            _ => None,
        };
        let v = serde_json::json!({ "outcome": outcome, "error": e.to_string(), "txn": txn });
        println!("{v}");
    } else {
        eprintln!("pipewright storage {what}: {e}");
    }
    exit(code)
}

fn exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

fn txn(a: TxnArgs) -> anyhow::Result<()> {
    let client = client(&a.peers)?;
    let mut t = Transaction::new();
    for w in &a.writes {
        let (node, page, version, data) = parse_write(w)?;
        t = t.write(node, page, version, data);
    }
    if !a.chain.is_empty() {
        t = t.chain(a.chain.iter().map(|&n| NodeId(n)).collect());
    }
    let json = a.peers.json;
    client.set_acceptors(a.acceptors);
    match io_runtime(1)?.block_on(client.commit(t)) {
        Ok(committed) if json => {
            let v = serde_json::json!({ "outcome": "committed", "txn": committed.txn.0 });
            println!("{v}");
        }
        Ok(committed) => println!("committed transaction {}", committed.txn),
        Err(e) => fail(json, "txn", &e),
    }
    Ok(())
}

fn read(a: ReadArgs) -> anyhow::Result<()> {
    let client = client(&a.peers)?;
    let json = a.peers.json;
    let page = match io_runtime(1)?.block_on(client.read(NodeId(a.node), PageId(a.page))) {
        Ok(page) => page,
        Err(e) => fail(json, "read", &e),
    };
    let hex = hex::encode(&page.data);
    if json {
        let v = serde_json::json!({
            "node": a.node,
            "page": a.page,
            "written": page.written(),
            "version": page.version,
            "bytes": page.data.len(),
            "data": hex,
        });
        println!("{v}");
    } else if !page.written() {
        println!(
            "node {} page {}: never written (version 0; write it with version 0)",
            a.node, a.page
        );
    } else {
        println!(
            "node {} page {} version {} ({} bytes): {hex}",
            a.node,
            a.page,
            page.version,
            page.data.len()
        );
    }
    Ok(())
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let client = client(&a.peers)?;
    client.set_acceptors(a.acceptors);
    let nodes = client.peers().ids().len();
    let json = a.peers.json;
    let opts = BenchOptions {
        seconds: a.seconds,
        concurrency: a.concurrency,
        span: a.span,
        accounts_per_node: a.accounts,
    };
    if !json {
        println!(
            "bank transfers on {nodes} nodes: {} loops, {} nodes per transfer, {} accounts per node, {} s",
            opts.concurrency, opts.span, opts.accounts_per_node, opts.seconds
        );
    }
    let r = match io_runtime(2)?.block_on(bench::run(client, opts)) {
        Ok(r) => r,
        Err(e) => fail(json, "bench", &e),
    };
    let ms = |q: f64| r.quantile(q).as_secs_f64() * 1e3;
    if json {
        let v = serde_json::json!({
            "nodes": nodes,
            "committed": r.committed,
            "seconds": r.elapsed.as_secs_f64(),
            "tps": r.tps(),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "max_ms": ms(1.0),
            "aborted": r.aborted,
            "busy": r.busy,
            "timeouts": r.timeouts,
            "errors": r.errors,
            "audit": {
                "accounts": r.audit.accounts,
                "total": r.audit.total,
                "expected_total": r.expected_total,
                "min": r.audit.min,
                "lost": r.audit.lost.len(),
                "consistent": r.consistent(),
            },
        });
        println!("{v}");
    } else {
        println!(
            "committed {} in {:.1} s: {:.0} txn/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            r.committed,
            r.elapsed.as_secs_f64(),
            r.tps(),
            ms(0.5),
            ms(0.99),
            ms(1.0),
        );
        println!(
            "aborted attempts (retried) {}, busy {}, timeouts {}, errors {}",
            r.aborted, r.busy, r.timeouts, r.errors
        );
        println!(
            "audit: {} accounts, total {} (expected {}), min balance {}, lost acknowledged commits {}",
            r.audit.accounts,
            r.audit.total,
            r.expected_total,
            r.audit.min,
            r.audit.lost.len()
        );
    }
    if !r.consistent() {
        bail!("the audit failed");
    }
    Ok(())
}

/// One `--write NODE:PAGE:VERSION:HEX`.
fn parse_write(w: &str) -> anyhow::Result<(NodeId, PageId, u64, Vec<u8>)> {
    let parts: Vec<&str> = w.splitn(4, ':').collect();
    let [node, page, version, data] = parts[..] else {
        bail!("`{w}`: expected NODE:PAGE:VERSION:HEX");
    };
    let data = hex::decode(data)
        .with_context(|| format!("`{w}`: bad data: write the bytes as hex digits, two per byte"))?;
    let parse = |s: &str, what| {
        s.parse::<u64>()
            .with_context(|| format!("`{w}`: bad {what}"))
    };
    let node = u32::try_from(parse(node, "node")?).context("node id too large")?;
    Ok((
        NodeId(node),
        PageId(parse(page, "page")?),
        parse(version, "version")?,
        data,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_parse_and_bad_hex_is_an_error_not_a_panic() {
        let (node, page, version, data) = parse_write("2:7:0:00ff10").unwrap();
        assert_eq!((node, page, version), (NodeId(2), PageId(7), 0));
        assert_eq!(data, [0x00, 0xff, 0x10]);
        // Non-ASCII input split a hand-written parser's byte slicing mid-character.
        for bad in ["1:1:0:é0", "1:1:0:0é", "1:1:0:abc", "1:1:0:zz", "1:1:0"] {
            let err = parse_write(bad).unwrap_err();
            assert!(format!("{err:#}").contains(bad), "{bad}: {err:#}");
        }
    }
}
