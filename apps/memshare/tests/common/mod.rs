//! Shared by the KVM tests: the skip rule and deterministic image content.
#![allow(dead_code)]

/// Whether KVM tests can run here; prints one line and returns false if not, or panics
/// when `PIPEWRIGHT_REQUIRE_KVM=1`.
pub(crate) fn kvm_or_skip() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        if std::env::var("PIPEWRIGHT_REQUIRE_KVM").is_ok_and(|v| v == "1") {
            panic!("/dev/kvm is missing or not accessible and PIPEWRIGHT_REQUIRE_KVM=1");
        }
        eprintln!(
            "skipped: /dev/kvm missing or not accessible (needs KVM and root or the kvm group)"
        );
    }
    ok
}

/// Whether this process is root (pagemap frame numbers); prints one line if not.
pub(crate) fn root_or_skip() -> bool {
    // SAFETY-free: read the effective uid from /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        if std::env::var("PIPEWRIGHT_REQUIRE_KVM").is_ok_and(|v| v == "1") {
            panic!("not root and PIPEWRIGHT_REQUIRE_KVM=1 (pagemap frames need root)");
        }
        eprintln!("skipped: not root (reading /proc/PID/pagemap frame numbers needs root)");
    }
    root
}

/// `pages` pages of deterministic pseudo-random bytes from `seed`.
pub(crate) fn pattern(pages: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(pages * 4096);
    while out.len() < pages * 4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}
