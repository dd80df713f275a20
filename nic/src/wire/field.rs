//! Big-endian field access on byte slices (private helpers of the views).
//!
//! Each helper slices a fixed-size window first, so there is one bounds check per
//! field and the conversion itself cannot fail.

/// Reads a big-endian `u16` at `at`.
#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    let s = &b[at..at + 2];
    u16::from_be_bytes([s[0], s[1]])
}

/// Reads a big-endian `u32` at `at`.
#[inline(always)]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let s = &b[at..at + 4];
    u32::from_be_bytes([s[0], s[1], s[2], s[3]])
}

/// Writes a big-endian `u16` at `at`.
#[inline(always)]
pub(crate) fn set_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian `u32` at `at`.
#[inline(always)]
pub(crate) fn set_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Copies the `N` bytes at `at` into an array.
#[inline(always)]
pub(crate) fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// `Err(Truncated)` unless `b` holds at least `needed` bytes.
#[inline(always)]
pub(crate) fn need(layer: &'static str, b: &[u8], needed: usize) -> Result<(), super::WireError> {
    if b.len() < needed {
        Err(super::WireError::Truncated {
            layer,
            needed,
            got: b.len(),
        })
    } else {
        Ok(())
    }
}
