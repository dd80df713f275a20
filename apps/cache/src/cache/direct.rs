//! Direct hits: reads served in the caller's thread, without a trip through the
//! request pipeline, when everything they need is in memory and already verified.
//!
//! - [`Cache::read_direct`]: the bytes into a buffer with `preadv2(RWF_NOWAIT)` (the
//!   request path's `PathService` tries it before the pipeline).
//! - [`Cache::send_direct`]: an NBD read reply written into the socket right away,
//!   from a per-thread buffer the blocks were read and checked in, or (with
//!   [`Verify::OncePerWrite`]) from the mapped cache file, one copy.
//!
//! Both serve only ranges inside one resident chunk whose blocks passed their checksum
//! under the slot's current write sequence ([`Verified`](crate::slot::Verified)), and
//! only after every block's tag carries the slot's instance id and
//! [`check`](crate::slot::check) passed: the pipeline's hit check, so a direct hit is
//! never stale. With [`Verify::EveryRead`] (the default) each block's CRC is checked
//! again, over the bytes served, just before they are served. Anything else (not
//! resident, not verified, not in the page cache, a write in progress, a checksum
//! that fails) takes the normal path, which counts it, reports errors and refetches
//! damaged blocks.

use std::io::{self, IoSlice};

use tokio::net::TcpStream;

use crate::config::Verify;
use crate::slot::{check, Verdict};
use crate::stats::bump;
use crate::store::{ReadBuf, Tag};

use super::{Cache, ChunkKey, Entry, VolumeId};

/// What [`Cache::send_direct`] did.
pub(crate) enum DirectSend {
    /// Nothing was sent: serve the request the normal way.
    NotServed,
    /// Nothing was sent: the socket is full (wait until it is writable and try again).
    Full,
    /// The whole reply went into the socket.
    Sent,
    /// The socket took only part of the reply: these are the bytes still to write
    /// (copied before the slot was unpinned).
    Rest(Vec<u8>),
}

/// Where a direct hit's bytes are: `(slot, instance, seq, first block, blocks)`.
type Found = (u32, u64, u64, u32, u32);

impl Cache {
    /// The resident, verified slot holding `[offset, offset+len)` of `volume`, for a
    /// direct hit (and the policy told of the access); `None`: the normal path.
    fn direct_lookup(&self, volume: VolumeId, offset: u64, len: u64) -> Option<Found> {
        let inner = &self.inner;
        let cs = inner.cfg.chunk_size;
        // The range check first: past it, `offset + len` cannot overflow.
        if len == 0
            || inner.cfg.stall_reads_every > 0
            || inner.is_closed()
            || inner.check_range(volume.0, offset, len).is_err()
            || offset / cs != (offset + len - 1) / cs
        {
            return None;
        }
        let key = ChunkKey {
            volume: volume.0,
            chunk: offset / cs,
        };
        let bs = inner.cfg.block_size as u64;
        let in_chunk = offset % cs;
        let first = (in_chunk / bs) as u32;
        let count = ((in_chunk + len - 1) / bs) as u32 - first + 1;
        let mut st = inner.lock();
        let Some(Entry::Resident(slot)) = st.index.get(&key) else {
            return None;
        };
        let slot = *slot;
        let cell = &inner.store.cells[slot as usize];
        let (instance, seq) = (cell.instance(), cell.seq());
        if !inner.store.verified[slot as usize].covers(seq, first, count) {
            return None;
        }
        st.policy.lookup(key.policy_key());
        Some((slot, instance, seq, first, count))
    }

    /// Whether the tags `raw` of a direct hit carry `instance` and the slot passes the
    /// check (still on `instance`, no write since `seq`).
    fn direct_valid(&self, found: Found, tags: &[crate::store::Tag]) -> bool {
        let (slot, instance, seq, ..) = found;
        let cell = &self.inner.store.cells[slot as usize];
        tags.iter()
            .all(|t| t.magic_ok && check(instance, t.instance, true, cell, seq) == Verdict::Valid)
    }

