//! MAC addresses.

use std::fmt;
use std::str::FromStr;

use super::WireError;

/// A 48-bit Ethernet MAC address; displays as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Self = Self([0xff; 6]);
    /// `00:00:00:00:00:00`.
    pub const ZERO: Self = Self([0; 6]);

    /// The six octets.
    #[inline]
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// The broadcast address.
    #[inline]
    pub fn is_broadcast(self) -> bool {
        self == Self::BROADCAST
    }

    /// A group address (the I/G bit set; includes broadcast).
    #[inline]
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// An individual address.
    #[inline]
    pub fn is_unicast(self) -> bool {
        !self.is_multicast()
    }

    /// A locally administered address (the U/L bit set).
    #[inline]
    pub fn is_local(self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl From<[u8; 6]> for MacAddr {
    #[inline]
    fn from(b: [u8; 6]) -> Self {
        Self(b)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = WireError;

    /// Parses `aa:bb:cc:dd:ee:ff` (or with `-`), hex digits in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = WireError::BadField {
            layer: "mac",
            field: "text",
        };
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in &mut out {
            let p = parts.next().ok_or(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad);
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad)?;
        }
        if parts.next().is_some() {
            return Err(bad);
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);

    #[test]
    fn mac_addr() {
        assert_eq!(A.to_string(), "02:00:00:00:00:0a");
        assert_eq!("02:00:00:00:00:0A".parse::<MacAddr>().unwrap(), A);
        assert_eq!("02-00-00-00-00-0a".parse::<MacAddr>().unwrap(), A);
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:0a:01",
            "2:00:00:00:00:0a",
            "zz:00:00:00:00:0a",
            "+2:00:00:00:00:0a",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        assert!(A.is_unicast() && A.is_local());
        assert_eq!(format!("{A:?}"), "02:00:00:00:00:0a");
    }
}
