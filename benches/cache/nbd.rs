//! `nbd-read-gbps`: sequential 1 MiB reads of a warm export through NBD (`nbdcopy
//! --request-size=1M ... null:`), ours and nbdkit's.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use pipewright::cache::{CacheConfig, FileBackend, Gateway};

use super::{common, have, result, scratch};

/// Bytes per NBD read request (nbdcopy's default is 256 KiB).
const REQUEST_BYTES: u64 = 1 << 20;

fn nbdcopy_gbps(uri: &str, bytes: u64) -> f64 {
    let start = Instant::now();
    let st = Command::new("nbdcopy")
        .arg(format!("--request-size={}", REQUEST_BYTES))
        .arg(uri)
        .arg("null:")
        .status()
        .expect("run nbdcopy");
    assert!(st.success(), "nbdcopy {uri} failed");
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// CPU seconds (user + system) process `pid` has used so far (Linux), or 0.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub(crate) fn nbd_read(filter: Option<&str>) {
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
    let rounds = if quick { 5 } else { 7 };
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
    cfg.direct_hits = super::direct_hits();
    cfg.verify = super::verify();
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
    // Server CPU seconds over the timed passes: ours (this process: the gateway) and
    // nbdkit's; a figure that machine load bends less than the throughput.
    let (mut ours_cpu, mut peer_cpu) = (0.0, 0.0);
    for _ in 0..rounds {
        if common::only() != Some(common::Side::Peer) {
            let c = cpu_seconds(std::process::id());
            ours.push(nbdcopy_gbps(&ours_uri, bytes));
            ours_cpu += cpu_seconds(std::process::id()) - c;
        }
        if common::only() != Some(common::Side::Ours) {
            let c = cpu_seconds(nbdkit.id());
            theirs.push(nbdcopy_gbps(&peer_uri, bytes));
            peer_cpu += cpu_seconds(nbdkit.id()) - c;
        }
    }
    let gib = (rounds as u64 * bytes) as f64 / (1u64 << 30) as f64;
    let stats = gw.cache().stats();
    eprintln!(
        "{case}: {mib} MiB per pass; ours {ours:.3?} nbdkit {theirs:.3?} GB/s; server CPU s per GiB: ours {:.3} nbdkit {:.3}; cache hits {} misses {} (load {})",
        ours_cpu / gib,
        peer_cpu / gib,
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
