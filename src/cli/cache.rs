//! `pipewright cache`: the cache gateway (NBD), its status, and trace replay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use pipewright_cache::{
    io_runtime, parse_size, status_path, Backend, CacheConfig, FileBackend, Gateway, PolicyKind,
    RetryPolicy, S3Backend, S3Config, Verify, WriteMode,
};

#[derive(Args, Debug)]
pub(crate) struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// Serve the backend's volumes over NBD through a chunk cache (until SIGINT/SIGTERM).
    Gateway(Box<GatewayArgs>),
    /// Show a running gateway's chunks, hit ratio, evictions, refusals and NBD counters.
    Status(StatusArgs),
    /// Replay a trace (libCacheSim CSV conventions or oracleGeneral binary): miss ratio,
    /// requests/s, and a miss-ratio curve with --sizes.
    Replay(ReplayArgs),
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// The trace file (`*.oracleGeneral*` / `*.bin`: binary; otherwise CSV).
    #[arg(long)]
    trace: PathBuf,
    /// CSV options, libCacheSim style: "obj-id-col=2,has-header=true,delimiter=,".
    #[arg(short = 't', long = "trace-options")]
    trace_options: Option<String>,
    /// Eviction policy (or "all").
    #[arg(long, default_value = "lru")]
    policy: String,
    /// Cache size: objects, or a percentage of the trace's distinct objects (10%).
    #[arg(long, default_value = "10%")]
    size: String,
    /// Several sizes for a miss-ratio curve: "1%,5%,10%,20%".
    #[arg(long)]
    sizes: Option<String>,
    /// Write the curve as an SVG plot.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Replay through the real chunk store (4 KiB chunks over a file backend in a
    /// temporary directory) instead of the policy-only simulator.
    #[arg(long)]
    real: bool,
}

#[derive(Args, Debug)]
struct GatewayArgs {
    /// Backend: a directory (every file in it is a volume, an NBD export, of its size),
    /// or `s3://bucket/prefix` (volumes stored as part objects under the prefix).
    #[arg(long)]
    backend: String,
    #[command(flatten)]
    s3: S3Args,
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
    /// Memory tier for hot whole blocks (e.g. 64M; 0: none), served without I/O while
    /// their chunk's instance id and write sequence are unchanged.
    #[arg(long, default_value = "0")]
    memory: String,
    /// How often a hit checks block checksums: every-read (damage in the cache file
    /// is refetched at once) or once-per-write (faster large hot reads; damage is
    /// found after the next write of the block or restart).
    #[arg(long, default_value = "every-read")]
    verify: Verify,
}

/// How to reach an `s3://` backend.
#[derive(Args, Debug)]
struct S3Args {
    /// S3-compatible endpoint URL (e.g. http://127.0.0.1:4568); default AWS (or AWS_ENDPOINT).
    #[arg(long)]
    s3_endpoint: Option<String>,
    /// Region (default AWS_REGION, else us-east-1).
    #[arg(long)]
    s3_region: Option<String>,
    /// Access key id (default AWS_ACCESS_KEY_ID).
    #[arg(long)]
    s3_access_key_id: Option<String>,
    /// Secret access key (default AWS_SECRET_ACCESS_KEY).
    #[arg(long)]
    s3_secret_access_key: Option<String>,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    s3_timeout_ms: u64,
    /// Attempts per request (the first included), with exponential backoff between them.
    #[arg(long, default_value_t = 4)]
    s3_attempts: u32,
    /// Create a volume if the bucket does not have it: NAME=SIZE (repeatable), stored in
    /// parts of the cache's chunk size.
    #[arg(long, value_name = "NAME=SIZE")]
    s3_create: Vec<String>,
}

