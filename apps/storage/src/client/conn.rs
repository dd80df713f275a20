//! One client connection to one node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::ClientError;
use crate::auth::{ClientKey, SignedHello};
use crate::types::{ClientId, NodeId, TxnId};
use crate::wire::{self, codec, Challenge, ClientRequest, ClientResponse, FrameError};

/// Answers a connection's reader routes to waiting callers.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    /// Transactions awaiting their outcome (from any node of their chain).
    pub(super) txns: Mutex<HashMap<TxnId, oneshot::Sender<ClientResponse>>>,
    /// Reads and status requests awaiting their answer.
    pub(super) requests: Mutex<HashMap<u64, oneshot::Sender<ClientResponse>>>,
}

impl Waiters {
    fn route(&self, response: ClientResponse) {
        let waiter = match &response {
            ClientResponse::Outcome { txn, .. } | ClientResponse::Busy { txn } => {
                take(&self.txns, txn)
            }
            ClientResponse::Page { req, .. }
            | ClientResponse::Failed { req, .. }
            | ClientResponse::Status { req, .. }
            | ClientResponse::Verdicts { req, .. } => take(&self.requests, req),
            ClientResponse::Welcome { .. } | ClientResponse::Denied { .. } => None,
        };
        if let Some(tx) = waiter {
            let _ = tx.send(response);
        }
    }
}

/// The next frame, decoded.
async fn next_frame<T: serde::de::DeserializeOwned>(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
) -> Result<T, FrameError> {
    match framed.next().await {
        Some(Ok(bytes)) => wire::decode(&bytes),
        Some(Err(e)) => Err(FrameError::Io(e)),
        None => Err(FrameError::Closed),
    }
}

pub(super) fn take<K: std::hash::Hash + Eq, V>(map: &Mutex<HashMap<K, V>>, key: &K) -> Option<V> {
    map.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
}

/// A live connection: requests go out through its writer task.
#[derive(Debug)]
pub(super) struct Conn {
    tx: mpsc::UnboundedSender<ClientRequest>,
    alive: Arc<AtomicBool>,
}

impl Conn {
    /// Connect, say hello as `client` (signed with the client key `key` over the node's
    /// challenge),
    /// and wait for the node's welcome.
    pub(super) async fn open(
        node: NodeId,
        addr: SocketAddr,
        client: ClientId,
        key: &ClientKey,
        waiters: Arc<Waiters>,
        timeout: Duration,
    ) -> Result<Conn, ClientError> {
        let handshake = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut framed = Framed::new(stream, codec());
            let challenge: Challenge = next_frame(&mut framed).await?;
            if challenge.node != node {
                return Ok(Err(format!(
                    "the node at {addr} is node {}, not node {node}: check the peers file",
                    challenge.node
                )));
            }
            let hello = SignedHello::client(key, &challenge, client);
            framed.send(wire::encode(&hello)).await?;
            match next_frame::<ClientResponse>(&mut framed).await? {
                ClientResponse::Welcome { .. } => Ok(Ok(framed)),
                ClientResponse::Denied { reason } => Ok(Err(reason)),
                _ => Err(FrameError::Unexpected("a response before the welcome")),
            }
        };
        let framed = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => return Err(ClientError::Timeout { node, txn: None }),
            Ok(Err(FrameError::Io(e))) => return Err(ClientError::Io { node, error: e }),
            Ok(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
            Ok(Ok(Err(reason))) => return Err(ClientError::Denied { node, reason }),
            Ok(Ok(Ok(framed))) => framed,
        };
        let (mut sink, mut frames) = framed.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<ClientRequest>();
        let alive = Arc::new(AtomicBool::new(true));
        let writer_alive = alive.clone();
        tokio::spawn(async move {
            let _dead_on_exit = DeadOnDrop(writer_alive);
            while let Some(first) = rx.recv().await {
                if sink.feed(wire::encode(&first)).await.is_err() {
                    return;
                }
                while let Ok(more) = rx.try_recv() {
                    if sink.feed(wire::encode(&more)).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        let reader_alive = DeadOnDrop(alive.clone());
        tokio::spawn(async move {
            let _dead_on_exit = reader_alive;
            while let Some(Ok(bytes)) = frames.next().await {
                match wire::decode::<ClientResponse>(&bytes) {
                    Ok(response) => waiters.route(response),
                    Err(_) => break,
                }
            }
        });
        Ok(Conn { tx, alive })
    }

    /// Queue a request; false if the connection is gone.
    pub(super) fn send(&self, request: ClientRequest) -> bool {
        self.tx.send(request).is_ok()
    }

    /// Whether both directions are still up.
    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire) && !self.tx.is_closed()
    }
}

/// Marks the connection dead when its reader or writer task ends.
struct DeadOnDrop(Arc<AtomicBool>);

impl Drop for DeadOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
