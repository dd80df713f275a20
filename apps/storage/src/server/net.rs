//! The node's TCP side: the listener (peers and clients on one port) and one outgoing
//! link per peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pipewright_runtime::Input;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};

#[cfg(feature = "faults")]
use super::faults::NetFaults;
use super::stages::Inbound;
use super::state::{lock, Effects, Shared};
use crate::auth::{self, ClusterKey, SignedHello};
use crate::protocol::Message;
use crate::types::{ClientId, NodeId};
use crate::wire::{self, codec, Challenge, ClientRequest, ClientResponse, FrameError, Hello};

/// Messages queued per peer link before further sends are dropped (and counted).
pub(crate) const LINK_QUEUE: usize = 4096;

/// What every connection task needs.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) shared: Shared,
    pub(crate) fx: Arc<Effects>,
    /// Hellos must be signed with it.
    pub(crate) key: ClusterKey,
}

impl Ctx {
    fn malformed(&self, error: &FrameError) -> bool {
        let bad = match error {
            FrameError::Io(e) => e.kind() == std::io::ErrorKind::InvalidData,
            FrameError::Closed => false,
            _ => true,
        };
        if bad {
            self.fx.stats.malformed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("storage_malformed_frames_total").increment(1);
        }
        bad
    }
}

async fn next_frame<T, S>(frames: &mut S) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    S: futures::Stream<Item = std::io::Result<bytes::BytesMut>> + Unpin,
{
    match frames.next().await {
        None => Err(FrameError::Closed),
        Some(Err(e)) => Err(FrameError::Io(e)),
        Some(Ok(bytes)) => wire::decode(&bytes),
    }
}

