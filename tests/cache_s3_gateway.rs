//! `pipewright cache gateway --backend s3://bucket/prefix` against a real S3-compatible
//! server (s3rver, started here): nbdcopy a volume in through a cache a quarter of its
//! size, stop the gateway (it flushes), start a new one on a NEW cache file (cold, so
//! every byte comes from S3) and copy the volume out: the checksums match.
//!
//! Needs s3rver (npm) and nbdcopy (Debian libnbd-bin); skips with one line unless
//! `PIPEWRIGHT_REQUIRE_S3=1` / `PIPEWRIGHT_REQUIRE_NBD_TOOLS=1`.
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "cache", feature = "cli"))]

mod cache_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pipewright_testkit::require;

use cache_common::{listening_address, random_file, sha256, Client, ClientError, EXE};

const MIB: usize = 1 << 20;

fn have_s3rver() -> bool {
    let found = Command::new("s3rver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    pipewright_testkit::require_that(
        if found {
            Ok(())
        } else {
            Err("s3rver not found (npm package s3rver@3.7: npm install -g s3rver@3.7)".into())
        },
        "PIPEWRIGHT_REQUIRE_S3",
    )
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s3rver(dir: &Path) -> (Proc, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (s3rver_on(dir, port), port)
}

fn s3rver_on(dir: &Path, port: u16) -> Proc {
    let child = Command::new("s3rver")
        .arg("-d")
        .arg(dir)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--silent"])
        .args(["--configure-bucket", "vols"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3rver");
    let p = Proc(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return p;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("s3rver did not listen within 10 s");
}

/// Starts the gateway over S3; returns it and its NBD address.
fn gateway(port: u16, cache_file: &Path, size: &str) -> (Proc, String) {
    let mut child = Command::new(EXE)
        .args([
            "cache",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--size",
            size,
        ])
        .args(["--backend", "s3://vols/gw", "--chunk-size", "256K"])
        .arg("--s3-endpoint")
        .arg(format!("http://127.0.0.1:{port}"))
        .args([
            "--s3-access-key-id",
            "S3RVER",
            "--s3-secret-access-key",
            "S3RVER",
        ])
        .args(["--s3-create", "disk=24M", "--flush-deadline-ms", "500"])
        .arg("--cache-file")
        .arg(cache_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the gateway");
    let addr = listening_address(&mut child);
    (Proc(child), addr)
}

fn stop(mut gw: Proc) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(gw.0.id().to_string())
        .status();
    let status = gw.0.wait().unwrap();
    assert!(status.success(), "gateway exited with {status}");
}

fn nbdcopy(from: impl AsRef<std::ffi::OsStr>, to: impl AsRef<std::ffi::OsStr>) {
    let out = Command::new("nbdcopy").arg(from).arg(to).output().unwrap();
    assert!(
        out.status.success(),
        "nbdcopy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_volume_copied_in_through_the_gateway_is_in_s3() {
    if !have_s3rver() || !require("nbdcopy", "libnbd-bin", "PIPEWRIGHT_REQUIRE_NBD_TOOLS") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = s3rver(&dir.path().join("s3"));
    let image = dir.path().join("image");
    random_file(&image, 24 * MIB, 31);

    let (gw, addr) = gateway(port, &dir.path().join("cache-a"), "6M");
    nbdcopy(&image, format!("nbd://{addr}/disk"));
    stop(gw); // flushes everything dirty to S3

    let (gw, addr) = gateway(port, &dir.path().join("cache-b"), "6M");
    let out = dir.path().join("out");
    nbdcopy(format!("nbd://{addr}/disk"), &out);
    assert_eq!(
        sha256(&out),
        sha256(&image),
        "the volume read back from S3 differs"
    );
    println!("24 MiB copied in through a 6 MiB cache over s3rver, read back cold: equal");

    // S3 goes away: cached chunks are still served, a miss gets an error reply (not a
    // hang, not a dropped connection), and the same read succeeds once S3 is back.
    let image_bytes = std::fs::read(&image).unwrap();
    let mut client = Client::connect(&addr, "disk").unwrap();
    let cached = 23 * MIB as u64; // the copy's last chunks are resident
    assert_eq!(
        client.read(cached, 4096).unwrap(),
        &image_bytes[cached as usize..cached as usize + 4096]
    );
    drop(server);
    assert_eq!(
        client.read(cached + 8192, 4096).unwrap(),
        &image_bytes[cached as usize + 8192..cached as usize + 12288],
        "a cached chunk is served while S3 is down"
    );
    match client.read(0, 4096) {
        Err(ClientError::Errno(e)) => assert_ne!(e, 0),
        other => panic!("a miss with S3 down must get an error reply, got {other:?}"),
    }
    let _server = s3rver_on(&dir.path().join("s3"), port);
    assert_eq!(client.read(0, 4096).unwrap(), &image_bytes[..4096]);
    drop(client);
    stop(gw);
    println!("S3 down: cached reads served, a miss answered with an error; S3 back: served");
}
