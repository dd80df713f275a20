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
//! Clients do not hold the cluster key. They sign with the [`ClientKey`], derived
//! from it one way ([`ClusterKey::client_key`], HMAC-SHA256 under the cluster key of a
//! fixed label): a node checks a client's hello under the derived key and a peer's
//! hello under the cluster key itself, so a client (or anyone who stole a client's
//! key) can start transactions but cannot pose as a node. A client's peers file
//! carries `client_key = "<hex>"` instead of `key` (`pipewright storage client-peers`
//! writes one, see [`Peers::for_clients`](crate::peers::Peers::for_clients)).
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
//! let hello = SignedHello::client(&key.client_key(), &challenge, ClientId(1));
//! assert!(hello.verify(&key, &challenge));
//! // A client's key signs client hellos only: posing as node 2 fails.
//! let posing = SignedHello::client(&key.client_key(), &challenge, ClientId(1));
//! let posing = SignedHello { hello: Hello::Peer { from: NodeId(2) }, ..posing };
//! assert!(!posing.verify(&key, &challenge));
//! // What a client's peers file holds: 64 hex digits, nothing else.
//! use pipewright_storage::auth::ClientKey;
//! let client_key = key.client_key();
//! assert_eq!(ClientKey::from_hex(&client_key.to_hex()), Some(client_key));
//! assert_eq!(ClientKey::from_hex(&"+f".repeat(32)), None);
//! assert!(!hello.verify(&ClusterKey::development(), &challenge));
//! assert!(!hello.verify(&key, &Challenge { node: NodeId(1), nonce: [8; 16] }), "bound to its nonce");
//! assert!(!hello.verify(&key, &Challenge { node: NodeId(2), nonce: [7; 16] }), "and its node");
//! ```

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::{ClientId, NodeId};
use crate::wire::{encode, Challenge, Hello};

type HmacSha256 = Hmac<Sha256>;

/// What separates these tags from any other use of the key.
const DOMAIN: &[u8] = b"pipewright-storage hello v1";

/// The label the client key is derived under.
const CLIENT_LABEL: &[u8] = b"pipewright-storage client key v1";

/// The passphrase of the development key, used when the peers file names none.
const DEVELOPMENT_PASSPHRASE: &str = "pipewright-storage development key";

/// The secret the nodes of a cluster share (see the [module docs](self)); clients hold
/// the [`ClientKey`] derived from it.
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

    /// The key this cluster's clients sign with: HMAC-SHA256 under this key of a fixed
    /// label, so it does not reveal the cluster key.
    pub fn client_key(&self) -> ClientKey {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(CLIENT_LABEL);
        ClientKey(mac.finalize().into_bytes().into())
    }

    /// The key a hello of this kind must be signed with.
    fn for_hello(&self, hello: &Hello) -> [u8; 32] {
        match hello {
            Hello::Peer { .. } => self.0,
            Hello::Client { .. } => self.client_key().0,
        }
    }
}

/// What a client signs its hello with: derived from the [`ClusterKey`] by
/// [`ClusterKey::client_key`]; it cannot sign a node's hello.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey([u8; 32]);

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_development() {
            "ClientKey(development)"
        } else {
            "ClientKey(..)"
        })
    }
}

impl ClientKey {
    /// The client key of the public [development key](ClusterKey::development).
    pub fn development() -> Self {
        ClusterKey::development().client_key()
    }

    /// Whether this is the development key's client key.
    pub fn is_development(&self) -> bool {
        *self == Self::development()
    }

    /// The key as 64 lowercase hex digits (what a client's peers file holds).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key from [`to_hex`](Self::to_hex)'s text; `None` unless it is exactly 64
    /// hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(key))
    }
}

fn mac(key: &[u8; 32], challenge: &Challenge, hello: &Hello) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(DOMAIN);
    mac.update(&encode(challenge));
    mac.update(&encode(hello));
    mac
}

/// The connecting side's first frame: who it is, signed over the node's challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHello {
    /// Who is connecting.
    pub hello: Hello,
    /// HMAC-SHA256 of the challenge and `hello`, under the cluster key for a peer's
    /// hello, under the client key for a client's.
    pub tag: [u8; 32],
}

impl SignedHello {
    /// Signs `hello` for the connection that sent `challenge`, with the key its kind
    /// takes (the cluster key for a peer, its client key for a client): what a node
    /// (or a tool holding the cluster key) sends.
    pub fn sign(key: &ClusterKey, challenge: &Challenge, hello: Hello) -> Self {
        let tag = mac(&key.for_hello(&hello), challenge, &hello)
            .finalize()
            .into_bytes()
            .into();
        Self { hello, tag }
    }

    /// A client's hello as `id`, signed with its client key for `challenge`.
    pub fn client(key: &ClientKey, challenge: &Challenge, id: ClientId) -> Self {
        let hello = Hello::Client { id };
        let tag = mac(&key.0, challenge, &hello)
            .finalize()
            .into_bytes()
            .into();
        Self { hello, tag }
    }

    /// Whether it was signed for `challenge` with the key its kind takes under the
    /// cluster key `key` (compared in constant time).
    pub fn verify(&self, key: &ClusterKey, challenge: &Challenge) -> bool {
        mac(&key.for_hello(&self.hello), challenge, &self.hello)
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