/// Accept connections until the task is aborted.
pub(crate) async fn accept_loop(listener: TcpListener, ctx: Ctx, input: Input<Inbound>) {
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // A cap on open connections keeps file descriptors for the log and the page
        // file (a failed checkpoint stops the node) when something opens connections
        // and leaves them.
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("storage_connections_refused_total").increment(1);
            continue;
        }
        let _ = stream.set_nodelay(true);
        bound_stalls(&stream);
        let Some(input) = input.try_clone() else {
            return;
        };
        let (ctx, open) = (ctx.clone(), open.clone());
        tokio::spawn(async move {
            serve_connection(stream, ctx, input).await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Connections open at once.
const MAX_CONNECTIONS: usize = 1024;

/// How long a new connection has to say who it is.
const HELLO_LIMIT: Duration = Duration::from_secs(10);

/// Answers queued per client before its reads wait (and outcomes for it are dropped,
/// counted: a client that does not read its answers learns them with `verdicts`).
const CLIENT_QUEUE: usize = 256;

async fn serve_connection(stream: TcpStream, ctx: Ctx, input: Input<Inbound>) {
    let mut framed = Framed::new(stream, codec());
    let Ok(challenge) = auth::challenge(ctx.fx.id) else {
        return;
    };
    let said = async {
        framed
            .send(wire::encode(&challenge))
            .await
            .map_err(FrameError::Io)?;
        next_frame::<SignedHello, _>(&mut framed).await
    };
    let hello = match tokio::time::timeout(HELLO_LIMIT, said).await {
        Ok(hello) => hello,
        Err(_) => {
            metrics::counter!("storage_hello_timeouts_total").increment(1);
            return;
        }
    };
    match hello {
        Ok(signed) if signed.verify(&ctx.key, &challenge) => match signed.hello {
            Hello::Peer { .. } => serve_peer(framed, &ctx, input).await,
            Hello::Client { id } => serve_client(framed, id, &ctx, input).await,
        },
        Ok(signed) => deny(framed, &ctx, &signed.hello).await,
        Err(e) => {
            ctx.malformed(&e);
        }
    }
}

/// Refuses a hello not signed with the cluster key: counted, told in words, closed.
async fn deny(mut framed: Frames, ctx: &Ctx, hello: &Hello) {
    ctx.fx.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("storage_auth_failures_total").increment(1);
    let (who, fix) = match hello {
        Hello::Peer { from } => (
            format!("node {from}"),
            "give it the same peers file (`key = ...`) as the other nodes",
        ),
        Hello::Client { id } => (
            format!("client {id}"),
            "give it the clients' peers file of this cluster, written by `pipewright storage \
             client-peers` from the nodes' file (never the nodes' file itself)",
        ),
    };
    let reason = format!(
        "node {} refused {who}: its hello is not signed with this cluster's key; {fix}",
        ctx.fx.id
    );
    let _ = tokio::time::timeout(
        HELLO_LIMIT,
        framed.send(wire::encode(&ClientResponse::Denied { reason })),
    )
    .await;
}

type Frames = Framed<TcpStream, LengthDelimitedCodec>;

async fn serve_peer(mut framed: Frames, ctx: &Ctx, mut input: Input<Inbound>) {
    loop {
        match next_frame::<Message, _>(&mut framed).await {
            Ok(msg) => {
                if input.send_async(Inbound::Peer(msg)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                ctx.malformed(&e);
                return;
            }
        }
    }
}

async fn serve_client(framed: Frames, id: ClientId, ctx: &Ctx, mut input: Input<Inbound>) {
    // Bounded: a client that sends without reading its answers is stopped being read
    // (its reads wait for room) instead of growing the node's memory.
    let (tx, mut rx) = mpsc::channel::<ClientResponse>(CLIENT_QUEUE);
    let _ = tx.send(ClientResponse::Welcome { node: ctx.fx.id }).await;
    ctx.fx
        .clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx.clone());
    let (mut sink, mut frames) = framed.split();
    let writer = tokio::spawn(async move {
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
    loop {
        let request = match next_frame::<ClientRequest, _>(&mut frames).await {
            Ok(request) => request,
            Err(e) => {
                ctx.malformed(&e);
                break;
            }
        };
        match request {
            ClientRequest::Prepare(mut prepare) => {
                prepare.client = id;
                // A chain through a node this one cannot reach would leave its intent
                // and page locks in doubt forever: refused before anything starts.
                let unknown = prepare
                    .chain
                    .iter()
                    .find(|n| **n != ctx.fx.id && !ctx.fx.links.contains_key(n))
                    .copied();
                if let Some(node) = unknown {
                    let reason = crate::protocol::AbortReason::Malformed {
                        node: ctx.fx.id,
                        what: crate::protocol::Malformed::UnknownNode(node),
                    };
                    let _ = tx
                        .send(ClientResponse::Outcome {
                            txn: prepare.txn,
                            outcome: crate::protocol::Outcome::Aborted(reason),
                        })
                        .await;
                } else if !ctx.fx.admit() {
                    let _ = tx.send(ClientResponse::Busy { txn: prepare.txn }).await;
                } else if input.send_async(Inbound::Client(prepare)).await.is_err() {
                    break;
                }
            }
            ClientRequest::Read { req, page } => {
                let read = lock(&ctx.shared).pages.read(page);
                let _ = tx
                    .send(match read {
                        Ok((version, data)) => ClientResponse::Page { req, version, data },
                        Err(e) => ClientResponse::Failed {
                            req,
                            error: e.to_string(),
                        },
                    })
                    .await;
            }
            ClientRequest::Status { req } => {
                let status = lock(&ctx.shared).status(&ctx.fx);
                let _ = tx.send(ClientResponse::Status { req, status }).await;
            }
            ClientRequest::Resolve { req } => {
                let status = lock(&ctx.shared).status(&ctx.fx);
                if input.send_async(Inbound::Resolve).await.is_err() {
                    break;
                }
                let _ = tx.send(ClientResponse::Status { req, status }).await;
            }
            ClientRequest::Verdicts { req, txns } => {
                let verdicts = {
                    let shared = lock(&ctx.shared);
                    txns.into_iter()
                        .map(|t| (t, shared.node.verdict(t)))
                        .collect()
                };
                let _ = tx.send(ClientResponse::Verdicts { req, verdicts }).await;
            }
        }
    }
    {
        let mut clients = ctx.fx.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.get(&id).is_some_and(|t| t.same_channel(&tx)) {
            clients.remove(&id);
        }
    }
    drop(tx);
    writer.abort();
}

/// A peer link's queue, created before the pipeline runs (the node's effects hold the
/// sending side); its task starts once the pipeline's input exists.
pub(crate) struct PendingLink {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) rx: mpsc::Receiver<Message>,
}

/// Queues for one link per node of `peers` (the node's own is a loopback).
pub(crate) fn link_queues(
    peers: impl IntoIterator<Item = (NodeId, SocketAddr)>,
) -> (HashMap<NodeId, mpsc::Sender<Message>>, Vec<PendingLink>) {
    let mut links = HashMap::new();
    let mut pending = Vec::new();
    for (id, addr) in peers {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        links.insert(id, tx);
        pending.push(PendingLink { id, addr, rx });
    }
    (links, pending)
}

/// Start the link tasks: a reconnecting TCP link per peer (behind a fault injector
/// if `faults` is set), a loopback for `me`.
pub(crate) fn start_links(
    me: NodeId,
    key: &ClusterKey,
    pending: Vec<PendingLink>,
    input: &Input<Inbound>,
    #[cfg(feature = "faults")] faults: Option<NetFaults>,
    #[cfg(feature = "faults")] fx: &Arc<Effects>,
) {
    // Links leave from the node's own address in the peers file, so a node is one
    // address on the network: what a firewall rule on it (or a partition test) cuts
    // off is the whole node, its outgoing links included.
    let source = pending
        .iter()
        .find(|link| link.id == me)
        .map(|link| link.addr.ip())
        .filter(|ip| !ip.is_unspecified());
    for PendingLink { id, addr, rx } in pending {
        if id == me {
            if let Some(input) = input.try_clone() {
                tokio::spawn(loopback(rx, input));
            }
        } else {
            #[cfg(feature = "faults")]
            if let Some(faults) = faults {
                let (tx, faulty_rx) = mpsc::channel(LINK_QUEUE);
                let rng = fastrand::Rng::with_seed(
                    faults.seed ^ (u64::from(me.0) << 32) ^ u64::from(id.0),
                );
                tokio::spawn(inject_faults(rx, tx, faults, rng, fx.clone()));
                tokio::spawn(link(me, id, key.clone(), source, addr, faulty_rx));
                continue;
            }
            tokio::spawn(link(me, id, key.clone(), source, addr, rx));
        }
    }
}

/// The fault injector in front of one peer link: drops, duplicates and delays (and
/// so reorders) messages as [`NetFaults`] says, counting what it did.
#[cfg(feature = "faults")]
async fn inject_faults(
    mut rx: mpsc::Receiver<Message>,
    tx: mpsc::Sender<Message>,
    faults: NetFaults,
    mut rng: fastrand::Rng,
    fx: Arc<Effects>,
) {
    let stats = &fx.stats;
    while let Some(msg) = rx.recv().await {
        if rng.f64() < faults.drop {
            stats.net_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let copies = if rng.f64() < faults.duplicate {
            stats.net_duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = faults.max_delay.mul_f64(rng.f64());
            let (tx, msg) = (tx.clone(), msg.clone());
            if delay.is_zero() {
                let _ = tx.try_send(msg);
            } else {
                stats.net_delayed.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.try_send(msg);
                });
            }
        }
    }
}

async fn loopback(mut rx: mpsc::Receiver<Message>, mut input: Input<Inbound>) {
    while let Some(msg) = rx.recv().await {
        if input.send_async(Inbound::Peer(msg)).await.is_err() {
            return;
        }
    }
}

/// One connection to `addr`, re-established with backoff; messages queued while it is
/// down wait in the queue (up to [`LINK_QUEUE`]), messages written to a connection that
/// then fails are lost (the protocol re-sends what matters).
async fn link(
    me: NodeId,
    to: NodeId,
    key: ClusterKey,
    source: Option<IpAddr>,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Message>,
) {
    let mut backoff = Duration::from_millis(20);
    let mut told = false;
    loop {
        let began = tokio::time::Instant::now();
        if let Ok(stream) = connect_link(source, addr).await {
            match serve_link(me, to, &key, stream, &mut rx).await {
                LinkEnd::Closed => return,
                LinkEnd::Denied(reason) => {
                    // Not a passing failure: try again only slowly.
                    refused_once(&mut told, &reason);
                    tokio::time::sleep(DENIED_BACKOFF).await;
                    continue;
                }
                // A link that carried messages for a while starts over quickly; one
                // that fails at once (a peer at its connection limit, or refusing
                // without saying so) backs off like a failed connect.
                LinkEnd::Broken if began.elapsed() >= LINK_UP_LONG_ENOUGH => {
                    backoff = Duration::from_millis(20);
                }
                LinkEnd::Broken => {}
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// How a link's connection ended.
enum LinkEnd {
    /// The node is stopping (its queue closed).
    Closed,
    /// The peer refused the hello, in these words.
    Denied(String),
    /// Anything else: connect again.
    Broken,
}

/// A link that stayed up this long reconnects without backing off.
const LINK_UP_LONG_ENOUGH: Duration = Duration::from_secs(1);

/// Says hello on `stream` (to node `to`, which must be the one that answers) and sends
/// queued messages until the connection fails or the queue closes.
async fn serve_link(
    me: NodeId,
    to: NodeId,
    key: &ClusterKey,
    stream: TcpStream,
    rx: &mut mpsc::Receiver<Message>,
) -> LinkEnd {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedWrite::new(write, codec());
    // After its challenge the peer writes to this connection only to refuse it:
    // reading tells us when it is gone.
    let mut closed = FramedRead::new(read, codec());
    let challenge = tokio::time::timeout(LINK_STALL_LIMIT, next_frame::<Challenge, _>(&mut closed));
    let challenge = match challenge.await {
        Ok(Ok(challenge)) if challenge.node == to => challenge,
        Ok(Ok(challenge)) => {
            return LinkEnd::Denied(format!(
                "the node at node {to}'s address is node {}: check the peers file",
                challenge.node
            ))
        }
        _ => return LinkEnd::Broken,
    };
    let hello = SignedHello::sign(key, &challenge, Hello::Peer { from: me });
    if frames.send(wire::encode(&hello)).await.is_err() {
        return LinkEnd::Broken;
    }
    loop {
        let msg = tokio::select! {
            // A refusal is read before anything more is written.
            biased;
            refused = next_frame::<ClientResponse, _>(&mut closed) => {
                return match refused {
                    Ok(ClientResponse::Denied { reason }) => LinkEnd::Denied(reason),
                    _ => LinkEnd::Broken,
                };
            }
            msg = rx.recv() => msg,
        };
        let Some(msg) = msg else {
            return LinkEnd::Closed;
        };
        let mut ok = frames.feed(wire::encode(&msg)).await.is_ok();
        while ok {
            match rx.try_recv() {
                Ok(more) => ok = frames.feed(wire::encode(&more)).await.is_ok(),
                Err(_) => break,
            }
        }
        if !ok || SinkExt::<bytes::Bytes>::flush(&mut frames).await.is_err() {
            return LinkEnd::Broken;
        }
    }
}

/// How long a link refused for its key waits before it tries again.
const DENIED_BACKOFF: Duration = Duration::from_secs(5);

/// Says once on stderr why a peer refuses this node's link (a wrong key is a
/// configuration error nothing else would show).
fn refused_once(told: &mut bool, reason: &str) {
    metrics::counter!("storage_link_refused_total").increment(1);
    if !std::mem::replace(told, true) {
        eprintln!("storage: {reason}");
    }
}

/// How long a peer link may go without its peer acknowledging what was sent (or
/// answering keepalive probes while idle, or opening its receive window again after
/// it stopped reading) before it is dropped and re-established; accepted
/// connections get the same bound, so a vanished peer or client does not keep a
/// task and a socket forever. A
/// peer host that vanished without a reset (power loss, a partition) would otherwise
/// hold the link through TCP's retransmissions (backing off to two minutes apart,
/// giving up after ~15 minutes), and the node would not reach the peer, or its next
/// incarnation, until one of them got through.
const LINK_STALL_LIMIT: Duration = Duration::from_secs(5);

/// Connect to `addr` as [`connect_from`] does, giving up after [`LINK_STALL_LIMIT`]
/// (a SYN into a partition would otherwise wait for minutes of retries, long after
/// it healed), and bound how long the link may stall ([`bound_stalls`]).
async fn connect_link(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(LINK_STALL_LIMIT, connect_from(source, addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    bound_stalls(&stream);
    Ok(stream)
}

/// `TCP_USER_TIMEOUT` (unacknowledged data) and keepalive probes (idle links), both
/// at about [`LINK_STALL_LIMIT`]: a dead link then fails its next write or read. Best
/// effort: a link without them still works, as before.
fn bound_stalls(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let limit_ms = LINK_STALL_LIMIT.as_millis() as u32;
    let _ = setsockopt(stream, sockopt::TcpUserTimeout, &limit_ms);
    let _ = setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = setsockopt(stream, sockopt::TcpKeepIdle, &2);
    let _ = setsockopt(stream, sockopt::TcpKeepInterval, &1);
    let _ = setsockopt(stream, sockopt::TcpKeepCount, &3);
}

/// Connect to `addr` from `source` (any port) when it is given and of the same
/// family; from wherever the kernel picks if binding to it fails (the peers file may
/// name an address that is not local, e.g. behind NAT).
async fn connect_from(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = || {
        if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    };
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        let bound = socket()?;
        // The port is chosen at connect time (by the 4-tuple), not reserved at bind
        // time from the range listeners also bind from: a link reconnecting while
        // a node is down cannot take that node's port.
        let _ = nix::sys::socket::setsockopt(
            &bound,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        if bound.bind(SocketAddr::new(ip, 0)).is_ok() {
            match bound.connect(addr).await {
                // The address cannot reach the peer (a local-only address, another
                // network): connect from wherever the kernel picks instead.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrNotAvailable
                            | std::io::ErrorKind::InvalidInput
                            | std::io::ErrorKind::NetworkUnreachable
                            | std::io::ErrorKind::HostUnreachable
                    ) => {}
                result => return result,
            }
        }
    }
    socket()?.connect(addr).await
}
