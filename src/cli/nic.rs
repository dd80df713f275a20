//! `pipewright nic run` and `pipewright nic demo`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pipewright::nic::dataplane::{start_on_host, DataPlaneConfig, OnHostOptions, RunningDataPlane};
use pipewright::nic::host::{can_run, Host, Namespace, UnderlaySpec, VfKind, VfSpec, VniSpec};
use pipewright::nic::wire::MacAddr;

use super::live::LiveView;

/// The software NIC on real interfaces.
#[derive(Args, Debug)]
pub(crate) struct NicArgs {
    #[command(subcommand)]
    command: NicCommand,
}

#[derive(Subcommand, Debug)]
enum NicCommand {
    /// Run the data plane on existing interfaces from a TOML config (VF ports,
    /// underlay, rules) until Ctrl-C, with live counters.
    Run(RunArgs),
    /// Build a complete topology (two VFs on two VNIs, a remote namespace whose kernel
    /// vxlan devices terminate them), show ping and a TCP transfer through pipewright
    /// with live counters, then tear it all down. Needs root.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The data plane config (see `pipewright_nic::dataplane::DataPlaneConfig`).
    #[arg(long)]
    config: PathBuf,
    /// Stop after this many seconds (default: run until Ctrl-C; at most a day).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: Option<u64>,
    /// Live view refresh period.
    #[arg(long, default_value_t = 500)]
    refresh_ms: u64,
    /// Also serve the live view on this address for `pipewright top --connect`.
    #[arg(long)]
    live: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Megabytes each guest sends over TCP.
    #[arg(long, default_value_t = 200)]
    transfer_mb: u64,
    /// Namespace prefix (stale namespaces with it are removed first).
    #[arg(long, default_value = "pwdemo")]
    prefix: String,
    /// Live view refresh period.
    #[arg(long, default_value_t = 250)]
    refresh_ms: u64,
    /// Underlay through an AF_XDP socket on the underlay veth instead of io_uring UDP
    /// sockets.
    #[arg(long)]
    afxdp_underlay: bool,
    /// Busy-poll window after each packet, in microseconds (0: park at once).
    #[arg(long)]
    busy_poll_us: Option<u64>,
    /// Run to completion on one busy-polling worker (latency-bound traffic) instead
    /// of a worker per side.
    #[arg(long)]
    run_to_completion: bool,
    /// Hand TSO super-frames to the kernel whole as UDP-tunnel GSO packets (socket
    /// underlay, Linux 6.17+).
    #[arg(long)]
    tunnel_gso: bool,
}

pub(crate) fn run(args: NicArgs) -> anyhow::Result<()> {
    match args.command {
        NicCommand::Run(a) => run_config(a),
        NicCommand::Demo(a) => demo(a),
    }
}

/// Set by Ctrl-C / SIGTERM.
fn interrupted() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || f.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    Ok(flag)
}

fn run_config(args: RunArgs) -> anyhow::Result<()> {
    let config = DataPlaneConfig::load(&args.config)?;
    let ports: Vec<String> = config
        .ports()
        .iter()
        .map(|p| format!("VF {} = {:?} {}", p.vf, p.kind, p.ifname))
        .collect();
    let mut policy = config
        .auto_workers()
        .then(|| pipewright_nic::dataplane::WorkersPolicy::new(config.workers()));
    let plane = config.start()?;
    eprintln!("data plane running: {}", ports.join(", "));
    let _live = match args.live {
        Some(addr) => Some(
            pipewright::live::serve(plane.running().watch(), addr)
                .with_context(|| format!("serving the live view on {addr}"))?,
        ),
        None => None,
    };
    let stop = interrupted()?;
    let end = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut last = (plane.received_frames(), Instant::now());
    let mut switches = Vec::new();
    LiveView::titled("pipewright nic run").run_until(
        plane.running(),
        Duration::from_millis(args.refresh_ms),
        None,
        || {
            // auto_workers: one observation of the packet rate per refresh.
            if let Some(policy) = policy.as_mut() {
                let now = (plane.received_frames(), Instant::now());
                let secs = now.1.duration_since(last.1).as_secs_f64().max(1e-3);
                let pps = now.0.saturating_sub(last.0) as f64 / secs;
                last = now;
                if let Some(workers) = policy.observe(pps) {
                    switches.push(match plane.set_workers(workers) {
                        Ok(()) => format!("switched to {workers:?} at {pps:.0} frames/s"),
                        Err(error) => format!("not switched to {workers:?}: {error}"),
                    });
                }
            }
            !stop.load(Ordering::SeqCst) && end.is_none_or(|e| Instant::now() < e)
        },
    );
    for line in switches {
        println!("workers: {line}");
    }
    finish(plane)
}

