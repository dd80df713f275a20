//! TCP flags as a small bit-set newtype (no dependency on `bitflags`).

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};

/// The eight TCP flag bits of header byte 13.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: Self = Self(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// Reset the connection.
    pub const RST: Self = Self(0x04);
    /// Push function.
    pub const PSH: Self = Self(0x08);
    /// Acknowledgment field is significant.
    pub const ACK: Self = Self(0x10);
    /// Urgent pointer field is significant.
    pub const URG: Self = Self(0x20);
    /// ECN echo.
    pub const ECE: Self = Self(0x40);
    /// Congestion window reduced.
    pub const CWR: Self = Self(0x80);

    const NAMES: [&'static str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];

    /// No flags.
    #[inline]
    pub const fn empty() -> Self {
        Self(0)
    }

    /// From the raw byte.
    #[inline]
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// The raw byte.
    #[inline]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every flag of `other` is set.
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any flag of `other` is set.
    #[inline]
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// True when no flag is set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Sets the flags of `other`.
    #[inline]
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    /// Clears the flags of `other`.
    #[inline]
    pub fn remove(&mut self, other: Self) {
        self.0 &= !other.0;
    }
}

impl BitOr for TcpFlags {
    type Output = Self;
    #[inline]
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for TcpFlags {
    type Output = Self;
    #[inline]
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl fmt::Debug for TcpFlags {
    /// `SYN|ACK`, or `-` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (i, name) in Self::NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations_and_debug() {
        let syn = TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR;
        assert_eq!(syn.bits(), 0xc2);
        assert_eq!(format!("{syn:?}"), "SYN|ECE|CWR");
        assert_eq!(format!("{:?}", TcpFlags::empty()), "-");
        let mut f = TcpFlags::ACK;
        f |= TcpFlags::FIN;
        f.insert(TcpFlags::PSH);
        f.remove(TcpFlags::ACK);
        assert!(f.contains(TcpFlags::FIN | TcpFlags::PSH) && !f.intersects(TcpFlags::ACK));
        assert_eq!((f & TcpFlags::FIN).bits(), 1);
        assert_eq!(
            TcpFlags::from_bits(0x3f),
            TcpFlags::FIN
                | TcpFlags::SYN
                | TcpFlags::RST
                | TcpFlags::PSH
                | TcpFlags::ACK
                | TcpFlags::URG
        );
    }
}
