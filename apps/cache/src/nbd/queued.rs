//! The transmission loop of a connection served through the request pipeline: one
//! task per connection, no task and no future per request. It parses requests out
//! of what the socket delivered, sends reads and writes into the pipeline with its
//! connection's answer queue ([`PathService::send_queued`]), and writes the replies
//! of each burst of answers with one `writev` as they arrive: the connection is woken
//! once per burst of answers, not once per request. Requests the pipeline does not
//! take (flush, write-zeroes, oversized reads, unknown commands) are served by a task
//! of their own and answered through a side channel.

use std::io;
use std::sync::Arc;

use pipewright_stages::{Answer, Answers};
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::server::{bump, errno, serve, write_all_vectored, NbdStats};
use super::wire::*;
use crate::cache::{Cache, DirectSend, VolumeId};
use crate::pipeline::{PathResponse, PathService, PipelineReply, ReadBuf};
use crate::service::BlockRequest;

/// Replies written together, at most this many per `writev`.
const REPLIES_PER_WRITE: usize = 64;

/// Reads of at least this many bytes are tried as direct replies written into the
/// socket right here (`Cache::send_direct`); smaller ones go through the pipeline.
const DIRECT_MIN: u32 = 32 << 10;

/// What the connection knows of a request in flight.
#[derive(Clone, Copy)]
struct InFlight {
    cookie: u64,
    write: bool,
    /// Its payload bytes (what it holds of the connection's byte budget).
    bytes: u64,
}

/// The requests in flight, by the id their answers come back with.
#[derive(Default)]
struct Table {
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    len: usize,
}

impl Table {
    fn insert(&mut self, r: InFlight) -> u64 {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(r);
                i as u64
            }
            None => {
                self.slots.push(Some(r));
                (self.slots.len() - 1) as u64
            }
        }
    }

    fn take(&mut self, id: u64) -> Option<InFlight> {
        let r = self.slots.get_mut(id as usize)?.take()?;
        self.free.push(id as usize);
        self.len -= 1;
        Some(r)
    }
}

/// A connection's state while it serves requests.
pub(super) struct Connection {
    pub(super) cache: Cache,
    pub(super) path: PathService,
    pub(super) stats: Arc<NbdStats>,
    pub(super) max_in_flight: usize,
    /// The payload bytes the requests in flight may hold together (see
    /// [`NbdServer::max_in_flight_bytes`](super::NbdServer::max_in_flight_bytes)).
    pub(super) max_in_flight_bytes: u64,
    pub(super) volume: VolumeId,
}

/// A complete request at the front of `buf` (its header, and its payload for a
/// write): the request and the bytes it takes; `None` while more bytes are needed.
fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, super::RequestError> {
    let Some(header) = buf.first_chunk::<{ Request::LEN }>() else {
        return Ok(None);
    };
    let req = Request::parse(header)?;
    let need = Request::LEN
        + if req.kind == CMD_WRITE {
            req.len as usize
        } else {
            0
        };
    Ok((buf.len() >= need).then_some((req, need)))
}

