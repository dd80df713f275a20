//! A direct connection to one producer, as a tower::Service (for the peers).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{SinkExt, StreamExt};

use pipewright::balance::{ProducerFrame, Request};
use tokio::sync::{mpsc, oneshot};
use tower::Service;

use crate::BoxError;

pub(crate) type Reply = oneshot::Sender<Result<Vec<u8>, BoxError>>;

#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) tx: mpsc::UnboundedSender<(Vec<u8>, Reply)>,
    pub(crate) dead: Arc<AtomicBool>,
}

impl Endpoint {
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, Reply)>();
        let dead = Arc::new(AtomicBool::new(false));
        let d = dead.clone();
        tokio::spawn(async move {
            let codec = pipewright::balance::codec(pipewright::balance::MAX_PRODUCER_FRAME);
            let (mut sink, mut frames) = tokio_util_framed(stream, codec).split();
            let mut pending: HashMap<u64, Reply> = HashMap::new();
            let mut next = 0u64;
            loop {
                tokio::select! {
                    m = rx.recv() => {
                        let Some((payload, reply)) = m else { break };
                        next += 1;
                        pending.insert(next, reply);
                        let req = Request { id: next, idempotent: false, payload };
                        if sink.send(pipewright::balance::encode(&req)).await.is_err() { break; }
                    }
                    f = frames.next() => {
                        let Some(Ok(b)) = f else { break };
                        let Ok(frame) = pipewright::balance::decode::<ProducerFrame>(&b) else { break };
                        match frame {
                            ProducerFrame::Done { id, payload } => {
                                if let Some(r) = pending.remove(&id) { let _ = r.send(Ok(payload)); }
                            }
                            ProducerFrame::Failed { id, reason } => {
                                if let Some(r) = pending.remove(&id) { let _ = r.send(Err(reason.into())); }
                            }
                            ProducerFrame::Busy { id } => {
                                if let Some(r) = pending.remove(&id) { let _ = r.send(Err("busy".into())); }
                            }
                            ProducerFrame::GoAway => {}
                        }
                    }
                }
            }
            d.store(true, Ordering::Release);
            for (_, r) in pending.drain() {
                let _ = r.send(Err("connection lost".into()));
            }
            rx.close();
            while let Ok((_, r)) = rx.try_recv() {
                let _ = r.send(Err("connection lost".into()));
            }
        });
        Self { tx, dead }
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

pub(crate) fn tokio_util_framed(
    s: tokio::net::TcpStream,
    c: tokio_util::codec::LengthDelimitedCodec,
) -> tokio_util::codec::Framed<tokio::net::TcpStream, tokio_util::codec::LengthDelimitedCodec> {
    tokio_util::codec::Framed::new(s, c)
}

impl Service<Vec<u8>> for Endpoint {
    type Response = Vec<u8>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Vec<u8>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.is_dead() {
            Poll::Ready(Err("endpoint down".into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, payload: Vec<u8>) -> Self::Future {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send((payload, tx));
        Box::pin(async move {
            if sent.is_err() {
                return Err("endpoint down".into());
            }
            rx.await.unwrap_or_else(|_| Err("connection lost".into()))
        })
    }
}
