//! The gateway process: a [`Cache`] over a backend, served over NBD, with a status file
//! the `pipewright cache status` command reads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::backend::Backend;
use crate::cache::Cache;
use crate::config::CacheConfig;
use crate::error::CacheError;
use crate::nbd::NbdServer;

/// Parses a size: bytes, or with a `K`/`M`/`G`/`T` suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, CacheError> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(CacheError::Config(format!(
                        "size {s:?}: unknown suffix {c:?}; use K, M, G or T"
                    )))
                }
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            CacheError::Config(format!("size {s:?} is not a number of bytes (e.g. 512M)"))
        })
}

/// The multi-threaded tokio runtime the gateway runs on.
pub fn io_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// The status file next to a cache file.
pub fn status_path(cache_file: &Path) -> PathBuf {
    let mut p = cache_file.as_os_str().to_owned();
    p.push(".status");
    p.into()
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    cache: Cache,
    server: NbdServer,
    addr: SocketAddr,
    running: pipewright_runtime::Running,
    status_file: PathBuf,
}

impl Gateway {
    /// Opens the cache (warm from its metadata) and binds the NBD listener.
    pub async fn start(
        cfg: CacheConfig,
        backend: Arc<dyn Backend>,
        listen: SocketAddr,
    ) -> Result<Gateway, CacheError> {
        let cache = Cache::open(cfg.clone(), backend).await?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        // The request path runs as a pipewright pipeline on two workers (lookup and
        // hits; fills and writes: `gateway_plan`); the NBD connections feed it.
        let (running, path) =
            crate::pipeline::start(cache.clone(), crate::pipeline::gateway_plan())?;
        let server = NbdServer::with_pipeline(cache.clone(), path);
        tokio::spawn(server.clone().serve(listener));
        let status_file = status_path(&cfg.cache_file);
        Ok(Gateway {
            cache,
            server,
            addr,
            running,
            status_file,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cache it serves.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The request pipeline's per-stage counters (lookup, hit, fill, write).
    pub fn pipeline_snapshot(&self) -> pipewright_runtime::Snapshot {
        self.running.snapshot()
    }

    /// Writes [`Gateway::status`] to the status file beside the cache file (atomically:
    /// a temporary file renamed), where `pipewright cache status` reads it.
    pub fn write_status(&self) -> std::io::Result<()> {
        let tmp = self.status_file.with_extension("status.tmp");
        std::fs::write(&tmp, self.status())?;
        std::fs::rename(&tmp, &self.status_file)
    }

    /// Refreshes the status file twice a second until SIGINT or SIGTERM.
    pub async fn run_until_shutdown(&self) -> std::io::Result<()> {
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.write_status() {
                eprintln!("pipewright-cache: cannot write the status file: {e}");
            }
            tokio::select! {
                r = &mut stop => return r,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Stops the gateway in order: the request pipeline is drained (every request
    /// it took is answered) and stopped, then the cache is closed ([`Cache::close`]:
    /// dirty data to the backend within the flush deadline, metadata committed,
    /// background tasks stopped). Returns the final status text.
    pub async fn close(self) -> Result<String, CacheError> {
        let status = self.status();
        let running = self.running;
        tokio::task::spawn_blocking(move || running.drain())
            .await
            .map_err(|e| CacheError::Pipeline(e.to_string()))?
            .map_err(|e| CacheError::Pipeline(e.to_string()))?;
        self.cache.close().await?;
        Ok(status)
    }

    /// The status text `pipewright cache status` prints.
    pub fn status(&self) -> String {
        render_status(
            &self.cache,
            &self.server,
            self.addr,
            Some(&self.running.snapshot()),
        )
    }
}

fn render_status(
    cache: &Cache,
    server: &NbdServer,
    addr: SocketAddr,
    stages: Option<&pipewright_runtime::Snapshot>,
) -> String {
    let s = cache.stats();
    let n = server.stats();
    let mut out = format!("gateway nbd://{addr}\n");
    out += "exports:";
    for v in cache.volumes() {
        out += &format!(" {}({} bytes)", v.name, v.size);
    }
    out += "\n";
    out += &format!(
        "chunks: {} total, {} free, {} used, {} dirty\n",
        s.total_chunks, s.free_chunks, s.used_chunks, s.dirty_chunks
    );
    out += &format!(
        "reads: {} hits ({} from memory, {} direct), {} misses, hit ratio {:.4}, {} single-flight waits\n",
        s.hits,
        s.memory_hits,
        s.direct_hits,
        s.misses,
        s.hit_ratio(),
        s.single_flight_waits
    );
    out += &format!(
        "backend: {} fetches ({} bytes), {} errors; write-back: {} flushes, {} blocks\n",
        s.fills, s.fill_bytes, s.backend_errors, s.flushes, s.flushed_blocks
    );
    out += &format!(
        "eviction: {} chunks in {} batches ({} dirty), {} instance ids issued\n",
        s.evictions, s.eviction_batches, s.dirty_evictions, s.instance_ids_issued
    );
    out += &format!(
        "validation: {} stale blocks refused, {} torn reads retried, {} checksum failures, {} corrupt metadata records\n",
        s.stale_refusals, s.torn_retries, s.checksum_failures, s.meta_corrupt
    );
    out += &format!(
        "writes: {} requests, {} blocks; bad requests {}\n",
        s.writes, s.written_blocks, s.bad_requests
    );
    out += &format!(
        "nbd: {} connections, {} requests, {} error replies, {} protocol errors, {} unknown exports\n",
        n.connections.load(Ordering::Relaxed),
        n.requests.load(Ordering::Relaxed),
        n.error_replies.load(Ordering::Relaxed),
        n.protocol_errors.load(Ordering::Relaxed),
        n.unknown_exports.load(Ordering::Relaxed)
    );
    out += &format!(
        "nbd limits: {} handshake timeouts, {} connections refused, {} byte-budget waits\n",
        n.handshake_timeouts.load(Ordering::Relaxed),
        n.refused_connections.load(Ordering::Relaxed),
        n.budget_waits.load(Ordering::Relaxed)
    );
    if let Some(snap) = stages {
        out += "stages:";
        for st in &snap.stages {
            out += &format!(
                " {}[in {} bursts {}{}]",
                st.name,
                st.items_in,
                st.bursts,
                st.mean_ns_per_item
                    .map_or(String::new(), |ns| format!(" {:.1} us/item", ns / 1000.0))
            );
        }
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
