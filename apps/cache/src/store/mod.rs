//! The chunk store: one preallocated cache file of `chunks` slots of `chunk_size`
//! bytes, with a tag per block.
//!
//! ```text
//!  0            block_size                         data_off
//!  | header     | tags: 16 B per block of every    | chunk 0 | chunk 1 | ... | chunk N-1 |
//!  |            | slot, padded to a block          |         |         |     |           |
//! ```
//!
//! A tag is the instance id the block was written under, a CRC-32C over (instance,
//! volume, chunk number, block index, bytes) and a magic; a zeroed tag (never
//! written) fails every check.
//!
//! # Two I/O paths, chosen by the caller
//!
//! Block reads and writes go through a [`BlockIo`], picked explicitly by each caller:
//!
//! - [`Uring`]: the runtime's per-worker io_uring driver. The request pipeline's hit,
//!   fill and write stages run on pipewright workers and use it: a read of a range of
//!   blocks is one read of the data and one of the tags, both in flight together,
//!   into buffers of the stage's [`BufferPool`]s (registered with the worker's ring as
//!   fixed buffers when the plan gives the stage a `UringBudget`, so the reads are
//!   `READ_FIXED`); a write is two positioned writes (data, tags) on the worker
//!   itself (a buffered write only copies into the page cache; through io_uring,
//!   ext4 hands it to an io-wq thread), then, when it must be durable, `fdatasync`
//!   through the ring. Its futures are `!Send` (the ring is the worker
//!   thread's).
//! - [`Blocking`]: positioned `pread`/`pwrite` on tokio's blocking pool. Everything
//!   that is not on a worker uses it: [`Cache`](crate::Cache)'s own methods (and so
//!   [`CacheService`](crate::CacheService), the CLI, replay and tests calling the
//!   cache directly), and the background flusher and evictor (eviction and write-back
//!   also run on it when a fill on a worker has to evict inline).
//!
//! Both write the same bytes and tags and read them the same way; the validation
//! (instance id, write sequence, CRC) is the caller's and does not depend on the path.
//! A write puts down the bytes and then the tags, unsynced: a crash between them
//! leaves a block whose tag does not match its bytes (CRC), which the check catches,
//! exactly as when bytes and tags are written one after the other but reach the disk
//! in another order before the `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use pipewright_runtime::uring::PooledBuf;

use crate::error::CacheError;
use crate::slot::{SlotCell, SlotPin, Verified};

mod block_io;
mod mapped;

pub(crate) use block_io::{pool_classes, BlockIo, Blocking, Uring};
pub(crate) use mapped::Mapping;

const MAGIC: &[u8; 8] = b"PWCACHE1";
const TAG_MAGIC: u32 = 0x5057_4254;
/// Bytes of one block tag.
pub(crate) const TAG_SIZE: usize = 16;

/// The shape of a cache file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) chunks: u32,
    pub(crate) chunk_size: u64,
    pub(crate) block_size: u32,
}

impl Geometry {
    pub(crate) fn blocks_per_chunk(&self) -> u32 {
        (self.chunk_size / self.block_size as u64) as u32
    }
    fn tag_off(&self) -> u64 {
        self.block_size as u64
    }
    fn data_off(&self) -> u64 {
        let tags = self.chunks as u64 * self.blocks_per_chunk() as u64 * TAG_SIZE as u64;
        self.tag_off() + tags.div_ceil(self.block_size as u64) * self.block_size as u64
    }
    /// Bytes of the whole file.
    pub(crate) fn file_size(&self) -> u64 {
        self.data_off() + self.chunks as u64 * self.chunk_size
    }
    fn describe(&self) -> String {
        format!(
            "{} chunks of {} bytes, {}-byte blocks",
            self.chunks, self.chunk_size, self.block_size
        )
    }
}

/// The address a block's checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockAddr {
    pub(crate) volume: u32,
    pub(crate) chunk: u64,
}

/// A block's tag as read from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    pub(crate) instance: u64,
    pub(crate) crc: u32,
    pub(crate) magic_ok: bool,
}

pub(crate) fn block_crc(instance: u64, addr: BlockAddr, block: u32, data: &[u8]) -> u32 {
    let mut head = [0u8; 24];
    head[..8].copy_from_slice(&instance.to_le_bytes());
    head[8..12].copy_from_slice(&addr.volume.to_le_bytes());
    head[12..20].copy_from_slice(&addr.chunk.to_le_bytes());
    head[20..24].copy_from_slice(&block.to_le_bytes());
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    crc.update(&head);
    crc.update(data);
    crc.finalize() as u32
}

