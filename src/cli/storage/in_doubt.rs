//! `pipewright storage status` and `resolve`: what each node holds in doubt, and
//! settling it through the decider or the acceptor quorum.

use super::{client, exit, PeersArg, EXIT_UNKNOWN, EXIT_UNREACHABLE};
use std::time::Duration;

use pipewright_storage::{io_runtime, NodeId};

pub(super) fn status(a: PeersArg) -> anyhow::Result<()> {
    let client = client(&a)?;
    let results = io_runtime(1)?.block_on(async {
        let mut out = Vec::new();
        for (id, addr) in client.peers().iter() {
            out.push((id, addr, client.status(id).await));
        }
        out
    });
    let reachable = results.iter().filter(|(_, _, r)| r.is_ok()).count();
    if a.json {
        let nodes: Vec<_> = results
            .iter()
            .map(|(id, addr, r)| match r {
                Ok(s) => serde_json::json!({
                    "node": id.0, "address": addr.to_string(), "reachable": true, "status": s,
                }),
                Err(e) => serde_json::json!({
                    "node": id.0, "address": addr.to_string(), "reachable": false,
                    "error": e.to_string(),
                }),
            })
            .collect();
        let v = serde_json::json!({ "reachable": reachable, "nodes": nodes });
        println!("{v}");
    } else {
        for (id, addr, r) in &results {
            match r {
                Ok(s) => {
                    println!(
                        "node {} ({addr}): up; {} unfinished transactions ({} admitted as head), remembers {}, low-water marks for {} clients",
                        id.0, s.unfinished, s.in_flight, s.remembered, s.low_water_marks
                    );
                    println!(
                        "  log: {} bytes on disk, {} bytes written in {} syncs, {} checkpoints",
                        s.log_disk_bytes, s.log_bytes, s.log_syncs, s.checkpoints
                    );
                    println!(
                        "  refused busy {}, malformed frames {}, refused without the key {}, dropped sends {}; recovery took {} ms",
                        s.busy, s.malformed_frames, s.auth_failures, s.dropped_sends, s.recovery_ms
                    );
                    print_in_doubt(&s.in_doubt);
                }
                Err(e) => println!("node {} ({addr}): DOWN: {e}", id.0),
            }
        }
        println!("{reachable} of {} nodes reachable", results.len());
    }
    if reachable == 0 {
        if !a.json {
            eprintln!("pipewright storage status: no node is reachable");
        }
        exit(EXIT_UNREACHABLE);
    }
    Ok(())
}

