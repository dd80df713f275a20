//! `tcp-bulk-gbps`: one `iperf3` TCP stream from the guest to the remote.
//!
//! The server runs in the remote namespace for the whole run (`ip netns exec REMOTE
//! iperf3 -s -B ADDR`), killed by its guard on drop; each measurement runs the client
//! in the guest namespace with `-t SECS -O OMIT --json` (the omitted first seconds
//! cover slow start) and reads the receiver's `end.sum_received.bits_per_second`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::topo::Path;

const PORT: &str = "5201";
pub const IPERF3: &str = "iperf3";

/// An `iperf3 -s` in a remote namespace; killed (by its pid) when dropped.
pub struct Server {
    child: Child,
}

impl Server {
    pub fn start(path: &Path<'_>) -> Result<Self> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                path.remote.name(),
                IPERF3,
                "-s",
                "-p",
                PORT,
            ])
            .args(["-B", &path.remote_ip.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn iperf3 -s")?;
        Ok(Self { child })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `iperf3` can be run at all.
pub fn available() -> bool {
    Command::new(IPERF3)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Gbit/s received, and a detail line (retransmits, iperf3's CPU figures).
pub fn measure(path: &Path<'_>, secs: u32, omit: u32) -> Result<(f64, String)> {
    let mut last = String::new();
    let mut other_failures = 0;
    // The server may still be starting (first call) or finishing the previous test;
    // any other failure is retried twice, and its output kept for the error.
    for _ in 0..50 {
        let out = Command::new("ip")
            .args(["netns", "exec", path.guest.name(), IPERF3, "-c"])
            .arg(path.remote_ip.to_string())
            .args(["-p", PORT, "-t", &secs.to_string(), "-O", &omit.to_string()])
            .args(["--json"])
            .output()
            .context("run iperf3 -c")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let bps = json_num(&text, "\"sum_received\"", "\"bits_per_second\"");
        if let (true, Some(bps)) = (out.status.success(), bps) {
            let retr = json_num(&text, "\"sum_sent\"", "\"retransmits\"").unwrap_or(f64::NAN);
            let cpu_c = json_num(&text, "\"cpu_utilization_percent\"", "\"host_total\"");
            let cpu_s = json_num(&text, "\"cpu_utilization_percent\"", "\"remote_total\"");
            let detail = format!(
                "{:.2} Gbit/s, {retr} retransmits, iperf3 cpu client {:.0}% server {:.0}%",
                bps / 1e9,
                cpu_c.unwrap_or(f64::NAN),
                cpu_s.unwrap_or(f64::NAN)
            );
            return Ok((bps / 1e9, detail));
        }
        last = json_str(&text, "\"error\"").unwrap_or_else(|| {
            let tail = &text[text.len().saturating_sub(1500)..];
            format!(
                "no end.sum_received: {tail}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        if !(last.contains("unable to connect") || last.contains("busy")) {
            other_failures += 1;
            eprintln!("nic_e2e: iperf3 failed ({last}); retrying");
            if other_failures > 2 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 client in {}: {last}", path.guest.name())
}

/// The number after `key` following the first `after` in `json` (iperf3's output is
/// regular enough for this; no JSON crate needed).
fn json_num(json: &str, after: &str, key: &str) -> Option<f64> {
    let rest = &json[json.find(after)? + after.len()..];
    let rest = &rest[rest.find(key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn json_str(json: &str, key: &str) -> Option<String> {
    let rest = &json[json.find(key)? + key.len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}
