//! The host with real VM processes on KVM: sharing within a trust group, copy-on-write,
//! isolation between groups (pagemap, as root), kill -9, the reserve, bad input.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pipewright_memshare::{
    frames, marker, marker_seed, page_checksum, selected, write_manifest, write_threshold,
    ContentId, Error, GroupConfig, GuestError, Host, HostConfig, ImageError, Program, VmId,
    VmRequest, PAGE, ZERO_SLOT,
};

const GROUP: GroupConfig = GroupConfig {
    cow_reserve_pages: 1 << 20,
};

fn host(dir: &Path) -> Host {
    host_with_deadline(dir, Duration::from_secs(30))
}

fn host_with_deadline(dir: &Path, deadline: Duration) -> Host {
    Host::new(HostConfig {
        state_dir: dir.join("state"),
        vm_command: vec![env!("CARGO_BIN_EXE_pipewright-memshare-vm").into()],
        deadline,
        loader: Default::default(),
    })
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("memshare-test")
        .tempdir_in("/dev/shm")
        .unwrap()
}

/// An image of `pages` pages (every 16th a zero page) with its manifest.
fn image(dir: &Path, name: &str, pages: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut bytes = common::pattern(pages, seed);
    for p in (5..pages).step_by(16) {
        bytes[p * PAGE..(p + 1) * PAGE].fill(0);
    }
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    let ids: Vec<ContentId> = bytes.chunks(PAGE).map(ContentId::of).collect();
    write_manifest(&path, &ids).unwrap();
    (path, bytes)
}

fn sums(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(PAGE).map(page_checksum).collect()
}

/// The image as VM `seed`'s guest sees it after its write command.
fn after_write(bytes: &[u8], fraction: f64, seed: u32) -> (Vec<u8>, Vec<usize>) {
    let mut out = bytes.to_vec();
    let mut written = Vec::new();
    for i in 0..(bytes.len() / PAGE) as u32 {
        if selected(i, seed, write_threshold(fraction)) {
            let o = i as usize * PAGE;
            out[o..o + 4].copy_from_slice(&marker(i, marker_seed(seed)).to_le_bytes());
            written.push(i as usize);
        }
    }
    (out, written)
}

fn vm_frames(h: &Host, id: VmId) -> Vec<Option<u64>> {
    let (addr, len) = h.image_range(id).unwrap();
    frames(h.pid(id).unwrap(), addr, len as usize / PAGE).unwrap()
}

#[test]
fn one_group_shares_frames_writes_copy_for_the_writer_only() {
    if !common::kvm_or_skip() || !common::root_or_skip() {
        return;
    }
    let dir = tmp();
    let (img, bytes) = image(dir.path(), "a.raw", 200, 1);
    let mut h = host(dir.path());
    h.create_group("blue", GROUP).unwrap();
    let a = h.start_vm("blue", &VmRequest::new(&img, 0.0, 1)).unwrap();
    let b = h.start_vm("blue", &VmRequest::new(&img, 0.3, 2)).unwrap();
    assert_eq!(h.checksum(a).unwrap(), sums(&bytes));
    assert_eq!(h.checksum(b).unwrap(), sums(&bytes));

    let map = h.load_maps("blue")[0].1.clone();
    let (fa, fb) = (vm_frames(&h, a), vm_frames(&h, b));
    let mut shared = 0;
    for (i, &slot) in map.slots.iter().enumerate() {
        if slot != ZERO_SLOT {
            assert!(fa[i].is_some() && fa[i] == fb[i], "page {i} not shared");
            shared += 1;
        }
    }
    assert!(shared > 150);
    let store = h.store("blue").unwrap();
    assert_eq!(store.index().live_slots(), shared as u64);
    assert_eq!(store.index().total_refs(), 2 * shared as u64);

    // B writes: B sees its writes, A sees the image; only B's written pages stop sharing.
    let written = h.write(b).unwrap();
    let (b_bytes, b_pages) = after_write(&bytes, 0.3, 2);
    assert_eq!(written as usize, b_pages.len());
    assert_eq!(h.checksum(b).unwrap(), sums(&b_bytes));
    assert_eq!(h.checksum(a).unwrap(), sums(&bytes));
    let (fa2, fb2) = (vm_frames(&h, a), vm_frames(&h, b));
    assert_eq!(fa2, fa, "A's frames changed when B wrote");
    for (i, &slot) in map.slots.iter().enumerate() {
        if b_pages.contains(&i) {
            assert_ne!(fb2[i], fa2[i], "written page {i} still shared");
        } else if slot != ZERO_SLOT {
            assert_eq!(fb2[i], fa2[i], "unwritten page {i} stopped sharing");
        }
    }
    let st = h.status("blue").unwrap();
    assert_eq!(st.broken_pages, b_pages.len() as u64);
    assert_eq!(
        st.vms.iter().find(|v| v.id == b).unwrap().broken_pages,
        b_pages.len() as u64
    );
    assert_eq!(st.vms.iter().find(|v| v.id == a).unwrap().broken_pages, 0);
    eprintln!("shared {shared} pages, B broke {} of them", b_pages.len());
}