/// `storage resolve`: ask every node to settle its in-doubt transactions, wait until
/// none is left in doubt (or the timeout), then compare every node's verdicts.
pub(super) fn resolve(a: PeersArg) -> anyhow::Result<()> {
    use pipewright_storage::log::Verdict;
    use pipewright_storage::TxnId;
    use std::collections::{BTreeMap, BTreeSet};
    let client = client(&a)?;
    let timeout = Duration::from_secs_f64(a.timeout);
    let ids = client.peers().ids();
    let rt = io_runtime(1)?;
    let (reachable, unreachable, waiting, verdicts) = rt.block_on(async {
        let deadline = std::time::Instant::now() + timeout;
        let mut txns = BTreeSet::new();
        let mut reachable = Vec::new();
        let mut unreachable = Vec::new();
        for &id in &ids {
            match client.resolve(id).await {
                Ok(s) => {
                    txns.extend(s.in_doubt.iter().map(|t| t.txn));
                    reachable.push(id);
                }
                Err(e) => unreachable.push((id, e.to_string())),
            }
        }
        // Poll until no reachable node has any of them in doubt; ask again every 2 s.
        let mut waiting: BTreeMap<TxnId, Vec<NodeId>> = BTreeMap::new();
        let mut asked = std::time::Instant::now();
        loop {
            waiting.clear();
            for &id in &reachable {
                if let Ok(s) = client.status(id).await {
                    for t in s.in_doubt.iter().filter(|t| txns.contains(&t.txn)) {
                        waiting.entry(t.txn).or_default().push(id);
                    }
                }
            }
            if waiting.is_empty() || std::time::Instant::now() >= deadline {
                break;
            }
            if asked.elapsed() >= Duration::from_secs(2) {
                for &id in &reachable {
                    let _ = client.resolve(id).await;
                }
                asked = std::time::Instant::now();
            }
            // The block_on thread only polls; the connections run on the runtime worker.
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut verdicts: BTreeMap<TxnId, BTreeMap<Verdict, Vec<NodeId>>> = BTreeMap::new();
        let list: Vec<TxnId> = txns.iter().copied().collect();
        for &id in &reachable {
            if let Ok(vs) = client.verdicts(id, list.clone()).await {
                for (t, v) in vs {
                    if let Some(v) = v {
                        verdicts
                            .entry(t)
                            .or_default()
                            .entry(v)
                            .or_default()
                            .push(id);
                    }
                }
            }
        }
        for &t in &txns {
            verdicts.entry(t).or_default();
        }
        (reachable, unreachable, waiting, verdicts)
    });
    let name = |v: &Verdict| match v {
        Verdict::Commit => "committed",
        Verdict::Abort => "aborted",
    };
    let disagree: Vec<TxnId> = verdicts
        .iter()
        .filter(|(_, by)| by.len() > 1)
        .map(|(&t, _)| t)
        .collect();
    let nodes = |v: &[NodeId]| v.iter().map(|n| n.0).collect::<Vec<_>>();
    if a.json {
        let txns: Vec<_> = verdicts
            .iter()
            .map(|(t, by)| {
                let outcome = match (by.len(), waiting.contains_key(t)) {
                    (n, _) if n > 1 => "disagreement",
                    (_, true) => "in-doubt",
                    (1, false) => name(by.keys().next().expect("one")),
                    // Settled, and every reachable node has forgotten it since (as the
                    // text output says).
                    _ => "settled-forgotten",
                };
                let by: serde_json::Map<String, serde_json::Value> = by
                    .iter()
                    .map(|(v, n)| (name(v).to_string(), serde_json::json!(nodes(n))))
                    .collect();
                serde_json::json!({
                    "txn": t.0,
                    "outcome": outcome,
                    "nodes": by,
                    "in_doubt_on": waiting.get(t).map(|n| nodes(n)).unwrap_or_default(),
                })
            })
            .collect();
        let down: Vec<_> = unreachable
            .iter()
            .map(|(n, e)| serde_json::json!({ "node": n.0, "error": e }))
            .collect();
        let v = serde_json::json!({
            "reachable": nodes(&reachable),
            "unreachable": down,
            "transactions": txns,
        });
        println!("{v}");
    } else {
        for (n, e) in &unreachable {
            println!("node {n}: DOWN: {e}");
        }
        if verdicts.is_empty() {
            println!(
                "no transaction in doubt on the {} reachable nodes",
                reachable.len()
            );
        }
        for (t, by) in &verdicts {
            if let Some(on) = waiting.get(t) {
                println!(
                    "transaction {t}: still in doubt on nodes {:?} (its decider and a majority of its acceptors are unreachable) — run again once they are up",
                    nodes(on)
                );
                continue;
            }
            let parts: Vec<String> = by
                .iter()
                .map(|(v, n)| format!("{} on nodes {:?}", name(v), nodes(n)))
                .collect();
            if parts.is_empty() {
                println!("transaction {t}: settled (no reachable node remembers it any more)");
            } else {
                println!("transaction {t}: {}", parts.join(", "));
            }
        }
    }
    if !disagree.is_empty() {
        let list: Vec<String> = disagree.iter().map(|t| t.to_string()).collect();
        eprintln!(
            "pipewright storage resolve: nodes disagree on transactions {} — this is a bug, please report it with the nodes' logs",
            list.join(", ")
        );
        exit(1);
    }
    if reachable.is_empty() {
        if !a.json {
            eprintln!("pipewright storage resolve: no node is reachable");
        }
        exit(EXIT_UNREACHABLE);
    }
    if !waiting.is_empty() {
        if !a.json {
            eprintln!(
                "pipewright storage resolve: {} transactions are still in doubt",
                waiting.len()
            );
        }
        exit(EXIT_UNKNOWN);
    }
    Ok(())
}

/// The in-doubt lines of `status`: count, oldest intent, then each (at most 10).
fn print_in_doubt(list: &[pipewright_storage::wire::InDoubt]) {
    let Some(oldest) = list.first() else {
        println!("  in doubt: none");
        return;
    };
    println!(
        "  in doubt: {} transactions waiting for their outcome; oldest intent {:.1} s old",
        list.len(),
        oldest.age_ms as f64 / 1e3
    );
    for t in list.iter().take(10) {
        let decider = t.decider.map_or("unknown".to_string(), |d| d.to_string());
        println!(
            "    transaction {}: waiting {:.1} s for decider node {decider}{}",
            t.txn,
            t.age_ms as f64 / 1e3,
            if t.recovered {
                " (recovered from the log)"
            } else {
                ""
            }
        );
    }
    if list.len() > 10 {
        println!("    ... and {} more (--json lists all)", list.len() - 10);
    }
}