    /// Whether blocks `first..` of chunk `key` (their bytes `data`, whole blocks)
    /// match their tags' CRCs; always with [`Verify::OncePerWrite`], whose marks
    /// stand for that check.
    fn checksums_pass(&self, key: ChunkKey, first: u32, data: &[u8], tags: &[Tag]) -> bool {
        if self.inner.cfg.verify == Verify::OncePerWrite {
            return true;
        }
        let bs = self.inner.cfg.block_size as usize;
        tags.iter()
            .zip(data.chunks_exact(bs))
            .zip(first..)
            .all(|((tag, block), b)| tag.matches(key.addr(), b, block))
    }

    fn count_direct(&self) {
        bump(&self.inner.counters.hits, "cache_hits_total", 1);
        bump(
            &self.inner.counters.direct_hits,
            "cache_direct_hits_total",
            1,
        );
    }

    /// A direct hit ([`CacheConfig::direct_hits`](crate::CacheConfig::direct_hits)):
    /// `len` bytes of `volume` from `offset`, read in the calling thread with
    /// `preadv2(RWF_NOWAIT)` (never waits for the disk) when the range lies inside one
    /// resident chunk, its blocks passed their checksum under the slot's current write
    /// sequence and the page cache holds their bytes and tags; served only if the
    /// pipeline's hit check passes (see the module docs). `None`: take the normal path.
    pub fn read_direct(&self, volume: VolumeId, offset: u64, len: u64) -> Option<ReadBuf> {
        let inner = &self.inner;
        let pool = inner.direct.as_ref()?;
        let found = self.direct_lookup(volume, offset, len)?;
        let (slot, instance, seq, first, count) = found;
        let (buf, tags) = inner.store.file.read_blocks_now(slot, first, count, pool)?;
        let cs = inner.cfg.chunk_size;
        let key = ChunkKey {
            volume: volume.0,
            chunk: offset / cs,
        };
        if !self.direct_valid(found, &tags) || !self.checksums_pass(key, first, &buf, &tags) {
            return None;
        }
        self.count_direct();
        let bs = inner.cfg.block_size as u64;
        let in_chunk = offset % cs;
        if let Some(mem) = &inner.mem {
            if count == 1 && in_chunk % bs == 0 && len == bs {
                mem.insert(key.block_key(cs / bs, first), slot, instance, seq, &buf);
            }
        }
        Some(ReadBuf::new(buf, (in_chunk % bs) as usize, len as usize))
    }

