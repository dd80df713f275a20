//! `pipewright storage`: the storage commit chain's node process, a local cluster,
//! transactions, reads and the bank benchmark.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pipewright_storage::bench::{self, BenchOptions};
use pipewright_storage::client::{StorageClient, Transaction};
use pipewright_storage::cluster::LocalCluster;
use pipewright_storage::peers::Peers;
#[cfg(feature = "storage-faults")]
use pipewright_storage::server::CrashAt;
use pipewright_storage::server::{NodeOptions, NodeServer};
use pipewright_storage::{io_runtime, shutdown_signal, NodeId, PageId};

#[derive(Args, Debug)]
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
    Txn(TxnArgs),
    /// Read a committed page.
    Read(ReadArgs),
    /// Show each node's status and counters.
    Status(PeersArg),
    /// Bank transfers from concurrent clients: throughput, p50/p99 latency, audit.
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
struct NodeTunables {
    /// Pages in each node's page file (8 KiB each).
    #[arg(long, default_value_t = 1024)]
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
    /// Peers file: a TOML `[nodes]` table of `id = "address"`.
    #[arg(long)]
    peers: PathBuf,
    #[command(flatten)]
    tunables: NodeTunables,
    /// Fault tests: abort the process the N-th time it reaches STEP
    /// (before-intent, after-intent, after-decision, before-completion,
    /// after-completion), as `STEP:N` (feature `storage-faults`).
    #[cfg(feature = "storage-faults")]
    #[arg(long, hide = true)]
    crash_at: Option<CrashAt>,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// Number of nodes (ids 1..=N).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Directory for the peers file, node data and logs (default: a new temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Node N listens on 127.0.0.1:(P + N) (default: free ports).
    #[arg(long)]
    base_port: Option<u16>,
    #[command(flatten)]
    tunables: NodeTunables,
}

#[derive(Args, Debug)]
struct PeersArg {
    /// Peers file of the cluster.
    #[arg(long)]
    peers: PathBuf,
}

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
    #[arg(long, default_value_t = 10.0)]
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
}

pub(crate) fn run(args: StorageArgs) -> anyhow::Result<()> {
    match args.command {
        StorageCommand::Node(a) => node(a),
        StorageCommand::Cluster(a) => cluster(a),
        StorageCommand::Txn(a) => txn(a),
        StorageCommand::Read(a) => read(a),
        StorageCommand::Status(a) => status(a),
        StorageCommand::Bench(a) => bench(a),
    }
}

fn node(a: NodeArgs) -> anyhow::Result<()> {
    let peers = Peers::load(&a.peers)?;
    let mut opts = NodeOptions::new(NodeId(a.id), a.listen, a.data, peers);
    opts.pages = a.tunables.pages;
    opts.max_in_flight = a.tunables.max_in_flight;
    opts.tick = Duration::from_millis(a.tunables.tick_ms.max(1));
    opts.resolve_after = Duration::from_millis(a.tunables.resolve_after_ms);
    #[cfg(feature = "storage-faults")]
    {
        opts.crash_at = a.crash_at;
    }
    io_runtime(2)?.block_on(async {
        let server = NodeServer::start(opts).await?;
        let r = server.recovered();
        println!(
            "node {} listening on {}: recovered {} log records ({} torn bytes truncated), {} redone, {} in doubt, {} corrupt pages",
            a.id,
            server.local_addr(),
            r.records,
            r.truncated_bytes,
            r.redone,
            r.in_doubt,
            r.corrupt_pages.len()
        );
        server.run_until(shutdown_signal()).await?;
        println!("node {} stopped", a.id);
        Ok(())
    })
}

fn cluster(a: ClusterArgs) -> anyhow::Result<()> {
    let dir = match a.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("pipewright-storage-{}", std::process::id())),
    };
    let exe = std::env::current_exe().context("locating the pipewright binary")?;
    let mut cluster = LocalCluster::start(&exe, &dir, a.nodes, a.base_port, &a.tunables.args())
        .context("starting the node processes")?;
    for (id, addr) in cluster.peers().iter() {
        println!(
            "node {} on {addr} (data {})",
            id.0,
            cluster.data_dir(id).display()
        );
    }
    let peers = cluster.peers_path();
    println!("peers file: {}", peers.display());
    println!("try: pipewright storage bench --peers {}", peers.display());
    println!("Ctrl-C stops the cluster");
    cluster.wait_for_signal()?;
    cluster.stop();
    println!("cluster stopped");
    Ok(())
}

fn client(peers: &PeersArg) -> anyhow::Result<StorageClient> {
    Ok(StorageClient::new(Peers::load(&peers.peers)?))
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
    io_runtime(1)?.block_on(async {
        let committed = client.commit(t).await?;
        println!("committed {}", committed.txn);
        Ok(())
    })
}

fn read(a: ReadArgs) -> anyhow::Result<()> {
    let client = client(&a.peers)?;
    io_runtime(1)?.block_on(async {
        let page = client.read(NodeId(a.node), PageId(a.page)).await?;
        let hex = hex::encode(&page.data);
        println!(
            "node {} page {} version {} data {hex}",
            a.node, a.page, page.version
        );
        Ok(())
    })
}

fn status(a: PeersArg) -> anyhow::Result<()> {
    let client = client(&a)?;
    io_runtime(1)?.block_on(async {
        for id in client.peers().ids() {
            match client.status(id).await {
                Ok(s) => println!("{s:?}"),
                Err(e) => println!("node {}: {e}", id.0),
            }
        }
        Ok(())
    })
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let client = client(&a.peers)?;
    let nodes = client.peers().ids().len();
    let opts = BenchOptions {
        seconds: a.seconds,
        concurrency: a.concurrency,
        span: a.span,
        accounts_per_node: a.accounts,
    };
    println!(
        "bank transfers on {nodes} nodes: {} loops, {} nodes per transfer, {} accounts per node, {} s",
        opts.concurrency, opts.span, opts.accounts_per_node, opts.seconds
    );
    let r = io_runtime(2)?.block_on(bench::run(client, opts))?;
    println!(
        "committed {} in {:.1} s: {:.0} txn/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.committed,
        r.elapsed.as_secs_f64(),
        r.tps(),
        r.quantile(0.5).as_secs_f64() * 1e3,
        r.quantile(0.99).as_secs_f64() * 1e3,
        r.quantile(1.0).as_secs_f64() * 1e3,
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