#[test]
fn tenants_never_share_a_frame() {
    if !common::kvm_or_skip() || !common::root_or_skip() {
        return;
    }
    let dir = tmp();
    let (img, bytes) = image(dir.path(), "same.raw", 150, 9);
    let mut h = host(dir.path());
    h.create_group("tenant-a", GROUP).unwrap();
    h.create_group("tenant-b", GROUP).unwrap();
    let a1 = h
        .start_vm("tenant-a", &VmRequest::new(&img, 0.0, 1))
        .unwrap();
    let a2 = h
        .start_vm("tenant-a", &VmRequest::new(&img, 0.0, 2))
        .unwrap();
    let b1 = h
        .start_vm("tenant-b", &VmRequest::new(&img, 0.0, 3))
        .unwrap();
    let b2 = h
        .start_vm("tenant-b", &VmRequest::new(&img, 0.0, 4))
        .unwrap();
    for id in [a1, a2, b1, b2] {
        assert_eq!(h.checksum(id).unwrap(), sums(&bytes));
    }
    let map = h.load_maps("tenant-a")[0].1.clone();
    let present = |id| -> HashSet<u64> {
        vm_frames(&h, id)
            .into_iter()
            .zip(&map.slots)
            .filter(|(_, &s)| s != ZERO_SLOT)
            .filter_map(|(f, _)| f)
            .collect()
    };
    let (sa1, sa2, sb1, sb2) = (present(a1), present(a2), present(b1), present(b2));
    let nonzero = map.slots.iter().filter(|&&s| s != ZERO_SLOT).count();
    // Within a tenant: every image page is one frame for both VMs.
    assert_eq!(sa1.len(), nonzero);
    assert_eq!(sa1, sa2);
    assert_eq!(sb1, sb2);
    // Across tenants: not one frame in common, though the content is identical.
    let tenant_a: HashSet<u64> = sa1.union(&sa2).copied().collect();
    let tenant_b: HashSet<u64> = sb1.union(&sb2).copied().collect();
    assert_eq!(tenant_a.intersection(&tenant_b).count(), 0);
    eprintln!(
        "{} frames per tenant, none shared across tenants",
        tenant_a.len()
    );
}

#[test]
fn kill_9_leaves_the_others_running_and_the_refcounts_right() {
    if !common::kvm_or_skip() {
        return;
    }
    let dir = tmp();
    let (img1, bytes1) = image(dir.path(), "base.raw", 120, 5);
    // A derived image: same as base except 20 pages.
    let mut bytes2 = bytes1.clone();
    for p in 0..20 {
        let o = p * 6 * PAGE;
        bytes2[o..o + PAGE].copy_from_slice(&common::pattern(1, 1000 + p as u64));
    }
    let img2 = dir.path().join("derived.raw");
    std::fs::write(&img2, &bytes2).unwrap();
    let mut h = host(dir.path());
    h.create_group("g", GROUP).unwrap();
    let ids = [
        h.start_vm("g", &VmRequest::new(&img1, 0.0, 1)).unwrap(),
        h.start_vm("g", &VmRequest::new(&img2, 0.0, 2)).unwrap(),
        h.start_vm("g", &VmRequest::new(&img1, 0.0, 3)).unwrap(),
    ];
    let refs_of = |h: &Host| -> u64 {
        h.load_maps("g")
            .iter()
            .map(|(_, m)| m.slots.iter().filter(|&&s| s != ZERO_SLOT).count() as u64)
            .sum()
    };
    assert_eq!(h.store("g").unwrap().index().total_refs(), refs_of(&h));
    let live_before = h.store("g").unwrap().index().live_slots();

    // kill -9 the derived image's VM from outside, as a crash would.
    let pid = h.pid(ids[1]).unwrap();
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // Until the host has reaped it (the deadline only turns a hang into a failure).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reaped = h.reap();
    while reaped.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        reaped = h.reap();
    }
    assert_eq!(reaped, vec![ids[1]]);
    // Its 20 private pages are gone from the store; shared ones stay.
    let store = h.store("g").unwrap();
    assert_eq!(store.index().live_slots(), live_before - 20);
    assert_eq!(store.index().total_refs(), refs_of(&h));
    for id in [ids[0], ids[2]] {
        assert_eq!(h.checksum(id).unwrap(), sums(&bytes1));
    }
    // A new VM joins and reads the right content.
    let joined = h.start_vm("g", &VmRequest::new(&img2, 0.0, 4)).unwrap();
    assert_eq!(h.checksum(joined).unwrap(), sums(&bytes2));
    assert_eq!(h.store("g").unwrap().index().live_slots(), live_before);
    assert_eq!(h.store("g").unwrap().index().total_refs(), refs_of(&h));
    // Everything stops: nothing stays referenced.
    for id in h.vms() {
        h.stop(id).unwrap();
    }
    assert_eq!(h.store("g").unwrap().index().total_refs(), 0);
    assert_eq!(h.store("g").unwrap().index().live_slots(), 0);
    assert_eq!(h.store("g").unwrap().resident_bytes().unwrap(), 0);
}

