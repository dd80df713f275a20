//! The peers file: which node listens where, and the cluster's key.
//!
//! A TOML table mapping node ids to socket addresses, after the passphrase the nodes
//! of the cluster share ([`auth`](crate::auth): connections without it are refused; a
//! file without `key` uses the public development key):
//!
//! ```toml
//! key = "a long random passphrase, kept as secret as the data"
//!
//! [nodes]
//! 1 = "127.0.0.1:7101"
//! 2 = "127.0.0.1:7102"
//! 3 = "127.0.0.1:7103"
//! ```
//!
//!
//! Clients get a file with the same nodes and `client_key = "<64 hex digits>"` in place
//! of `key` ([`Peers::for_clients`], `pipewright storage client-peers`): the key
//! clients sign with, derived from the cluster's, which cannot sign a node's hello. A
//! node refuses to start from such a file.
//!
//! ```
//! use pipewright_storage::peers::{Peers, PeersError};
//! use pipewright_storage::NodeId;
//!
//! let peers = Peers::parse("[nodes]\n1 = \"127.0.0.1:7101\"\n2 = \"127.0.0.1:7102\"\n")?;
//! assert_eq!(peers.addr(NodeId(2)).unwrap().port(), 7102);
//! assert_eq!(Peers::parse(&peers.to_toml())?, peers);
//! assert!(Peers::parse("[nodes]\nx = \"nowhere\"").is_err());
//! assert!(peers.cluster_key()?.is_development());
//! let keyed = Peers::parse("key = \"s3cret\"\n[nodes]\n1 = \"127.0.0.1:7101\"\n")?;
//! assert!(!keyed.cluster_key()?.is_development());
//! assert_eq!(Peers::parse(&keyed.to_toml())?, keyed);
//! // The clients' file: the same client key, no cluster key.
//! let clients = Peers::parse(&keyed.for_clients().to_toml())?;
//! assert_eq!(clients.client_key(), keyed.client_key());
//! assert!(matches!(clients.cluster_key(), Err(PeersError::ClientKeyOnly)));
//! // `key` goes above the table, and a misspelt field is an error, not the default key.
//! let late = Peers::parse("[nodes]\n1 = \"127.0.0.1:7101\"\nkey = \"s3cret\"\n");
//! assert!(matches!(late, Err(PeersError::KeyInNodes)));
//! assert!(Peers::parse("Key = \"s3cret\"\n[nodes]\n1 = \"127.0.0.1:7101\"\n").is_err());
//! # Ok::<(), pipewright_storage::peers::PeersError>(())
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::auth::{ClientKey, ClusterKey};
use crate::types::NodeId;

/// A peers file could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    /// The file could not be read or written.
    #[error("peers file {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("peers file is not a `[nodes]` table of id = \"address\": {0}")]
    Syntax(#[from] toml::de::Error),
    /// A key is not a node id.
    #[error("`{0}` is not a node id (a non-negative integer)")]
    BadId(String),
    /// A value is not a socket address.
    #[error("node {id}: `{addr}` is not an address like 127.0.0.1:7101")]
    BadAddr {
        /// The node.
        id: String,
        /// The value.
        addr: String,
    },
    /// The file names no node.
    #[error("the peers file names no node")]
    Empty,
    /// `key = ...` written inside the `[nodes]` table.
    #[error("`key` (or `client_key`) is inside the [nodes] table: move that line above `[nodes]`")]
    KeyInNodes,
    /// `key = ""`.
    #[error("the peers file's key is empty; give a long random passphrase, or leave `key` out for the development key")]
    EmptyKey,
    /// Both `key` and `client_key`.
    #[error("the peers file has both `key` and `client_key`: a node's file has `key`, a client's only `client_key` (written by `pipewright storage client-peers`)")]
    BothKeys,
    /// A `client_key` that is not 64 hex digits.
    #[error("the peers file's `client_key` is not 64 hex digits; write it with `pipewright storage client-peers`")]
    BadClientKey,
    /// A node's key asked of a client's file.
    #[error("this is a client's peers file (it has `client_key`, not the cluster's `key`): a node needs the file with `key`")]
    ClientKeyOnly,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    key: Option<String>,
    client_key: Option<String>,
    nodes: BTreeMap<String, String>,
}

/// What a peers file holds of the cluster's secret.
#[derive(Clone, PartialEq, Eq)]
enum Secret {
    /// The cluster's passphrase (a node's file).
    Cluster(String),
    /// Only the key clients sign with (a client's file).
    Client(ClientKey),
}

