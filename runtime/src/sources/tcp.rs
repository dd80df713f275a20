//! A source of messages from accepted TCP connections.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pipewright_stages::{AsyncSource, Outbox, SourceState, StageError};
use tokio::sync::mpsc;

use super::framing::{Framer, Framing};

/// One message from a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The peer that sent it.
    pub peer: SocketAddr,
    /// The connection's number (1, 2, ... in accept order), to tell apart connections
    /// from one peer address.
    pub connection: u64,
    /// The message's bytes (a line without its ending, or a frame's payload).
    pub data: Vec<u8>,
}

impl Message {
    /// The bytes as text, if they are UTF-8.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.data)
    }
}

/// Counters of a socket source, readable while it runs.
#[derive(Debug, Default)]
pub struct SocketStats {
    connections: AtomicU64,
    closed: AtomicU64,
    errors: AtomicU64,
    pub(super) messages: AtomicU64,
}

impl SocketStats {
    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// Connections that ended (by the peer, by an error).
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }
    /// Connections closed for an error (a read failed, a frame too long or cut short);
    /// also counted as `pipewright_source_connection_errors_total`.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Messages (or datagrams) received and queued for the pipeline.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }
}

/// Why a socket source could not start or had to end.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Binding the listening address failed.
    #[error("cannot listen on {addr}: {source}: pick a free port (or port 0) and an address of this host")]
    Bind {
        /// The address.
        addr: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The socket could not be registered with the worker's event loop.
    #[error("cannot register the socket with the worker's event loop: {0}: the process may be out of file descriptors")]
    Register(std::io::Error),
    /// Accepting connections failed for good.
    #[error("accepting connections on {addr} failed: {source}: the process may be out of file descriptors (raise `ulimit -n`)")]
    Accept {
        /// The listening address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Receiving a datagram failed.
    #[error("receiving on {addr} failed: {source}")]
    Receive {
        /// The socket's address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
}

enum Event {
    Message(Message),
    Failed(StageError),
}

/// Listens on a TCP address and emits the [`Message`]s of every accepted connection
/// (framed as lines or length-prefixed frames, see [`Framing`]); an
/// [`AsyncSource`] run on its worker's event loop (`source_async`).
///
/// Backpressure: each connection is read by its own task into a bounded queue (of
/// `queue` messages, 1024 by default); the source takes up to a burst from it when the
/// pipeline has room. When the pipeline is full the queue fills, the connections stop
/// being read, and TCP flow control slows the senders. A connection whose stream
/// cannot be framed is closed and counted ([`SocketStats::errors`]); the source goes
/// on. A stop handle ends the source: messages emitted so far drain, messages still
/// queued (at most `queue`) are dropped with the connections.
///
/// ```
/// use std::io::Write;
/// use pipewright::{sources::{Framing, TcpSource}, PipelineBuilder, Plan, Runtime};
///
/// let source = TcpSource::bind("127.0.0.1:0", Framing::LINES)?;
/// let addr = source.local_addr();
/// let b = PipelineBuilder::new();
/// let out = b.source_async("tcp", source).output("messages");
/// let mut running = Runtime::start(b.build()?, Plan::fused())?;
/// let mut rx = running.output(&out).unwrap();
/// std::net::TcpStream::connect(addr)?.write_all(b"hello\nworld\n")?;
/// let first = rx.recv().unwrap();
/// let second = rx.recv().unwrap();
/// assert_eq!((first.text()?, second.text()?), ("hello", "world"));
/// running.stop_handle().stop();
/// running.drain()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TcpSource {
    listener: Option<std::net::TcpListener>,
    local: SocketAddr,
    framing: Framing,
    queue: usize,
    stats: Arc<SocketStats>,
    rx: Option<mpsc::Receiver<Event>>,
    accept: Option<tokio::task::JoinHandle<()>>,
    scratch: Vec<Event>,
}

impl std::fmt::Debug for TcpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSource")
            .field("local", &self.local)
            .field("framing", &self.framing)
            .finish()
    }
}

