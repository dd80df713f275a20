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
        let ip = peer_of(ip);
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

    /// The connections `ip`'s peer holds.
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&peer_of(ip)).copied().unwrap_or(0)
    }
}

/// The peer an address belongs to: an IPv4 address itself (also when mapped into
/// IPv6), an IPv6 address's /64 (one host commonly holds a whole /64 and could
/// otherwise use a fresh address per connection).
fn peer_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
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

    #[test]
    fn an_ipv6_host_is_one_peer_per_64_and_a_mapped_ipv4_is_its_ipv4() {
        let peers = Arc::new(PerPeer::default());
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = peers.try_take(one, 1).unwrap();
        assert!(
            peers.try_take(same_64, 1).is_none(),
            "another address of the /64"
        );
        assert!(peers.try_take(other_64, 1).is_some());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _b = peers.try_take(v4, 1).unwrap();
        assert!(peers.try_take(mapped, 1).is_none(), "the same IPv4 peer");
    }
}
