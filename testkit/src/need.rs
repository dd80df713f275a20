//! Skip-or-require checks: what a test needs from outside the crate.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// An outside program a test runs, where it comes from, and the variable that turns
/// its absence from a skip into a failure.
#[derive(Clone, Copy, Debug)]
pub struct Tool {
    /// The program's name, looked up in `PATH` (or a path).
    pub tool: &'static str,
    /// The Debian package that installs it.
    pub package: &'static str,
    /// `PIPEWRIGHT_REQUIRE_<THING>`: when `1`, a missing tool fails the test.
    pub env_var: &'static str,
}

impl Tool {
    /// [`require`] for this tool.
    pub fn require(&self) -> bool {
        require(self.tool, self.package, self.env_var)
    }
}

/// `ping`, run in guest namespaces by the NIC's end-to-end tests.
pub const PING: Tool = Tool {
    tool: "ping",
    package: "iputils-ping",
    env_var: "PIPEWRIGHT_REQUIRE_PING",
};

/// `ip`, which builds and enters network namespaces (needed by every netns test;
/// required with them).
pub const IP: Tool = Tool {
    tool: "ip",
    package: "iproute2",
    env_var: "PIPEWRIGHT_REQUIRE_NETNS",
};

/// `tshark`, the independent decoder of the NIC's frames (`TSHARK=/path` picks
/// another binary; see [`crate::tshark::bin`]).
pub const TSHARK: Tool = Tool {
    tool: "tshark",
    package: "tshark",
    env_var: "PIPEWRIGHT_REQUIRE_TSHARK",
};

/// Where `tool` is: itself when it contains a `/` and is a file, otherwise the first
/// executable of that name in `PATH`.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(OsStr::new(tool)))
        .find(|p| executable(p))
}

/// Whether the running test may go on using `tool`. When it is not found (see
/// [`find_tool`]), prints one line to stderr,
/// `skipped <test>: <tool> not found (Debian package <package>); set <env_var>=1 to
/// fail instead`, and returns false; with `<env_var>=1` it panics instead, saying the
/// tool is missing.
pub fn require(tool: &str, package: &str, env_var: &str) -> bool {
    let found = if find_tool(tool).is_some() {
        Ok(())
    } else {
        Err(format!("{tool} not found (Debian package {package})"))
    };
    require_that(found, env_var)
}

/// The general form of [`require`]: `check` is `Err(what is missing and how to get
/// it)` when the test cannot run here. Prints `skipped <test>: <why>; set
/// <env_var>=1 to fail instead` and returns false, or panics when `<env_var>=1`.
pub fn require_that(check: Result<(), String>, env_var: &str) -> bool {
    let Err(why) = check else {
        return true;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    if std::env::var_os(env_var).is_some_and(|v| v == "1") {
        panic!("{test}: {why}; {env_var}=1 requires it here (unset {env_var} to skip instead)");
    }
    // Written to stderr directly: the test harness would swallow `eprintln!` output
    // of a passing test, and a skip must be seen.
    // One write, so the line is not split by the harness's own output.
    let line = format!("skipped {test}: {why}; set {env_var}=1 to fail instead\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// Whether network-namespace tests can run (root, `/dev/net/tun`, a namespace can be
/// created, `ip` from iproute2 present); otherwise one skip line, or a failure when
/// `PIPEWRIGHT_REQUIRE_NETNS=1`. Probed once per process.
pub fn netns() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    require_that(
        PROBE.get_or_init(probe_netns).clone(),
        "PIPEWRIGHT_REQUIRE_NETNS",
    )
}

fn probe_netns() -> Result<(), String> {
    const HINT: &str = "run the tests as root (e.g. `sudo -E cargo test`) or in a \
                        privileged container";
    if !nix::unistd::geteuid().is_root() {
        return Err(format!("not root, so no network namespaces: {HINT}"));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(
            "no /dev/net/tun (load the tun module: modprobe tun; in a container, \
                    pass the device through)"
                .into(),
        );
    }
    if find_tool(IP.tool).is_none() {
        return Err(format!(
            "{} not found (Debian package {})",
            IP.tool, IP.package
        ));
    }
    // A throwaway thread: unshare changes the namespace of the calling thread only.
    let unshared = std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET))
        .join()
        .map_err(|_| "the namespace probe thread panicked".to_string())?;
    unshared.map_err(|e| {
        format!("cannot create a network namespace (unshare(CLONE_NEWNET): {e}): {HINT}")
    })?;
    std::fs::create_dir_all("/run/netns").map_err(|e| format!("cannot create /run/netns: {e}"))
}

/// Whether io_uring can be used here (a ring can be set up); otherwise one skip line,
/// or a failure when `PIPEWRIGHT_REQUIRE_IO_URING=1`. Probed once per process.
pub fn io_uring() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        io_uring::IoUring::new(4).map(drop).map_err(|e| {
            format!(
                "io_uring unavailable (io_uring_setup: {e}): the kernel has it disabled \
                 (sysctl kernel.io_uring_disabled) or a seccomp profile blocks it (Docker's \
                 default does: run with --security-opt seccomp=unconfined)"
            )
        })
    });
    require_that(probe.clone(), "PIPEWRIGHT_REQUIRE_IO_URING")
}

/// Whether AF_XDP sockets can be opened (kernel built with `CONFIG_XDP_SOCKETS`,
/// `CAP_NET_RAW`); otherwise one skip line, or a failure when
/// `PIPEWRIGHT_REQUIRE_AF_XDP=1`. Probed once per process.
pub fn af_xdp() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        raw::af_xdp_socket().map_err(|e| {
            format!(
                "AF_XDP sockets unavailable (socket(AF_XDP): {e}): needs a kernel with \
                 CONFIG_XDP_SOCKETS and CAP_NET_RAW"
            )
        })
    });
    require_that(probe.clone(), "PIPEWRIGHT_REQUIRE_AF_XDP")
}

mod raw {
    #![allow(unsafe_code)]

    use std::os::fd::{FromRawFd, OwnedFd};

    /// Opens (and closes) an AF_XDP socket.
    pub(super) fn af_xdp_socket() -> std::io::Result<()> {
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISSING: &str = "pipewright-testkit-no-such-tool";

    #[test]
    fn tools_are_found_in_path_or_by_path() {
        assert!(find_tool("sh").is_some());
        let sh = find_tool("sh").unwrap();
        assert_eq!(find_tool(sh.to_str().unwrap()), Some(sh));
        assert_eq!(find_tool(MISSING), None);
        assert_eq!(find_tool("/nonexistent/sh"), None);
    }

    #[test]
    fn a_missing_tool_skips() {
        // A variable nobody sets: the check skips (prints one line) and says so.
        assert!(!require(
            MISSING,
            "none",
            "PIPEWRIGHT_REQUIRE_TESTKIT_UNSET"
        ));
        assert!(require("sh", "dash", "PIPEWRIGHT_REQUIRE_TESTKIT_UNSET"));
    }

    #[test]
    #[should_panic(expected = "pipewright-testkit-no-such-tool not found (Debian package none)")]
    fn a_missing_required_tool_fails_saying_so() {
        // Set only here, and read only by this test.
        std::env::set_var("PIPEWRIGHT_REQUIRE_TESTKIT_SELFTEST", "1");
        require(MISSING, "none", "PIPEWRIGHT_REQUIRE_TESTKIT_SELFTEST");
    }
}
