//! The client library: transactions over a chain of storage nodes, as a
//! `tower::Service`, and page reads.
//!
//! The client is the coordinator: it orders the nodes of a [`Transaction`] into a chain
//! (by node id, the last being the decider, unless the caller gives the order), sends
//! one `Prepare` to the chain's head and waits for the outcome, which comes from the
//! decider once its decision is durable (or from the node that refused). It keeps one
//! connection per node, opened on first use, and is connected to every node of a chain
//! before it sends the `Prepare`, so the answer has a way back whichever node sends it.
//!
//! ```no_run
//! use pipewright_storage::client::{StorageClient, Transaction};
//! use pipewright_storage::{peers::Peers, NodeId, PageId};
//! use tower_service::Service;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = StorageClient::new(Peers::load("peers.toml")?);
//! let a = client.read(NodeId(1), PageId(0)).await?;
//! let b = client.read(NodeId(2), PageId(0)).await?;
//! let txn = Transaction::new()
//!     .write(NodeId(1), PageId(0), a.version, b"left".to_vec())
//!     .write(NodeId(2), PageId(0), b.version, b"right".to_vec());
//! let committed = client.call(txn).await?; // Err(ClientError::Aborted(..)) on conflict
//! println!("{} committed", committed.txn);
//! # Ok(()) }
//! ```

mod conn;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::log::{PageWrite, Verdict};
use crate::peers::Peers;
use crate::protocol::{AbortReason, Outcome, Prepare};
use crate::types::{ClientId, NodeId, PageId, TxnId, Version};
use crate::wire::{ClientRequest, ClientResponse, NodeStatus};
use conn::{take, Conn, Waiters};

/// Why a transaction or read did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The head node's in-flight budget is full: the transaction was not started
    /// (nothing of it exists on any node). Retry later.
    #[error(
        "node {node} is busy (its in-flight budget is full): the transaction did not start — safe to retry later"
    )]
    Busy {
        /// The head node.
        node: NodeId,
    },
    /// The transaction aborted: no node applies any of its writes.
    #[error("aborted: {0}")]
    Aborted(AbortReason),
    /// A connection to `node` failed before the request was sent: for a transaction,
    /// it **did not start** (no node has any of it), so it is safe to retry.
    #[error(
        "cannot reach node {node} ({error}): nothing was sent, so no transaction started — safe to retry"
    )]
    Io {
        /// The node.
        node: NodeId,
        /// The error.
        error: std::io::Error,
    },
    /// No answer in time. For a transaction (`txn` set) the outcome is **unknown**: it
    /// may still commit or abort.
    #[error("node {node} did not answer in time: {}", match txn {
        Some(t) => format!("the outcome of transaction {t} is unknown (it may still commit or abort) — read the pages before retrying"),
        None => "nothing was started — safe to retry".to_string(),
    })]
    Timeout {
        /// The node that did not answer (the head, for a transaction).
        node: NodeId,
        /// The transaction, if it was sent.
        txn: Option<TxnId>,
    },
    /// `node` refused the transaction as older than the transactions of this client
    /// it has forgotten (overtaken by a later one of this client, or a late copy): the
    /// outcome is **unknown** to it (if this was its first visit, it aborted).
    #[error(
        "node {node} refused transaction {txn} as older than the transactions of this client it has forgotten (overtaken by a later one of this client, or a late copy): its outcome is unknown — read the pages before retrying"
    )]
    Forgotten {
        /// The refusing node.
        node: NodeId,
        /// The transaction.
        txn: TxnId,
        /// The node's floor (later transactions of this client get ids above it).
        floor: TxnId,
    },
    /// The node is not in the peers file.
    #[error("node {0} is not in the peers file")]
    UnknownNode(NodeId),
    /// The node refused this client's hello (its peers file has another key), or
    /// another node answered at its address.
    #[error("{reason}")]
    Denied {
        /// The refusing node.
        node: NodeId,
        /// The node's words.
        reason: String,
    },
    /// The transaction writes nothing.
    #[error("the transaction has no writes")]
    Empty,
    /// An explicit chain that leaves out a node the transaction writes to (its writes
    /// would never be sent), or names no node.
    #[error("the chain {chain:?} leaves out node {missing} that the transaction writes to: add it to --chain, or drop --chain to run on the written nodes")]
    ChainMissesWrites {
        /// The chain given.
        chain: Vec<u32>,
        /// A written node not in it.
        missing: NodeId,
    },
    /// An explicit chain with no node.
    #[error("the chain is empty: name at least the nodes the transaction writes to")]
    EmptyChain,
    /// The node could not serve a read.
    #[error("node {node}: {error}")]
    Failed {
        /// The node.
        node: NodeId,
        /// Its error.
        error: String,
    },
    /// The node answered something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Page writes on several nodes, committed all or nothing.
