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

/// The constructors every view shares: `new_unchecked`, `new_checked` (which runs the
/// view's own length check) and `into_inner`. Expanded inside `impl<T: AsRef<[u8]>>`.
macro_rules! view_constructors {
    ($check:ident, $min:ident) => {
        #[doc = concat!(
            "Wraps a buffer without checking it; fixed-field accessors panic if it is shorter than [`",
            stringify!($min),
            "`]. Use for emitting into a buffer you sized."
        )]
        #[inline]
        pub const fn new_unchecked(buffer: T) -> Self {
            Self { buffer }
        }

        #[doc = concat!(
            "Wraps a buffer after [`",
            stringify!($check),
            "`](Self::",
            stringify!($check),
            "); no accessor of the result can panic."
        )]
        #[inline]
        pub fn new_checked(buffer: T) -> Result<Self, WireError> {
            let p = Self::new_unchecked(buffer);
            p.$check()?;
            Ok(p)
        }

        /// The wrapped buffer.
        #[inline]
        pub fn into_inner(self) -> T {
            self.buffer
        }
    };
}
pub(crate) use view_constructors;