impl TcpSource {
    /// Binds `addr` now (so the port is known and bind errors surface here); accepting
    /// starts when the pipeline runs.
    pub fn bind(
        addr: impl std::net::ToSocketAddrs + std::fmt::Debug,
        framing: Framing,
    ) -> Result<Self, SocketError> {
        let shown = format!("{addr:?}");
        let listener = std::net::TcpListener::bind(&addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| SocketError::Bind {
                addr: shown.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| SocketError::Bind {
            addr: shown,
            source,
        })?;
        Ok(Self {
            listener: Some(listener),
            local,
            framing,
            queue: 1024,
            stats: Arc::default(),
            rx: None,
            accept: None,
            scratch: Vec::new(),
        })
    }

    /// Sets how many messages may wait between the connections and the pipeline.
    pub fn queue(mut self, messages: usize) -> Self {
        self.queue = messages.max(1);
        self
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Its counters, shared: keep the `Arc` to read them while the pipeline runs.
    pub fn stats(&self) -> Arc<SocketStats> {
        self.stats.clone()
    }

    /// Registers the listener with the worker's event loop and starts accepting.
    fn start(&mut self) -> Result<(), SocketError> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(SocketError::Register)?;
        let (tx, rx) = mpsc::channel(self.queue);
        self.rx = Some(rx);
        let (framing, stats, local) = (self.framing, self.stats.clone(), self.local);
        self.accept = Some(tokio::spawn(accept_loop(
            listener, local, framing, stats, tx,
        )));
        Ok(())
    }
}

impl Drop for TcpSource {
    fn drop(&mut self) {
        // Aborting the accept task drops its connection tasks (and closes them).
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    framing: Framing,
    stats: Arc<SocketStats>,
    tx: mpsc::Sender<Event>,
) {
    let mut connections = tokio::task::JoinSet::new();
    let mut number = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                number += 1;
                stats.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(read_connection(
                    stream,
                    peer,
                    number,
                    framing,
                    stats.clone(),
                    tx.clone(),
                ));
            }
            // Errors of one half-open connection: not the listener's fault.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(source) => {
                let error = SocketError::Accept {
                    addr: local,
                    source,
                };
                let _ = tx.send(Event::Failed(StageError::new(error))).await;
                return;
            }
        }
        // Reap ended connections so a long-lived listener does not accumulate them.
        while connections.try_join_next().is_some() {}
    }
}

async fn read_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    connection: u64,
    framing: Framing,
    stats: Arc<SocketStats>,
    tx: mpsc::Sender<Event>,
) {
    let mut framer = Framer::new(framing);
    let mut frames = VecDeque::new();
    let mut buf = vec![0u8; 16 * 1024];
    let failed = loop {
        if stream.readable().await.is_err() {
            break true;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => match framer.finish() {
                Ok(last) => {
                    frames.extend(last);
                    break false;
                }
                Err(error) => {
                    tracing::warn!(target: "pipewright", %peer, %error, "closing connection");
                    break true;
                }
            },
            Ok(n) => {
                if let Err(error) = framer.push(&buf[..n], &mut frames) {
                    tracing::warn!(target: "pipewright", %peer, %error, "closing connection");
                    break true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => {
                tracing::warn!(target: "pipewright", %peer, %error, "connection read failed");
                break true;
            }
        }
        if !send_all(&tx, &stats, peer, connection, &mut frames).await {
            return;
        }
    };
    send_all(&tx, &stats, peer, connection, &mut frames).await;
    stats.closed.fetch_add(1, Ordering::Relaxed);
    if failed {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pipewright_source_connection_errors_total", "protocol" => "tcp")
            .increment(1);
    }
}

/// Queues frames for the pipeline (waiting while the queue is full); false once the
/// source is gone.
async fn send_all(
    tx: &mpsc::Sender<Event>,
    stats: &SocketStats,
    peer: SocketAddr,
    connection: u64,
    frames: &mut VecDeque<Vec<u8>>,
) -> bool {
    while let Some(data) = frames.pop_front() {
        let message = Message {
            peer,
            connection,
            data,
        };
        if tx.send(Event::Message(message)).await.is_err() {
            return false;
        }
        stats.messages.fetch_add(1, Ordering::Relaxed);
    }
    true
}

impl AsyncSource for TcpSource {
    type Out = Message;

    async fn pull(&mut self, out: &mut Outbox<'_, Message>, max: usize) -> SourceState {
        if let Err(error) = self.start() {
            return SourceState::failed(error);
        }
        let Some(rx) = &mut self.rx else {
            return SourceState::Exhausted;
        };
        // `recv_many` is cancel-safe: a stop that drops this pull loses nothing.
        if rx.recv_many(&mut self.scratch, max).await == 0 {
            return SourceState::Exhausted;
        }
        // Messages that arrived before a failure are delivered with it, not dropped.
        let mut failed = None;
        for event in self.scratch.drain(..) {
            match event {
                Event::Message(message) => out.push(message),
                Event::Failed(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        match failed {
            Some(error) => SourceState::Failed(error),
            None => SourceState::Ready,
        }
    }
}
