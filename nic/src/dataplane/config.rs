//! The data plane from a TOML file: the VF ports on existing interfaces, the underlay,
//! and the rule tables (the format of [`RuleFile`]).
//!
//! ```toml
//! [underlay]
//! local = "192.168.77.1"      # this VTEP's address (configured on an interface here)
//! rx_ports = [4789, 6081]     # tunnels received (default: VXLAN's 4789)
//! tx_sockets = 4              # sending sockets (flows spread by source port)
//! tunnel_gso = false          # true: TSO super-frames to the kernel whole, as
//!                             #   UDP-tunnel GSO through a TAP (Linux 6.17+)
//! kind = "udp"                # io_uring UDP sockets (default), or "afxdp":
//! # kind = "afxdp"            # an AF_XDP socket on the underlay interface (root,
//! # ifname = "eth1"           #   XDP; next hop on the link, IPv4): more packets per
//! # xdp_mode = "native"       #   second and lower latency than the kernel's UDP path
//!
//! busy_poll_us = 200          # poll this long after a packet before parking (0: off)
//! workers = "two"             # "two" (default): VF side and underlay side on a
//!                             #   worker each (throughput, e.g. bulk TCP);
//!                             # "one": run to completion, every stage on one
//!                             #   busy-polling worker (latency-bound, low-rate)
//! switchable = false          # true: workers can change while running
//!                             #   (RunningDataPlane::set_workers)
//! auto_workers = false        # true (with switchable): `pipewright nic run`
//!                             #   switches by packet rate (WorkersPolicy)
//!
//! [[port]]
//! vf = 0
//! kind = "tap"                # an existing TAP device (IFF_VNET_HDR is set on open)
//! ifname = "tap0"
//!
//! [[port]]
//! vf = 1
//! kind = "afxdp"              # AF_XDP on an existing interface (a veth's end)
//! ifname = "vf1"
//! xdp_mode = "native"         # or "generic"
//!
//! # The rules, inline ([[rules.vf]], [[rules.egress]], ...) or from a file:
//! rules_file = "rules.toml"   # relative to this file
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    AfXdpUnderlay, DataPlane, DataPlaneError, RunningDataPlane, UnderlayConfig, UnderlayKind,
    Workers,
};
use crate::port::XdpMode;
use crate::port::{AfXdpPort, PortError, TapPort, VfPort};
use crate::rules::Versioned;
use crate::rules::{ConfigError, RuleFile};

