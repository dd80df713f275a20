//! The host harness: real Linux topologies for the data plane to run on, built and
//! torn down through netlink from Rust (no `ip` commands).
//!
//! - [`Namespace`]: a named network namespace under `/run/netns` (the iproute2
//!   convention, so `ip netns exec NAME ...` and `ip -n NAME ...` work on it too), and
//!   [`in_netns`] / [`Namespace::run`] to run a closure inside one (on a helper thread
//!   that `setns`'d; sockets and TAP devices it creates stay in that namespace).
//! - [`Netlink`]: an rtnetlink connection opened inside a namespace, with the handful
//!   of operations the harness needs (links, addresses, routes, neighbours, vxlan).
//! - [`Host`]: a whole topology from a [`HostBuilder`]: a data-plane namespace with
//!   the VF ends, one guest namespace per VF, an underlay veth to a "remote"
//!   namespace whose kernel vxlan devices stand for the far tunnel endpoints. Dropping
//!   the [`Host`] deletes every namespace (and with them every link); a crashed run's
//!   leftovers are removed by [`Host::clean_stale`], which `build` calls first.
//!
//! Everything needs root (`CAP_SYS_ADMIN` for namespaces and mounts, `CAP_NET_ADMIN`
//! for links); [`can_run`] says whether this machine allows it, so tests can skip
//! with a reason.
//!
//! ```no_run
//! use pipewright_nic::host::{Host, VfKind, VfSpec, UnderlaySpec, VniSpec};
//! use pipewright_nic::wire::MacAddr;
//!
//! let host = Host::builder("pwdemo")
//!     .vf(VfSpec::new(100, MacAddr([2, 0, 0, 0, 0, 1]), "10.100.0.2/24".parse()?, VfKind::Veth))
//!     .vf(VfSpec::new(200, MacAddr([2, 0, 0, 0, 0, 2]), "10.200.0.2/24".parse()?, VfKind::Tap))
//!     .underlay(UnderlaySpec::new("192.168.77.1/30".parse()?, "192.168.77.2/30".parse()?, 1600))
//!     .remote_vni(VniSpec::new(100, "10.100.0.1/24".parse()?))
//!     .build()?;
//! println!("data plane in {}, VF 0 at {}", host.dp_ns().name(), host.vfs[0].vf_ifname);
//! let tap = host.open_tap(1)?; // the TAP VF's port
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;

use crate::port::PortError;

mod ethtool;
mod netlink;
mod netns;
mod topology;

pub use netlink::{LinkState, Netlink, Route};
pub use netns::{in_netns, Namespace, NETNS_DIR};
pub use topology::{
    Host, HostBuilder, UnderlayInfo, UnderlaySpec, VfInfo, VfKind, VfSpec, VniInfo, VniSpec,
};

const ROOT_HINT: &str = "needs root (CAP_SYS_ADMIN for namespaces and mounts, CAP_NET_ADMIN \
     for links): run as root or in a privileged container";

/// Why a harness step failed. Every variant names the step and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The step was refused for lack of privilege.
    #[error("{step}: permission denied: {ROOT_HINT}")]
    NeedsRoot {
        /// The step that failed.
        step: String,
    },
    /// A system call failed.
    #[error("{step}: {source}")]
    Io {
        /// The step that failed.
        step: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a netlink request.
    #[error("{step}: netlink: {source}")]
    Netlink {
        /// The step that failed.
        step: String,
        /// The kernel's error (or a description of a protocol failure).
        #[source]
        source: io::Error,
    },
    /// A namespace of that name exists already.
    #[error(
        "network namespace {0:?} already exists: another run is using this prefix (pick \
         another), or a crashed one left it behind (Host::clean_stale removes it)"
    )]
    NamespaceExists(String),
    /// No namespace of that name.
    #[error("no network namespace {0:?} under /run/netns: create it first")]
    NoSuchNamespace(String),
    /// No interface of that name in the namespace.
    #[error("no interface {name:?} in network namespace {ns}")]
    NoSuchLink {
        /// The namespace looked in.
        ns: String,
        /// The interface name.
        name: String,
    },
    /// The topology asked for cannot be built as specified.
    #[error("invalid host spec: {0}")]
    Spec(String),
    /// Creating or opening a port failed.
    #[error("{step}: {source}")]
    Port {
        /// The step that failed.
        step: String,
        /// The port's error.
        #[source]
        source: PortError,
    },
}

impl HostError {
    /// An I/O error for `step`; permission errors become [`HostError::NeedsRoot`].
    pub(crate) fn io(step: impl Into<String>, source: io::Error) -> Self {
        let step = step.into();
        match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => HostError::NeedsRoot { step },
            _ => HostError::Io { step, source },
        }
    }

    /// A nix error for `step`.
    pub(crate) fn nix(step: impl Into<String>, e: nix::errno::Errno) -> Self {
        Self::io(step, io::Error::from(e))
    }
}

/// Whether this process can build hosts: root, `/dev/net/tun`, and a network
/// namespace can actually be created. The error says what is missing, for a test's
/// skip message.
pub fn can_run() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(format!("not running as root: the host harness {ROOT_HINT}"));
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(
            "no /dev/net/tun: load the tun module (modprobe tun) or, in a \
                    container, pass the device through"
                .into(),
        );
    }
    let probe = std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET))
        .join()
        .map_err(|_| "namespace probe thread panicked".to_string())?;
    probe.map_err(|e| {
        format!("cannot create a network namespace (unshare(CLONE_NEWNET): {e}): {ROOT_HINT}")
    })?;
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| format!("cannot create {NETNS_DIR}: {e}"))?;
    Ok(())
}
