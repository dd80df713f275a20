//! fio's NBD engine against the gateway: a bounded random-write job with crc32c
//! verification through a cache an eighth of the region written (32 chunks of 64 KiB) (so the job evicts
//! and writes back as it goes), then, after a clean stop and a restart of the gateway,
//! a verify-only pass of the same job: every block read back through the new process
//! carries the checksum fio wrote.
//!
//! Needs `fio` with its `nbd` engine (Debian `fio`); skips with one line unless
//! `PIPEWRIGHT_REQUIRE_FIO=1`.
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "cache", feature = "cli"))]

mod cache_common;

use std::process::Command;

use cache_common::{random_file, Gateway};

const MIB: usize = 1 << 20;

fn fio_with_nbd() -> bool {
    let check = match Command::new("fio").arg("--enghelp").output() {
        Err(_) => Err("fio not found (Debian package fio)".to_string()),
        Ok(out) if !String::from_utf8_lossy(&out.stdout).contains("nbd") => {
            Err("fio has no nbd engine (Debian package fio, built with libnbd)".to_string())
        }
        Ok(_) => Ok(()),
    };
    pipewright_testkit::require_that(check, "PIPEWRIGHT_REQUIRE_FIO")
}

/// Runs the fio job against `uri`; returns (KiB read, KiB written) from its terse line.
fn fio(uri: &str, mib: usize, verify_only: bool) -> (u64, u64) {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=pipewright-verify",
        "--ioengine=nbd",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
        "--randseed=20261206",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--output-format=terse",
        "--verify_state_save=0",
    ])
    .arg(format!("--uri={uri}"))
    .arg(format!("--size={mib}M"));
    if verify_only {
        cmd.arg("--verify_only=1");
    }
    let out = cmd.output().expect("run fio");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("3;"))
        .unwrap_or_else(|| panic!("no terse line in fio's output: {stdout}"));
    let f: Vec<&str> = line.split(';').collect();
    // Terse v3: field 5 is the job's error, 6 the KiB read, 47 the KiB written.
    assert_eq!(f[4], "0", "fio reported an error: {line}");
    (f[5].parse().unwrap(), f[46].parse().unwrap())
}

#[test]
fn fio_write_and_verify_through_nbd_survives_a_restart() {
    if !fio_with_nbd() {
        return;
    }
    let mib = 16;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("volumes")).unwrap();
    random_file(&dir.path().join("volumes/disk"), 2 * mib * MIB, 5);
    let gw = Gateway::start(
        dir.path(),
        "2M",
        &["--chunk-size", "64K", "--flush-deadline-ms", "1000"],
        &[],
    );
    let (read, written) = fio(&gw.uri("disk"), mib, false);
    assert_eq!(written, (mib * 1024) as u64, "fio wrote the whole region");
    assert_eq!(
        read,
        (mib * 1024) as u64,
        "fio read back and verified it all"
    );
    gw.stop();

    // A new gateway process on the same cache file: verify only.
    let gw = Gateway::start(dir.path(), "2M", &["--chunk-size", "64K"], &[]);
    // (fio's terse line counts the replayed writes of a verify-only run too.)
    let (read, _) = fio(&gw.uri("disk"), mib, true);
    assert_eq!(
        read,
        (mib * 1024) as u64,
        "fio verified the whole region again"
    );
    gw.stop();
    println!(
        "fio: {mib} MiB of 4 KiB random writes verified (crc32c) through a 2 MiB cache of 64 KiB chunks, and again after a restart"
    );
}
