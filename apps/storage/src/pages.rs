//! The page file: fixed-size pages, each with a header carrying its id, version and a
//! checksum.
//!
//! ```text
//! slot i at offset i * SLOT_SIZE:
//! +-------+--------+----------+----------+----------+--------+-----------+-------------+
//! | magic | format | page id  | version  | crc32c   | length | reserved  | data: 8 KiB |
//! | u32   | u32    | u64      | u64      | u32      | u32    | 32 bytes  |             |
//! +-------+--------+----------+----------+----------+--------+-----------+-------------+
//! ```
//!
//! The CRC-32C covers page id, version, length and data, so a torn or misdirected write
//! is detected on read ([`PageError::Corrupt`]). The length is the number of bytes the
//! page was written with, so a read returns them exactly (trailing zeros included).
//! Pages of format 1 (no length field) read as a full page. A slot that was never
//! written reads as version 0 and no data. [`PageStore::apply`] is one positioned write of a whole
//! slot; durability is the caller's decision ([`PageStore::sync`]). Until a checkpoint
//! syncs the page file, the log's intents are the redo source for committed writes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::types::{PageId, Version};

/// Bytes of data in a page.
pub const PAGE_SIZE: usize = 8192;
/// Bytes of header before each page's data.
pub const HEADER_SIZE: usize = 64;
/// Distance between consecutive pages in the file.
pub const SLOT_SIZE: usize = HEADER_SIZE + PAGE_SIZE;

const MAGIC: u32 = 0x4750_5750; // "PWPG" little endian
const FORMAT: u32 = 2;
/// The first format, without the length field (still readable).
const FORMAT_V1: u32 = 1;

/// What is wrong with a page read from disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorruptKind {
    /// The header's magic or format is not ours.
    BadMagic,
    /// The header names another page (a misdirected write).
    WrongPage(PageId),
    /// The checksum does not match (a torn or damaged write).
    BadChecksum,
    /// The header is empty but the data is not (a torn first write).
    TornWrite,
}

impl std::fmt::Display for CorruptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptKind::BadMagic => f.write_str("its header is not a page header"),
            CorruptKind::WrongPage(p) => {
                write!(f, "its header names page {p} (a misdirected write)")
            }
            CorruptKind::BadChecksum => {
                f.write_str("its checksum does not match (a torn or damaged write)")
            }
            CorruptKind::TornWrite => {
                f.write_str("its header is empty but its data is not (a torn first write)")
            }
        }
    }
}

/// A page store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The operating system refused the read or write.
    #[error("page file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The page is beyond the file's capacity.
    #[error("page {page} is beyond the page file's capacity of {capacity} pages")]
    OutOfRange {
        /// The page asked for.
        page: PageId,
        /// Pages in the file.
        capacity: u64,
    },
    /// The data is longer than a page.
    #[error("{len} bytes do not fit a {PAGE_SIZE}-byte page")]
    TooLarge {
        /// The data's length.
        len: usize,
    },
    /// The page on disk fails its checks.
    #[error("page {page} is corrupt: {kind}; restarting the node rewrites it from its log if the log still holds its last write; otherwise restore the page file")]
    Corrupt {
        /// The page.
        page: PageId,
        /// What is wrong.
        kind: CorruptKind,
    },
}

/// The result of [`PageStore::scan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// The version of every page that was ever written (pages absent are at version 0).
    pub versions: BTreeMap<PageId, Version>,
    /// Pages that fail their checks (recovery rewrites them from the log or reports them).
    pub corrupt: Vec<PageId>,
}

/// A page file of `capacity` fixed-size pages.
///
/// ```
/// use pipewright_storage::pages::PageStore;
/// use pipewright_storage::PageId;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = PageStore::open(dir.path().join("pages"), 4).unwrap();
/// assert_eq!(store.read(PageId(2)).unwrap().0, 0); // never written
/// store.apply(PageId(2), 1, b"hello").unwrap();
/// store.sync().unwrap();
/// let (version, data) = store.read(PageId(2)).unwrap();
/// assert_eq!((version, &data[..5]), (1, &b"hello"[..]));
/// ```
#[derive(Debug)]
pub struct PageStore {
    file: File,
    capacity: u64,
}

fn checksum(page: PageId, version: Version, len: Option<u32>, data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&page.0.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &version.to_le_bytes());
    let crc = match len {
        Some(len) => crc32c::crc32c_append(crc, &len.to_le_bytes()),
        None => crc,
    };
    crc32c::crc32c_append(crc, data)
}

