//! Longest-prefix match over IPv4 and IPv6 prefixes: one hash map per prefix length
//! in use, probed from the longest length down (at most as many probes as distinct
//! lengths, typically a handful).

use rustc_hash::FxHashMap as HashMap;
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
                        self.v4.push((len, HashMap::default()));
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
                        self.v6.push((len, HashMap::default()));
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

    /// Visits the values of every prefix containing `addr`, longest first, until `f`
    /// returns `Some`. Plain loops: this runs once per packet.
    #[inline]
    pub(crate) fn find_map<R>(
        &self,
        addr: IpAddr,
        mut f: impl FnMut(&V) -> Option<R>,
    ) -> Option<R> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (len, map) in &self.v4 {
                    if let Some(found) = map.get(&(a & mask4(*len))).and_then(&mut f) {
                        return Some(found);
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (len, map) in &self.v6 {
                    if let Some(found) = map.get(&(a & mask6(*len))).and_then(&mut f) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }
}
