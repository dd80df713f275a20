//! The `nic_e2e` suite: pipewright's data plane on real interfaces against the Linux
//! kernel's own VXLAN (`kernel-vxlan`), guest namespace to remote namespace, in one run.
//!
//! Run with `cargo bench --bench nic_e2e` as root (network namespaces, veth, TAP, XDP);
//! without them it prints one `SKIP suite=nic_e2e: <why>` line and exits 0.
//! `PIPEWRIGHT_BENCH_QUICK=1` runs every case with short windows (under 60 s in all,
//! topology setup included). `PIPEWRIGHT_BENCH_CASE=<text>` runs only the cases whose
//! name contains `<text>`; `PIPEWRIGHT_BENCH_ONLY=ours|peer` one side only (no RESULT
//! line; for `perf record`). `PIPEWRIGHT_NIC_E2E_GEN_THREADS` sets the UDP generator's
//! thread count (default 2). Experiments (not for CI): `PIPEWRIGHT_NIC_E2E_WORKERS=one|two`
//! runs the data plane on one worker (run to completion) or two (the default),
//! `PIPEWRIGHT_NIC_E2E_BUSY_POLL_US=<µs>` sets its busy-poll window.
//!
//! # Topologies (see `topo`)
//!
//! Both are built by the host harness with the same addresses and the same remote
//! namespace (kernel vxlan devices on `ul0`, 192.168.77.2); they differ only in the
//! data-plane namespace: pipewright (AF_XDP port on the guest's veth, or a TAP VF; the
//! io_uring UDP underlay) versus a Linux bridge joining the guest's veth to a kernel
//! vxlan device. Per packet both do the same work: take the guest's frame,
//! encapsulate it in VXLAN/UDP/IPv4, send it over the underlay veth to the remote,
//! whose kernel vxlan device decapsulates it.
//!
//! # Cases
//!
//! - `udp-64B-pps`: 64-byte UDP *payloads* (106-byte inner frames) from the guest,
//!   ours through the AF_XDP VF. `sendmmsg` generator (see `udp`), packets delivered
//!   per second at the remote's vxlan device over a fixed window after a warm-up.
//! - `tcp-bulk-gbps`: one `iperf3` stream, ours through the TAP VF (TSO super-frames
//!   segmented in user space, sent with UDP GSO); the kernel guest keeps TSO.
//! - `tcp-bulk-gbps-tunnel-gso`: the same on the socket underlay with tunnel GSO
//!   (`UnderlayConfig::tunnel_gso`): super-frames handed to the kernel whole.
//! - `latency-rr-p50-us`, `latency-rr-p99-us`: UDP ping-pong round trips (see `rr`),
//!   ours through the AF_XDP VF (the TAP VF's figures are printed to stderr too).
//! - `latency-rr-p50-us-sparse`, `latency-rr-p99-us-sparse`: the same with one round
//!   trip every 2 ms (sparse traffic: each request finds the data plane idle). Outside
//!   quick mode ours is also measured with busy-polling off (stderr).
//!
//! The throughput cases run the data plane on two workers, the latency cases on one
//! (run to completion, busy-polling): `Workers::for_traffic`, the plan's choice.
//!
//! Every case runs on both of the data plane's underlays: the io_uring UDP sockets
//! (case names as above) and the AF_XDP socket on `ul0` (names suffixed `-afxdp`);
//! the kernel peer is measured again next to each.
//!
//! Every case runs `rounds` rounds, each running both sides, in alternating order;
//! the RESULT is the median per side. Progress, per-run details (offered load, CPU
//! use, the data plane's per-stage ns/item and burst sizes) go to stderr; the RESULT
//! lines of DESIGN.md section 6 to stdout.
// A benchmark binary: `pub` marks what its modules share; nothing is exported.
#![allow(unreachable_pub)]

#[path = "../common/mod.rs"]
mod common;
mod probe;
mod rr;
mod tcp;
mod topo;
mod udp;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::Side;
use pipewright_nic::dataplane::Workers;
use probe::Sample;
use topo::{Ours, Peer, Underlay};

