//! The layered-image generator: a real ext4 base (checked by e2fsck), derived images
//! with exactly the chosen number of changed blocks, manifests that match the bytes.

use std::collections::HashSet;

use pipewright_memshare::{generate, read_manifest, ContentId, ImageSet, PAGE};

fn e2fsprogs_or_skip() -> bool {
    let ok = std::process::Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("PIPEWRIGHT_REQUIRE_E2FSPROGS").is_ok_and(|v| v == "1") {
            panic!("mkfs.ext4 not found and PIPEWRIGHT_REQUIRE_E2FSPROGS=1");
        }
        eprintln!("skipped: mkfs.ext4 not found (Debian package e2fsprogs)");
    }
    ok
}

#[test]
fn base_is_a_real_ext4_and_derived_images_change_exactly_the_chosen_blocks() {
    if !e2fsprogs_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut set = ImageSet::new(dir.path().join("imgs"), 3 << 20);
    set.derived = 2;
    set.change = 0.05;
    let g = generate(&set).unwrap();
    assert!(g.files > 0);
    let fsck = std::process::Command::new("e2fsck")
        .arg("-fn")
        .arg(&g.base)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    let base = std::fs::read(&g.base).unwrap();
    let base_ids: Vec<ContentId> = base.chunks(PAGE).map(ContentId::of).collect();
    assert_eq!(read_manifest(&g.base).unwrap().unwrap(), base_ids);
    let zero = ContentId::of(&[0u8; PAGE]);
    let nonzero = base_ids.iter().filter(|&&i| i != zero).count();
    let mut distinct: HashSet<ContentId> =
        base_ids.iter().copied().filter(|&i| i != zero).collect();
    for (path, n) in &g.derived {
        let d = std::fs::read(path).unwrap();
        assert_eq!(d.len(), base.len());
        let changed = d
            .chunks(PAGE)
            .zip(base.chunks(PAGE))
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed as u64, *n);
        assert_eq!(*n, (nonzero as f64 * 0.05).round() as u64);
        let ids: Vec<ContentId> = d.chunks(PAGE).map(ContentId::of).collect();
        assert_eq!(read_manifest(path).unwrap().unwrap(), ids);
        distinct.extend(ids.into_iter().filter(|&i| i != zero));
    }
    // Every changed block is new content: the minimum is base + all changes.
    assert_eq!(g.achievable.distinct, distinct.len() as u64);
    assert_eq!(
        g.achievable.distinct,
        base_ids
            .iter()
            .copied()
            .filter(|&i| i != zero)
            .collect::<HashSet<_>>()
            .len() as u64
            + g.derived.iter().map(|(_, n)| n).sum::<u64>()
    );
    assert_eq!(g.achievable.loaded, 3 * g.blocks);
}
