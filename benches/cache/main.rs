//! Suite `cache`: the cache gateway against named peers.
//!
//! - `replay-sim-reqs-<lru|s3fifo>`: policy-only trace replay, requests/s, on the same
//!   oracleGeneral Zipf(0.99) trace; peer `libcachesim` (the PyPI package, its C
//!   simulator driven from Python by `process_trace`, run as a subprocess; only its
//!   replay is timed, not the interpreter start; both sides' timings include reading
//!   the trace file).
//! - `miss-ratio-<policy>-zipf<a>`: miss ratio of FIFO, CLOCK, SIEVE and S3-FIFO at a
//!   cache of 10% of the objects, on Zipf(0.99) and Zipf(0.7) traces; peer `lru`.
//! - `nbd-read-gbps`: sequential reads of a warm export with `nbdcopy ... null:`
//!   (libnbd-bin) through our gateway; peer `nbdkit` (Debian `nbdkit`, file plugin)
//!   serving the same file, read by the same nbdcopy command.
//!
//! Rounds alternate ours/peer; each RESULT is the median per side.
//! `PIPEWRIGHT_BENCH_QUICK=1`: smaller traces and volume, fewer rounds (< 60 s).

#[path = "../common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use pipewright::cache::replay::{
    read_trace, simulate, write_oracle_general, zipf_trace, TraceFormat,
};
use pipewright::cache::{CacheConfig, FileBackend, Gateway, PolicyKind};

fn result(case: &str, ours: f64, peer: &str, theirs: f64, unit: &str, better: &str) {
    println!(
        "RESULT suite=cache case={case} ours={ours:.4} peer={peer}:{theirs:.4} unit={unit} better={better} ratio={:.3}",
        ours / theirs
    );
}

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("pipewright-bench-cache-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch directory");
    d
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

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

fn replay_sim(filter: Option<&str>) {
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

fn miss_ratios(filter: Option<&str>) {
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

fn nbdcopy_gbps(uri: &str, bytes: u64) -> f64 {
    let start = Instant::now();
    let st = Command::new("nbdcopy")
        .arg(uri)
        .arg("null:")
        .status()
        .expect("run nbdcopy");
    assert!(st.success(), "nbdcopy {uri} failed");
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn nbd_read(filter: Option<&str>) {
    let case = "nbd-read-gbps";
    if !common::wants(filter, case) {
        return;
    }
    if !have("nbdcopy") || !have("nbdkit") {
        eprintln!("{case}: skipped: nbdcopy (libnbd-bin) or nbdkit (nbdkit) not found");
        return;
    }
    let quick = common::quick();
    let mib: u64 = if quick { 256 } else { 1024 };
    let rounds = if quick { 3 } else { 5 };
    let dir = scratch().join("nbd");
    std::fs::create_dir_all(dir.join("volumes")).unwrap();
    let vol = dir.join("volumes/disk");
    let data: Vec<u8> = (0..mib * (1 << 20))
        .map(|i| ((i * 2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&vol, data).unwrap();
    let bytes = mib << 20;
    // Ours: the gateway in this process, the cache as large as the volume (warm after
    // the first pass).
    let rt = pipewright::cache::io_runtime().unwrap();
    let mut cfg = CacheConfig::with_size(dir.join("cache"), bytes + (8 << 20), 1 << 20);
    cfg.low_watermark = 1;
    cfg.high_watermark = 2;
    let gw = rt
        .block_on(Gateway::start(
            cfg,
            Arc::new(FileBackend::new(dir.join("volumes")).unwrap()),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .expect("gateway");
    let ours_uri = format!("nbd://{}/disk", gw.addr());
    // Peer: nbdkit's file plugin on the same file.
    let port = free_port();
    let mut nbdkit = Command::new("nbdkit")
        .args([
            "--foreground",
            "--ip-addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--exportname",
            "disk",
            "file",
        ])
        .arg(format!("file={}", vol.display()))
        .stdout(Stdio::null())
        .spawn()
        .expect("start nbdkit");
    let peer_uri = format!("nbd://127.0.0.1:{port}/disk");
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Warm both (our cache; the page cache for nbdkit).
    nbdcopy_gbps(&ours_uri, bytes);
    nbdcopy_gbps(&peer_uri, bytes);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        if common::only() != Some(common::Side::Peer) {
            ours.push(nbdcopy_gbps(&ours_uri, bytes));
        }
        if common::only() != Some(common::Side::Ours) {
            theirs.push(nbdcopy_gbps(&peer_uri, bytes));
        }
    }
    let stats = gw.cache().stats();
    eprintln!(
        "{case}: {mib} MiB per pass; ours {ours:.3?} nbdkit {theirs:.3?} GB/s; cache hits {} misses {} (load {})",
        stats.hits,
        stats.misses,
        common::loadavg()
    );
    let _ = nbdkit.kill();
    let _ = nbdkit.wait();
    drop(gw);
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    if !ours.is_empty() && !theirs.is_empty() {
        result(
            case,
            common::median(ours),
            "nbdkit",
            common::median(theirs),
            "GB/s",
            "higher",
        );
    }
}

fn main() {
    let filter = common::case_filter();
    let start = Instant::now();
    replay_sim(filter.as_deref());
    miss_ratios(filter.as_deref());
    nbd_read(filter.as_deref());
    let _ = std::fs::remove_dir_all(scratch());
    eprintln!("suite cache done in {:.1} s", start.elapsed().as_secs_f64());
}