const PEER: &str = "kernel-vxlan";
/// Time between round trips in the sparse latency case (a ping every few ms).
const SPARSE_GAP: Duration = Duration::from_millis(2);

struct Config {
    rounds: usize,
    udp_warmup: Duration,
    udp_window: Duration,
    tcp_secs: u32,
    tcp_omit: u32,
    rr_window: Duration,
    rr_sparse_window: Duration,
    gen_threads: usize,
    filter: Option<String>,
    only: Option<Side>,
}

impl Config {
    fn from_env() -> Self {
        let quick = common::quick();
        let gen_threads = std::env::var("PIPEWRIGHT_NIC_E2E_GEN_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(2);
        let s = |q: u64, f: u64| Duration::from_millis(if quick { q } else { f });
        Self {
            rounds: if quick { 2 } else { 3 },
            udp_warmup: s(500, 1000),
            udp_window: s(1500, 10_000),
            tcp_secs: if quick { 2 } else { 10 },
            tcp_omit: 1,
            rr_window: s(1500, 5000),
            rr_sparse_window: s(1500, 6000),
            gen_threads,
            filter: common::case_filter(),
            only: common::only(),
        }
    }

    fn wants(&self, case: &str) -> bool {
        common::wants(self.filter.as_deref(), case)
    }

    /// The sides of round `r`, alternating which goes first.
    fn sides(&self, r: usize) -> Vec<Side> {
        let order = if r % 2 == 0 {
            [Side::Ours, Side::Peer]
        } else {
            [Side::Peer, Side::Ours]
        };
        order
            .into_iter()
            .filter(|s| self.only.is_none_or(|o| o == *s))
            .collect()
    }
}

fn name(side: Side) -> &'static str {
    match side {
        Side::Ours => "ours",
        Side::Peer => PEER,
    }
}

/// Runs `f` for every round and side; returns the values per side (ours, peer).
fn rounds<T>(
    cfg: &Config,
    case: &str,
    mut f: impl FnMut(Side) -> Result<T>,
) -> Result<(Vec<T>, Vec<T>)> {
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for r in 0..cfg.rounds {
        for side in cfg.sides(r) {
            eprintln!(
                "nic_e2e: {case} round {}/{} {}",
                r + 1,
                cfg.rounds,
                name(side)
            );
            let v = f(side)?;
            match side {
                Side::Ours => ours.push(v),
                Side::Peer => peer.push(v),
            }
        }
    }
    Ok((ours, peer))
}

fn result(cfg: &Config, case: &str, ours: Vec<f64>, peer: Vec<f64>, unit: &str, better: &str) {
    if cfg.only.is_some() || ours.is_empty() || peer.is_empty() {
        return;
    }
    let (o, p) = (common::median(ours), common::median(peer));
    let digits = if unit == "pps" { 0 } else { 2 };
    println!(
        "RESULT suite=nic_e2e case={case} ours={o:.digits$} peer={PEER}:{p:.digits$} unit={unit} better={better} ratio={:.3}",
        o / p
    );
}

