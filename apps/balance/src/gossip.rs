//! Producers' gossip: each tells its peers its workload indicators every period, signed
//! with the cluster key; a producer takes a peer's gossip only from a peer the agent
//! lists, and only when newer than that peer's last (a replayed datagram changes
//! nothing).

use serde::{Deserialize, Serialize};

use crate::lease::ClusterKey;
use crate::shed::Indicators;
use crate::wire::{self, Peer};

#[derive(Serialize, Deserialize)]
pub(crate) struct Gossip {
    pub(crate) from: u64,
    /// The sender's clock when it sent this (Unix ms): a peer's gossip is taken only
    /// if newer than the last taken, so a replayed datagram changes nothing.
    pub(crate) sent_ms: u64,
    pub(crate) ind: Indicators,
}

const GOSSIP_DOMAIN: &[u8] = b"pipewright-balance gossip v1";

/// Gossip with its tag under the cluster key: anyone can send a UDP datagram, only
/// the cluster's producers can make one that is taken.
#[derive(Serialize, Deserialize)]
pub(crate) struct SignedGossip {
    pub(crate) gossip: Gossip,
    tag: [u8; crate::lease::TAG_LEN],
}

impl SignedGossip {
    pub(crate) fn sign(key: &ClusterKey, gossip: Gossip) -> Self {
        let tag = key.tag(GOSSIP_DOMAIN, &wire::encode(&gossip));
        Self { gossip, tag }
    }

    pub(crate) fn verify(&self, key: &ClusterKey) -> bool {
        key.verify(GOSSIP_DOMAIN, &wire::encode(&self.gossip), &self.tag)
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which gossip a producer takes: signed by the cluster key, from a peer the agent
/// listed, newer than that peer's last.
#[derive(Default)]
pub(crate) struct GossipFilter {
    /// Listed peers, and the send time of the last gossip taken from each.
    listed: std::collections::HashMap<u64, u64>,
}

impl GossipFilter {
    /// Takes the agent's new list; returns the peers no longer listed.
    pub(crate) fn relist(&mut self, peers: &[Peer]) -> Vec<u64> {
        let ids: std::collections::HashSet<u64> = peers.iter().map(|p| p.id.0).collect();
        let gone: Vec<u64> = self
            .listed
            .keys()
            .filter(|id| !ids.contains(id))
            .copied()
            .collect();
        for id in &gone {
            self.listed.remove(id);
        }
        for id in ids {
            self.listed.entry(id).or_insert(0);
        }
        gone
    }

    pub(crate) fn take(&mut self, g: &Gossip) -> bool {
        match self.listed.get_mut(&g.from) {
            Some(last) if g.sent_ms > *last => {
                *last = g.sent_ms;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::ProducerId;

    fn peer(id: u64) -> Peer {
        Peer {
            id: ProducerId(id),
            gossip: "127.0.0.1:9".parse().unwrap(),
        }
    }

    fn from(id: u64, sent_ms: u64) -> Gossip {
        Gossip {
            from: id,
            sent_ms,
            ind: Indicators::default(),
        }
    }

    #[test]
    fn only_listed_peers_newer_gossip_is_taken() {
        let mut f = GossipFilter::default();
        assert!(!f.take(&from(1, 10)), "nobody is listed yet");
        assert!(f.relist(&[peer(1), peer(2)]).is_empty());
        assert!(f.take(&from(1, 10)));
        assert!(!f.take(&from(1, 10)), "a replay");
        assert!(!f.take(&from(1, 9)), "older");
        assert!(f.take(&from(1, 11)));
        assert!(!f.take(&from(7, 50)), "not listed");
        assert_eq!(f.relist(&[peer(2)]), vec![1]);
        assert!(!f.take(&from(1, 12)), "no longer listed");
        assert!(f.take(&from(2, 1)));
    }

    #[test]
    fn gossip_is_taken_only_under_the_cluster_key() {
        let key = ClusterKey::from_passphrase("cluster");
        let signed = SignedGossip::sign(&key, from(1, 5));
        assert!(signed.verify(&key));
        assert!(!signed.verify(&ClusterKey::from_passphrase("other")));
        let mut tampered = SignedGossip::sign(&key, from(1, 5));
        tampered.gossip.ind.connections = 1_000;
        assert!(!tampered.verify(&key));
        let bytes = wire::encode(&signed);
        let back: SignedGossip = wire::decode(&bytes).unwrap();
        assert!(back.verify(&key));
    }
}
