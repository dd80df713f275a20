//! `pipewright top`: the live per-stage view of a pipeline running in another process.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use pipewright::live::{LiveClient, LiveFrame};

#[derive(clap::Args, Debug)]
pub(crate) struct TopArgs {
    /// The process's live address (`pipewright demo --live ADDR`, or an application
    /// that calls `pipewright::live::serve`).
    #[arg(long)]
    connect: String,
    /// Refresh interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    every_ms: u64,
    /// Stop after this many frames (default: until the process ends or ctrl-c).
    #[arg(long)]
    frames: Option<u64>,
}

pub(crate) fn run(args: TopArgs) -> anyhow::Result<()> {
    let mut client = LiveClient::connect(&args.connect)
        .with_context(|| format!("connecting to {}", args.connect))?;
    let tty = std::io::stdout().is_terminal();
    let mut last: Option<(Instant, LiveFrame)> = None;
    let mut drawn = 0usize;
    let mut shown = 0u64;
    loop {
        let frame = match client.frame() {
            Ok(frame) => frame,
            // The watched process ending is the normal end of a `top` session.
            Err(pipewright::live::LiveError::Closed) if shown > 0 => {
                println!("the pipeline's process ended");
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        let now = Instant::now();
        let since = last
            .as_ref()
            .map(|(then, prev)| (&prev.snapshot, now.duration_since(*then).as_secs_f64()));
        let out = format!(
            "pipewright top  {}  t={:>6.1}s  plan: {}\n{}",
            args.connect,
            frame.elapsed_s,
            frame.plan,
            frame.snapshot.table(since)
        );
        let mut stdout = std::io::stdout().lock();
        if tty && drawn > 0 {
            let _ = write!(stdout, "\x1b[{drawn}A\x1b[J");
        }
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        drawn = out.lines().count();
        last = Some((now, frame));
        shown += 1;
        if args.frames.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(args.every_ms));
    }
}
