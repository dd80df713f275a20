//! The NBD server: handshake, option haggling and the transmission loop.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::wire::*;
use crate::cache::{Cache, VolumeId};
use crate::pipeline::{PathService, ReadBuf};

mod errno;
mod handshake;
mod per_peer;

pub(crate) use errno::errno;

use per_peer::PerPeer;

/// Connection-level counters of an [`NbdServer`].
#[derive(Debug, Default)]
pub struct NbdStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Requests served (any reply).
    pub requests: AtomicU64,
    /// Requests answered with an error.
    pub error_replies: AtomicU64,
    /// Connections closed for a protocol violation (bad magic, oversized payload,
    /// malformed option).
    pub protocol_errors: AtomicU64,
    /// Export names asked for that do not exist.
    pub unknown_exports: AtomicU64,
    /// Connections closed because they chose no export within the handshake deadline.
    pub handshake_timeouts: AtomicU64,
    /// Connections refused because the server already had its maximum, or their peer
    /// address its own ([`NbdServer::max_connections_per_peer`]).
    pub refused_connections: AtomicU64,
    /// Times a connection's next request had to wait before it was taken because the
    /// requests in flight already held the connection's byte budget.
    pub budget_waits: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64, name: &'static str) {
    c.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(name).increment(1);
}

/// Serves a [`Cache`]'s volumes over NBD.
#[derive(Clone)]
pub struct NbdServer {
    cache: Cache,
    /// The request path on the pipewright runtime, when the server was given one.
    path: Option<PathService>,
    stats: Arc<NbdStats>,
    max_in_flight: usize,
    limits: Limits,
    connections: Arc<Semaphore>,
    per_peer: Arc<PerPeer>,
    /// When a handshake timeout was last reported (seconds since `UNIX_EPOCH`), and
    /// how many went unreported since: a flood of silent connections is one line per
    /// [`REPORT_EVERY`], not one per connection.
    timeouts_reported: Arc<(AtomicU64, AtomicU64)>,
}

/// The least time between two reports of handshake timeouts on stderr.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What one client may hold of the server (see the builder methods of [`NbdServer`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) handshake: Duration,
    pub(super) in_flight_bytes: u64,
    pub(super) connections: usize,
    pub(super) per_peer: usize,
}

/// A client that connects must choose its export within this long.
pub const DEFAULT_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Payload bytes one connection's requests may hold in flight (write data read in,
/// read data not yet sent).
pub const DEFAULT_IN_FLIGHT_BYTES: u64 = 128 << 20;
/// Connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections served at once from one peer address (a quarter of the total, so that
/// one client cannot take every place).
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field("cache", &self.cache)
            .field("pipeline", &self.path.is_some())
            .finish_non_exhaustive()
    }
}

const TFLAGS: u16 = TFLAG_HAS_FLAGS
    | TFLAG_SEND_FLUSH
    | TFLAG_SEND_FUA
    | TFLAG_SEND_WRITE_ZEROES
    | TFLAG_CAN_MULTI_CONN;