impl Tag {
    fn decode(b: &[u8]) -> Tag {
        let instance = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        let magic = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        Tag {
            instance,
            crc,
            magic_ok: magic == TAG_MAGIC,
        }
    }
    fn encode(instance: u64, crc: u32, out: &mut [u8]) {
        out[..8].copy_from_slice(&instance.to_le_bytes());
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        out[12..16].copy_from_slice(&TAG_MAGIC.to_le_bytes());
    }
    /// Whether `data` is what this tag was written for.
    pub(crate) fn matches(&self, addr: BlockAddr, block: u32, data: &[u8]) -> bool {
        self.magic_ok && self.crc == block_crc(self.instance, addr, block, data)
    }
}

/// The cache file, its geometry and the slot cells.
#[derive(Debug)]
pub(crate) struct ChunkStore {
    /// The file and where things are in it (what both I/O paths need).
    pub(crate) file: StoreFile,
    pub(crate) cells: Vec<SlotCell>,
    /// Per slot, the blocks whose checksum passed under its current write sequence
    /// (a hit of them skips the CRC pass: see [`Verified`]).
    pub(crate) verified: Vec<Verified>,
    /// The file mapped read-only for direct replies (`None` if it could not be mapped).
    pub(crate) map: Option<Mapping>,
    /// Identifies this formatting of the file; the metadata must carry the same.
    pub(crate) nonce: u64,
}

impl ChunkStore {
    /// Opens the cache file, formatting it (preallocated, new nonce) when it is new or
    /// its header is damaged, unless `unflushed` chunks hold writes not yet written
    /// back (a damaged header is then an error, not a reformat); refuses a file with
    /// another geometry.
    pub(crate) fn open(
        path: &Path,
        geometry: Geometry,
        unflushed: usize,
    ) -> Result<(Self, bool), CacheError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut header = vec![0u8; 64];
        let len = file.metadata()?.len();
        let mut formatted = false;
        let nonce =
            if len >= 64 && file.read_exact_at(&mut header, 0).is_ok() && &header[..8] == MAGIC {
                let crc = u32::from_le_bytes(header[40..44].try_into().expect("4"));
                if crc_fast::crc32_iscsi(&header[..40]) != crc {
                    None
                } else {
                    let found = Geometry {
                        block_size: u32::from_le_bytes(header[12..16].try_into().expect("4")),
                        chunk_size: u64::from_le_bytes(header[16..24].try_into().expect("8")),
                        chunks: u32::from_le_bytes(header[24..28].try_into().expect("4")),
                    };
                    if found != geometry {
                        return Err(CacheError::GeometryMismatch {
                            path: path.display().to_string(),
                            found: found.describe(),
                            wanted: geometry.describe(),
                        });
                    }
                    Some(u64::from_le_bytes(header[32..40].try_into().expect("8")))
                }
            } else {
                None
            };
        let nonce = match nonce {
            Some(n) => n,
            None if unflushed > 0 => {
                return Err(CacheError::UnflushedWritesUnreachable {
                    chunks: unflushed,
                    where_: format!("in {}, whose header is damaged or missing", path.display()),
                    what_to_do: "restore the cache file, or move its .meta directory away to \
                                 start empty and discard those writes"
                        .into(),
                })
            }
            None => {
                formatted = true;
                let nonce = fresh_nonce();
                file.set_len(0)?;
                // Preallocate: no ENOSPC in the middle of a fill later.
                let size = geometry.file_size();
                if rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)
                    .is_err()
                {
                    file.set_len(size)?;
                }
                let mut h = vec![0u8; geometry.block_size as usize];
                h[..8].copy_from_slice(MAGIC);
                h[8..12].copy_from_slice(&1u32.to_le_bytes());
                h[12..16].copy_from_slice(&geometry.block_size.to_le_bytes());
                h[16..24].copy_from_slice(&geometry.chunk_size.to_le_bytes());
                h[24..28].copy_from_slice(&geometry.chunks.to_le_bytes());
                h[32..40].copy_from_slice(&nonce.to_le_bytes());
                let crc = crc_fast::crc32_iscsi(&h[..40]);
                h[40..44].copy_from_slice(&crc.to_le_bytes());
                file.write_all_at(&h, 0)?;
                file.sync_all()?;
                nonce
            }
        };
        let cells = (0..geometry.chunks).map(|_| SlotCell::new(0)).collect();
        let verified = (0..geometry.chunks)
            .map(|_| Verified::new(geometry.blocks_per_chunk()))
            .collect();
        let map = Mapping::new(&file, geometry.file_size()).ok();
        Ok((
            Self {
                file: StoreFile {
                    file: Arc::new(file),
                    geometry,
                },
                cells,
                verified,
                map,
                nonce,
            },
            formatted,
        ))
    }

    /// Pins `slot` for a direct reply sending from its bytes (see [`SlotCell::pin`]).
    pub(crate) fn pin(&self, slot: u32) -> SlotPin<'_> {
        self.cells[slot as usize].pin()
    }

    /// Whether no direct reply is sending from `slot`.
    pub(crate) fn unpinned(&self, slot: u32) -> bool {
        self.cells[slot as usize].unpinned()
    }

    /// Writes only the first `blocks` blocks' bytes (no tags): the torn fill a crash
    /// point leaves behind.
    pub(crate) fn write_torn(&self, slot: u32, data: &[u8]) -> io::Result<()> {
        self.file
            .file
            .write_all_at(data, self.file.data_pos(slot, 0))
    }

    /// `fdatasync(2)` of the cache file.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.file.sync_data()
    }

    /// Zeroes a stored block's tag: the tag a crash leaves when the block's fill was
    /// never synced (for tests of the lost-write path).
    pub(crate) fn lose_tag(&self, slot: u32, block: u32) -> io::Result<()> {
        self.file
            .file
            .write_all_at(&[0u8; TAG_SIZE], self.file.tag_pos(slot, block))
    }

    /// Damages one byte of a stored block (for tests of the checksum path).
    pub(crate) fn corrupt_byte(&self, slot: u32, block: u32) -> io::Result<()> {
        let pos = self.file.data_pos(slot, block) + 7;
        let f = &self.file.file;
        // Under the running cache, its marks untouched, as a failing medium would:
        // found by the next read's checksum (`Verify::EveryRead`).
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, pos)?;
        b[0] ^= 0x5a;
        f.write_all_at(&b, pos)
    }
}

