//! The NBD gateway process with real clients: nbdinfo/nbdcopy (libnbd-bin),
//! qemu-img/qemu-io (qemu-utils), and malformed requests from a raw socket.
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "cache", feature = "cli"))]

mod cache_common;

use std::process::Command;

use pipewright_testkit::require;

use cache_common::{random_file, sha256, Client, ClientError, Gateway};

const MIB: usize = 1 << 20;

fn volumes(dir: &std::path::Path, sizes: &[(&str, usize)]) {
    std::fs::create_dir_all(dir.join("volumes")).unwrap();
    for (i, (name, size)) in sizes.iter().enumerate() {
        random_file(&dir.join("volumes").join(name), *size, 1000 + i as u64);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nbdinfo_lists_exports_and_unknown_export_is_refused() {
    if !require("nbdinfo", "libnbd-bin", "PIPEWRIGHT_REQUIRE_NBD_TOOLS") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    volumes(dir.path(), &[("alpha", 8 * MIB), ("beta", 3 * MIB)]);
    let gw = Gateway::start(dir.path(), "4M", &[], &[]);
    let list = run(Command::new("nbdinfo")
        .arg("--list")
        .arg(format!("nbd://{}", gw.addr)));
    assert!(list.contains("alpha") && list.contains("beta"), "{list}");
    let size = run(Command::new("nbdinfo").arg("--size").arg(gw.uri("beta")));
    assert_eq!(size.trim(), (3 * MIB).to_string());
    let bad = Command::new("nbdinfo")
        .arg(gw.uri("nope"))
        .output()
        .unwrap();
    assert!(!bad.status.success(), "an unknown export must be refused");
    // The gateway keeps serving everyone else.
    let size = run(Command::new("nbdinfo").arg("--size").arg(gw.uri("alpha")));
    assert_eq!(size.trim(), (8 * MIB).to_string());
    gw.stop();
}

#[test]
fn nbdcopy_out_and_back_matches_checksums() {
    if !require("nbdcopy", "libnbd-bin", "PIPEWRIGHT_REQUIRE_NBD_TOOLS") {
        return;
    }
    let mib: usize = std::env::var("PIPEWRIGHT_CACHE_NBDCOPY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    let dir = tempfile::tempdir().unwrap();
    volumes(dir.path(), &[("disk", mib * MIB)]);
    let original = sha256(&dir.path().join("volumes/disk"));
    // A cache of a third of the volume: the copies evict as they go.
    let size = format!("{}M", (mib / 3).max(8));
    let gw = Gateway::start(dir.path(), &size, &["--flush-deadline-ms", "500"], &[]);
    let out = dir.path().join("out.img");
    run(Command::new("nbdcopy").arg(gw.uri("disk")).arg(&out));
    assert_eq!(sha256(&out), original, "copy out differs from the backend");
    let new = dir.path().join("new.img");
    random_file(&new, mib * MIB, 77);
    run(Command::new("nbdcopy").arg(&new).arg(gw.uri("disk")));
    let back = dir.path().join("back.img");
    run(Command::new("nbdcopy").arg(gw.uri("disk")).arg(&back));
    assert_eq!(
        sha256(&back),
        sha256(&new),
        "copy back differs from what was written"
    );
    gw.stop();
    assert_eq!(
        sha256(&dir.path().join("volumes/disk")),
        sha256(&new),
        "the backend does not hold the written image after the gateway stopped"
    );
    println!("nbdcopy: {mib} MiB out, in and out again through a {size} cache");
}

#[test]
fn qemu_img_convert_and_qemu_io_verify() {
    if !require("qemu-img", "qemu-utils", "PIPEWRIGHT_REQUIRE_QEMU")
        || !require("qemu-io", "qemu-utils", "PIPEWRIGHT_REQUIRE_QEMU")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    volumes(dir.path(), &[("vm", 16 * MIB)]);
    let gw = Gateway::start(dir.path(), "4M", &[], &[]);
    let out = dir.path().join("vm.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(gw.uri("vm"))
        .arg(&out));
    assert_eq!(sha256(&out), sha256(&dir.path().join("volumes/vm")));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0xab 1M 192k",
            "-c",
            "write -P 0xcd 5000 3000",
        ])
        .arg(gw.uri("vm")));
    let verify = run(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "read -P 0xab 1M 192k",
            "-c",
            "read -P 0xcd 5000 3000",
        ])
        .arg(gw.uri("vm")));
    assert!(!verify.contains("Pattern verification failed"), "{verify}");
    gw.stop();
    let disk = std::fs::read(dir.path().join("volumes/vm")).unwrap();
    assert!(disk[MIB..MIB + 192 * 1024].iter().all(|&b| b == 0xab));
    assert!(disk[5000..8000].iter().all(|&b| b == 0xcd));
}

