//! A source of UDP datagrams.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pipewright_stages::{AsyncSource, Outbox, SourceState};

use super::tcp::{SocketError, SocketStats};

/// One datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sender.
    pub peer: SocketAddr,
    /// The payload.
    pub data: Vec<u8>,
}

/// Receives UDP datagrams on an address; an [`AsyncSource`] (`source_async`). Each
/// pull awaits one datagram, then takes those already waiting, up to the burst.
///
/// Backpressure: while the pipeline is full the socket is not read and datagrams wait
/// in the kernel's receive buffer; once that is full the kernel drops them (UDP has
/// no flow control), counted by the kernel (`netstat -su`, "receive buffer errors").
/// A datagram longer than `max_size` (64 KiB by default) is cut to it.
///
/// ```
/// use pipewright::{sources::UdpSource, PipelineBuilder, Plan, Runtime};
///
/// let source = UdpSource::bind("127.0.0.1:0")?;
/// let addr = source.local_addr();
/// let b = PipelineBuilder::new();
/// let out = b.source_async("udp", source).output("datagrams");
/// let mut running = Runtime::start(b.build()?, Plan::fused())?;
/// let mut rx = running.output(&out).unwrap();
/// let sender = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// sender.send_to(b"ping", addr)?;
/// assert_eq!(rx.recv().unwrap().data, b"ping");
/// running.stop_handle().stop();
/// running.drain()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct UdpSource {
    std: Option<std::net::UdpSocket>,
    socket: Option<tokio::net::UdpSocket>,
    local: SocketAddr,
    max_size: usize,
    buf: Vec<u8>,
    stats: Arc<SocketStats>,
}

impl std::fmt::Debug for UdpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSource")
            .field("local", &self.local)
            .finish()
    }
}

impl UdpSource {
    /// Binds `addr` now (so the port is known and bind errors surface here).
    pub fn bind(addr: impl std::net::ToSocketAddrs + std::fmt::Debug) -> Result<Self, SocketError> {
        let shown = format!("{addr:?}");
        let socket = std::net::UdpSocket::bind(&addr)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|source| SocketError::Bind {
                addr: shown.clone(),
                source,
            })?;
        let local = socket.local_addr().map_err(|source| SocketError::Bind {
            addr: shown,
            source,
        })?;
        Ok(Self {
            std: Some(socket),
            socket: None,
            local,
            max_size: 64 * 1024,
            buf: Vec::new(),
            stats: Arc::default(),
        })
    }

    /// Sets the longest datagram kept whole.
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes.max(1);
        self
    }

    /// The address it receives on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Its counters (datagrams received are `messages`).
    pub fn stats(&self) -> Arc<SocketStats> {
        self.stats.clone()
    }
}

impl AsyncSource for UdpSource {
    type Out = Datagram;

    async fn pull(&mut self, out: &mut Outbox<'_, Datagram>, max: usize) -> SourceState {
        if let Some(std) = self.std.take() {
            match tokio::net::UdpSocket::from_std(std) {
                Ok(socket) => self.socket = Some(socket),
                Err(error) => return SourceState::failed(SocketError::Register(error)),
            }
            self.buf = vec![0; self.max_size];
        }
        let Some(socket) = &self.socket else {
            return SourceState::Exhausted;
        };
        // `recv_from` is cancel-safe: a stop that drops this pull loses no datagram.
        let (n, peer) = match socket.recv_from(&mut self.buf).await {
            Ok(got) => got,
            Err(source) => {
                return SourceState::failed(SocketError::Receive {
                    addr: self.local,
                    source,
                })
            }
        };
        out.push(Datagram {
            peer,
            data: self.buf[..n].to_vec(),
        });
        let mut got = 1;
        while got < max {
            match socket.try_recv_from(&mut self.buf) {
                Ok((n, peer)) => {
                    out.push(Datagram {
                        peer,
                        data: self.buf[..n].to_vec(),
                    });
                    got += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(source) => {
                    self.stats.messages.fetch_add(got as u64, Ordering::Relaxed);
                    return SourceState::failed(SocketError::Receive {
                        addr: self.local,
                        source,
                    });
                }
            }
        }
        self.stats.messages.fetch_add(got as u64, Ordering::Relaxed);
        SourceState::Ready
    }
}