    /// A direct NBD read reply: `head` (the reply header) and `len` bytes of `volume`
    /// from `offset`, written into `sock` with one non-blocking `writev`, when
    /// [`Cache::read_direct`]'s conditions hold and the page cache holds the bytes.
    ///
    /// With [`Verify::EveryRead`] the blocks are read (`preadv2(RWF_NOWAIT)`) into a
    /// buffer of this thread's, their CRCs checked there and that buffer sent: the
    /// bytes sent are the bytes checked, read once from memory (for ranges that fit
    /// the CPU's cache, as NBD clients' 256 KiB to 1 MiB reads do here; two copies, as
    /// any read-then-send server). With
    /// [`Verify::OncePerWrite`] they go from the mapped cache file straight into the
    /// socket (one copy; pages checked resident with `mincore`).
    ///
    /// The slot is pinned before its check and until the bytes are in the socket (or
    /// copied out), so a concurrent eviction cannot reuse it meanwhile: the bytes sent
    /// are the checked chunk's. A write of the same chunk during the send may show in
    /// the reply, as NBD allows for a read and a write in flight at once (a write
    /// acknowledged before the read arrived is always seen).
    pub(crate) fn send_direct(
        &self,
        volume: VolumeId,
        offset: u64,
        len: u64,
        head: &[u8],
        sock: &TcpStream,
    ) -> DirectSend {
        let inner = &self.inner;
        let every_read = inner.cfg.verify == Verify::EveryRead;
        // The mapping is only needed to send from the page cache (once-per-write).
        let map = inner.store.map.as_ref();
        if inner.direct.is_none() || (!every_read && map.is_none()) {
            return DirectSend::NotServed;
        }
        let Some(found) = self.direct_lookup(volume, offset, len) else {
            return DirectSend::NotServed;
        };
        let (slot, _, _, first, count) = found;
        let file = &inner.store.file;
        let bs = inner.cfg.block_size as u64;
        let len = len as usize;
        let tag_pos = file.tag_pos(slot, first);
        let tag_len = count as usize * crate::store::TAG_SIZE;
        let pos = file.data_pos(slot, first) + offset % bs;
        if let (false, Some(map)) = (every_read, map) {
            if !map.resident(pos, len) || !map.resident(tag_pos, tag_len) {
                return DirectSend::NotServed;
            }
        }
        let _pin = inner.store.pin(slot);
        let mut raw = vec![0u8; tag_len];
        if !file.read_now(tag_pos, &mut raw) {
            return DirectSend::NotServed;
        }
        let tags = crate::store::decode_tags(&raw);
        if !self.direct_valid(found, &tags) {
            return DirectSend::NotServed;
        }
        if let (false, Some(map)) = (every_read, map) {
            let sent = sock.try_io(tokio::io::Interest::WRITABLE, || {
                use std::os::fd::AsRawFd;
                map.writev(sock.as_raw_fd(), head, pos, len)
            });
            return self.after_send(sent, head, len, |done, out| {
                // A part of the range `writev` was given, so inside the mapping.
                out.extend_from_slice(
                    &map.copy(pos + done as u64, len - done)
                        .expect("a part of a range inside the mapping"),
                );
            });
        }
        let key = ChunkKey {
            volume: volume.0,
            chunk: offset / inner.cfg.chunk_size,
        };
        let whole = count as usize * bs as usize;
        let mut large = Vec::new();
        SEND_BUFFER.with_borrow_mut(|kept| {
            // Replies up to `KEPT_SEND_BUFFER` reuse the thread's buffer; a larger
            // one (large chunks) gets its own, so no thread keeps that much.
            let buf = if whole <= KEPT_SEND_BUFFER {
                kept
            } else {
                &mut large
            };
            if buf.len() < whole {
                buf.resize(whole, 0);
            }
            let blocks = &mut buf[..whole];
            if !file.read_now(file.data_pos(slot, first), blocks)
                || !self.checksums_pass(key, first, blocks, &tags)
            {
                return DirectSend::NotServed;
            }
            let skip = (offset % bs) as usize;
            let body = &blocks[skip..skip + len];
            let sent = sock.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::io::writev(sock, &[IoSlice::new(head), IoSlice::new(body)])
                    .map_err(io::Error::from)
            });
            self.after_send(sent, head, len, |done, out| {
                out.extend_from_slice(&body[done..]);
            })
        })
    }

    /// The outcome of a direct reply's `writev` of `head` and `len` bytes that
    /// returned `sent`; `append_rest(done, out)` appends the body's bytes from `done`
    /// on to `out`.
    fn after_send(
        &self,
        sent: io::Result<usize>,
        head: &[u8],
        len: usize,
        append_rest: impl FnOnce(usize, &mut Vec<u8>),
    ) -> DirectSend {
        let n = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return DirectSend::Full,
            // A failing socket: nothing went out; the normal path fails the same way.
            Err(_) => return DirectSend::NotServed,
        };
        self.count_direct();
        if n == head.len() + len {
            return DirectSend::Sent;
        }
        let done = n.saturating_sub(head.len());
        let mut out = Vec::with_capacity(head.len() + len - n);
        if n < head.len() {
            out.extend_from_slice(&head[n..]);
        }
        append_rest(done, &mut out);
        DirectSend::Rest(out)
    }
}

/// The largest reply buffer a thread keeps between direct replies.
const KEPT_SEND_BUFFER: usize = 4 << 20;

thread_local! {
    /// The buffer a thread's direct replies are read, checked and sent from (at most
    /// one chunk; kept, so a reply neither allocates nor zeroes one).
    static SEND_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
