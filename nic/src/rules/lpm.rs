//! Longest-prefix match over IPv4 and IPv6 prefixes: one hash map per prefix length
//! in use, probed from the longest length down (at most as many probes as distinct
//! lengths, typically a handful).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Maps prefixes to values; `get` finds the value of the longest matching prefix.
#[derive(Debug, Clone)]
pub(crate) struct Lpm<V> {
    v4: Vec<(u8, HashMap<u32, V>)>,
    v6: Vec<(u8, HashMap<u128, V>)>,
}

impl<V> Default for Lpm<V> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl<V> Lpm<V> {
    /// The value at exactly `prefix`, created with `make` if absent.
    pub(crate) fn entry(&mut self, prefix: IpNet, make: impl FnOnce() -> V) -> &mut V {
        match prefix {
            IpNet::V4(p) => {
                let len = p.prefix_len();
                let i = match self.v4.iter().position(|(l, _)| *l == len) {
                    Some(i) => i,
                    None => {
                        self.v4.push((len, HashMap::new()));
                        self.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
                        self.v4
                            .iter()
                            .position(|(l, _)| *l == len)
                            .expect("just inserted")
                    }
                };
                self.v4[i]
                    .1
                    .entry(u32::from(p.network()) & mask4(len))
                    .or_insert_with(make)
            }
            IpNet::V6(p) => {
                let len = p.prefix_len();
                let i = match self.v6.iter().position(|(l, _)| *l == len) {
                    Some(i) => i,
                    None => {
                        self.v6.push((len, HashMap::new()));
                        self.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
                        self.v6
                            .iter()
                            .position(|(l, _)| *l == len)
                            .expect("just inserted")
                    }
                };
                self.v6[i]
                    .1
                    .entry(u128::from(p.network()) & mask6(len))
                    .or_insert_with(make)
            }
        }
    }

    /// Values of every prefix containing `addr`, longest first.
    pub(crate) fn matches(&self, addr: IpAddr) -> impl Iterator<Item = &V> {
        let (v4, v6) = match addr {
            IpAddr::V4(a) => (Some(u32::from(a)), None),
            IpAddr::V6(a) => (None, Some(u128::from(a))),
        };
        let m4 = self
            .v4
            .iter()
            .filter_map(move |(len, map)| v4.and_then(|a| map.get(&(a & mask4(*len)))));
        let m6 = self
            .v6
            .iter()
            .filter_map(move |(len, map)| v6.and_then(|a| map.get(&(a & mask6(*len)))));
        m4.chain(m6)
    }
}
