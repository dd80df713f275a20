//! `pipewright memshare images|run|status` as a user runs them: generate layered images,
//! run VMs of two groups (one in the background), read the live status of both.
//!
//! Needs /dev/kvm and mkfs.ext4; without them it prints a skip line (and fails instead
//! when `PIPEWRIGHT_REQUIRE_KVM=1`).
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "memshare", feature = "cli"))]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ready() -> bool {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let mkfs = Command::new("mkfs.ext4").arg("-V").output().is_ok();
    if !(kvm && mkfs) {
        if std::env::var("PIPEWRIGHT_REQUIRE_KVM").is_ok_and(|v| v == "1") {
            panic!("memshare CLI test needs /dev/kvm and mkfs.ext4 (PIPEWRIGHT_REQUIRE_KVM=1)");
        }
        eprintln!("skipped: memshare CLI needs /dev/kvm and mkfs.ext4 (Debian package e2fsprogs)");
    }
    kvm && mkfs
}

fn pw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pipewright"))
}

#[test]
fn images_run_and_status_of_two_groups() {
    if !ready() {
        return;
    }
    let dir = tempfile_in_shm();
    let imgs = dir.join("imgs");
    let state = dir.join("state");
    let out = pw()
        .args([
            "memshare",
            "images",
            "--base-mib",
            "2",
            "--derived",
            "1",
            "--change",
            "0.1",
        ])
        .arg("--out")
        .arg(&imgs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("derived") && text.contains("can be saved"),
        "{text}"
    );

    // Group blue keeps running in the background; group red runs once.
    let mut blue = pw()
        .args(["memshare", "run", "--vms", "2", "--group", "blue"])
        .arg("--image")
        .arg(imgs.join("base.raw"))
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let status = || {
        let o = pw()
            .args(["memshare", "status", "--json", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let t = Instant::now();
    while !status().contains("\"vms\": [\n      {") || status().matches("\"pid\"").count() < 2 {
        assert!(t.elapsed() < Duration::from_secs(120), "blue never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = pw()
        .args([
            "memshare",
            "run",
            "--vms",
            "2",
            "--group",
            "red",
            "--write-fraction",
            "0.1",
            "--once",
        ])
        .arg("--image")
        .arg(imgs.join("derived-1.raw"))
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("every guest read exactly its image"),
        "{text}"
    );
    assert!(text.contains("sees exactly its writes"), "{text}");
    assert!(text.contains("group red: 2 VMs"), "{text}");
    // Blue is still there, alive, sharing.
    let table = String::from_utf8_lossy(
        &pw()
            .args(["memshare", "status", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(table.contains("group blue: 2 VMs"), "{table}");
    assert!(
        table.contains("(1.0000)"),
        "blue should save all it can: {table}"
    );
    assert!(!table.contains("false"), "a VM died: {table}");
    // Ctrl-C (SIGINT) stops blue and removes its state.
    let st = Command::new("kill")
        .args(["-INT", &blue.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(blue.wait().unwrap().success());
    assert!(status().trim() == "[]", "{}", status());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_in_shm() -> std::path::PathBuf {
    let d = std::path::PathBuf::from(format!("/dev/shm/pw-memshare-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
