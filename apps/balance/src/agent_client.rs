//! A connection to an agent (used by producers, consumers and `balance status`).

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::error::BalanceError;
use crate::wire::{self, AgentRequest, AgentResponse, MAX_AGENT_FRAME};

/// One connection to an agent; requests are answered in order.
#[derive(Debug)]
pub struct AgentClient {
    addr: SocketAddr,
    framed: Framed<TcpStream, LengthDelimitedCodec>,
}

/// How long an agent call may take before the connection is given up.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(2);

impl AgentClient {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> Result<Self, BalanceError> {
        let stream = tokio::time::timeout(AGENT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| BalanceError::AgentTimeout(addr))?
            .map_err(|e| BalanceError::Io {
                what: format!("connecting to agent {addr}"),
                source: e,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            addr,
            framed: Framed::new(stream, wire::codec(MAX_AGENT_FRAME)),
        })
    }

    /// The agent's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and waits for its answer.
    pub async fn call(&mut self, req: &AgentRequest) -> Result<AgentResponse, BalanceError> {
        let addr = self.addr;
        let io = |e: std::io::Error| BalanceError::Io {
            what: format!("talking to agent {addr}"),
            source: e,
        };
        tokio::time::timeout(AGENT_TIMEOUT, async {
            self.framed.send(wire::encode(req)).await.map_err(io)?;
            match self.framed.next().await {
                None => Err(io(std::io::ErrorKind::UnexpectedEof.into())),
                Some(Err(e)) => Err(io(e)),
                Some(Ok(b)) => wire::decode(&b).map_err(|e| BalanceError::Protocol(e.to_string())),
            }
        })
        .await
        .map_err(|_| BalanceError::AgentTimeout(addr))?
    }
}
