//! The internet checksum (RFC 1071), its pseudo-headers and incremental update
//! (RFC 1624).
//!
//! Sums are carried as `u32` *partial sums*: [`sum`] returns at most `0xffff`, the
//! pseudo-header sums at most a few times that, so a handful of partial sums can be
//! added with `+` and the total folded once with [`fold`] (or complemented with
//! [`finish`] to get the value to store). For many or arbitrary partial sums use
//! [`combine`], which never overflows.
//!
//! ```
//! use pipewright_nic::wire::checksum;
//! // The checksum of a header, computed with its checksum field zero ...
//! let mut hdr = [0x45, 0x00, 0x00, 0x1c, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
//! let c = checksum::finish(checksum::sum(&hdr));
//! hdr[10..12].copy_from_slice(&c.to_be_bytes());
//! // ... makes the sum over the whole header verify.
//! assert!(checksum::is_valid(checksum::sum(&hdr)));
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

/// The ones-complement sum of `data` as big-endian 16-bit words, an odd last byte
/// padded with zero; the result is at most `0xffff`.
///
/// Adding two such sums is the sum of the concatenation only when the first slice has
/// even length.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // Byte-order independence (RFC 1071 2(B)): the sum of the words in the machine's
    // order, byte-swapped, is the sum of the big-endian words. And 2^16 = 1 (mod
    // 0xffff), so native 32-bit words add into a wide accumulator, folded once at the
    // end: a loop of plain loads and adds that the compiler vectorises (the TSO path
    // checksums every segment's payload).
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    // The last 1-3 bytes, padded with zeros as the stream would be.
    let rest = words.remainder();
    let mut last = [0u8; 4];
    last[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(last));
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let folded = fold(acc as u32);
    u32::from(if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    })
}

/// Adds two partial sums with end-around carry (never overflows).
#[inline]
pub fn combine(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s + u32::from(carry)
}

/// Folds a partial sum to 16 bits (end-around carry).
#[inline]
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum to store for a partial sum: the ones complement of its fold.
#[inline]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// True when a partial sum taken over data *including* its checksum field verifies.
#[inline]
pub fn is_valid(sum: u32) -> bool {
    fold(sum) == 0xffff
}

/// The partial sum of the IPv4 pseudo-header (RFC 768 / 793): addresses, protocol and
/// the upper-layer length.
#[inline]
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u32 {
    let (s, d) = (src.to_bits(), dst.to_bits());
    (s >> 16) + (s & 0xffff) + (d >> 16) + (d & 0xffff) + u32::from(protocol) + u32::from(len)
}

/// The partial sum of the IPv6 pseudo-header (RFC 8200 section 8.1): addresses, the
/// upper-layer length and the next header.
#[inline]
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: u32) -> u32 {
    let mut acc = u32::from(next_header) + (len >> 16) + (len & 0xffff);
    for w in src.segments().into_iter().chain(dst.segments()) {
        acc += u32::from(w);
    }
    acc
}

/// The checksum after one 16-bit word it covers changed from `old_word` to
/// `new_word` (RFC 1624, eqn. 3), without touching the rest of the data.
#[inline]
pub fn update(old_csum: u16, old_word: u16, new_word: u16) -> u16 {
    !fold(u32::from(!old_csum) + u32::from(!old_word) + u32::from(new_word))
}

/// [`update`] for a 32-bit field (an IPv4 address: NAT, tunnel rewrite).
#[inline]
pub fn update_u32(old_csum: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!old_csum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xffff);
    !fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Byte-wise RFC 1071 reference: end-around carry after every word.
    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for (i, b) in data.iter().enumerate() {
            s += if i % 2 == 0 {
                u32::from(*b) << 8
            } else {
                u32::from(*b)
            };
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// Equal as ones-complement numbers (0x0000 and 0xffff are both zero).
    fn same(a: u16, b: u16) -> bool {
        u32::from(a) % 0xffff == u32::from(b) % 0xffff
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(finish(sum(&data)), !0xddf2);
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(fold(sum(&[0xff; 64])), 0xffff);
    }

    #[test]
    fn pseudo_headers() {
        let (a, b) = (
            Ipv4Addr::new(192, 168, 0, 1),
            Ipv4Addr::new(192, 168, 0, 199),
        );
        let mut bytes = Vec::new();
        bytes.extend(a.octets());
        bytes.extend(b.octets());
        bytes.extend([0, 17, 0, 30]);
        assert_eq!(fold(pseudo_v4(a, b, 17, 30)), naive(&bytes));

        let (a, b) = (
            "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            "fe80::ffff:1".parse::<Ipv6Addr>().unwrap(),
        );
        let mut bytes = Vec::new();
        bytes.extend(a.octets());
        bytes.extend(b.octets());
        bytes.extend(70_000u32.to_be_bytes());
        bytes.extend([0, 0, 0, 6]);
        assert_eq!(fold(pseudo_v6(a, b, 6, 70_000)), naive(&bytes));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn sum_matches_naive(data in prop::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(fold(sum(&data)), naive(&data));
        }

        #[test]
        fn sums_of_even_splits_combine(data in prop::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
            let cut = (cut.min(data.len())) & !1;
            let (a, b) = data.split_at(cut);
            prop_assert_eq!(fold(combine(sum(a), sum(b))), fold(sum(&data)));
            prop_assert_eq!(fold(sum(a) + sum(b)), fold(sum(&data)));
        }

        #[test]
        fn incremental_update_matches_recompute(
            mut data in prop::collection::vec(any::<u8>(), 2..200),
            word in any::<usize>(),
            new in any::<u16>(),
            new32 in any::<u32>(),
        ) {
            let len = data.len() & !1;
            let data = &mut data[..len];
            let csum = finish(sum(data));
            let at = (word % (len / 2)) * 2;
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&new.to_be_bytes());
            let updated = update(csum, old, new);
            prop_assert!(same(updated, finish(sum(data))), "{updated:#x}");

            if len >= 4 {
                let at = (word % (len / 4)) * 4;
                let csum = finish(sum(data));
                let old = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                data[at..at + 4].copy_from_slice(&new32.to_be_bytes());
                let updated = update_u32(csum, old, new32);
                prop_assert!(same(updated, finish(sum(data))), "{updated:#x}");
            }
        }
    }
}
