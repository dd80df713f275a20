//! The commands that run or set up node processes: `node`, `cluster`, `client-peers`.

use super::*;

pub(super) fn client_peers(a: ClientPeersArgs) -> anyhow::Result<()> {
    let peers = Peers::load(&a.peers)?;
    peers.cluster_key()?;
    let same = match (
        std::fs::canonicalize(&a.peers),
        std::fs::canonicalize(&a.out),
    ) {
        (Ok(from), Ok(to)) => from == to,
        _ => false,
    };
    anyhow::ensure!(
        !same,
        "--out is the nodes' peers file {}: writing the clients' file there would lose the \
         cluster key; give another path",
        a.peers.display()
    );
    peers.for_clients().save(&a.out)?;
    println!(
        "wrote {}: give it to the clients in place of {}",
        a.out.display(),
        a.peers.display()
    );
    Ok(())
}

pub(super) fn node(a: NodeArgs) -> anyhow::Result<()> {
    let peers = Peers::load(&a.peers)?;
    if peers.cluster_key()?.is_development() {
        eprintln!(
            "warning: the peers file {} has no `key`: the node takes connections signed with \
             the public development key, so anyone who reaches its port can start \
             transactions or pose as a peer; add `key = \"<a long random passphrase>\"` \
             (the same on every node; clients get `pipewright storage client-peers`' file) \
             outside a test",
            a.peers.display()
        );
    }
    let mut opts = NodeOptions::new(NodeId(a.id), a.listen, a.data, peers);
    opts.pages = a.tunables.pages;
    opts.max_in_flight = a.tunables.max_in_flight;
    opts.tick = Duration::from_millis(a.tunables.tick_ms.max(1));
    opts.resolve_after = Duration::from_millis(a.tunables.resolve_after_ms);
    opts.settle_after = Duration::from_millis(a.tunables.settle_after_ms);
    opts.linger = Duration::from_micros(a.tunables.linger_us);
    #[cfg(feature = "storage-faults")]
    {
        opts.crash_at = a.crash_at;
    }
    // One tokio thread (the main one): a node's connection and link tasks are short (decode, push
    // into the pipeline; drain a queue into one write), and a 3-node cluster on a
    // 2-core machine ran 12 threads (the profile: wake-ups and context switches).
    io_runtime(0)?.block_on(async {
        let server = NodeServer::start(opts).await?;
        let r = server.recovered();
        if a.json {
            let v = serde_json::json!({
                "event": "listening",
                "node": a.id,
                "address": server.local_addr().to_string(),
                "recovery_ms": r.duration.as_millis() as u64,
                "records": r.records,
                "truncated_bytes": r.truncated_bytes,
                "redone": r.redone,
                "in_doubt": r.in_doubt,
                "corrupt_pages": r.corrupt_pages.len(),
            });
            println!("{v}");
        } else {
            println!(
            "node {} listening on {}: recovered in {} ms {} log records ({} torn bytes truncated), {} redone, {} in doubt, {} corrupt pages",
            a.id,
            server.local_addr(),
            r.duration.as_millis(),
            r.records,
            r.truncated_bytes,
            r.redone,
            r.in_doubt,
            r.corrupt_pages.len()
        );
        }
        // Flushed now: a supervisor reading a pipe learns the address at once.
        std::io::Write::flush(&mut std::io::stdout())?;
        server.run_until(shutdown_signal()).await?;
        if a.json {
            println!("{}", serde_json::json!({ "event": "stopped", "node": a.id }));
        } else {
            println!("node {} stopped", a.id);
        }
        Ok(())
    })
}

pub(super) fn cluster(a: ClusterArgs) -> anyhow::Result<()> {
    let dir = match a.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("pipewright-storage-{}", std::process::id())),
    };
    let exe = std::env::current_exe().context("locating the pipewright binary")?;
    let mut cluster = LocalCluster::start(&exe, &dir, a.nodes, a.base_port, &a.tunables.args())
        .context("starting the node processes")?;
    let peers = cluster.peers_path();
    let clients = cluster.client_peers_path();
    if a.json {
        let nodes: Vec<_> = cluster
            .peers()
            .iter()
            .map(|(id, addr)| {
                serde_json::json!({
                    "node": id.0,
                    "address": addr.to_string(),
                    "data": cluster.data_dir(id).display().to_string(),
                })
            })
            .collect();
        let v = serde_json::json!({
            "event": "running",
            "nodes": nodes,
            "peers": peers.display().to_string(),
            "client_peers": clients.display().to_string(),
        });
        println!("{v}");
    } else {
        for (id, addr) in cluster.peers().iter() {
            println!(
                "node {} on {addr} (data {})",
                id.0,
                cluster.data_dir(id).display()
            );
        }
        println!(
            "peers file: {} (clients': {})",
            peers.display(),
            clients.display()
        );
        println!(
            "try: pipewright storage bench --peers {}",
            clients.display()
        );
        println!("Ctrl-C stops the cluster");
    }
    std::io::Write::flush(&mut std::io::stdout())?;
    cluster.wait_for_signal()?;
    cluster.stop();
    if a.json {
        println!("{}", serde_json::json!({ "event": "stopped" }));
    } else {
        println!("cluster stopped");
    }
    Ok(())
}
