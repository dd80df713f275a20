//! The PostgreSQL servers of the peer: finding the binaries, starting one from a
//! fresh data directory, stopping it (also from the Ctrl-C handler).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Servers started and not yet stopped (bin dir, data dir), for the Ctrl-C handler.
static RUNNING: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());

/// Where the server binaries are: `PIPEWRIGHT_COMMIT_CHAIN_PG_BIN` if set, else the
/// newest `/usr/lib/postgresql/<v>/bin`; `None` if not installed.
pub fn binaries() -> Option<PathBuf> {
    let usable = |p: &Path| p.join("postgres").exists() && p.join("initdb").exists();
    if let Some(dir) = std::env::var_os("PIPEWRIGHT_COMMIT_CHAIN_PG_BIN") {
        let dir = PathBuf::from(dir);
        return usable(&dir).then_some(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| usable(p))
        .collect();
    // The newest major version (`9.6` < `15`).
    found.sort_by_key(|p| {
        let major = p
            .parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str());
        major
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

pub(super) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `bin/<tool> args`, as the `postgres` user when we are root (PostgreSQL refuses to
/// run as root; the Debian package creates that user).
fn tool(bin: &Path, name: &str) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(name));
        cmd
    } else {
        Command::new(bin.join(name))
    }
}

fn stop(bin: &Path, dir: &Path) {
    let _ = tool(bin, "pg_ctl")
        .arg("-D")
        .arg(dir)
        .args(["-m", "immediate", "-w", "stop"])
        .output();
    let _ = std::fs::remove_dir_all(dir);
}

/// Stop every server still running (the Ctrl-C handler).
pub fn stop_all() {
    for (bin, dir) in std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|p| p.into_inner())) {
        stop(&bin, &dir);
    }
}

/// A running PostgreSQL server; stopped (`-m immediate`) and its directory removed on
/// drop.
pub(super) struct Server {
    dir: PathBuf,
    pub(super) port: u16,
    bin: PathBuf,
}

impl Server {
    /// initdb + start on `port` in a fresh directory under `base`.
    pub(super) fn start(bin: &Path, base: &Path, port: u16) -> Result<Self, String> {
        let dir = base.join(format!("pg{port}"));
        let out = tool(bin, "initdb")
            .arg("-D")
            .arg(&dir)
            .args(["-A", "trust", "-U", "bench", "--no-sync"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
        }
        RUNNING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((bin.to_path_buf(), dir.clone()));
        let server = Self {
            dir,
            port,
            bin: bin.to_path_buf(),
        };
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c max_prepared_transactions=256 -c max_connections=200 -c shared_buffers=64MB",
            server.dir.display()
        );
        let out = tool(bin, "pg_ctl")
            .arg("-D")
            .arg(&server.dir)
            .args(["-o", &opts, "-l"])
            .arg(server.dir.join("log"))
            .args(["-w", "start"])
            .output()
            .map_err(|e| format!("pg_ctl start: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(server.dir.join("log")).unwrap_or_default()
            ));
        }
        Ok(server)
    }

    pub(super) fn connect(&self) -> Result<postgres::Client, String> {
        Self::connect_to(self.port)
    }

    pub(super) fn connect_to(port: u16) -> Result<postgres::Client, String> {
        postgres::Client::connect(
            &format!("host=127.0.0.1 port={port} user=bench dbname=postgres"),
            postgres::NoTls,
        )
        .map_err(|e| format!("connect to port {port}: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&self.bin, &self.dir);
        RUNNING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, d)| d != &self.dir);
    }
}