/// The open cache file and its geometry: cheap to clone (the blocking path moves one
/// into the blocking pool).
#[derive(Debug, Clone)]
pub(crate) struct StoreFile {
    file: Arc<File>,
    geometry: Geometry,
}

impl StoreFile {
    pub(crate) fn data_pos(&self, slot: u32, block: u32) -> u64 {
        self.geometry.data_off()
            + slot as u64 * self.geometry.chunk_size
            + block as u64 * self.geometry.block_size as u64
    }

    pub(crate) fn tag_pos(&self, slot: u32, block: u32) -> u64 {
        self.geometry.tag_off()
            + (slot as u64 * self.geometry.blocks_per_chunk() as u64 + block as u64)
                * TAG_SIZE as u64
    }

    fn read_blocks(
        &self,
        slot: u32,
        first: u32,
        count: u32,
        data: &mut Vec<u8>,
    ) -> io::Result<Vec<Tag>> {
        let bs = self.geometry.block_size as usize;
        data.resize(count as usize * bs, 0);
        self.file.read_exact_at(data, self.data_pos(slot, first))?;
        let mut raw = vec![0u8; count as usize * TAG_SIZE];
        self.file
            .read_exact_at(&mut raw, self.tag_pos(slot, first))?;
        Ok(decode_tags(&raw))
    }

    /// Fills `out` from `pos` only if the OS page cache holds every byte
    /// (`preadv2(RWF_NOWAIT)`: never waits for the disk; a medium error is an error,
    /// not a signal as a fault on a mapping would be); false otherwise.
    pub(crate) fn read_now(&self, pos: u64, out: &mut [u8]) -> bool {
        use rustix::io::{preadv2, ReadWriteFlags};
        let len = out.len();
        matches!(
            preadv2(&*self.file, &mut [io::IoSliceMut::new(out)], pos, ReadWriteFlags::NOWAIT),
            Ok(n) if n == len
        )
    }

    /// Blocks `[first, first+count)` of `slot` and their tags, only if the OS page
    /// cache holds every byte of them: `preadv2(RWF_NOWAIT)` returns at once instead
    /// of waiting for the disk, and `None` then (and on any short read or error: the
    /// caller takes the normal path, which reports errors). Into a buffer of `pool`
    /// when one is free and large enough, else a heap buffer.
    pub(crate) fn read_blocks_now(
        &self,
        slot: u32,
        first: u32,
        count: u32,
        pool: &pipewright_runtime::uring::BufferPool,
    ) -> Option<(BlockBuf, Vec<Tag>)> {
        let len = count as usize * self.geometry.block_size as usize;
        let now = |buf: &mut [u8], pos: u64| self.read_now(pos, buf);
        let mut raw = vec![0u8; count as usize * TAG_SIZE];
        if !now(&mut raw, self.tag_pos(slot, first)) {
            return None;
        }
        let pos = self.data_pos(slot, first);
        let data = match pool.try_take().filter(|_| pool.buffer_size() >= len) {
            Some(mut buf) => {
                buf.set_len(len);
                if !now(&mut buf, pos) {
                    return None;
                }
                BlockBuf::Pooled(buf)
            }
            None => {
                let mut v = vec![0u8; len];
                if !now(&mut v, pos) {
                    return None;
                }
                BlockBuf::Heap(v)
            }
        };
        Some((data, decode_tags(&raw)))
    }

