//! `decider-down-availability`: what share of transactions commits while the one who
//! decides is killed: ours with F = 1 against F = 0, and PostgreSQL with its 2PC
//! coordinator killed.

use super::*;

/// `decider-down-availability`: the share of transactions on the surviving nodes
/// that commit while the decider is killed, with F = 1 against F = 0 (what two-phase
/// commit does: the in-doubt nodes keep their locks until the decider is back), each
/// on a fresh 3-node cluster settling after 300 ms (tick 50 ms).
pub fn decider_down(
    cfg: &Config,
    scratch: &Scratch,
    rt: &tokio::runtime::Runtime,
    pg_servers: Option<pg::Peer>,
) -> Result<()> {
    let outage = if common::quick() {
        Duration::from_millis(1500)
    } else {
        Duration::from_secs(5)
    };
    let args = ["--settle-after-ms", "300", "--tick-ms", "50"];
    let (mut f1, mut f0) = (Vec::new(), Vec::new());
    for r in 0..cfg.chain_rounds {
        let order: [u8; 2] = if r % 2 == 0 { [1, 0] } else { [0, 1] };
        for f in order {
            let tag = format!("-down-f{f}-{r}");
            let mut ours = start_ours_with(scratch, 3, &tag, &args)?;
            let o = ours.decider_down(rt, cfg.concurrency, f, cfg.warmup, outage)?;
            ours.stop();
            eprintln!(
                "commit_chain: decider-down round {}/{} F={f}: {} of {} transactions on the surviving nodes committed during the {:.1} s outage ({:.3})",
                r + 1,
                cfg.chain_rounds,
                o.committed,
                o.attempted,
                outage.as_secs_f64(),
                o.share()
            );
            if f == 1 {
                f1.push(o.share())
            } else {
                f0.push(o.share())
            }
        }
    }
    let pg = if cfg.runs(Side::Peer) {
        pg_coordinator_down(cfg, scratch, outage, pg_servers)
    } else {
        Vec::new()
    };
    if cfg.only.is_none() {
        result(
            "decider-down-availability",
            median(&mut f1),
            "self-f0",
            median(&mut f0),
            "share",
            "higher",
        );
    }
    if cfg.runs(Side::Ours) && cfg.runs(Side::Peer) {
        let mut pg = pg;
        let theirs = if pg.is_empty() { 0.0 } else { median(&mut pg) };
        result(
            "decider-down-availability-pg",
            median(&mut f1),
            "postgres-2pc-coordinator-killed",
            theirs,
            "share",
            "higher",
        );
    }
    Ok(())
}

/// The peer's side of `decider-down-availability`: PostgreSQL's two-phase commit
/// with its coordinator process killed (`kill -9`) mid-run; the share of the fresh
/// coordinators' transactions (same pages, same concurrency) that commit during an
/// outage as long as ours, before the coordinator restarts and settles what it left
/// prepared. On `servers` (those of `txn-3node`) if given, else on servers of its
/// own. Empty (a `SKIP` line) without PostgreSQL.
pub fn pg_coordinator_down(
    cfg: &Config,
    scratch: &Scratch,
    outage: Duration,
    servers: Option<pg::Peer>,
) -> Vec<f64> {
    if let Some(peer) = servers {
        return pg_coordinator_rounds(cfg, &peer, outage);
    }
    let Some(bin) = pg::binaries() else {
        eprintln!("commit_chain: decider-down-availability-pg: no PostgreSQL server binaries (Debian package postgresql)");
        return Vec::new();
    };
    let peer = match pg::Peer::start(
        &bin,
        &scratch.path("pg-down"),
        3,
        cfg.concurrency,
        PAGE_SIZE,
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "commit_chain: decider-down-availability-pg: PostgreSQL servers did not start: {}",
                e.trim()
            );
            return Vec::new();
        }
    };
    pg_coordinator_rounds(cfg, &peer, outage)
}

/// `chain_rounds` rounds of [`pg::Peer::coordinator_down`]: the share of each.
fn pg_coordinator_rounds(cfg: &Config, peer: &pg::Peer, outage: Duration) -> Vec<f64> {
    let mut shares = Vec::new();
    for r in 0..cfg.chain_rounds {
        match peer.coordinator_down(cfg.concurrency, cfg.warmup, outage, PAGE_SIZE) {
            Ok((committed, attempted, in_doubt)) => {
                let share = committed as f64 / attempted.max(1) as f64;
                eprintln!(
                    "commit_chain: decider-down round {}/{} postgres-2pc, coordinator killed: {committed} of {attempted} transactions committed during the {:.1} s outage ({share:.3}); {in_doubt} prepared transactions left in doubt",
                    r + 1,
                    cfg.chain_rounds,
                    outage.as_secs_f64(),
                );
                shares.push(share);
            }
            Err(e) => {
                eprintln!("commit_chain: decider-down-availability-pg: {e}");
                return Vec::new();
            }
        }
    }
    shares
}