fn main() {
    if let Err(why) = pipewright_nic::host::can_run() {
        println!("SKIP suite=nic_e2e: {why}");
        return;
    }
    if let Err(e) = run() {
        eprintln!("nic_e2e: failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cfg = Config::from_env();
    let started = Instant::now();
    eprintln!(
        "nic_e2e: {} mode, {} rounds, load average {}; building both topologies",
        if common::quick() { "quick" } else { "full" },
        cfg.rounds,
        common::loadavg()
    );
    let rss_before = probe::rss_kib();
    let peer = Peer::build()?;
    let mut ours = Ours::build()?;
    let rss_start = probe::rss_kib();
    eprintln!(
        "nic_e2e: topologies up in {:.1} s; process RSS {} KiB before the data plane, {} KiB with it",
        started.elapsed().as_secs_f64(),
        rss_before,
        rss_start
    );

    for underlay in [Underlay::Udp, Underlay::AfXdp] {
        ours.restart(underlay, Workers::for_traffic(false))?;
        eprintln!("nic_e2e: data plane on the {underlay:?} underlay");
        cases(&cfg, &mut ours, &peer, underlay)?;
        if let Some(c) = ours.plane().underlay_counters() {
            eprintln!("nic_e2e: AF_XDP underlay counters {c:?}");
        }
    }
    eprintln!(
        "nic_e2e: done in {:.1} s; process RSS {} KiB at the end ({} KiB at start); nic drops {:?}",
        started.elapsed().as_secs_f64(),
        probe::rss_kib(),
        rss_start,
        ours.plane().stats().all()
    );
    drop(ours);
    drop(peer);
    Ok(())
}

/// The cases on the data plane's current underlay (`ours` restarted on it).
fn cases(cfg: &Config, ours_mut: &mut Ours, peer: &Peer, underlay: Underlay) -> Result<()> {
    let sfx = underlay.suffix();
    let ours = &*ours_mut;
    if cfg.wants(&format!("udp-64B-pps{sfx}")) {
        let (o, p) = rounds(cfg, &format!("udp-64B-pps{sfx}"), |side| {
            let (path, plane) = match side {
                Side::Ours => (ours.afxdp(), Some(ours.plane())),
                Side::Peer => (peer.path(), None),
            };
            let (pps, detail) = udp::measure(
                &path,
                plane,
                cfg.gen_threads,
                cfg.udp_warmup,
                cfg.udp_window,
            )?;
            eprintln!("  {}: {detail}", name(side));
            Ok(pps)
        })?;
        result(cfg, &format!("udp-64B-pps{sfx}"), o, p, "pps", "higher");
        // (Not in quick mode: it would lengthen CI's run.)
        if cfg.gen_threads != 1
            && cfg.only.is_none()
            && underlay == Underlay::Udp
            && !common::quick()
        {
            // One generator thread leaves the second core to pipewright's worker (the
            // kernel does all its work in the sender's context): for the record.
            let w = (cfg.udp_warmup, cfg.udp_window);
            let (o, od) = udp::measure(&ours.afxdp(), Some(ours.plane()), 1, w.0, w.1)?;
            let (p, pd) = udp::measure(&peer.path(), None, 1, w.0, w.1)?;
            eprintln!("  ours, 1 generator thread: {od}\n  {PEER}, 1 generator thread: {pd}");
            eprintln!(
                "nic_e2e: udp-64B-pps with 1 generator thread (informational): ours {o:.0} peer {p:.0} ratio {:.3}",
                o / p
            );
        }
    }

    tcp_case(cfg, ours, peer, &format!("tcp-bulk-gbps{sfx}"))?;
    if underlay == Underlay::Udp && cfg.wants("tcp-bulk-gbps-tunnel-gso") {
        // The socket underlay handing super-frames to the kernel as tunnel-GSO packets.
        ours_mut.restart_with(underlay, Workers::for_traffic(false), true)?;
        tcp_case(cfg, ours_mut, peer, "tcp-bulk-gbps-tunnel-gso")?;
        eprintln!(
            "  tunnel-GSO frames: {:?}",
            ours_mut.plane().tunnel_gso_frames()
        );
    }

    // Latency-bound traffic: the plan's choice is running to completion on one
    // busy-polling worker (the throughput cases above ran on two).
    let ours = if cfg.wants(&format!("latency-rr{sfx}"))
        || cfg.wants(&format!("latency-rr-sparse{sfx}"))
    {
        ours_mut.restart(underlay, Workers::for_traffic(true))?;
        eprintln!(
            "nic_e2e: latency cases with {:?} (busy-poll {:?})",
            ours_mut.plane().workers(),
            ours_mut.plane().busy_poll()
        );
        &*ours_mut
    } else {
        &*ours_mut
    };
    if cfg.wants(&format!("latency-rr{sfx}")) {
        // The TAP VF's round trips, for the record (not a RESULT).
        if cfg.only.is_none_or(|o| o == Side::Ours) {
            let tap = rr::measure(&ours.tap(), cfg.rr_window / 2)?;
            eprintln!(
                "  ours via TAP (informational): p50 {:.1} us p99 {:.1} us ({} samples, {} lost)",
                tap.p50_us, tap.p99_us, tap.samples, tap.lost
            );
        }
        latency(cfg, ours, peer, &format!("latency-rr{{}}-us{sfx}"), None)?;
    }
    if cfg.wants(&format!("latency-rr-sparse{sfx}")) {
        latency(
            cfg,
            ours,
            peer,
            &format!("latency-rr{{}}-us-sparse{sfx}"),
            Some(SPARSE_GAP),
        )?;
    }
    Ok(())
}

/// One `iperf3` stream through the TAP VF, ours against the kernel: RESULT `case`.
fn tcp_case(cfg: &Config, ours: &Ours, peer: &Peer, case: &str) -> Result<()> {
    if !cfg.wants(case) {
        return Ok(());
    }
    if !tcp::available() {
        println!("SKIP suite=nic_e2e case={case}: {} not found", tcp::IPERF3);
        return Ok(());
    }
    let _servers = [
        tcp::Server::start(&ours.tap())?,
        tcp::Server::start(&peer.path())?,
    ];
    let (o, p) = rounds(cfg, case, |side| {
        let (path, plane) = match side {
            Side::Ours => (ours.tap(), Some(ours.plane())),
            Side::Peer => (peer.path(), None),
        };
        let s0 = Sample::take(plane);
        let (gbps, detail) = tcp::measure(&path, cfg.tcp_secs, cfg.tcp_omit)?;
        let s1 = Sample::take(plane);
        // Segments of 1448 bytes (MSS at MTU 1500): CPU per segment.
        let segments = (gbps * 1e9 / 8.0 / 1448.0 * f64::from(cfg.tcp_secs + cfg.tcp_omit)) as u64;
        eprintln!("  {}: {detail}; {}", name(side), s0.cpu_line(&s1, segments));
        if plane.is_some() {
            eprint!("{}", s0.stage_table(&s1));
        }
        Ok(gbps)
    })?;
    result(cfg, case, o, p, "Gbit/s", "higher");
    Ok(())
}

/// Round trips one at a time (`gap` between them for sparse traffic): RESULT lines
/// for p50 and p99 (`name` with `{}` where `-p50`/`-p99` goes). Ours is measured with
/// busy-polling off too, for the record (the data plane before busy-polling).
fn latency(
    cfg: &Config,
    ours: &Ours,
    peer: &Peer,
    pattern: &str,
    gap: Option<Duration>,
) -> Result<()> {
    let measure = |path: &topo::Path<'_>, window: Duration| match gap {
        Some(gap) => rr::measure_sparse(path, window, gap),
        None => rr::measure(path, window),
    };
    let window = if gap.is_some() {
        cfg.rr_sparse_window
    } else {
        cfg.rr_window
    };
    let case = pattern.replace("{}", "");
    if cfg.only.is_none_or(|o| o == Side::Ours) && !common::quick() {
        let on = ours.plane().busy_poll();
        ours.plane().set_busy_poll(Duration::ZERO);
        let off = measure(&ours.afxdp(), window);
        ours.plane().set_busy_poll(on);
        match off {
            Ok(off) => eprintln!(
                "  {case}: ours with busy-poll off (informational): p50 {:.1} us p99 {:.1} us ({} samples, {} lost)",
                off.p50_us, off.p99_us, off.samples, off.lost
            ),
            Err(e) => eprintln!("  {case}: ours with busy-poll off (informational): {e:#}"),
        }
    }
    let (o, p) = rounds(cfg, &case, |side| {
        let path = match side {
            Side::Ours => ours.afxdp(),
            Side::Peer => peer.path(),
        };
        let r = measure(&path, window)?;
        eprintln!(
            "  {}: p50 {:.1} us p99 {:.1} us ({} samples, {} lost)",
            name(side),
            r.p50_us,
            r.p99_us,
            r.samples,
            r.lost
        );
        Ok((r.p50_us, r.p99_us))
    })?;
    let split = |v: &[(f64, f64)]| -> (Vec<f64>, Vec<f64>) { v.iter().copied().unzip() };
    let ((o50, o99), (p50, p99)) = (split(&o), split(&p));
    result(cfg, &pattern.replace("{}", "-p50"), o50, p50, "us", "lower");
    result(cfg, &pattern.replace("{}", "-p99"), o99, p99, "us", "lower");
    Ok(())
}