impl NbdServer {
    /// A server of `cache`'s volumes.
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            path: None,
            stats: Arc::default(),
            max_in_flight: 64,
            limits: Limits {
                handshake: DEFAULT_HANDSHAKE_DEADLINE,
                in_flight_bytes: DEFAULT_IN_FLIGHT_BYTES,
                connections: DEFAULT_MAX_CONNECTIONS,
                per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            },
            connections: Arc::new(Semaphore::new(DEFAULT_MAX_CONNECTIONS)),
            per_peer: Arc::default(),
            timeouts_reported: Arc::default(),
        }
    }

    /// How long a client may take from connecting to choosing an export
    /// (default [`DEFAULT_HANDSHAKE_DEADLINE`]); then the connection is closed and
    /// counted in [`NbdStats::handshake_timeouts`].
    pub fn handshake_deadline(mut self, deadline: Duration) -> Self {
        self.limits.handshake = deadline;
        self
    }

    /// The payload bytes one connection's requests may hold in flight (default
    /// [`DEFAULT_IN_FLIGHT_BYTES`]): a request that would go beyond waits (and the
    /// connection stops reading) until earlier ones are answered, so a client that
    /// pipelines many 32 MiB requests holds this much of the server's memory, not
    /// 64 × 32 MiB. Never below the largest request (32 MiB), which always fits.
    ///
    /// ```
    /// # use pipewright_cache::nbd::NbdServer;
    /// # fn limits(server: NbdServer) -> NbdServer {
    /// server
    ///     .max_in_flight_bytes(64 << 20)
    ///     .max_connections(256)
    ///     .handshake_deadline(std::time::Duration::from_secs(5))
    /// # }
    /// ```
    pub fn max_in_flight_bytes(mut self, bytes: u64) -> Self {
        self.limits.in_flight_bytes = bytes.max(u64::from(MAX_PAYLOAD));
        self
    }

    /// The connections served at once (default [`DEFAULT_MAX_CONNECTIONS`], at least
    /// 1); one more is closed at once and counted in
    /// [`NbdStats::refused_connections`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.connections = n.max(1);
        self.connections = Arc::new(Semaphore::new(self.limits.connections));
        self
    }

    /// The connections served at once from one peer (IP) address (default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_PEER`], at least 1): one more from it is closed
    /// at once and counted in [`NbdStats::refused_connections`], while other peers
    /// are still served. A client that connects and goes quiet after its handshake
    /// (an idle mount looks the same) holds its place; this bounds how many one peer
    /// can hold.
    pub fn max_connections_per_peer(mut self, n: usize) -> Self {
        self.limits.per_peer = n.max(1);
        self
    }

    /// A server whose reads and writes go through the cache's request pipeline
    /// ([`pipeline::start`](crate::pipeline::start)) instead of calling the cache.
    pub fn with_pipeline(cache: Cache, path: PathService) -> Self {
        Self {
            path: Some(path),
            ..Self::new(cache)
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<NbdStats> {
        &self.stats
    }

    /// Accepts connections for as long as it runs (a failed accept is counted and
    /// retried); each connection is served on its own task, and a failing connection
    /// never affects the others.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of file descriptors, or a connection aborted while queued: the
                // listener itself is fine; back off and keep accepting.
                Err(e) => {
                    metrics::counter!("cache_nbd_accept_errors_total").increment(1);
                    eprintln!("pipewright-cache: accepting an NBD connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let place = self.per_peer.try_take(peer.ip(), self.limits.per_peer);
            let slot = self.connections.clone().try_acquire_owned();
            let (Some(place), Ok(slot)) = (place, slot) else {
                bump(
                    &self.stats.refused_connections,
                    "cache_nbd_refused_connections_total",
                );
                drop(sock);
                continue;
            };
            let _ = sock.set_nodelay(true);
            bump(&self.stats.connections, "cache_nbd_connections_total");
            let this = self.clone();
            tokio::spawn(async move {
                let _held = (slot, place);
                match this.connection(sock).await {
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => this.report_timeout(&e),
                    Err(e) if e.kind() != io::ErrorKind::UnexpectedEof => {
                        eprintln!("pipewright-cache: nbd connection ended: {e}");
                    }
                    _ => {}
                }
            });
        }
    }

    /// Reports a handshake timeout on stderr, at most once per [`REPORT_EVERY`] with
    /// the number of others since the last report (each is counted in
    /// [`NbdStats::handshake_timeouts`]).
    fn report_timeout(&self, e: &io::Error) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (last, unreported) = &*self.timeouts_reported;
        let before = last.load(Ordering::Relaxed);
        let due = before == 0 || now >= before + REPORT_EVERY.as_secs();
        if due
            && last
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            match unreported.swap(0, Ordering::Relaxed) {
                0 => eprintln!("pipewright-cache: nbd connection ended: {e}"),
                n => eprintln!(
                    "pipewright-cache: nbd connection ended: {e} (and {n} more since the last report)"
                ),
            }
        } else {
            unreported.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn connection(&self, sock: TcpStream) -> io::Result<()> {
        let (rd, mut wr) = sock.into_split();
        let mut rd = BufReader::with_capacity(256 << 10, rd);
        let deadline = self.limits.handshake;
        let volume = match tokio::time::timeout(deadline, self.handshake(&mut rd, &mut wr)).await {
            Ok(Ok(Some(v))) => v,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                bump(
                    &self.stats.handshake_timeouts,
                    "cache_nbd_handshake_timeouts_total",
                );
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client chose no export within {deadline:?}; closed"),
                ));
            }
        };
        self.transmission(rd, wr, volume).await
    }

    async fn transmission(
        &self,
        mut rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
        wr: tokio::net::tcp::OwnedWriteHalf,
        volume: VolumeId,
    ) -> io::Result<()> {
        if let Some(path) = &self.path {
            let conn = super::queued::Connection {
                cache: self.cache.clone(),
                path: path.clone(),
                stats: self.stats.clone(),
                max_in_flight: self.max_in_flight,
                max_in_flight_bytes: self.limits.in_flight_bytes,
                volume,
            };
            return conn.run(rd, wr).await;
        }
        let (tx, rx) = mpsc::channel::<Reply>(self.max_in_flight * 2);
        let writer = tokio::spawn(write_replies(rx, wr));
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let budget = Arc::new(Semaphore::new(budget_units(self.limits.in_flight_bytes)));
        let mut header = [0u8; Request::LEN];
        let result = loop {
            if let Err(e) = rd.read_exact(&mut header).await {
                break Err(e);
            }
            let req = match Request::parse(&header) {
                Ok(r) => r,
                Err(e) => {
                    bump(
                        &self.stats.protocol_errors,
                        "cache_nbd_protocol_errors_total",
                    );
                    break Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            };
            // The payload's share of the budget, before a write's payload is read in;
            // held until the reply (a read's data) is written.
            let units = match req.kind {
                CMD_READ | CMD_WRITE if req.len <= MAX_PAYLOAD => budget_units(req.len.into()),
                _ => 0,
            };
            let bytes = match budget.clone().try_acquire_many_owned(units as u32) {
                Ok(p) => p,
                Err(_) => {
                    bump(&self.stats.budget_waits, "cache_nbd_budget_waits_total");
                    budget
                        .clone()
                        .acquire_many_owned(units as u32)
                        .await
                        .expect("never closed")
                }
            };
            let payload = if req.kind == CMD_WRITE {
                let mut p = vec![0u8; req.len as usize];
                if let Err(e) = rd.read_exact(&mut p).await {
                    break Err(e);
                }
                p
            } else {
                Vec::new()
            };
            if req.kind == CMD_DISC {
                break Ok(());
            }
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let (cache, tx, stats) = (self.cache.clone(), tx.clone(), self.stats.clone());
            tokio::spawn(async move {
                let reply = serve(&cache, volume, req, payload).await;
                bump(&stats.requests, "cache_nbd_requests_total");
                let mut header = Vec::with_capacity(16);
                let data = match reply {
                    Ok(data) => {
                        simple_reply(&mut header, 0, req.cookie);
                        data
                    }
                    Err(errno) => {
                        bump(&stats.error_replies, "cache_nbd_error_replies_total");
                        simple_reply(&mut header, errno, req.cookie);
                        ReadBuf::from_vec(Vec::new())
                    }
                };
                let out = Reply {
                    header,
                    data,
                    _budget: bytes,
                };
                let _ = tx.send(out).await;
                drop(permit);
            });
        };
        // Every accepted request gets its reply before the connection closes.
        let _ = permits.acquire_many(self.max_in_flight as u32).await;
        drop(tx);
        let _ = writer.await;
        match result {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            r => r,
        }
    }
}