#[test]
fn the_reserve_refuses_new_vms_once_guests_broke_too_many_pages() {
    if !common::kvm_or_skip() {
        return;
    }
    let dir = tmp();
    let (img, _) = image(dir.path(), "r.raw", 100, 7);
    let mut h = host(dir.path());
    h.create_group(
        "r",
        GroupConfig {
            cow_reserve_pages: 60,
        },
    )
    .unwrap();
    // Expects to break 50 pages: within the reserve.
    let w = h.start_vm("r", &VmRequest::new(&img, 0.5, 1)).unwrap();
    // It holds its 50 pages before it writes any: 20 more do not fit.
    let err = h.start_vm("r", &VmRequest::new(&img, 0.2, 5)).unwrap_err();
    match err {
        Error::ReserveExhausted {
            requested_pages: 20,
            held_pages: 50,
            broken_pages: 0,
            reserve_pages: 60,
            ..
        } => {}
        e => panic!("{e}"),
    }
    let written = h.write(w).unwrap();
    assert!(written >= 45, "wrote {written}");
    // Broken pages plus the 20 the next VM expects to break exceed 60.
    let err = h.start_vm("r", &VmRequest::new(&img, 0.2, 2)).unwrap_err();
    match err {
        Error::ReserveExhausted {
            held_pages,
            broken_pages,
            reserve_pages: 60,
            ..
        } => {
            assert_eq!(broken_pages, u64::from(written));
            assert_eq!(held_pages, broken_pages.max(50));
        }
        e => panic!("{e}"),
    }
    // A VM that would break more than the reserve by itself is refused up front.
    h.stop(w).unwrap();
    let err = h.start_vm("r", &VmRequest::new(&img, 0.9, 3)).unwrap_err();
    assert!(matches!(err, Error::ReserveExhausted { .. }), "{err}");
    // Within the reserve again: admitted.
    h.start_vm("r", &VmRequest::new(&img, 0.1, 4)).unwrap();
    assert_eq!(h.status("r").unwrap().refused, 3);
}

