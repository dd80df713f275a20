//! The `pipewright` command-line tool.

#[cfg(not(loom))]
use clap::{Parser, Subcommand};

#[cfg(not(loom))]
mod cli;

#[cfg(not(loom))]
#[derive(Parser, Debug)]
#[command(
    name = "pipewright",
    version,
    about = "Typed staged pipelines with per-stage resources"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[cfg(not(loom))]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a multi-stage demo pipeline on this machine, with a live per-stage view.
    Demo(cli::demo::DemoArgs),
    /// Watch a pipeline running in another process (its live address), like top.
    Top(cli::top::TopArgs),
    /// The storage commit chain: node processes, a local cluster, transactions, bench.
    #[cfg(feature = "storage")]
    Storage(cli::storage::StorageArgs),
    /// The lease balancer: agent, producers, a consumer load, status.
    #[cfg(feature = "balance")]
    Balance(cli::balance::BalanceArgs),
    /// The software NIC: run the data plane on real interfaces, or a full demo topology.
    #[cfg(feature = "nic")]
    Nic(cli::nic::NicArgs),
    /// Failure-pattern analytics: generate a fleet, report on events, serve ingestion.
    #[cfg(feature = "failures")]
    Failures(cli::failures::FailuresArgs),
    /// VM memory sharing on KVM: run VMs in trust groups, generate images, live status.
    #[cfg(feature = "memshare")]
    Memshare(cli::memshare::MemshareArgs),
    /// The cache gateway: chunk cache over a backend served by NBD, status, trace replay.
    #[cfg(feature = "cache")]
    Cache(cli::cache::CacheArgs),
}

#[cfg(not(loom))]
fn main() {
    // The error in words, its causes after colons; never a backtrace (returning the
    // error from `main` prints anyhow's `Debug`, with one under RUST_BACKTRACE=1).
    if let Err(error) = run(Args::parse().command) {
        eprintln!("Error: {error:#}");
        std::process::exit(1);
    }
}

#[cfg(not(loom))]
fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => cli::demo::run(args),
        Command::Top(args) => cli::top::run(args),
        #[cfg(feature = "storage")]
        Command::Storage(args) => cli::storage::run(args),
        #[cfg(feature = "balance")]
        Command::Balance(args) => cli::balance::run(args),
        #[cfg(feature = "nic")]
        Command::Nic(args) => cli::nic::run(args),
        #[cfg(feature = "failures")]
        Command::Failures(args) => cli::failures::run(args),
        #[cfg(feature = "memshare")]
        Command::Memshare(args) => cli::memshare::run(args),
        #[cfg(feature = "cache")]
        Command::Cache(args) => cli::cache::run(args),
    }
}

/// Under `--cfg loom` (a build for loom tests) the runtime the CLI drives is not built.
#[cfg(loom)]
fn main() {
    eprintln!("pipewright: the CLI is not built under --cfg loom (that build is for loom tests)");
    std::process::exit(2);
}