impl PageStore {
    /// Open (creating it if needed) a page file with room for `capacity` pages. A
    /// smaller existing file is extended with never-written (zero) slots.
    pub fn open(path: impl AsRef<Path>, capacity: u64) -> Result<Self, PageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let want = capacity * SLOT_SIZE as u64;
        if file.metadata()?.len() < want {
            file.set_len(want)?;
        }
        Ok(Self { file, capacity })
    }

    /// Pages in the file.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn offset(&self, page: PageId) -> Result<u64, PageError> {
        if page.0 >= self.capacity {
            return Err(PageError::OutOfRange {
                page,
                capacity: self.capacity,
            });
        }
        Ok(page.0 * SLOT_SIZE as u64)
    }

    /// The page's version and data length.
    fn check(page: PageId, slot: &[u8]) -> Result<(Version, usize), PageError> {
        let u32_at = |i: usize| u32::from_le_bytes(slot[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_le_bytes(slot[i..i + 8].try_into().expect("8"));
        let data = &slot[HEADER_SIZE..];
        let corrupt = |kind| Err(PageError::Corrupt { page, kind });
        if slot[..HEADER_SIZE].iter().all(|&b| b == 0) {
            return if data.iter().all(|&b| b == 0) {
                Ok((0, 0))
            } else {
                corrupt(CorruptKind::TornWrite)
            };
        }
        let len = match u32_at(4) {
            FORMAT => Some(u32_at(28)),
            FORMAT_V1 => None,
            _ => return corrupt(CorruptKind::BadMagic),
        };
        if u32_at(0) != MAGIC {
            return corrupt(CorruptKind::BadMagic);
        }
        let (id, version, crc) = (PageId(u64_at(8)), u64_at(16), u32_at(24));
        if checksum(id, version, len, data) != crc || len.is_some_and(|l| l as usize > PAGE_SIZE) {
            return corrupt(CorruptKind::BadChecksum);
        }
        if id != page {
            return corrupt(CorruptKind::WrongPage(id));
        }
        Ok((version, len.map_or(PAGE_SIZE, |l| l as usize)))
    }

    /// Read a page: its version and the data it was written with (every byte;
    /// empty if never written), checksum-verified.
    pub fn read(&self, page: PageId) -> Result<(Version, Vec<u8>), PageError> {
        let offset = self.offset(page)?;
        let mut slot = vec![0u8; SLOT_SIZE];
        self.file.read_exact_at(&mut slot, offset)?;
        let (version, len) = Self::check(page, &slot)?;
        slot.drain(..HEADER_SIZE);
        slot.truncate(len);
        Ok((version, slot))
    }

    /// Write `data` (zero-padded to a page) as `page` at `version`: one positioned
    /// write of the whole slot. Not durable until [`sync`](Self::sync).
    pub fn apply(&self, page: PageId, version: Version, data: &[u8]) -> Result<(), PageError> {
        let offset = self.offset(page)?;
        if data.len() > PAGE_SIZE {
            return Err(PageError::TooLarge { len: data.len() });
        }
        let mut slot = vec![0u8; SLOT_SIZE];
        slot[HEADER_SIZE..HEADER_SIZE + data.len()].copy_from_slice(data);
        let len = data.len() as u32;
        let crc = checksum(page, version, Some(len), &slot[HEADER_SIZE..]);
        slot[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        slot[4..8].copy_from_slice(&FORMAT.to_le_bytes());
        slot[8..16].copy_from_slice(&page.0.to_le_bytes());
        slot[16..24].copy_from_slice(&version.to_le_bytes());
        slot[24..28].copy_from_slice(&crc.to_le_bytes());
        slot[28..32].copy_from_slice(&len.to_le_bytes());
        self.file.write_all_at(&slot, offset)?;
        Ok(())
    }

    /// A second handle on the page file (for a task that syncs it, such as the log
    /// writer before a checkpoint).
    pub fn sync_handle(&self) -> Result<File, PageError> {
        Ok(self.file.try_clone()?)
    }

    /// Make every applied page durable (`fdatasync`).
    pub fn sync(&self) -> Result<(), PageError> {
        Ok(self.file.sync_data()?)
    }

    /// Read every page: the versions of written pages and the list of corrupt ones.
    /// Used at startup to give the protocol node its version map.
    pub fn scan(&self) -> Result<Scan, PageError> {
        let mut out = Scan::default();
        let mut slot = vec![0u8; SLOT_SIZE];
        for i in 0..self.capacity {
            let page = PageId(i);
            self.file.read_exact_at(&mut slot, i * SLOT_SIZE as u64)?;
            match Self::check(page, &slot) {
                Ok((0, _)) => {}
                Ok((version, _)) => {
                    out.versions.insert(page, version);
                }
                Err(PageError::Corrupt { .. }) => out.corrupt.push(page),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