#[test]
fn bad_input_gets_typed_errors_and_the_others_go_on() {
    if !common::kvm_or_skip() {
        return;
    }
    let dir = tmp();
    let (img, bytes) = image(dir.path(), "ok.raw", 64, 11);
    let mut h = host(dir.path());
    h.create_group("g", GROUP).unwrap();
    let good = h.start_vm("g", &VmRequest::new(&img, 0.0, 1)).unwrap();
    let refs = h.store("g").unwrap().index().total_refs();

    // Unknown group, bad group name.
    assert!(matches!(
        h.start_vm("nope", &VmRequest::new(&img, 0.0, 1)),
        Err(Error::UnknownGroup(_))
    ));
    assert!(matches!(
        h.create_group("../x", GROUP),
        Err(Error::BadGroupName(_))
    ));
    // Truncated: the image shorter than its manifest; and a file that is not whole blocks.
    let short = dir.path().join("short.raw");
    std::fs::write(&short, &bytes[..bytes.len() - PAGE]).unwrap();
    std::fs::copy(
        pipewright_memshare::manifest_path(&img),
        pipewright_memshare::manifest_path(&short),
    )
    .unwrap();
    let e = h
        .start_vm("g", &VmRequest::new(&short, 0.0, 1))
        .unwrap_err();
    assert!(
        matches!(e, Error::Image(ImageError::Truncated { .. })),
        "{e}"
    );
    let ragged = dir.path().join("ragged.raw");
    std::fs::write(&ragged, &bytes[..1000]).unwrap();
    let e = h
        .start_vm("g", &VmRequest::new(&ragged, 0.0, 1))
        .unwrap_err();
    assert!(
        matches!(e, Error::Image(ImageError::Truncated { .. })),
        "{e}"
    );
    // Corrupt: one flipped byte late in the image; nothing of it stays in the store.
    let bad = dir.path().join("bad.raw");
    let mut flipped = bytes.clone();
    flipped[60 * PAGE + 17] ^= 0x40;
    std::fs::write(&bad, &flipped).unwrap();
    std::fs::copy(
        pipewright_memshare::manifest_path(&img),
        pipewright_memshare::manifest_path(&bad),
    )
    .unwrap();
    let e = h.start_vm("g", &VmRequest::new(&bad, 0.0, 1)).unwrap_err();
    assert!(
        matches!(e, Error::Image(ImageError::Corrupt { block: 60, .. })),
        "{e}"
    );
    std::fs::write(pipewright_memshare::manifest_path(&bad), b"garbage").unwrap();
    let e = h.start_vm("g", &VmRequest::new(&bad, 0.0, 1)).unwrap_err();
    assert!(
        matches!(e, Error::Image(ImageError::BadManifest { .. })),
        "{e}"
    );
    // Larger than guest memory.
    let mut req = VmRequest::new(&img, 0.0, 1);
    req.ram_bytes = Some(16 * PAGE as u64);
    let e = h.start_vm("g", &req).unwrap_err();
    assert!(
        matches!(e, Error::Guest(GuestError::ImageTooLarge { .. })),
        "{e}"
    );
    assert_eq!(h.store("g").unwrap().index().total_refs(), refs);

    // Misbehaving guests in their own processes: typed errors, then reaped.
    for (program, want) in [
        (Program::TripleFault, GuestError::TripleFault),
        (
            Program::BadPort,
            GuestError::BadPort {
                port: 0x1234,
                write: true,
                len: 4,
            },
        ),
    ] {
        let mut req = VmRequest::new(&img, 0.0, 1);
        req.program = program;
        let id = h.start_vm("g", &req).unwrap();
        match h.checksum(id) {
            Err(Error::Guest(e)) => assert_eq!(e, want),
            r => panic!("{program:?}: {r:?}"),
        }
    }
    let mut host_short = Host::new(HostConfig {
        state_dir: dir.path().join("state2"),
        vm_command: vec![env!("CARGO_BIN_EXE_pipewright-memshare-vm").into()],
        deadline: Duration::from_millis(300),
        loader: Default::default(),
    });
    host_short.create_group("g", GROUP).unwrap();
    let mut req = VmRequest::new(&img, 0.0, 1);
    req.program = Program::Spin;
    let id = host_short.start_vm("g", &req).unwrap();
    assert!(matches!(
        host_short.checksum(id),
        Err(Error::Guest(GuestError::Deadline { ms: 300 }))
    ));
    drop(host_short);
    // Until the host has reaped the VMs that failed (the deadline only turns a hang
    // into a failure).
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.vms() != vec![good] && Instant::now() < deadline {
        h.reap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.vms(), vec![good]);
    assert_eq!(h.store("g").unwrap().index().total_refs(), refs);
    assert_eq!(h.checksum(good).unwrap(), sums(&bytes));
}

