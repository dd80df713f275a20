//! `pipewright cache`: the cache gateway (NBD), its status, and trace replay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use pipewright_cache::{
    io_runtime, parse_size, shutdown_signal, status_path, CacheConfig, FileBackend, Gateway,
    PolicyKind, WriteMode,
};

#[derive(Args, Debug)]
pub(crate) struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Serve the backend's volumes over NBD through a chunk cache (until SIGINT/SIGTERM).
    Gateway(GatewayArgs),
    /// Show a running gateway's chunks, hit ratio, evictions, refusals and NBD counters.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct GatewayArgs {
    /// Backend directory: every file in it is a volume (NBD export) of its size.
    #[arg(long)]
    backend: PathBuf,
    /// The cache file (created and preallocated if absent; metadata beside it, `.meta`).
    #[arg(long)]
    cache_file: PathBuf,
    /// Cache size (bytes, or with K/M/G/T), rounded down to whole chunks.
    #[arg(long)]
    size: String,
    /// Address to listen on for NBD clients.
    #[arg(long, default_value = "127.0.0.1:10809")]
    listen: SocketAddr,
    /// Chunk size.
    #[arg(long, default_value = "1M")]
    chunk_size: String,
    /// Block size (at least 4K).
    #[arg(long, default_value = "4K")]
    block_size: String,
    /// Eviction policy: lru, fifo, clock, sieve, s3fifo.
    #[arg(long, default_value = "lru")]
    policy: PolicyKind,
    /// Acknowledge writes only once the backend has them.
    #[arg(long)]
    write_through: bool,
    /// Write-back deadline in milliseconds.
    #[arg(long, default_value_t = 5000)]
    flush_deadline_ms: u64,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The gateway's cache file.
    #[arg(long)]
    cache_file: PathBuf,
}

pub(crate) fn run(args: CacheArgs) -> anyhow::Result<()> {
    match args.command {
        CacheCommand::Gateway(a) => gateway(a),
        CacheCommand::Status(a) => {
            let p = status_path(&a.cache_file);
            let text = std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "no status at {} (is a gateway running on this cache file?)",
                    p.display()
                )
            })?;
            print!("{text}");
            Ok(())
        }
    }
}

fn gateway(a: GatewayArgs) -> anyhow::Result<()> {
    let chunk_size = parse_size(&a.chunk_size)?;
    let mut cfg = CacheConfig::with_size(&a.cache_file, parse_size(&a.size)?, chunk_size);
    cfg.block_size = u32::try_from(parse_size(&a.block_size)?).context("block size too large")?;
    cfg.policy = a.policy;
    cfg.write_mode = if a.write_through {
        WriteMode::WriteThrough
    } else {
        WriteMode::WriteBack
    };
    cfg.flush_deadline = Duration::from_millis(a.flush_deadline_ms);
    let rt = io_runtime()?;
    rt.block_on(async move {
        let a = a;
        let backend = Arc::new(FileBackend::new(&a.backend)?);
        let gw = Gateway::start(cfg, backend, a.listen).await?;
        println!("pipewright cache gateway: listening on nbd://{}", gw.addr());
        for v in gw.cache().volumes() {
            println!("  export {} ({} bytes)", v.name, v.size);
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        shutdown_signal().await?;
        // Everything dirty reaches the backend before a clean stop.
        gw.cache().flush().await?;
        eprintln!("{}", gw.status());
        anyhow::Ok(())
    })
}
