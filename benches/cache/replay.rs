//! `replay-sim-reqs-*` (policy-only replay against libCacheSim) and `miss-ratio-*`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use pipewright::cache::replay::{
    read_trace, simulate, write_oracle_general, zipf_trace, TraceFormat,
};
use pipewright::cache::PolicyKind;

use super::{common, result, scratch};

const LCS_SCRIPT: &str = r#"
import sys, time, libcachesim as lcs
path, policy, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
cls = {"lru": lcs.LRU, "s3fifo": lcs.S3FIFO}[policy]
p = lcs.ReaderInitParam()
p.ignore_obj_size = True
r = lcs.TraceReader(trace=path, trace_type=lcs.TraceType.ORACLE_GENERAL_TRACE, reader_init_params=p)
c = cls(cache_size=size)
t = time.perf_counter()
mr = c.process_trace(r)[0]
print(time.perf_counter() - t, mr)
"#;

fn libcachesim_reqs(
    trace: &Path,
    policy: PolicyKind,
    size: usize,
    requests: usize,
) -> Option<(f64, f64)> {
    let out = Command::new("python3")
        .args(["-c", LCS_SCRIPT])
        .arg(trace)
        .arg(policy.name())
        .arg(size.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace();
    let secs: f64 = f.next()?.parse().ok()?;
    let mr: f64 = f.next()?.parse().ok()?;
    Some((requests as f64 / secs, mr))
}

pub(crate) fn replay_sim(filter: Option<&str>) {
    let quick = common::quick();
    let (objects, requests) = if quick {
        (100_000, 1_000_000)
    } else {
        (1_000_000, 10_000_000)
    };
    let rounds = if quick { 3 } else { 5 };
    let dir = scratch();
    let ids = zipf_trace(objects, requests, 0.99, 7);
    let trace = dir.join("zipf0.99.oracleGeneral");
    write_oracle_general(&trace, &ids).expect("write trace");
    let size = objects as usize / 10;
    for policy in [PolicyKind::Lru, PolicyKind::S3Fifo] {
        let case = format!("replay-sim-reqs-{}", policy.name());
        if !common::wants(filter, &case) {
            continue;
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            if common::only() != Some(common::Side::Peer) {
                // Timed like the peer's process_trace: reading the trace file included.
                let start = Instant::now();
                let ids = read_trace(&trace, &TraceFormat::OracleGeneral).expect("read trace");
                let r = simulate(&ids, policy, size);
                assert_eq!(r.requests as usize, requests);
                ours.push(requests as f64 / start.elapsed().as_secs_f64());
            }
            if common::only() != Some(common::Side::Ours) {
                match libcachesim_reqs(&trace, policy, size, requests) {
                    Some((rps, mr)) => {
                        let our_mr = simulate(&ids, policy, size).miss_ratio();
                        assert!(
                            (our_mr - mr).abs() < 0.002,
                            "miss ratios diverge: {our_mr} vs {mr}"
                        );
                        theirs.push(rps);
                    }
                    None => {
                        eprintln!("{case}: libcachesim not importable by python3 (pip install libcachesim); peer skipped");
                        break;
                    }
                }
            }
        }
        eprintln!(
            "{case}: ours {ours:.0?} libcachesim {theirs:.0?} (load {})",
            common::loadavg()
        );
        if !ours.is_empty() && !theirs.is_empty() {
            result(
                &case,
                common::median(ours),
                "libcachesim",
                common::median(theirs),
                "req/s",
                "higher",
            );
        }
    }
    let _ = std::fs::remove_file(&trace);
}

pub(crate) fn miss_ratios(filter: Option<&str>) {
    let quick = common::quick();
    let (objects, requests) = if quick {
        (50_000, 500_000)
    } else {
        (200_000, 4_000_000)
    };
    for alpha in [0.99, 0.7] {
        let ids = zipf_trace(objects, requests, alpha, 11);
        let size = objects as usize / 10;
        let lru = simulate(&ids, PolicyKind::Lru, size).miss_ratio();
        for policy in [
            PolicyKind::Fifo,
            PolicyKind::Clock,
            PolicyKind::Sieve,
            PolicyKind::S3Fifo,
        ] {
            let case = format!("miss-ratio-{}-zipf{alpha}", policy.name());
            if !common::wants(filter, &case) {
                continue;
            }
            let mr = simulate(&ids, policy, size).miss_ratio();
            result(&case, mr, "lru", lru, "miss_ratio", "lower");
        }
    }
}