/// A byte budget in the semaphore's units (4 KiB, so that any budget fits its
/// permits), rounded up.
pub(super) fn budget_units(bytes: u64) -> usize {
    bytes.div_ceil(4096).min(Semaphore::MAX_PERMITS as u64) as usize
}

/// A reply on its way to the socket: the header and the payload (a read's bytes, in
/// the buffer the cache read them into).
struct Reply {
    header: Vec<u8>,
    data: ReadBuf,
    /// Its share of the connection's byte budget, given back once it is written.
    _budget: tokio::sync::OwnedSemaphorePermit,
}

/// Replies queued together, at most this many per `writev`.
const REPLIES_PER_WRITE: usize = 32;

/// Writes replies as they come: each header and payload straight from their buffers,
/// and the replies that are queued at once together, with one `writev`.
async fn write_replies(
    mut rx: mpsc::Receiver<Reply>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
) -> io::Result<()> {
    let mut batch: Vec<Reply> = Vec::with_capacity(REPLIES_PER_WRITE);
    while rx.recv_many(&mut batch, REPLIES_PER_WRITE).await > 0 {
        let parts: Vec<&[u8]> = batch
            .iter()
            .flat_map(|r| [&r.header[..], &r.data[..]])
            .filter(|p| !p.is_empty())
            .collect();
        write_all_vectored(&mut wr, &parts).await?;
        // The pooled buffers go back to their pool here.
        batch.clear();
    }
    wr.shutdown().await
}