fn finish(plane: RunningDataPlane) -> anyhow::Result<()> {
    let ports = plane.port_counters();
    let drops = plane.stats().all();
    let report = plane.stop()?;
    println!("\nport counters:");
    for (vf, c) in ports {
        println!(
            "  VF {vf}: rx {} frames / {} B, tx {} frames / {} B, dropped {} (kernel {})",
            c.rx_frames, c.rx_bytes, c.tx_frames, c.tx_bytes, c.dropped, c.kernel_dropped
        );
    }
    println!("drops by reason:");
    if drops.is_empty() {
        println!("  none");
    }
    for (stage, reason, n) in drops {
        println!("  {stage:<18} {reason:<20} {n}");
    }
    println!("stopped cleanly: {}", report.completed);
    Ok(())
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if let Err(why) = can_run() {
        bail!("`pipewright nic demo` builds network namespaces and interfaces: {why}");
    }
    // Checked before anything is built: the guests ping through the data plane.
    let in_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
    };
    if !in_path("ping") {
        bail!("`pipewright nic demo` pings through the data plane: ping not found (install the Debian package iputils-ping)");
    }
    println!("building the topology (prefix {:?}) ...", args.prefix);
    let host = Host::builder(&args.prefix)
        .vf(VfSpec::new(
            100,
            MacAddr([2, 0, 0, 0, 1, 2]),
            "10.100.0.2/24".parse()?,
            VfKind::Tap,
        ))
        .vf(VfSpec::new(
            200,
            MacAddr([2, 0, 0, 0, 2, 2]),
            "10.200.0.2/24".parse()?,
            VfKind::Veth,
        ))
        .underlay(UnderlaySpec::new(
            "192.168.77.1/30".parse()?,
            "192.168.77.2/30".parse()?,
            1600,
        ))
        .remote_vni(VniSpec::new(100, "10.100.0.1/24".parse()?))
        .remote_vni(VniSpec::new(200, "10.200.0.1/24".parse()?))
        .build()?;
    println!(
        "  VF 0: TAP, guest {} in namespace {} (VNI 100)\n  VF 1: veth + AF_XDP, guest {} in namespace {} (VNI 200)\n  underlay {} <-> {} (remote namespace {}, kernel vxlan devices for VNIs 100 and 200)",
        host.vfs[0].guest_ip,
        host.vfs[0].guest_ns,
        host.vfs[1].guest_ip,
        host.vfs[1].guest_ns,
        host.underlay.as_ref().map(|u| u.dp_ip.to_string()).unwrap_or_default(),
        host.underlay.as_ref().map(|u| u.remote_ip.to_string()).unwrap_or_default(),
        host.remote_ns().map(|n| n.name().to_string()).unwrap_or_default(),
    );
    let options = OnHostOptions {
        afxdp_underlay: args.afxdp_underlay,
        busy_poll: args.busy_poll_us.map(std::time::Duration::from_micros),
        workers: pipewright_nic::dataplane::Workers::for_traffic(args.run_to_completion),
        tunnel_gso: args.tunnel_gso,
        ..OnHostOptions::default()
    };
    let (plane, _, _) = start_on_host(&host, &options)?;
    println!(
        "pipewright data plane started in namespace {}\n",
        host.dp_ns().name()
    );

    for (vf, target) in [(0, "10.100.0.1"), (1, "10.200.0.1")] {
        println!(
            "$ ip netns exec {} ping -c 3 {target}",
            host.vfs[vf].guest_ns
        );
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &host.vfs[vf].guest_ns,
                "ping",
                "-c",
                "3",
                "-i",
                "0.2",
                target,
            ])
            .output()
            .context("run ping (install iputils-ping)")?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            bail!(
                "ping from VF {vf} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    println!(
        "\nTCP: each guest sends {} MB to the remote (content checked) ...",
        args.transfer_mb
    );
    let bytes = args.transfer_mb << 20;
    let mut transfers = Vec::new();
    for (vf, remote_ip) in [(0usize, "10.100.0.1"), (1, "10.200.0.1")] {
        let addr: SocketAddr = format!("{remote_ip}:{}", 5201 + vf).parse()?;
        let listener = host
            .remote_ns()
            .context("the demo host has a remote")?
            .run(move || TcpListener::bind(addr))??;
        let receiver = std::thread::spawn(move || receive(listener));
        let guest = host.vfs[vf].guest_ns.clone();
        let sender = std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
            Ok(Namespace::open(&guest)?.run(move || send(addr, bytes))??)
        });
        transfers.push((vf, sender, receiver));
    }
    let start = Instant::now();
    let mut live = LiveView::titled("pipewright nic demo");
    while transfers
        .iter()
        .any(|(_, s, r)| !s.is_finished() || !r.is_finished())
    {
        live.frame(plane.running());
        std::thread::sleep(Duration::from_millis(args.refresh_ms));
    }
    let secs = start.elapsed().as_secs_f64();
    for (vf, sender, receiver) in transfers {
        let sent = sender.join().expect("sender thread")?;
        let received = receiver.join().expect("receiver thread")?;
        if received != sent {
            bail!("VF {vf}: sent {sent:?} but the remote received {received:?}");
        }
        println!(
            "VF {vf}: {} MB delivered intact (both transfers done in {secs:.2} s)",
            args.transfer_mb
        );
    }
    live.frame(plane.running());
    finish(plane)?;
    host.teardown()?;
    println!("topology torn down");
    Ok(())
}

/// Bytes and a checksum of what was sent.
fn send(addr: SocketAddr, bytes: u64) -> std::io::Result<(u64, u64)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let (mut sent, mut sum) = (0u64, 0u64);
    let mut chunk = vec![0u8; 1 << 16];
    while sent < bytes {
        let n = chunk.len().min((bytes - sent) as usize);
        for (k, b) in chunk[..n].iter_mut().enumerate() {
            *b = ((sent + k as u64).wrapping_mul(131) >> 3) as u8;
            sum = sum.wrapping_add(u64::from(*b));
        }
        s.write_all(&chunk[..n])?;
        sent += n as u64;
    }
    Ok((sent, sum))
}

fn receive(listener: TcpListener) -> std::io::Result<(u64, u64)> {
    let (mut s, _) = listener.accept()?;
    let (mut total, mut sum) = (0u64, 0u64);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok((total, sum));
        }
        total += n as u64;
        sum = buf[..n]
            .iter()
            .fold(sum, |a, b| a.wrapping_add(u64::from(*b)));
    }
}