impl Connection {
    /// Serves the connection until the client disconnects (or breaks the protocol);
    /// every accepted request is answered before it returns.
    pub(super) async fn run(
        mut self,
        mut rd: BufReader<OwnedReadHalf>,
        mut wr: OwnedWriteHalf,
    ) -> io::Result<()> {
        let mut answers = Answers::<PipelineReply>::new();
        let (side_tx, mut side_rx) = mpsc::unbounded_channel::<(u64, Result<ReadBuf, u32>)>();
        let mut table = Table::default();
        let mut side_in_flight = 0usize;
        let mut in_flight_bytes = 0u64;
        // The front request is waiting for the budget (counted once per wait, not
        // once per wake-up).
        let mut budget_blocked = false;
        let mut inbuf: Vec<u8> = Vec::with_capacity(256 << 10);
        let mut got: Vec<Answer<PipelineReply>> = Vec::with_capacity(REPLIES_PER_WRITE);
        let mut side_got = Vec::with_capacity(REPLIES_PER_WRITE);
        let mut ending: Option<io::Result<()>> = None;
        loop {
            // Take every complete request that has arrived, up to the in-flight limit.
            let mut pos = 0;
            // The front request waits for answers to free the byte budget: no more is
            // read meanwhile (a client cannot make the connection buffer more).
            let mut over_budget = false;
            while ending.is_none() && table.len + side_in_flight < self.max_in_flight {
                let (req, used) = match parse(&inbuf[pos..]) {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        bump(
                            &self.stats.protocol_errors,
                            "cache_nbd_protocol_errors_total",
                        );
                        ending = Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            e.to_string(),
                        )));
                        break;
                    }
                };
                let bytes = match req.kind {
                    CMD_READ | CMD_WRITE if req.len <= MAX_PAYLOAD => u64::from(req.len),
                    _ => 0,
                };
                if in_flight_bytes > 0 && in_flight_bytes + bytes > self.max_in_flight_bytes {
                    if !budget_blocked {
                        bump(&self.stats.budget_waits, "cache_nbd_budget_waits_total");
                        budget_blocked = true;
                    }
                    over_budget = true;
                    break;
                }
                budget_blocked = false;
                let payload = &inbuf[pos + Request::LEN..pos + used];
                pos += used;
                if req.kind == CMD_READ && (DIRECT_MIN..=MAX_PAYLOAD).contains(&req.len) {
                    // A large read of resident, verified bytes: written into the
                    // socket right here (`send_direct`).
                    let mut head = Vec::with_capacity(16);
                    simple_reply(&mut head, 0, req.cookie);
                    let served = loop {
                        let sock = wr.as_ref();
                        match self.cache.send_direct(
                            self.volume,
                            req.offset,
                            req.len as u64,
                            &head,
                            sock,
                        ) {
                            DirectSend::Sent => break true,
                            DirectSend::Rest(rest) => {
                                tokio::io::AsyncWriteExt::write_all(&mut wr, &rest).await?;
                                break true;
                            }
                            // Nothing pinned while waiting: the check runs again.
                            DirectSend::Full => sock.writable().await?,
                            DirectSend::NotServed => break false,
                        }
                    };
                    if served {
                        bump(&self.stats.requests, "cache_nbd_requests_total");
                        continue;
                    }
                }
                match req.kind {
                    CMD_DISC => ending = Some(Ok(())),
                    CMD_READ | CMD_WRITE if req.len <= MAX_PAYLOAD => {
                        let write = req.kind == CMD_WRITE;
                        in_flight_bytes += bytes;
                        let id = table.insert(InFlight {
                            cookie: req.cookie,
                            write,
                            bytes,
                        });
                        let request = if write {
                            BlockRequest::Write {
                                volume: self.volume,
                                offset: req.offset,
                                data: payload.to_vec(),
                            }
                        } else {
                            BlockRequest::Read {
                                volume: self.volume,
                                offset: req.offset,
                                len: req.len as u64,
                            }
                        };
                        if let Err(e) = self.path.send_queued(&answers, id, request).await {
                            // Not taken (the pipeline is closed): answered all the same.
                            let (ticket, _) = answers.tag(id, ()).into_parts();
                            ticket.answer(Err(e));
                        }
                    }
                    _ => {
                        side_in_flight += 1;
                        let (cache, tx, volume) =
                            (self.cache.clone(), side_tx.clone(), self.volume);
                        let payload = payload.to_vec();
                        tokio::spawn(async move {
                            let reply = serve(&cache, volume, req, payload).await;
                            let _ = tx.send((req.cookie, reply));
                        });
                    }
                }
            }
            if pos > 0 {
                inbuf.drain(..pos);
            }
            if ending.is_some() && table.len == 0 && side_in_flight == 0 {
                break;
            }
            let reading =
                ending.is_none() && !over_budget && table.len + side_in_flight < self.max_in_flight;
            if reading && inbuf.capacity() - inbuf.len() < 64 << 10 {
                inbuf.reserve(256 << 10);
            }
            tokio::select! {
                biased;
                _ = answers.recv_many(&mut got, REPLIES_PER_WRITE), if table.len > 0 => {
                    let mut replies = Vec::with_capacity(got.len());
                    let mut answered_bytes = 0;
                    for (id, answer) in got.drain(..) {
                        let Some(r) = table.take(id) else { continue };
                        answered_bytes += r.bytes;
                        let reply = match answer {
                            Ok(Ok(PathResponse::Data(d))) => Ok(d),
                            Ok(Ok(_)) => Ok(ReadBuf::from_vec(Vec::new())),
                            Ok(Err(e)) => Err(errno(&e, r.write)),
                            // Dropped inside the pipeline (shutdown): an I/O error.
                            Err(_) => Err(EIO),
                        };
                        replies.push((r.cookie, reply));
                    }
                    self.write(&mut wr, replies).await?;
                    // A read's data is held until it is in the socket.
                    in_flight_bytes -= answered_bytes;
                }
                n = side_rx.recv_many(&mut side_got, REPLIES_PER_WRITE), if side_in_flight > 0 => {
                    side_in_flight -= n;
                    let replies = std::mem::take(&mut side_got);
                    self.write(&mut wr, replies).await?;
                }
                r = rd.read_buf(&mut inbuf), if reading => match r {
                    Ok(0) => ending = Some(Err(io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => {}
                    Err(e) => ending = Some(Err(e)),
                },
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
        match ending.expect("the loop ends with a reason") {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            r => r,
        }
    }

    /// Writes `replies` (cookie and payload or error code) with as few `writev`s as
    /// the socket allows; counts them.
    async fn write(
        &self,
        wr: &mut OwnedWriteHalf,
        replies: Vec<(u64, Result<ReadBuf, u32>)>,
    ) -> io::Result<()> {
        let mut headers = Vec::with_capacity(16 * replies.len());
        for (cookie, reply) in &replies {
            bump(&self.stats.requests, "cache_nbd_requests_total");
            let code = match reply {
                Ok(_) => 0,
                Err(code) => {
                    bump(&self.stats.error_replies, "cache_nbd_error_replies_total");
                    *code
                }
            };
            simple_reply(&mut headers, code, *cookie);
        }
        let parts: Vec<&[u8]> = replies
            .iter()
            .enumerate()
            .flat_map(|(i, (_, r))| {
                let data: &[u8] = match r {
                    Ok(d) => d,
                    Err(_) => &[],
                };
                [&headers[16 * i..16 * (i + 1)], data]
            })
            .filter(|p| !p.is_empty())
            .collect();
        write_all_vectored(wr, &parts).await
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn stream(reqs: &[(u16, u64, u32)]) -> (Vec<u8>, Vec<Request>) {
        let mut bytes = Vec::new();
        let mut out = Vec::new();
        for (i, &(kind, offset, len)) in reqs.iter().enumerate() {
            let r = Request {
                flags: 0,
                kind,
                cookie: i as u64,
                offset,
                len,
            };
            bytes.extend_from_slice(&r.emit());
            if kind == CMD_WRITE {
                bytes.extend(std::iter::repeat_n(i as u8, len as usize));
            }
            out.push(r);
        }
        (bytes, out)
    }

    proptest! {
        /// Requests (writes with their payloads) arriving in pieces of any sizes parse
        /// back exactly, in order, each as soon as its last byte is there, and never
        /// before.
        #[test]
        fn requests_split_anywhere_parse_back_in_order(
            reqs in prop::collection::vec(
                (prop::sample::select(vec![CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_WRITE_ZEROES]),
                 any::<u64>(), 0u32..3000),
                1..12),
            cuts in prop::collection::vec(1usize..700, 1..64),
        ) {
            let (bytes, want) = stream(&reqs);
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let (mut at, mut cut) = (0, 0);
            while at < bytes.len() {
                let n = cuts[cut % cuts.len()].min(bytes.len() - at);
                cut += 1;
                buf.extend_from_slice(&bytes[at..at + n]);
                at += n;
                let mut pos = 0;
                while let Some((req, used)) = parse(&buf[pos..]).unwrap() {
                    if req.kind == CMD_WRITE {
                        let payload = &buf[pos + Request::LEN..pos + used];
                        prop_assert_eq!(payload.len(), req.len as usize);
                        prop_assert!(payload.iter().all(|&b| b == req.cookie as u8));
                    }
                    got.push(req);
                    pos += used;
                }
                buf.drain(..pos);
            }
            prop_assert_eq!(got, want);
            prop_assert!(buf.is_empty());
        }

        /// Garbage is refused (bad magic) or waits for more bytes; it never panics.
        #[test]
        fn any_bytes_parse_or_are_refused(b in prop::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse(&b);
        }
    }
}