    /// The tags of whole blocks `data` from `first`, written under `instance`.
    fn encode_tags(&self, first: u32, data: &[u8], instance: u64, addr: BlockAddr) -> Vec<u8> {
        let bs = self.geometry.block_size as usize;
        debug_assert_eq!(data.len() % bs, 0);
        let mut tags = vec![0u8; data.len() / bs * TAG_SIZE];
        for (i, block) in data.chunks_exact(bs).enumerate() {
            let b = first + i as u32;
            Tag::encode(
                instance,
                block_crc(instance, addr, b, block),
                &mut tags[i * TAG_SIZE..(i + 1) * TAG_SIZE],
            );
        }
        tags
    }

    fn write_blocks(
        &self,
        slot: u32,
        first: u32,
        data: &[u8],
        instance: u64,
        addr: BlockAddr,
    ) -> io::Result<()> {
        let tags = self.encode_tags(first, data, instance, addr);
        self.file.write_all_at(data, self.data_pos(slot, first))?;
        self.file.write_all_at(&tags, self.tag_pos(slot, first))
    }
}

pub(crate) fn decode_tags(raw: &[u8]) -> Vec<Tag> {
    raw.chunks_exact(TAG_SIZE).map(Tag::decode).collect()
}

/// Bytes read from the cache file: a window of a pooled I/O buffer (from the io_uring
/// path, handed on without a copy) or of a heap buffer. Dereferences to the window;
/// a pooled buffer goes back to its pool when this is dropped.
pub struct ReadBuf {
    buf: BlockBuf,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for ReadBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBuf")
            .field("pooled", &matches!(self.buf, BlockBuf::Pooled(_)))
            .field("len", &self.len)
            .finish()
    }
}

impl ReadBuf {
    /// The bytes as a vector (free for a heap buffer read from its start, a copy
    /// otherwise).
    pub fn into_vec(self) -> Vec<u8> {
        match self.buf {
            BlockBuf::Heap(mut v) if self.start == 0 => {
                v.truncate(self.len);
                v
            }
            _ => self[..].to_vec(),
        }
    }

    /// Whether the bytes sit in a pooled (registered) I/O buffer.
    pub fn is_pooled(&self) -> bool {
        matches!(self.buf, BlockBuf::Pooled(_))
    }

    pub(crate) fn new(buf: BlockBuf, start: usize, len: usize) -> Self {
        debug_assert!(start + len <= buf.len());
        Self { buf, start, len }
    }

    pub(crate) fn from_vec(v: Vec<u8>) -> Self {
        let len = v.len();
        Self {
            buf: BlockBuf::Heap(v),
            start: 0,
            len,
        }
    }
}

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl PartialEq for ReadBuf {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for ReadBuf {}

/// Blocks read from the cache file.
pub(crate) enum BlockBuf {
    /// Read into a heap buffer (the blocking path, or the io_uring path when its
    /// pool is exhausted).
    Heap(Vec<u8>),
    /// Read into a buffer of the stage's pool.
    Pooled(PooledBuf),
}

impl BlockBuf {
    /// The bytes as a vector (a copy only for a pooled buffer).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            BlockBuf::Heap(v) => v,
            BlockBuf::Pooled(b) => b.to_vec(),
        }
    }
}

impl Deref for BlockBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BlockBuf::Heap(v) => v,
            BlockBuf::Pooled(b) => b,
        }
    }
}

fn fresh_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

/// A write into a slot in progress: the slot's write sequence is odd from
/// [`WriteGuard::begin`] until the guard is dropped, also when the writing future is
/// dropped half-way (readers never wait forever for a write that cannot end).
pub(crate) struct WriteGuard<'a>(&'a SlotCell);

impl<'a> WriteGuard<'a> {
    pub(crate) fn begin(cell: &'a SlotCell) -> Self {
        cell.begin_write();
        Self(cell)
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.0.end_write();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags written by earlier builds stay valid: the block CRC is CRC-32C of the
    /// 24-byte head (instance, volume, chunk, block) followed by the block's bytes.
    #[test]
    fn block_crc_is_crc32c_of_head_then_data() {
        assert_eq!(crc_fast::crc32_iscsi(b"123456789"), 0xe306_9283);
        let addr = BlockAddr {
            volume: 3,
            chunk: 0x1122_3344_5566,
        };
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 + 7) as u8).collect();
        let mut whole = Vec::new();
        whole.extend_from_slice(&9u64.to_le_bytes());
        whole.extend_from_slice(&3u32.to_le_bytes());
        whole.extend_from_slice(&0x1122_3344_5566u64.to_le_bytes());
        whole.extend_from_slice(&5u32.to_le_bytes());
        whole.extend_from_slice(&data);
        assert_eq!(block_crc(9, addr, 5, &data), crc_fast::crc32_iscsi(&whole));
    }
}
