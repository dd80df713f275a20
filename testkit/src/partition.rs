//! Network partitions made by the kernel's firewall: every packet from or to a set of
//! addresses is dropped (silently, as a cut cable or a dead switch port would), until
//! the partition heals. With each process of a test on an address of its own
//! (`127.77.0.1`, `127.77.0.2`, … all live on loopback), cutting one address off cuts
//! one process off from every other, its established TCP connections included: they
//! stall and retransmit, and resume when the partition heals.
//!
//! Each [`Partition`] is an nftables table of its own (`pw_partition_<pid>_<n>`),
//! created in one transaction and deleted when the value drops, so a test never
//! touches the machine's own rules, and a panicking test leaves none behind (a test
//! process killed outright does: `nft list tables` shows them, `nft delete table inet
//! NAME` removes one).

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::need::{find_tool, require_that, Tool};

/// `nft` (nftables), which makes the partitions of the storage tests.
pub const NFT: Tool = Tool {
    tool: "nft",
    package: "nftables",
    env_var: "PIPEWRIGHT_REQUIRE_NFTABLES",
};

/// Whether partitions can be made here (root, `nft` found, a table can be created);
/// otherwise one skip line, or a failure when `PIPEWRIGHT_REQUIRE_NFTABLES=1`.
/// Probed once per process.
pub fn nftables() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    require_that(PROBE.get_or_init(probe).clone(), NFT.env_var)
}

fn probe() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root, so no firewall rules: run the tests as root \
                    (e.g. `sudo -E cargo test`)"
            .into());
    }
    if find_tool(NFT.tool).is_none() {
        return Err(format!(
            "{} not found (Debian package {})",
            NFT.tool, NFT.package
        ));
    }
    Partition::cut_off(&[])
        .map(drop)
        .map_err(|e| format!("cannot create an nftables table: {e}"))
}

/// Packets from and to some addresses dropped, while this value lives.
///
/// ```no_run
/// use pipewright_testkit::Partition;
/// let node3 = "127.77.0.3".parse().unwrap();
/// let cut = Partition::cut_off(&[node3])?; // node 3 hears nothing, says nothing
/// // ... the rest of the cluster goes on without it ...
/// drop(cut); // healed
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Partition {
    table: String,
}

impl Partition {
    /// Drop every packet whose source or destination is one of `addrs`, on the way
    /// in and out.
    pub fn cut_off(addrs: &[IpAddr]) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let table = format!(
            "pw_partition_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut rules = String::new();
        for addr in addrs {
            let family = if addr.is_ipv4() { "ip" } else { "ip6" };
            rules.push_str(&format!(
                "    {family} saddr {addr} drop\n    {family} daddr {addr} drop\n"
            ));
        }
        let mut script = format!("table inet {table} {{\n");
        for (chain, hook) in [("cut_in", "input"), ("cut_out", "output")] {
            script.push_str(&format!(
                "  chain {chain} {{\n    type filter hook {hook} priority -10; policy accept;\n{rules}  }}\n"
            ));
        }
        script.push_str("}\n");
        nft(&["-f", "-"], Some(&script))?;
        Ok(Self { table })
    }

    /// End the partition (the same as dropping it, with the error if the rules could
    /// not be removed).
    pub fn heal(mut self) -> std::io::Result<()> {
        nft(&["delete", "table", "inet", &self.table], None)?;
        // Deleted: nothing left for `drop` to retry.
        self.table.clear();
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.table.is_empty() {
            let _ = nft(&["delete", "table", "inet", &self.table], None);
        }
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> std::io::Result<()> {
    let mut child = Command::new(NFT.tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