///
/// ```
/// use pipewright_storage::client::Transaction;
/// use pipewright_storage::{NodeId, PageId};
///
/// let t = Transaction::new()
///     .write(NodeId(3), PageId(1), 4, vec![1])
///     .write(NodeId(1), PageId(9), 0, vec![2]);
/// assert_eq!(t.chain_order(), vec![NodeId(1), NodeId(3)]); // by id; node 3 decides
/// let t = t.chain(vec![NodeId(3), NodeId(1)]);
/// assert_eq!(t.chain_order(), vec![NodeId(3), NodeId(1)]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    writes: BTreeMap<NodeId, Vec<PageWrite>>,
    chain: Option<Vec<NodeId>>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Write `data` to `page` on `node` if the page is still at version `expected`
    /// (a `Vec<u8>`, or [`Bytes`](bytes::Bytes) shared with the caller: not copied).
    pub fn write(
        mut self,
        node: NodeId,
        page: PageId,
        expected: Version,
        data: impl Into<bytes::Bytes>,
    ) -> Self {
        self.writes.entry(node).or_default().push(PageWrite {
            page,
            expected,
            data: data.into(),
        });
        self
    }

    /// Use this chain order (head first, decider last) instead of ascending node ids.
    /// It may include nodes that write nothing.
    pub fn chain(mut self, chain: Vec<NodeId>) -> Self {
        self.chain = Some(chain);
        self
    }

    /// The chain the transaction runs on.
    pub fn chain_order(&self) -> Vec<NodeId> {
        self.chain
            .clone()
            .unwrap_or_else(|| self.writes.keys().copied().collect())
    }

    /// The writes, by node.
    pub fn writes(&self) -> &BTreeMap<NodeId, Vec<PageWrite>> {
        &self.writes
    }
}

impl ClientError {
    /// The request did not reach the node (connection failed, or no answer to the
    /// handshake or a read): nothing was started, a retry is safe.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Io { .. } | ClientError::Timeout { txn: None, .. }
        )
    }

    /// A transaction was sent and no outcome came back in time: it may still commit.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { txn: Some(_), .. } | ClientError::Forgotten { .. }
        )
    }
}

/// A committed transaction: the decider's commit decision is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Its id.
    pub txn: TxnId,
}

/// A page as read from a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageData {
    /// The committed version (0: never written).
    pub version: Version,
    /// The data as last written (every byte, trailing zeros included); empty for a
    /// page never written.
    pub data: Vec<u8>,
}

impl PageData {
    /// Whether the page was ever written (version 0: never).
    pub fn written(&self) -> bool {
        self.version > 0
    }
}

#[derive(Debug)]
struct Inner {
    id: ClientId,
    peers: Peers,
    timeout: Duration,
    conns: tokio::sync::Mutex<HashMap<NodeId, Arc<Conn>>>,
    waiters: Arc<Waiters>,
    next_req: AtomicU64,
    /// Transaction ids are increasing per client (from a random start): a node that
    /// forgot a finished transaction refuses any unknown one at or below the
    /// highest forgotten id of its client.
    next_txn: AtomicU64,
    /// F for every transaction ([`Prepare::acceptors`]).
    acceptors: std::sync::atomic::AtomicU8,
}

/// A client of a storage cluster. Cheap to clone (clones share connections).
///
/// As a `tower::Service<Transaction>` it answers [`Committed`] once the decision is
/// durable; aborts are errors ([`ClientError::Aborted`]), so `?` and tower's retry
/// layers apply.
#[derive(Clone, Debug)]
pub struct StorageClient {
    inner: Arc<Inner>,
}