impl S3Args {
    /// The S3 backend for `url`, with the volumes to create created.
    async fn connect(&self, url: &str, part_size: u64) -> anyhow::Result<S3Backend> {
        let mut cfg = S3Config::from_url(url)?;
        cfg.endpoint = self.s3_endpoint.clone();
        cfg.allow_http = self
            .s3_endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        cfg.region = self.s3_region.clone();
        cfg.access_key_id = self.s3_access_key_id.clone();
        cfg.secret_access_key = self.s3_secret_access_key.clone();
        cfg.request_timeout = Duration::from_millis(self.s3_timeout_ms.max(1));
        cfg.retry = RetryPolicy {
            max_attempts: self.s3_attempts.max(1),
            ..RetryPolicy::default()
        };
        cfg.part_size = part_size;
        let backend = S3Backend::connect(cfg).await?;
        for spec in &self.s3_create {
            let (name, size) = spec
                .split_once('=')
                .with_context(|| format!("--s3-create {spec:?}: write NAME=SIZE"))?;
            backend.create_volume(name, parse_size(size)?).await?;
        }
        Ok(backend)
    }
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The gateway's cache file.
    #[arg(long)]
    cache_file: PathBuf,
}

pub(crate) fn run(args: CacheArgs) -> anyhow::Result<()> {
    match args.command {
        CacheCommand::Gateway(a) => gateway(*a),
        CacheCommand::Replay(a) => replay(a),
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
    cfg.memory_bytes = parse_size(&a.memory)?;
    cfg.verify = a.verify;
    let rt = io_runtime()?;
    rt.block_on(async move {
        let a = a;
        let backend: Arc<dyn Backend> = if a.backend.starts_with("s3://") {
            Arc::new(a.s3.connect(&a.backend, chunk_size).await?)
        } else {
            anyhow::ensure!(
                a.s3.s3_create.is_empty() && a.s3.s3_endpoint.is_none(),
                "--s3-* options need an s3://bucket/prefix backend"
            );
            Arc::new(FileBackend::new(&a.backend)?)
        };
        let gw = Gateway::start(cfg, backend, a.listen).await?;
        println!("pipewright cache gateway: listening on nbd://{}", gw.addr());
        for v in gw.cache().volumes() {
            println!("  export {} ({} bytes)", v.name, v.size);
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        gw.run_until_shutdown().await?;
        // A clean stop: the pipeline drained, everything dirty to the backend, the
        // metadata committed (Gateway::close).
        let status = gw.close().await?;
        eprintln!("{status}");
        anyhow::Ok(())
    })
}

fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    use pipewright_cache::replay;
    let format = replay::format_for(&a.trace, a.trace_options.as_deref())?;
    let ids = replay::read_trace(&a.trace, &format)?;
    let distinct = replay::distinct(&ids);
    let policies: Vec<PolicyKind> = if a.policy == "all" {
        PolicyKind::ALL.to_vec()
    } else {
        a.policy
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()?
    };
    let sizes: Vec<usize> = a
        .sizes
        .as_deref()
        .unwrap_or(&a.size)
        .split(',')
        .map(|s| replay::parse_size(s, distinct))
        .collect::<Result<_, _>>()?;
    println!(
        "trace {}: {} requests, {} distinct objects; mode {}",
        a.trace.display(),
        ids.len(),
        distinct,
        if a.real {
            "real (chunk store)"
        } else {
            "policy-only"
        }
    );
    println!(
        "{:<8} {:>10} {:>11} {:>14}",
        "policy", "size", "miss ratio", "requests/s"
    );
    let rt = if a.real { Some(io_runtime()?) } else { None };
    let mut curves = Vec::new();
    for &p in &policies {
        let mut pts = Vec::new();
        for &size in &sizes {
            let r = match &rt {
                None => replay::simulate(&ids, p, size),
                Some(rt) => {
                    let dir = tempfile_dir()?;
                    let r = rt.block_on(replay::replay_real(&ids, p, size, &dir));
                    let _ = std::fs::remove_dir_all(&dir);
                    r?
                }
            };
            println!(
                "{:<8} {:>10} {:>11.6} {:>14.0}",
                p.name(),
                size,
                r.miss_ratio(),
                r.reqs_per_sec()
            );
            pts.push((size, r.miss_ratio()));
        }
        curves.push((p, pts));
    }
    if let Some(path) = a.plot {
        let title = format!("miss ratio: {}", a.trace.display());
        std::fs::write(&path, replay::curve_svg(&curves, &title))?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pipewright-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