/// Writes every byte of `parts`, in order, with as few `writev`s as the socket allows.
pub(super) async fn write_all_vectored(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    parts: &[&[u8]],
) -> io::Result<()> {
    let mut first = 0;
    let mut skip = 0;
    while first < parts.len() {
        let slices: Vec<io::IoSlice<'_>> = std::iter::once(io::IoSlice::new(&parts[first][skip..]))
            .chain(parts[first + 1..].iter().map(|p| io::IoSlice::new(p)))
            .take(1024)
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let left = parts[first].len() - skip;
            if n >= left {
                n -= left;
                first += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

pub(super) async fn serve(
    cache: &Cache,
    volume: VolumeId,
    req: Request,
    payload: Vec<u8>,
) -> Result<ReadBuf, u32> {
    match req.kind {
        CMD_READ => {
            if req.len > MAX_PAYLOAD {
                return Err(EINVAL);
            }
            cache
                .read(volume, req.offset, req.len as u64)
                .await
                .map(ReadBuf::from_vec)
                .map_err(|e| errno(&e, false))
        }
        CMD_WRITE => cache
            .write(volume, req.offset, &payload)
            .await
            .map(|()| ReadBuf::from_vec(Vec::new()))
            .map_err(|e| errno(&e, true)),
        CMD_WRITE_ZEROES => {
            let size = cache.volume_size(volume);
            if req
                .offset
                .checked_add(req.len as u64)
                .is_none_or(|end| end > size)
            {
                return Err(ENOSPC);
            }
            let zeros = vec![0u8; (req.len as usize).min(1 << 20)];
            let mut done = 0u64;
            while done < req.len as u64 {
                let n = (req.len as u64 - done).min(zeros.len() as u64) as usize;
                cache
                    .write(volume, req.offset + done, &zeros[..n])
                    .await
                    .map_err(|e| errno(&e, true))?;
                done += n as u64;
            }
            Ok(ReadBuf::from_vec(Vec::new()))
        }
        CMD_FLUSH => cache
            .flush()
            .await
            .map(|()| ReadBuf::from_vec(Vec::new()))
            .map_err(|_| EIO),
        _ => Err(EINVAL),
    }
    .map_err(|e| if e == 0 { ENOTSUP } else { e })
}