impl StorageClient {
    /// A client of the nodes in `peers`, with a random client id and a 10 s timeout.
    pub fn new(peers: Peers) -> Self {
        Self::with_timeout(peers, Duration::from_secs(10))
    }

    /// Like [`new`](Self::new) with another timeout (per connect, read, transaction).
    pub fn with_timeout(peers: Peers, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: ClientId(fastrand::u64(1..)),
                peers,
                timeout,
                conns: Default::default(),
                waiters: Default::default(),
                next_req: AtomicU64::new(1),
                next_txn: AtomicU64::new(fastrand::u64(1..1 << 62)),
                acceptors: Default::default(),
            }),
        }
    }

    /// Replicate every later transaction's commit decision to `f` chain nodes besides
    /// the decider before it takes effect ([`Prepare::acceptors`]; 0, the default, is
    /// plain two-phase commit). With `f ≥ 1` nodes in doubt settle the outcome with
    /// those acceptors while the decider is down, instead of blocking.
    pub fn set_acceptors(&self, f: u8) {
        self.inner.acceptors.store(f, Ordering::Relaxed);
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        self.inner.id
    }

    /// The cluster's nodes.
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    async fn conn(&self, node: NodeId) -> Result<Arc<Conn>, ClientError> {
        let addr = self
            .inner
            .peers
            .addr(node)
            .ok_or(ClientError::UnknownNode(node))?;
        let mut conns = self.inner.conns.lock().await;
        if let Some(conn) = conns.get(&node).filter(|c| c.is_alive()) {
            return Ok(conn.clone());
        }
        let inner = &self.inner;
        let key = inner.peers.client_key();
        let conn = Conn::open(
            node,
            addr,
            inner.id,
            &key,
            inner.waiters.clone(),
            inner.timeout,
        )
        .await?;
        let conn = Arc::new(conn);
        conns.insert(node, conn.clone());
        Ok(conn)
    }

    /// Run `txn`: `Ok` once its commit decision is durable.
    pub async fn commit(&self, txn: Transaction) -> Result<Committed, ClientError> {
        if txn.writes.is_empty() {
            return Err(ClientError::Empty);
        }
        let chain = txn.chain_order();
        if chain.is_empty() {
            return Err(ClientError::EmptyChain);
        }
        if let Some(&missing) = txn.writes.keys().find(|n| !chain.contains(n)) {
            return Err(ClientError::ChainMissesWrites {
                chain: chain.iter().map(|n| n.0).collect(),
                missing,
            });
        }
        let mut conns = Vec::with_capacity(chain.len());
        for &node in &chain {
            conns.push(self.conn(node).await?);
        }
        let mut writes: Vec<_> = txn.writes.into_iter().collect();
        let head = chain[0];
        // At most two attempts: the head refuses a transaction id at or below its
        // floor without any state (nothing started anywhere), so the transaction is
        // sent again once, with an id above the floor.
        for attempt in 0..2 {
            let id = TxnId(self.inner.next_txn.fetch_add(1, Ordering::Relaxed));
            let prepare = Prepare {
                txn: id,
                client: self.inner.id,
                chain: chain.clone(),
                // Kept for the second attempt (the page data is shared, not copied).
                writes: if attempt == 0 {
                    writes.clone()
                } else {
                    std::mem::take(&mut writes)
                },
                acceptors: self.inner.acceptors.load(Ordering::Relaxed),
            };
            match self.attempt(&conns[0], head, id, prepare).await {
                Err(ClientError::Forgotten { node, txn, floor })
                    if attempt == 0 && node == head && txn <= floor =>
                {
                    continue;
                }
                other => return other,
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Send one `Prepare` to the head and await its outcome.
    async fn attempt(
        &self,
        head_conn: &Conn,
        head: NodeId,
        id: TxnId,
        prepare: Prepare,
    ) -> Result<Committed, ClientError> {
        let (tx, rx) = oneshot::channel();
        let waiters = &self.inner.waiters;
        waiters
            .txns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        if !head_conn.send(ClientRequest::Prepare(prepare)) {
            take(&waiters.txns, &id);
            let error = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection lost");
            return Err(ClientError::Io { node: head, error });
        }
        match tokio::time::timeout(self.inner.timeout, rx).await {
            Ok(Ok(ClientResponse::Outcome { outcome, .. })) => match outcome {
                Outcome::Committed => Ok(Committed { txn: id }),
                Outcome::Aborted(reason) => Err(ClientError::Aborted(reason)),
                Outcome::Forgotten { node, floor } => {
                    // Later ids above the node's floor are not refused as late.
                    // A random step (up to 2^40) keeps clients refused in the same interval
                    // apart, and the floor far from the end of the id space.
                    let above = floor.0.saturating_add(1 + fastrand::u64(0..1 << 40));
                    self.inner.next_txn.fetch_max(above, Ordering::Relaxed);
                    Err(ClientError::Forgotten {
                        node,
                        txn: id,
                        floor,
                    })
                }
            },
            Ok(Ok(ClientResponse::Busy { .. })) => Err(ClientError::Busy { node: head }),
            Ok(Ok(other)) => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Ok(Err(_)) | Err(_) => {
                take(&waiters.txns, &id);
                Err(ClientError::Timeout {
                    node: head,
                    txn: Some(id),
                })
            }
        }
    }

    async fn request(
        &self,
        node: NodeId,
        make: impl FnOnce(u64) -> ClientRequest,
    ) -> Result<ClientResponse, ClientError> {
        let conn = self.conn(node).await?;
        let req = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let waiters = &self.inner.waiters;
        waiters
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req, tx);
        let sent = conn.send(make(req));
        match tokio::time::timeout(self.inner.timeout, rx).await {
            Ok(Ok(response)) if sent => Ok(response),
            _ => {
                take(&waiters.requests, &req);
                Err(ClientError::Timeout { node, txn: None })
            }
        }
    }

    /// Read a committed page of `node`.
    pub async fn read(&self, node: NodeId, page: PageId) -> Result<PageData, ClientError> {
        match self
            .request(node, |req| ClientRequest::Read { req, page })
            .await?
        {
            ClientResponse::Page { version, data, .. } => Ok(PageData { version, data }),
            ClientResponse::Failed { error, .. } => Err(ClientError::Failed { node, error }),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// `node`'s status and counters.
    pub async fn status(&self, node: NodeId) -> Result<NodeStatus, ClientError> {
        match self
            .request(node, |req| ClientRequest::Status { req })
            .await?
        {
            ClientResponse::Status { status, .. } => Ok(status),
            ClientResponse::Failed { error, .. } => Err(ClientError::Failed { node, error }),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Ask `node` to settle its in-doubt transactions now (their deciders, and with
    /// F ≥ 1 a recovery ballot with their acceptors); returns its status as it was
    /// when asked. Poll [`status`](Self::status) to see them settle.
    pub async fn resolve(&self, node: NodeId) -> Result<NodeStatus, ClientError> {
        match self
            .request(node, |req| ClientRequest::Resolve { req })
            .await?
        {
            ClientResponse::Status { status, .. } => Ok(status),
            ClientResponse::Failed { error, .. } => Err(ClientError::Failed { node, error }),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// The outcomes of `txns` as `node` knows them (`None`: open there, or unknown).
    pub async fn verdicts(
        &self,
        node: NodeId,
        txns: Vec<TxnId>,
    ) -> Result<Vec<(TxnId, Option<Verdict>)>, ClientError> {
        match self
            .request(node, |req| ClientRequest::Verdicts { req, txns })
            .await?
        {
            ClientResponse::Verdicts { verdicts, .. } => Ok(verdicts),
            ClientResponse::Failed { error, .. } => Err(ClientError::Failed { node, error }),
            other => Err(ClientError::Protocol(format!("unexpected {other:?}"))),
        }
    }
}

impl tower_service::Service<Transaction> for StorageClient {
    type Response = Committed;
    type Error = ClientError;
    type Future = Pin<Box<dyn Future<Output = Result<Committed, ClientError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, txn: Transaction) -> Self::Future {
        let client = self.clone();
        Box::pin(async move { client.commit(txn).await })
    }
}