#[test]
fn malformed_and_out_of_range_requests_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    volumes(dir.path(), &[("disk", 2 * MIB)]);
    let gw = Gateway::start(dir.path(), "4M", &[], &[]);
    assert!(matches!(
        Client::connect(&gw.addr, "nope"),
        Err(ClientError::Refused(_))
    ));
    let mut c = Client::connect(&gw.addr, "disk").unwrap();
    assert_eq!(c.size, 2 * MIB as u64);
    assert!(matches!(
        c.read(2 * MIB as u64 - 10, 20),
        Err(ClientError::Errno(22))
    ));
    assert!(matches!(
        c.write(2 * MIB as u64, &[1; 512]),
        Err(ClientError::Errno(28))
    ));
    // An unknown command: EINVAL, the connection goes on.
    let mut req = Vec::new();
    req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&42u16.to_be_bytes());
    req.extend_from_slice(&99u64.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&0u32.to_be_bytes());
    c.raw(&req).unwrap();
    assert_eq!(c.reply_header().unwrap(), (22, 99));
    c.write(4096, &[9; 4096]).unwrap();
    assert_eq!(c.read(4096, 4096).unwrap(), vec![9; 4096]);
    // Garbage instead of a request: that connection is closed ...
    let mut bad = Client::connect(&gw.addr, "disk").unwrap();
    bad.raw(&[0xde; 28]).unwrap();
    assert!(bad.reply_header().is_err());
    // ... and everyone else is still served.
    assert_eq!(c.read(4096, 4096).unwrap(), vec![9; 4096]);
    let mut again = Client::connect(&gw.addr, "disk").unwrap();
    again.flush().unwrap();
    gw.stop();
}

/// Large reads are direct replies (`Cache::send_direct`: written from the mapped cache
/// file into the socket, the slot pinned) while eviction reuses the slots under them:
/// four clients read 64 KiB chunks at random through a cache of 8 chunks over 64, each
/// chunk twice in a row (the second read is a direct hit when the chunk is still
/// resident), and every reply equals the backend's bytes.
#[test]
fn direct_replies_racing_eviction_carry_the_right_bytes() {
    let dir = tempfile::tempdir().unwrap();
    volumes(dir.path(), &[("disk", 4 * MIB)]);
    let image = std::fs::read(dir.path().join("volumes/disk")).unwrap();
    let gw = Gateway::start(dir.path(), "512K", &["--chunk-size", "64K"], &[]);
    let addr = gw.uri("disk")["nbd://".len()..]
        .trim_end_matches("/disk")
        .to_string();
    let image = std::sync::Arc::new(image);
    let readers: Vec<_> = (0..4u64)
        .map(|t| {
            let (addr, image) = (addr.clone(), image.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&addr, "disk").unwrap();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for _ in 0..300 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = (x % 64) as usize * 65536;
                    for _ in 0..2 {
                        let got = c.read(off as u64, 65536).unwrap();
                        assert!(got == image[off..off + 65536], "wrong bytes at {off}");
                    }
                }
                600
            })
        })
        .collect();
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    gw.stop();
    println!("direct replies: {reads} reads of 64 KiB through an 8-chunk cache, all correct");
}

/// The number before ` checksum failures` in `pipewright cache status`.
fn checksum_failures(cache_file: &std::path::Path) -> u64 {
    let out = run(Command::new(cache_common::EXE)
        .args(["cache", "status", "--cache-file"])
        .arg(cache_file));
    let before = out
        .split(" checksum failures")
        .next()
        .expect("a status line");
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no checksum failure count in:\n{out}"))
}

/// Damage appearing in the cache file under a running gateway (a byte of every stored
/// block flipped through another file handle, as a failing medium would return them)
/// after every block was read, verified and served again as direct hits: the next
/// reads — small ones (`preadv2` direct hits) and large ones (replies from the
/// mapped file) — return the backend's bytes, the damage counted and refetched.
#[test]
fn damage_under_a_running_gateway_is_refetched_not_served() {
    let dir = tempfile::tempdir().unwrap();
    volumes(dir.path(), &[("disk", MIB)]);
    let image = std::fs::read(dir.path().join("volumes/disk")).unwrap();
    let gw = Gateway::start(dir.path(), "2M", &["--chunk-size", "256K"], &[]);
    let addr = gw.uri("disk")["nbd://".len()..]
        .trim_end_matches("/disk")
        .to_string();
    let mut c = Client::connect(&addr, "disk").unwrap();
    let read_range = |c: &mut Client, range: std::ops::Range<usize>, len: usize| {
        for off in range.step_by(len) {
            let got = c.read(off as u64, len as u32).unwrap();
            assert!(got == image[off..off + len], "wrong bytes at {off} ({len})");
        }
    };
    let read_all = |c: &mut Client, len: usize| read_range(c, 0..MIB, len);
    // Filled, then hits (verified, direct).
    for _ in 0..2 {
        read_all(&mut c, 65536);
        read_all(&mut c, 4096);
    }
    // The chunk data is the file's last `--size` bytes (after the header and tags).
    let cache_file = dir.path().join("cache");
    let damaged = {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&cache_file)
            .unwrap();
        let data = f.metadata().unwrap().len() - 2 * MIB as u64;
        let mut n = 0;
        for block in (data..data + 2 * MIB as u64).step_by(4096) {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, block + 123).unwrap();
            f.write_all_at(&[b[0] ^ 0x5a], block + 123).unwrap();
            n += 1;
        }
        n
    };
    // Each kind of direct hit meets damaged chunks first: 64 KiB NBD replies sent
    // right away (`send_direct`) on the first two chunks (256 KiB each), 4 KiB
    // `preadv2` reads on the last two; then everything again, both ways.
    read_range(&mut c, 0..MIB / 2, 65536);
    read_range(&mut c, MIB / 2..MIB, 4096);
    read_all(&mut c, 4096);
    read_all(&mut c, 65536);
    // The status file is rewritten twice a second.
    let start = std::time::Instant::now();
    let mut failures = checksum_failures(&cache_file);
    while failures < 4 && start.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        failures = checksum_failures(&cache_file);
    }
    // One per chunk: its first damaged read drops it, and it is fetched again whole.
    assert_eq!(failures, 4, "every damaged chunk detected once");
    gw.stop();
    println!(
        "{damaged} blocks damaged under the running gateway: {failures} checksum failures, \
         every byte served was the backend's"
    );
}
