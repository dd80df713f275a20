//! Watching a running pipeline from outside its process, as `tokio-console` does for
//! tasks: [`serve`] answers snapshot requests on a TCP address, and `pipewright top
//! --connect ADDR` (or your own tool, through [`LiveClient`]) draws them.
//!
//! The protocol is one request line (`snapshot`) answered by one JSON line, a
//! [`LiveFrame`]; any tool that speaks JSON can read it (`echo snapshot | nc ADDR`).
//!
//! ```
//! use pipewright::{live, stage, PipelineBuilder, Plan, Runtime};
//!
//! let b = PipelineBuilder::new();
//! let (input, numbers) = b.input::<u64>("numbers");
//! let _doubled = numbers.then("double", stage::map(|x: u64| x * 2)).output("doubled");
//! let mut running = Runtime::start(b.build()?, Plan::fused())?;
//! let server = live::serve(running.watch(), "127.0.0.1:0")?;
//! let frame = live::LiveClient::connect(server.local_addr())?.frame()?;
//! assert!(frame.snapshot.stage("double").is_some());
//! drop(running.input(&input));
//! running.close_inputs();
//! running.abort()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::stats::Snapshot;
use crate::watch::Watch;

/// One answer of the live endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LiveFrame {
    /// Seconds since the pipeline started.
    pub elapsed_s: f64,
    /// The plan it runs with, as text.
    pub plan: String,
    /// Every stage's counters.
    pub snapshot: Snapshot,
}

/// The serving side: stops accepting when dropped.
#[derive(Debug)]
pub struct LiveServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LiveServer {
    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Unblock the accept; the connection is refused by the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves snapshots of the watched pipeline on `addr` (one thread, plus one per
/// connected viewer) until the returned server is dropped.
pub fn serve(watch: Watch, addr: impl ToSocketAddrs) -> io::Result<LiveServer> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("pipewright-live".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let watch = watch.clone();
                    let _ = std::thread::Builder::new()
                        .name("pipewright-live-conn".into())
                        .spawn(move || {
                            if let Err(error) = answer(&watch, conn) {
                                tracing::debug!(target: "pipewright::live", %error, "viewer left");
                            }
                        });
                }
            })?
    };
    Ok(LiveServer {
        addr,
        stop,
        thread: Some(thread),
    })
}

fn answer(watch: &Watch, conn: TcpStream) -> io::Result<()> {
    let mut writer = conn.try_clone()?;
    let mut lines = BufReader::new(conn).lines();
    while let Some(line) = lines.next().transpose()? {
        let reply = match line.trim() {
            "snapshot" | "" => serde_json::to_string(&LiveFrame {
                elapsed_s: watch.elapsed().as_secs_f64(),
                plan: watch.plan().to_string(),
                snapshot: watch.snapshot(),
            })
            .map_err(io::Error::other)?,
            other => format!(
                "{{\"error\":\"unknown request {:?}: send `snapshot`\"}}",
                other.escape_default().to_string()
            ),
        };
        writer.write_all(reply.as_bytes())?;
        writer.write_all(b"\n")?;
    }
    Ok(())
}

/// Why a live endpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// Connecting or talking to it failed.
    #[error("cannot reach the live endpoint: {0} (is the pipeline running with its live address, e.g. `--live 127.0.0.1:7777`?)")]
    Io(#[from] io::Error),
    /// It closed the connection (the process ended).
    #[error("the live endpoint closed the connection (the pipeline's process ended)")]
    Closed,
    /// It answered something that is not a frame.
    #[error("the live endpoint answered something that is not a pipewright frame: {0}")]
    BadFrame(String),
}

/// The viewing side of [`serve`].
#[derive(Debug)]
pub struct LiveClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl LiveClient {
    /// Connects to a live endpoint.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Self, LiveError> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Asks for and reads one frame.
    pub fn frame(&mut self) -> Result<LiveFrame, LiveError> {
        self.writer.write_all(b"snapshot\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(LiveError::Closed);
        }
        serde_json::from_str(&line).map_err(|e| {
            let shown: String = line.chars().take(120).collect();
            LiveError::BadFrame(format!("{e}: {shown}"))
        })
    }
}
