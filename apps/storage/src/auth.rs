//! Who may talk to a node: every connection proves it holds the cluster key.
//!
//! The accepting node opens every connection with a [`Challenge`] (its node id and
//! 16 fresh random bytes); the connecting side, a peer node or a client, checks that
//! the node is the one it meant to reach and answers with a [`SignedHello`]: who it is
//! and an HMAC-SHA256 tag under the [`ClusterKey`] over the challenge and that
//! identity. The node serves the connection only if the tag
//! verifies; otherwise it answers [`ClientResponse::Denied`](crate::wire::ClientResponse::Denied),
//! counts it (`storage_auth_failures_total`) and closes. Without the key nobody can
//! send protocol messages (forge a peer's `Commit`) or start transactions (e.g. one
//! with an id near `u64::MAX`, which would raise every node's transaction-id floor);
//! a captured hello is useless on another connection, whose challenge differs, and a
//! hello cannot be passed on to another node, whose id the tag does not cover.
//!
//! This authenticates who opens a connection, not each frame: the network between
//! the nodes and their clients is trusted not to rewrite TCP streams (run the cluster
//! on a private network, or inside a tunnel, as with any plaintext protocol).
//!
//! The key comes from the peers file (`key = "…"`, see [`Peers`](crate::peers::Peers));
//! a file without one uses the public development key, which the CLI warns about.
//! The passphrase is hashed once (SHA-256), not stretched: one observed handshake lets
//! an eavesdropper test guesses offline, so it must be machine-generated (e.g.
//! `openssl rand -hex 32`, as `storage cluster` does), never a word someone chose.
//!
//! ```
//! use pipewright_storage::auth::{ClusterKey, SignedHello};
//! use pipewright_storage::wire::{Challenge, Hello};
//! use pipewright_storage::{ClientId, NodeId};
//!
//! let key = ClusterKey::from_passphrase("5f0c0e3b9a1d4c8e7f2a6b1d0c9e8f7a");
//! let challenge = Challenge { node: NodeId(1), nonce: [7; 16] };
//! let hello = SignedHello::sign(&key, &challenge, Hello::Client { id: ClientId(1) });
//! assert!(hello.verify(&key, &challenge));
//! assert!(!hello.verify(&ClusterKey::development(), &challenge));
//! assert!(!hello.verify(&key, &Challenge { node: NodeId(1), nonce: [8; 16] }), "bound to its nonce");
//! assert!(!hello.verify(&key, &Challenge { node: NodeId(2), nonce: [7; 16] }), "and its node");
//! ```

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::NodeId;
use crate::wire::{encode, Challenge, Hello};

type HmacSha256 = Hmac<Sha256>;

/// What separates these tags from any other use of the key.
const DOMAIN: &[u8] = b"pipewright-storage hello v1";

/// The passphrase of the development key, used when the peers file names none.
const DEVELOPMENT_PASSPHRASE: &str = "pipewright-storage development key";

/// The secret every node and client of a cluster shares (see the [module docs](self)).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_development() {
            "ClusterKey(development)"
        } else {
            "ClusterKey(..)"
        })
    }
}

impl Default for ClusterKey {
    fn default() -> Self {
        Self::development()
    }
}

impl ClusterKey {
    /// The key of `passphrase` (its SHA-256).
    pub fn from_passphrase(passphrase: &str) -> Self {
        Self(Sha256::digest(passphrase.as_bytes()).into())
    }

    /// The public development key: anyone can connect with it. For tests and a
    /// cluster on one machine only.
    pub fn development() -> Self {
        Self::from_passphrase(DEVELOPMENT_PASSPHRASE)
    }

    /// Whether this is the public [development key](Self::development).
    pub fn is_development(&self) -> bool {
        *self == Self::development()
    }

    fn mac(&self, challenge: &Challenge, hello: &Hello) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(DOMAIN);
        mac.update(&encode(challenge));
        mac.update(&encode(hello));
        mac
    }
}

/// The connecting side's first frame: who it is, signed over the node's challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHello {
    /// Who is connecting.
    pub hello: Hello,
    /// HMAC-SHA256 under the cluster key of the challenge and `hello`.
    pub tag: [u8; 32],
}

impl SignedHello {
    /// Signs `hello` for the connection that sent `challenge`.
    pub fn sign(key: &ClusterKey, challenge: &Challenge, hello: Hello) -> Self {
        let tag = key.mac(challenge, &hello).finalize().into_bytes().into();
        Self { hello, tag }
    }

    /// Whether it was signed with `key` for `challenge` (compared in constant time).
    pub fn verify(&self, key: &ClusterKey, challenge: &Challenge) -> bool {
        key.mac(challenge, &self.hello)
            .verify_slice(&self.tag)
            .is_ok()
    }
}

/// Fills `bytes` from the operating system's random source.
pub(crate) fn random(bytes: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(bytes).map_err(|e| std::io::Error::other(e.to_string()))
}

/// A fresh challenge from `node`.
pub(crate) fn challenge(node: NodeId) -> std::io::Result<Challenge> {
    let mut nonce = [0; 16];
    random(&mut nonce)?;
    Ok(Challenge { node, nonce })
}

/// A new random passphrase (32 bytes, hex): what [`LocalCluster`](crate::cluster::LocalCluster)
/// writes in its peers file.
pub fn random_passphrase() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    random(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
