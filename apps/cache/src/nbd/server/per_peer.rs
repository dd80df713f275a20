//! Connections counted per peer address, so that one client (a crashed mount that
//! reconnects in a loop, a scanner that opens connections and goes quiet) cannot hold
//! every connection place of the server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The connections each peer address holds.
#[derive(Debug, Default)]
pub(crate) struct PerPeer {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place among its peer's; given back on drop.
#[derive(Debug)]
pub(crate) struct PeerPlace {
    peers: Arc<PerPeer>,
    ip: IpAddr,
}

impl PerPeer {
    /// A place for one more connection from `ip`, unless it already holds `max`.
    pub(crate) fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerPlace> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerPlace {
            peers: self.clone(),
            ip,
        })
    }

    /// The connections `ip` holds.
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut held = self
            .peers
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // No entry per address ever seen: the map holds only connected peers.
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_gets_its_own_places_and_gives_them_back() {
        let peers = Arc::new(PerPeer::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = peers.try_take(a, 2).unwrap();
        let _second = peers.try_take(a, 2).unwrap();
        assert!(peers.try_take(a, 2).is_none(), "a third place for one peer");
        assert!(
            peers.try_take(b, 2).is_some(),
            "another peer is not held up"
        );
        drop(first);
        assert_eq!(peers.held(a), 1);
        assert!(peers.try_take(a, 2).is_some());
        assert_eq!(peers.held(b), 0, "places are given back on drop");
        assert!(peers.held.lock().unwrap().len() <= 1);
    }
}
