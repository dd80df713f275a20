//! `latency-rr-us`: UDP request/response round trips, one outstanding at a time.
//!
//! An echo thread in the remote namespace (blocking socket on the overlay address)
//! returns every 64-byte request; the client in the guest namespace (blocking, connected
//! socket) sends a sequence number, waits for it to come back and records the round
//! trip; with a gap ([`measure_sparse`]), it sleeps that long between round trips
//! (sparse traffic: every packet finds the data plane idle). Both directions cross the tunnel: guest -> encap -> remote vxlan decap ->
//! echo -> remote vxlan encap -> decap -> guest. The first [`WARMUP`] round trips are
//! not recorded.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::topo::Path;

const PORT: u16 = 7000;
const WARMUP: usize = 200;
const SPARSE_WARMUP: usize = 20;

pub struct Rr {
    pub p50_us: f64,
    pub p99_us: f64,
    pub samples: usize,
    pub lost: u64,
}

pub fn measure(path: &Path<'_>, duration: Duration) -> Result<Rr> {
    run(path, duration, None)
}

/// One round trip every `gap` (plus the round trip itself) for `duration`.
pub fn measure_sparse(path: &Path<'_>, duration: Duration, gap: Duration) -> Result<Rr> {
    run(path, duration, Some(gap))
}

fn run(path: &Path<'_>, duration: Duration, gap: Option<Duration>) -> Result<Rr> {
    let ip = path.remote_ip;
    let server = path.remote.run(move || UdpSocket::bind((ip, PORT)))??;
    server.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("nic_e2e-echo".into())
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = server.recv_from(&mut buf) {
                        let _ = server.send_to(&buf[..n], from);
                    }
                }
            })
            .context("spawn the echo thread")?
    };
    let gip = path.guest_ip;
    let result = path
        .guest
        .run(move || UdpSocket::bind((gip, 0)))?
        .context("bind the client")
        .and_then(|client| client_loop(&client, ip, duration, gap));
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    result
}

fn client_loop(
    client: &UdpSocket,
    to: std::net::Ipv4Addr,
    duration: Duration,
    gap: Option<Duration>,
) -> Result<Rr> {
    // Sparse runs are long per sample: a short warm-up (path and caches), not 200.
    let warmup = if gap.is_some() { SPARSE_WARMUP } else { WARMUP };
    client.connect((to, PORT))?;
    client.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut rtts: Vec<u64> = Vec::with_capacity(1 << 16);
    let mut lost = 0u64;
    let mut req = [0u8; 64];
    let mut resp = [0u8; 2048];
    let deadline = Instant::now() + duration;
    let mut seq = 0u64;
    while Instant::now() < deadline {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        seq += 1;
        req[..8].copy_from_slice(&seq.to_le_bytes());
        let start = Instant::now();
        client.send(&req)?;
        loop {
            match client.recv(&mut resp) {
                Ok(n) if n >= 8 && resp[..8] == req[..8] => {
                    if seq as usize > warmup {
                        rtts.push(start.elapsed().as_nanos() as u64);
                    }
                    break;
                }
                Ok(_) => continue, // a late reply to an earlier, timed-out request
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    // Sparse runs have fewer samples by design (a 2 ms gap).
    let min = if gap.is_some() { 20 } else { 100 };
    if rtts.len() < min {
        bail!(
            "only {} round trips completed ({lost} lost): is the path up?",
            rtts.len()
        );
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
    Ok(Rr {
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        samples: rtts.len(),
        lost,
    })
}
