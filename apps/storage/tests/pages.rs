//! The page file on a real file.

use std::os::unix::fs::FileExt;

use pipewright_storage::pages::{
    CorruptKind, PageError, PageStore, HEADER_SIZE, PAGE_SIZE, SLOT_SIZE,
};
use pipewright_storage::PageId;

fn store(pages: u64) -> (tempfile::TempDir, std::path::PathBuf, PageStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pages");
    let store = PageStore::open(&path, pages).unwrap();
    (dir, path, store)
}

#[test]
fn unwritten_pages_read_as_version_zero() {
    let (_d, _p, store) = store(3);
    let (version, data) = store.read(PageId(1)).unwrap();
    assert_eq!(version, 0);
    assert!(data.is_empty(), "an unwritten page has no data");
}

#[test]
fn apply_read_and_reopen() {
    let (_d, path, store) = store(4);
    let full = vec![0xab; PAGE_SIZE];
    store.apply(PageId(0), 7, &full).unwrap();
    store.apply(PageId(3), 1, b"x").unwrap();
    store.apply(PageId(3), 2, b"yz").unwrap();
    // Trailing zero bytes are data: they read back exactly.
    store.apply(PageId(2), 1, b"a\0\0").unwrap();
    store.sync().unwrap();
    drop(store);
    let store = PageStore::open(&path, 4).unwrap();
    assert_eq!(store.read(PageId(0)).unwrap(), (7, full));
    let (version, data) = store.read(PageId(3)).unwrap();
    assert_eq!((version, &data[..]), (2, &b"yz"[..]));
    assert_eq!(store.read(PageId(2)).unwrap(), (1, b"a\0\0".to_vec()));
    let scan = store.scan().unwrap();
    assert_eq!(
        scan.versions.into_iter().collect::<Vec<_>>(),
        vec![(PageId(0), 7), (PageId(2), 1), (PageId(3), 2)]
    );
    assert!(scan.corrupt.is_empty());
}

#[test]
fn bad_arguments_are_typed_errors() {
    let (_d, _p, store) = store(2);
    assert!(matches!(
        store.read(PageId(2)),
        Err(PageError::OutOfRange { capacity: 2, .. })
    ));
    assert!(matches!(
        store.apply(PageId(9), 1, b""),
        Err(PageError::OutOfRange { .. })
    ));
    let big = vec![0; PAGE_SIZE + 1];
    assert!(matches!(
        store.apply(PageId(0), 1, &big),
        Err(PageError::TooLarge { .. })
    ));
}

#[test]
fn corruption_is_detected_on_read_and_scan() {
    let (_d, path, store) = store(4);
    for p in 0..4 {
        store.apply(PageId(p), 1, b"data").unwrap();
    }
    let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Page 0: a flipped data bit.
    raw.write_all_at(&[0xff], (HEADER_SIZE + 100) as u64)
        .unwrap();
    // Page 1: page 2's slot copied over it (a misdirected write).
    let mut slot = vec![0; SLOT_SIZE];
    let reader = std::fs::File::open(&path).unwrap();
    reader
        .read_exact_at(&mut slot, 2 * SLOT_SIZE as u64)
        .unwrap();
    raw.write_all_at(&slot, SLOT_SIZE as u64).unwrap();
    // Page 3: a garbage header.
    raw.write_all_at(&[1, 2, 3, 4], 3 * SLOT_SIZE as u64)
        .unwrap();
    let kind = |p| match store.read(PageId(p)) {
        Err(PageError::Corrupt { kind, .. }) => Some(kind),
        _ => None,
    };
    assert_eq!(kind(0), Some(CorruptKind::BadChecksum));
    assert_eq!(kind(1), Some(CorruptKind::WrongPage(PageId(2))));
    assert_eq!(kind(3), Some(CorruptKind::BadMagic));
    assert_eq!(store.read(PageId(2)).unwrap().0, 1);
    let scan = store.scan().unwrap();
    assert_eq!(scan.corrupt, vec![PageId(0), PageId(1), PageId(3)]);
    // Rewriting a corrupt page (redo from the log) repairs it.
    store.apply(PageId(0), 1, b"data").unwrap();
    assert_eq!(store.read(PageId(0)).unwrap().0, 1);
}

#[test]
fn torn_first_write_is_detected() {
    let (_d, path, store) = store(1);
    let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    raw.write_all_at(b"half", (HEADER_SIZE + 8) as u64).unwrap();
    assert!(matches!(
        store.read(PageId(0)),
        Err(PageError::Corrupt {
            kind: CorruptKind::TornWrite,
            ..
        })
    ));
}

#[test]
fn format_1_pages_without_a_length_still_read_as_full_pages() {
    let (_d, path, store) = store(2);
    // A slot as format 1 wrote it: no length field; the CRC covers id, version, data.
    let mut data = vec![0u8; PAGE_SIZE];
    data[..3].copy_from_slice(b"old");
    let (page, version) = (1u64, 5u64);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(&page.to_le_bytes()), &version.to_le_bytes()),
        &data,
    );
    let mut slot = vec![0u8; SLOT_SIZE];
    slot[0..4].copy_from_slice(&0x4750_5750u32.to_le_bytes());
    slot[4..8].copy_from_slice(&1u32.to_le_bytes());
    slot[8..16].copy_from_slice(&page.to_le_bytes());
    slot[16..24].copy_from_slice(&version.to_le_bytes());
    slot[24..28].copy_from_slice(&crc.to_le_bytes());
    slot[HEADER_SIZE..].copy_from_slice(&data);
    let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    raw.write_all_at(&slot, SLOT_SIZE as u64).unwrap();
    assert_eq!(store.read(PageId(1)).unwrap(), (5, data));
    // Rewritten, it is format 2 and keeps its exact length.
    store.apply(PageId(1), 6, b"new\0").unwrap();
    assert_eq!(store.read(PageId(1)).unwrap(), (6, b"new\0".to_vec()));
}
