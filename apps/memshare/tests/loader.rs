//! The staged image loader (read → replicated hash → place, on the pipewright runtime)
//! against the inline loop: the same load maps, counts and store contents for any
//! images and any loader shape, and the same refusal of bad images with nothing left
//! referenced.

use std::path::{Path, PathBuf};

use pipewright_memshare::{
    write_manifest, ContentId, ContentStore, Error, Image, ImageError, LoaderConfig, PAGE,
};
use proptest::prelude::*;

fn dir() -> tempfile::TempDir {
    // On tmpfs where there is one: the store is a tmpfs file in production.
    match std::fs::metadata("/dev/shm") {
        Ok(_) => tempfile::tempdir_in("/dev/shm").unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

/// Writes an image of `blocks` (block `i` filled from its seed; seed 0 is a zero
/// block) and its manifest.
fn image(dir: &Path, name: &str, blocks: &[u8]) -> PathBuf {
    let mut bytes = Vec::with_capacity(blocks.len() * PAGE);
    for &seed in blocks {
        let mut page = vec![0u8; PAGE];
        if seed != 0 {
            for (i, b) in page.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31) ^ seed;
            }
        }
        bytes.extend_from_slice(&page);
    }
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    let ids: Vec<ContentId> = bytes.chunks(PAGE).map(ContentId::of).collect();
    write_manifest(&path, &ids).unwrap();
    path
}

fn store_bytes(store: &ContentStore) -> Vec<u8> {
    std::fs::read(store.path()).unwrap()
}

fn config(hashers: usize, workers: usize, chunk_blocks: usize) -> LoaderConfig {
    LoaderConfig {
        hashers,
        workers,
        chunk_blocks,
        ..LoaderConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Several images loaded one after another (and one unloaded in between) into a
    /// store through the staged loader and into another through the inline loop: every
    /// load gives the same map and counts, and the stores end with the same bytes.
    #[test]
    fn staged_loads_equal_inline_loads(
        images in proptest::collection::vec(proptest::collection::vec(0u8..12, 1..90), 1..4),
        hashers in 1usize..4,
        workers in 1usize..3,
        chunk in 1usize..20,
        unload in 0usize..4,
    ) {
        let d = dir();
        let mut staged = ContentStore::create(&d.path().join("staged")).unwrap();
        let mut inline = ContentStore::create(&d.path().join("inline")).unwrap();
        let cfg = config(hashers, workers, chunk);
        let mut maps = Vec::new();
        for (n, blocks) in images.iter().enumerate() {
            let p = image(d.path(), &format!("{n}.raw"), blocks);
            let a = staged.load_with(&mut Image::open(&p).unwrap(), &cfg).unwrap();
            let b = inline.load_inline(&mut Image::open(&p).unwrap()).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.1.pages, blocks.len() as u64);
            maps.push(a.0);
            if n == unload {
                staged.unload(&maps[0]);
                inline.unload(&maps[0]);
            }
        }
        prop_assert_eq!(staged.index().live_slots(), inline.index().live_slots());
        prop_assert_eq!(staged.index().total_refs(), inline.index().total_refs());
        prop_assert_eq!(store_bytes(&staged), store_bytes(&inline));
    }
}

/// A block that does not match its manifest: the staged load refuses the image with
/// the first bad block, and the store is as it was (no slot, no reference left).
#[test]
fn a_corrupt_block_is_refused_and_nothing_stays_referenced() {
    let d = dir();
    let mut store = ContentStore::create(&d.path().join("store")).unwrap();
    let good = image(d.path(), "good.raw", &[1, 2, 3, 0, 4]);
    let (map, _) = store.load(&mut Image::open(&good).unwrap()).unwrap();
    let (live, refs) = (store.index().live_slots(), store.index().total_refs());
    let resident = store.resident_bytes().unwrap();

    let blocks: Vec<u8> = (1..=200).map(|i| (i % 11) as u8).collect();
    let bad = image(d.path(), "bad.raw", &blocks);
    let mut bytes = std::fs::read(&bad).unwrap();
    bytes[150 * PAGE + 7] ^= 1;
    std::fs::write(&bad, &bytes).unwrap();
    let pinned = LoaderConfig {
        pinned: true,
        ..LoaderConfig::default()
    };
    for cfg in [
        LoaderConfig::default(),
        pinned,
        config(3, 2, 7),
        config(1, 1, 1),
    ] {
        match store.load_with(&mut Image::open(&bad).unwrap(), &cfg) {
            Err(Error::Image(ImageError::Corrupt { block, .. })) => assert_eq!(block, 150),
            other => panic!("expected a corrupt block error, got {other:?}"),
        }
        assert_eq!(store.index().live_slots(), live);
        assert_eq!(store.index().total_refs(), refs);
        assert_eq!(store.resident_bytes().unwrap(), resident);
    }
    // The store still works: the good image loads again, sharing everything.
    let (again, stats) = store.load(&mut Image::open(&good).unwrap()).unwrap();
    assert_eq!(again, map);
    assert_eq!((stats.shared, stats.stored), (4, 0));
}

/// An image that shrinks after it was opened: the read fails mid-load, the error says
/// so, and nothing stays referenced.
#[test]
fn a_read_error_mid_load_is_an_error_and_nothing_stays_referenced() {
    let d = dir();
    let mut store = ContentStore::create(&d.path().join("store")).unwrap();
    let blocks: Vec<u8> = (1..=300).map(|i| (i % 13) as u8).collect();
    let p = image(d.path(), "shrinking.raw", &blocks);
    let mut img = Image::open(&p).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(100 * PAGE as u64)
        .unwrap();
    match store.load_with(&mut img, &config(2, 2, 16)) {
        Err(Error::Image(ImageError::Io { .. })) => {}
        other => panic!("expected a read error, got {other:?}"),
    }
    assert_eq!(store.index().live_slots(), 0);
    assert_eq!(store.index().total_refs(), 0);
    assert_eq!(store.resident_bytes().unwrap(), 0);
}

/// A larger image of many distinct and repeated blocks through the default loader:
/// every block accounted for, and equal to the inline loop.
#[test]
fn a_large_image_loads_like_the_inline_loop() {
    let d = dir();
    let blocks: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let p = image(d.path(), "large.raw", &blocks);
    let mut staged = ContentStore::create(&d.path().join("staged")).unwrap();
    let mut inline = ContentStore::create(&d.path().join("inline")).unwrap();
    let a = staged.load(&mut Image::open(&p).unwrap()).unwrap();
    let b = inline.load_inline(&mut Image::open(&p).unwrap()).unwrap();
    assert_eq!(a, b);
    let s = a.1;
    assert_eq!(s.pages, 5000);
    assert_eq!(s.zero + s.shared + s.stored, 5000);
    assert_eq!(s.stored, 250);
    assert_eq!(store_bytes(&staged), store_bytes(&inline));
}
