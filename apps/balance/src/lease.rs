//! Lease tokens: what a lease says, signed by the agent with the cluster key.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::weights::{ConsumerId, ProducerId};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the truncated HMAC-SHA256 tag on tokens and producer reports.
pub const TAG_LEN: usize = 16;

/// The cluster key shared by agents and producers; lease tokens and producer status
/// reports are authenticated with HMAC-SHA256 under it.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A key from 32 bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key from a passphrase (SHA-256 of it), e.g. from `PIPEWRIGHT_BALANCE_KEY`.
    pub fn from_passphrase(p: &str) -> Self {
        use sha2::Digest;
        Self(Sha256::digest(p.as_bytes()).into())
    }

    /// The tag of `domain || bytes`.
    pub fn tag(&self, domain: &[u8], bytes: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("any key length");
        mac.update(domain);
        mac.update(bytes);
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Checks a tag in constant time.
    pub fn verify(&self, domain: &[u8], bytes: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("any key length");
        mac.update(domain);
        mac.update(bytes);
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// What a lease grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseClaims {
    /// The lease id (unique per agent: its start time in µs and a counter).
    pub id: u64,
    /// The agent that issued it.
    pub agent: u32,
    /// Who holds it.
    pub consumer: ConsumerId,
    /// What it grants access to.
    pub producer: ProducerId,
    /// When it ends, milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

/// A lease id: its claims and the agent's tag over them. Unforgeable without the
/// cluster key; verifiable by any agent of the cluster after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseToken {
    /// The claims.
    pub claims: LeaseClaims,
    /// HMAC-SHA256 (truncated) of the claims under the cluster key.
    pub tag: [u8; TAG_LEN],
}

const LEASE_DOMAIN: &[u8] = b"pipewright-balance lease v1";

impl LeaseToken {
    /// Signs `claims`.
    pub fn sign(key: &ClusterKey, claims: LeaseClaims) -> Self {
        let bytes = postcard::to_allocvec(&claims).expect("claims encode");
        Self {
            claims,
            tag: key.tag(LEASE_DOMAIN, &bytes),
        }
    }

    /// Whether the tag is the agent's.
    pub fn verify(&self, key: &ClusterKey) -> bool {
        let bytes = postcard::to_allocvec(&self.claims).expect("claims encode");
        key.verify(LEASE_DOMAIN, &bytes, &self.tag)
    }
}