/// Why a data plane config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneConfigError {
    /// Not valid TOML for this format.
    #[error("data plane config: {0}")]
    Parse(#[from] toml::de::Error),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Rules missing, or given twice.
    #[error("data plane config: {0}")]
    Rules(String),
    /// A receive port that no tunnel kind listens on: every datagram on it would be
    /// dropped.
    #[error("data plane config: rx_ports lists UDP port {0}, which carries no tunnel this data plane decodes (VXLAN 4789, Geneve 6081, PWT 7470); remove it or use the tunnel's port")]
    UnmappedRxPort(u16),
    /// The rules are invalid.
    #[error(transparent)]
    RuleFile(#[from] ConfigError),
    /// A port could not be opened.
    #[error("port of VF {vf} on {ifname}: {source}")]
    Port {
        /// The VF.
        vf: u16,
        /// Its interface.
        ifname: String,
        /// Why.
        #[source]
        source: PortError,
    },
    /// The data plane did not start.
    #[error(transparent)]
    Start(#[from] DataPlaneError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnderlayFile {
    local: IpAddr,
    #[serde(default)]
    rx_ports: Vec<u16>,
    tx_sockets: Option<usize>,
    gro: Option<bool>,
    gso: Option<bool>,
    tunnel_gso: Option<bool>,
    #[serde(default)]
    kind: Option<UnderlayKindFile>,
    ifname: Option<String>,
    xdp_mode: Option<ModeFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum UnderlayKindFile {
    Udp,
    Afxdp,
}

/// The kind of a VF port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// An existing TAP device.
    Tap,
    /// AF_XDP on an existing interface.
    Afxdp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeFile {
    Native,
    Generic,
}

/// One VF port of a config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortEntry {
    /// The VF number the rules name.
    pub vf: u16,
    /// TAP or AF_XDP.
    pub kind: PortKind,
    /// The interface.
    pub ifname: String,
    #[serde(default)]
    xdp_mode: Option<ModeFile>,
    #[serde(default)]
    queue: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    underlay: UnderlayFile,
    #[serde(default)]
    port: Vec<PortEntry>,
    rules: Option<RuleFile>,
    rules_file: Option<PathBuf>,
    burst: Option<usize>,
    busy_poll_us: Option<u64>,
    /// Deprecated spelling of `workers = "one"` / `"two"`.
    run_to_completion: Option<bool>,
    workers: Option<Workers>,
    switchable: Option<bool>,
    auto_workers: Option<bool>,
}

/// A parsed data plane config.
#[derive(Debug)]
pub struct DataPlaneConfig {
    file: ConfigFile,
    rules: RuleFile,
}

impl DataPlaneConfig {
    /// Reads `path` (and its `rules_file`, relative to it).
    pub fn load(path: &Path) -> Result<Self, DataPlaneConfigError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| DataPlaneConfigError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse_with(&read(path)?, |rules| read(&dir.join(rules)))
    }

    /// Parses config text whose rules are inline.
    pub fn parse(text: &str) -> Result<Self, DataPlaneConfigError> {
        Self::parse_with(text, |p| {
            Err(DataPlaneConfigError::Rules(format!(
                "rules_file = {p:?} needs a config loaded from a file; inline the rules as [[rules.egress]] ..."
            )))
        })
    }

    fn parse_with(
        text: &str,
        read_rules: impl FnOnce(&Path) -> Result<String, DataPlaneConfigError>,
    ) -> Result<Self, DataPlaneConfigError> {
        let mut file: ConfigFile = toml::from_str(text)?;
        let rules = match (file.rules.take(), &file.rules_file) {
            (Some(_), Some(_)) => {
                return Err(DataPlaneConfigError::Rules(
                    "both [rules] and rules_file are given; keep one".into(),
                ))
            }
            (Some(rules), None) => rules,
            (None, Some(path)) => RuleFile::parse(&read_rules(path)?)?,
            (None, None) => {
                return Err(DataPlaneConfigError::Rules(
                    "no rules: add rules_file = \"rules.toml\" or inline [[rules.egress]] ..."
                        .into(),
                ))
            }
        };
        if file.underlay.kind == Some(UnderlayKindFile::Afxdp) && file.underlay.ifname.is_none() {
            return Err(DataPlaneConfigError::Rules(
                "[underlay] kind = \"afxdp\" needs ifname = \"<the underlay interface>\"".into(),
            ));
        }
        if file.port.is_empty() {
            return Err(DataPlaneConfigError::Rules(
                "no VF ports: add a [[port]] with vf, kind and ifname".into(),
            ));
        }
        if file.auto_workers == Some(true) && file.switchable != Some(true) {
            return Err(DataPlaneConfigError::Rules(
                "auto_workers = true needs switchable = true".into(),
            ));
        }
        match (file.run_to_completion, file.workers) {
            (Some(_), Some(_)) => {
                return Err(DataPlaneConfigError::Rules(
                    "both run_to_completion and workers are given; keep workers".into(),
                ))
            }
            (Some(true), None) => file.workers = Some(Workers::One),
            (Some(false), None) => file.workers = Some(Workers::Two),
            _ => {}
        }
        let decoded = crate::tunnel::DecapConfig::default();
        if let Some(port) = file
            .underlay
            .rx_ports
            .iter()
            .find(|p| !decoded.decodes(**p))
        {
            return Err(DataPlaneConfigError::UnmappedRxPort(*port));
        }
        // Tables are built now so that a bad rule is reported before any port opens.
        rules.egress_table()?;
        rules.ingress_table()?;
        Ok(Self { file, rules })
    }

    /// Whether the runner should switch workers by packet rate (`auto_workers`, with
    /// `switchable`; see [`super::WorkersPolicy`]).
    pub fn auto_workers(&self) -> bool {
        self.file.auto_workers.unwrap_or(false)
    }

    /// The [`Workers`] choice the data plane starts with.
    pub fn workers(&self) -> Workers {
        self.file.workers.unwrap_or_default()
    }

    /// The VF ports the config names.
    pub fn ports(&self) -> &[PortEntry] {
        &self.file.port
    }

    /// Opens the ports and starts the data plane (in the calling thread's network
    /// namespace).
    pub fn start(self) -> Result<RunningDataPlane, DataPlaneConfigError> {
        let u = &self.file.underlay;
        let mut underlay = UnderlayConfig::new(u.local);
        if let Some(n) = u.tx_sockets {
            underlay.tx_sockets = n;
        }
        if let Some(g) = u.gro {
            underlay.gro = g;
        }
        if let Some(g) = u.gso {
            underlay.gso = g;
        }
        if let Some(t) = u.tunnel_gso {
            underlay.tunnel_gso = t;
        }
        if let (Some(UnderlayKindFile::Afxdp), Some(ifname)) = (u.kind, &u.ifname) {
            underlay.kind = UnderlayKind::AfXdp(AfXdpUnderlay {
                xdp_mode: match u.xdp_mode {
                    Some(ModeFile::Generic) => XdpMode::Generic,
                    _ => XdpMode::Native,
                },
                ..AfXdpUnderlay::new(ifname)
            });
        }
        let mut builder = DataPlane::builder()
            .workers(self.file.workers.unwrap_or_default())
            .switchable(self.file.switchable.unwrap_or(false))
            .underlay(underlay)
            .egress(Versioned::new(self.rules.egress_table()?))
            .ingress(Versioned::new(self.rules.ingress_table()?));
        if let Some(us) = self.file.busy_poll_us {
            builder = builder.busy_poll(std::time::Duration::from_micros(us));
        }
        if let Some(b) = self.file.burst {
            builder = builder.burst(b);
        }
        for port in &u.rx_ports {
            builder = builder.rx_port(*port);
        }
        for p in &self.file.port {
            let opened: Result<Box<dyn VfPort>, PortError> = match p.kind {
                PortKind::Tap => TapPort::open_existing(&p.ifname, p.vf).map(|t| Box::new(t) as _),
                PortKind::Afxdp => AfXdpPort::builder(&p.ifname)
                    .vf(p.vf)
                    .queue(p.queue.unwrap_or(0))
                    .mode(match p.xdp_mode {
                        Some(ModeFile::Generic) => XdpMode::Generic,
                        _ => XdpMode::Native,
                    })
                    .build()
                    .map(|x| Box::new(x) as _),
            };
            let port = opened.map_err(|source| DataPlaneConfigError::Port {
                vf: p.vf,
                ifname: p.ifname.clone(),
                source,
            })?;
            builder = builder.vf(port);
        }
        Ok(builder.start()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[[rules.vf]]
vf = 0
mac = "02:00:00:00:00:01"
ips = ["10.0.0.1"]

[[rules.egress]]
id = 10
vf = 0
dst_prefix = "10.0.0.0/24"
action = "encap"
tunnel = { kind = "vxlan", vni = 100, outer_src = "192.168.0.1", outer_dst = "192.168.0.2", outer_src_mac = "02:aa:00:00:00:01", outer_dst_mac = "02:aa:00:00:00:02" }

[[rules.ingress]]
id = 20
kind = "vxlan"
vni = 100
outer_dst = "192.168.0.1"
action = "deliver"
vf = 0
"#;

    fn config(extra: &str) -> String {
        format!(
            "[underlay]\nlocal = \"192.168.0.1\"\nrx_ports = [4789]\n\n[[port]]\nvf = 0\nkind = \"tap\"\nifname = \"tap0\"\n{extra}\n{RULES}"
        )
    }

    #[test]
    fn a_config_with_inline_rules_parses() {
        let c = DataPlaneConfig::parse(&config("")).unwrap();
        assert_eq!(c.ports().len(), 1);
        assert_eq!(c.ports()[0].kind, PortKind::Tap);
    }

    #[test]
    fn mistakes_get_typed_errors_that_say_what_to_do() {
        let no_rules =
            "[underlay]\nlocal = \"10.0.0.1\"\n[[port]]\nvf = 0\nkind = \"tap\"\nifname = \"t\"\n";
        let e = DataPlaneConfig::parse(no_rules).unwrap_err();
        assert!(e.to_string().contains("rules_file"), "{e}");
        let bad_kind = config("").replace("kind = \"tap\"", "kind = \"sriov\"");
        assert!(matches!(
            DataPlaneConfig::parse(&bad_kind),
            Err(DataPlaneConfigError::Parse(_))
        ));
        let bad_rule = config("").replace("vni = 100,", "vni = 99999999,");
        assert!(DataPlaneConfig::parse(&bad_rule).is_err());
        let no_ports =
            config("").replace("[[port]]\nvf = 0\nkind = \"tap\"\nifname = \"tap0\"\n", "");
        let e = DataPlaneConfig::parse(&no_ports).unwrap_err();
        assert!(e.to_string().contains("[[port]]"), "{e}");
        let unmapped = config("").replace("rx_ports = [4789]", "rx_ports = [4789, 8472]");
        assert!(matches!(
            DataPlaneConfig::parse(&unmapped),
            Err(DataPlaneConfigError::UnmappedRxPort(8472))
        ));
    }

    #[test]
    fn the_afxdp_underlay_needs_its_interface() {
        let with = |extra: &str| {
            config("").replace("rx_ports = [4789]", &format!("rx_ports = [4789]\n{extra}"))
        };
        assert!(DataPlaneConfig::parse(&with(
            "kind = \"afxdp\"\nifname = \"ul0\"\nxdp_mode = \"generic\""
        ))
        .is_ok());
        let e = DataPlaneConfig::parse(&with("kind = \"afxdp\"")).unwrap_err();
        assert!(e.to_string().contains("ifname"), "{e}");
        assert!(DataPlaneConfig::parse(&with("kind = \"dpdk\"")).is_err());
        let c = DataPlaneConfig::parse(&format!(
            "busy_poll_us = 0\nrun_to_completion = true\n{}",
            config("")
        ))
        .unwrap();
        assert_eq!(c.file.busy_poll_us, Some(0));
        assert_eq!(c.file.workers, Some(Workers::One));
        let parse_workers = |line: &str| {
            DataPlaneConfig::parse(&format!("{line}\n{}", config("")))
                .map(|c| c.file.workers.unwrap_or_default())
        };
        assert_eq!(parse_workers("").unwrap(), Workers::Two);
        assert_eq!(parse_workers("workers = \"one\"").unwrap(), Workers::One);
        assert_eq!(
            parse_workers("run_to_completion = false").unwrap(),
            Workers::Two
        );
        assert!(parse_workers("workers = \"three\"").is_err());
        let e = parse_workers("workers = \"one\"\nrun_to_completion = true").unwrap_err();
        assert!(e.to_string().contains("keep workers"), "{e}");
        let e = parse_workers("auto_workers = true").unwrap_err();
        assert!(e.to_string().contains("switchable"), "{e}");
        let c = DataPlaneConfig::parse(&format!(
            "auto_workers = true\nswitchable = true\nworkers = \"one\"\n{}",
            config("")
        ))
        .unwrap();
        assert!(c.auto_workers());
        assert_eq!(c.workers(), Workers::One);
    }

    #[test]
    fn a_missing_tap_is_a_typed_port_error() {
        let c = DataPlaneConfig::parse(&config("").replace("tap0", "pw-no-such0")).unwrap();
        match c.start() {
            Err(DataPlaneConfigError::Port { vf: 0, ifname, .. }) => {
                assert_eq!(ifname, "pw-no-such0")
            }
            other => panic!("expected a port error, got {other:?}"),
        }
    }
}