/// Node id → listening address, for every node of a cluster, and its key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Peers {
    nodes: BTreeMap<NodeId, SocketAddr>,
    /// `None`: the development key.
    secret: Option<Secret>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passphrase: options and clients that hold peers are printed.
        let secret = match self.secret {
            None => "development",
            Some(Secret::Cluster(_)) => "key (set)",
            Some(Secret::Client(_)) => "client_key (set)",
        };
        f.debug_struct("Peers")
            .field("nodes", &self.nodes)
            .field("secret", &secret)
            .finish()
    }
}

impl Peers {
    /// Peers from a map, with the development key (see [`with_key`](Self::with_key)).
    pub fn new(nodes: BTreeMap<NodeId, SocketAddr>) -> Self {
        Self {
            nodes,
            secret: None,
        }
    }

    /// The same peers with the cluster key of `passphrase`.
    pub fn with_key(mut self, passphrase: impl Into<String>) -> Self {
        self.secret = Some(Secret::Cluster(passphrase.into()));
        self
    }

    /// The same nodes with only the key clients sign with: the file to give a
    /// cluster's clients (it cannot start a node or sign a node's hello).
    pub fn for_clients(&self) -> Self {
        Self {
            nodes: self.nodes.clone(),
            secret: Some(Secret::Client(self.client_key())),
        }
    }

    /// The key nodes sign and check hellos with ([`ClusterKey::development`] if the
    /// file names none); an error for a client's file, which holds only
    /// [`client_key`](Self::client_key).
    pub fn cluster_key(&self) -> Result<ClusterKey, PeersError> {
        match &self.secret {
            None => Ok(ClusterKey::development()),
            Some(Secret::Cluster(passphrase)) => Ok(ClusterKey::from_passphrase(passphrase)),
            Some(Secret::Client(_)) => Err(PeersError::ClientKeyOnly),
        }
    }

    /// The key clients sign their hellos with: derived from the cluster key, or the
    /// client's file's `client_key`.
    pub fn client_key(&self) -> ClientKey {
        match &self.secret {
            None => ClientKey::development(),
            Some(Secret::Cluster(passphrase)) => {
                ClusterKey::from_passphrase(passphrase).client_key()
            }
            Some(Secret::Client(key)) => key.clone(),
        }
    }

    /// Parse the TOML text of a peers file.
    pub fn parse(text: &str) -> Result<Self, PeersError> {
        let file: File = toml::from_str(text)?;
        let mut nodes = BTreeMap::new();
        for (id, addr) in file.nodes {
            let node = id.trim().parse().map_err(|_| match id.as_str() {
                "key" | "client_key" => PeersError::KeyInNodes,
                _ => PeersError::BadId(id.clone()),
            })?;
            let sock = addr.parse().map_err(|_| PeersError::BadAddr { id, addr })?;
            nodes.insert(NodeId(node), sock);
        }
        if nodes.is_empty() {
            return Err(PeersError::Empty);
        }
        let secret = match (file.key, file.client_key) {
            (Some(_), Some(_)) => return Err(PeersError::BothKeys),
            (Some(key), None) if key.is_empty() => return Err(PeersError::EmptyKey),
            (Some(key), None) => Some(Secret::Cluster(key)),
            (None, Some(hex)) => Some(Secret::Client(
                ClientKey::from_hex(&hex).ok_or(PeersError::BadClientKey)?,
            )),
            (None, None) => None,
        };
        Ok(Self { nodes, secret })
    }

    /// Read and parse a peers file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PeersError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| PeersError::Io {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text)
    }

    /// The TOML text of this peers file.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        match &self.secret {
            Some(Secret::Cluster(key)) => {
                out.push_str(&format!("key = {}\n\n", toml::Value::String(key.clone())));
            }
            Some(Secret::Client(key)) => {
                out.push_str(&format!("client_key = \"{}\"\n\n", key.to_hex()));
            }
            None => {}
        }
        out.push_str("[nodes]\n");
        for (id, addr) in &self.nodes {
            out.push_str(&format!("{} = \"{addr}\"\n", id.0));
        }
        out
    }

    /// Write the peers file, readable by its owner only (it holds the cluster's key).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), PeersError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let io = |error| PeersError::Io {
            path: path.display().to_string(),
            error,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        // `mode` applies to a file it creates only: an existing file is narrowed too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        file.write_all(self.to_toml().as_bytes()).map_err(io)
    }

    /// A node's address.
    pub fn addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.nodes.get(&node).copied()
    }

    /// Every node, by id.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, SocketAddr)> + '_ {
        self.nodes.iter().map(|(&n, &a)| (n, a))
    }

    /// The node ids, ascending.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }
}
