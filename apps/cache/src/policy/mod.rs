//! Eviction policies: sans-I/O deciders over opaque `u64` keys.
//!
//! A policy only orders keys; it never touches data. The cache calls
//! [`EvictionPolicy::lookup`] on every access, [`EvictionPolicy::insert`] when a key
//! became resident, and [`EvictionPolicy::evict`] when it needs room; the trace
//! simulator drives the same objects the way libCacheSim's `cache_get_base` does
//! (lookup; on a miss evict while full, then insert), so miss ratios are comparable.

mod list;
mod s3fifo;
mod simple;

use std::fmt;
use std::str::FromStr;

pub use s3fifo::S3Fifo;
pub use simple::{Clock, Fifo, Lru, Sieve};

/// Decides which resident key to evict next. Deterministic: the same calls give the
/// same victims (no clock, no randomness).
pub trait EvictionPolicy: Send + fmt::Debug {
    /// The policy's name (`lru`, `fifo`, `clock`, `sieve`, `s3fifo`).
    fn name(&self) -> &'static str;
    /// An access to `key`: `true` (and the access recorded) if it is resident,
    /// `false` otherwise (a policy may remember the miss, as S3-FIFO's ghost does).
    fn lookup(&mut self, key: u64) -> bool;
    /// `key` became resident (it was not).
    fn insert(&mut self, key: u64);
    /// Chooses a victim among the resident keys and forgets it; `None` when empty.
    fn evict(&mut self) -> Option<u64>;
    /// The cache dropped `key` itself (not through [`evict`](Self::evict)); `false`
    /// if it was not resident.
    fn remove(&mut self, key: u64) -> bool;
    /// Resident keys.
    fn len(&self) -> usize;
    /// Whether no key is resident.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The policies this crate ships, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Least recently used.
    Lru,
    /// First in, first out.
    Fifo,
    /// CLOCK (second chance, one reference bit), as libCacheSim's `Clock`.
    Clock,
    /// SIEVE (NSDI'24): a FIFO with a hand that skips visited entries.
    Sieve,
    /// S3-FIFO (SOSP'23): 10% small FIFO, 90% main FIFO, ghost FIFO, as libCacheSim's
    /// `S3FIFO`.
    S3Fifo,
}

impl PolicyKind {
    /// Every policy, in a fixed order.
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::Lru,
        PolicyKind::Fifo,
        PolicyKind::Clock,
        PolicyKind::Sieve,
        PolicyKind::S3Fifo,
    ];

    /// A new, empty policy for a cache of `capacity` keys.
    pub fn build(self, capacity: usize) -> Box<dyn EvictionPolicy> {
        match self {
            PolicyKind::Lru => Box::new(Lru::new()),
            PolicyKind::Fifo => Box::new(Fifo::new()),
            PolicyKind::Clock => Box::new(Clock::new()),
            PolicyKind::Sieve => Box::new(Sieve::new()),
            PolicyKind::S3Fifo => Box::new(S3Fifo::new(capacity)),
        }
    }

    /// The policy's name as the CLI and metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Fifo => "fifo",
            PolicyKind::Clock => "clock",
            PolicyKind::Sieve => "sieve",
            PolicyKind::S3Fifo => "s3fifo",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown policy name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown eviction policy {0:?}: use one of lru, fifo, clock, sieve, s3fifo")]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "lru" => Ok(PolicyKind::Lru),
            "fifo" => Ok(PolicyKind::Fifo),
            "clock" => Ok(PolicyKind::Clock),
            "sieve" => Ok(PolicyKind::Sieve),
            "s3fifo" => Ok(PolicyKind::S3Fifo),
            _ => Err(UnknownPolicy(s.to_string())),
        }
    }
}

/// One request of a policy-only simulation, the way libCacheSim's `cache_get_base`
/// serves it with unit object sizes: a hit is recorded; a miss evicts while the
/// cache holds `capacity` keys, then inserts. Returns whether it was a hit.
pub fn simulate_request(policy: &mut dyn EvictionPolicy, capacity: usize, key: u64) -> bool {
    if policy.lookup(key) {
        return true;
    }
    if capacity == 0 {
        return false;
    }
    while policy.len() >= capacity {
        if policy.evict().is_none() {
            break;
        }
    }
    policy.insert(key);
    false
}

#[cfg(all(test, not(loom)))]
mod tests;