#[test]
fn a_second_vm_on_an_unchanged_image_reuses_its_load_and_a_rewritten_image_is_reloaded() {
    if !common::kvm_or_skip() {
        return;
    }
    let dir = tmp();
    let (img, bytes) = image(dir.path(), "c.raw", 80, 21);
    let mut h = host(dir.path());
    h.create_group("c", GROUP).unwrap();
    let a = h.start_vm("c", &VmRequest::new(&img, 0.0, 1)).unwrap();
    let b = h.start_vm("c", &VmRequest::new(&img, 0.0, 2)).unwrap();
    let st = h.status("c").unwrap();
    let (la, lb) = (st.vms[0].load, st.vms[1].load);
    assert_eq!(la.stored, la.pages - la.zero);
    assert_eq!((lb.stored, lb.shared), (0, lb.pages - lb.zero));
    assert_eq!(h.checksum(b).unwrap(), sums(&bytes));
    // Rewrite the image in place (new content, new manifest): the next VM must see it.
    let mut changed = bytes.clone();
    changed[7 * PAGE..8 * PAGE].copy_from_slice(&common::pattern(1, 777));
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(&img, &changed).unwrap();
    let ids: Vec<ContentId> = changed.chunks(PAGE).map(ContentId::of).collect();
    write_manifest(&img, &ids).unwrap();
    let c = h.start_vm("c", &VmRequest::new(&img, 0.0, 3)).unwrap();
    assert_eq!(h.checksum(c).unwrap(), sums(&changed));
    assert_eq!(h.checksum(a).unwrap(), sums(&bytes));
    let lc = h.status("c").unwrap().vms[2].load;
    assert_eq!(lc.stored, 1);
}

#[test]
fn block_device_reads_are_served_by_mapping_the_stored_page() {
    if !common::kvm_or_skip() || !common::root_or_skip() {
        return;
    }
    let dir = tmp();
    let (img, bytes) = image(dir.path(), "d.raw", 120, 31);
    let mut h = host(dir.path());
    h.create_group("d", GROUP).unwrap();
    let a = h.start_vm("d", &VmRequest::new(&img, 0.0, 1)).unwrap();
    let b = h.start_vm("d", &VmRequest::new(&img, 0.0, 2)).unwrap();
    assert_eq!(h.checksum(b).unwrap(), sums(&bytes));
    let before = h.store("d").unwrap().resident_bytes().unwrap();
    // A reads blocks 30..90 through its device: the guest's checksums are the image's.
    let (got, reads) = h.device_read(a, 30, 60).unwrap();
    assert_eq!(got, sums(&bytes)[30..90].to_vec());
    assert_eq!(reads, 60);
    // Each window page is the very frame B's image page uses (the stored page), zero
    // blocks excepted (fresh zero memory): mapped, not copied; the store did not grow.
    let window = frames(h.pid(a).unwrap(), h.device_window(a).unwrap(), 60).unwrap();
    let fb = vm_frames(&h, b);
    let map = h.load_maps("d")[0].1.clone();
    let mut mapped = 0;
    for k in 0..60 {
        if map.slots[30 + k] != ZERO_SLOT {
            assert_eq!(window[k], fb[30 + k], "block {} was copied", 30 + k);
            mapped += 1;
        }
    }
    assert!(mapped > 50);
    assert_eq!(h.store("d").unwrap().resident_bytes().unwrap(), before);
    // A read past the image is refused; the VM goes on.
    let e = h.device_read(a, 100, 30).unwrap_err();
    assert!(matches!(e, Error::Guest(GuestError::Protocol(_))), "{e}");
    assert_eq!(h.checksum(a).unwrap(), sums(&bytes));
}

/// A VM process that stops answering (here: SIGSTOPped) costs the host one bounded wait
/// and a clear error, not a hang; the host goes on with its other VMs.
#[test]
fn a_stopped_vm_process_gets_an_error_not_a_hang() {
    if !common::kvm_or_skip() {
        return;
    }
    let dir = tmp();
    let (img, bytes) = image(dir.path(), "s.raw", 16, 3);
    let mut h = host_with_deadline(dir.path(), Duration::from_secs(1));
    h.create_group("s", GROUP).unwrap();
    let stopped = h.start_vm("s", &VmRequest::new(&img, 0.0, 1)).unwrap();
    let other = h.start_vm("s", &VmRequest::new(&img, 0.0, 2)).unwrap();
    let pid = h
        .status("s")
        .unwrap()
        .vms
        .iter()
        .find(|v| v.id == stopped)
        .unwrap()
        .pid;
    // The shell's builtin `kill` (no unsafe here, no extra package).
    let stopped_ok = std::process::Command::new("sh")
        .args(["-c", &format!("kill -STOP {pid}")])
        .status()
        .unwrap()
        .success();
    assert!(stopped_ok, "could not SIGSTOP the VM process {pid}");
    match h.checksum(stopped).unwrap_err() {
        Error::VmProcess { reason, .. } => assert!(reason.contains("no reply"), "{reason}"),
        e => panic!("{e}"),
    }
    assert_eq!(h.checksum(other).unwrap(), sums(&bytes));
    h.kill(stopped).unwrap();
    h.stop(other).unwrap();
}
