//! Geneve option TLVs (RFC 8926 section 3.5): a bounded iterator over an option area
//! and [`GeneveOptionList`], options stored inline for [`GeneveRepr`](super::GeneveRepr).

use std::fmt;

use super::field::{be16, set_be16};
use super::geneve::LAYER;
use super::WireError;

/// One option TLV, borrowed from a packet or a [`GeneveOptionList`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    /// Option class (namespace).
    pub class: u16,
    /// Type within the class; the high bit is the critical bit.
    pub ty: u8,
    /// Option data (a multiple of 4 bytes).
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// True when a receiver that does not understand the option must drop the packet.
    #[inline]
    pub fn critical(&self) -> bool {
        self.ty & 0x80 != 0
    }
}

/// An iterator over option TLVs; yields one `Err(OptionsOverflow)` and stops if a TLV
/// runs past the option area.
#[derive(Debug, Clone)]
pub struct GeneveOptions<'a> {
    rest: &'a [u8],
}

impl<'a> GeneveOptions<'a> {
    /// Iterates the TLVs in an option area.
    #[inline]
    pub fn new(area: &'a [u8]) -> Self {
        Self { rest: area }
    }
}

impl<'a> Iterator for GeneveOptions<'a> {
    type Item = Result<GeneveOption<'a>, WireError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let r = self.rest;
        if r.is_empty() {
            return None;
        }
        let len = match r.get(3) {
            Some(l) => 4 + usize::from(l & 0x1f) * 4,
            None => usize::MAX,
        };
        let Some(data) = r.get(4..len) else {
            self.rest = &[];
            return Some(Err(WireError::OptionsOverflow { layer: LAYER }));
        };
        self.rest = &r[len..];
        Some(Ok(GeneveOption {
            class: be16(r, 0),
            ty: r[2],
            data,
        }))
    }
}

impl std::iter::FusedIterator for GeneveOptions<'_> {}

/// Validated option TLVs stored inline (no allocation), up to
/// [`CAPACITY`](Self::CAPACITY) bytes of wire format.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneveOptionList {
    bytes: [u8; Self::CAPACITY],
    len: u8,
}

impl Default for GeneveOptionList {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for GeneveOptionList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().flatten()).finish()
    }
}

impl GeneveOptionList {
    /// Bytes of options (TLV headers included) a list holds.
    pub const CAPACITY: usize = 64;

    /// No options.
    #[inline]
    pub const fn new() -> Self {
        Self {
            bytes: [0; Self::CAPACITY],
            len: 0,
        }
    }

    /// Copies an option area after checking every TLV and the capacity.
    pub fn from_wire(area: &[u8]) -> Result<Self, WireError> {
        for opt in GeneveOptions::new(area) {
            opt?;
        }
        if area.len() > Self::CAPACITY {
            return Err(WireError::Unsupported {
                layer: LAYER,
                field: "options_len",
                value: area.len() as u32,
            });
        }
        let mut list = Self::new();
        list.bytes[..area.len()].copy_from_slice(area);
        list.len = area.len() as u8;
        Ok(list)
    }

    /// Appends an option. Errors if `data` is not a multiple of 4 bytes or longer than
    /// 124, or the list would exceed its capacity.
    pub fn push(&mut self, class: u16, ty: u8, data: &[u8]) -> Result<(), WireError> {
        if data.len() % 4 != 0 || data.len() > 31 * 4 {
            return Err(WireError::BadField {
                layer: LAYER,
                field: "option_length",
            });
        }
        let start = usize::from(self.len);
        let end = start + 4 + data.len();
        if end > Self::CAPACITY {
            return Err(WireError::Unsupported {
                layer: LAYER,
                field: "options_len",
                value: end as u32,
            });
        }
        let b = &mut self.bytes[start..end];
        set_be16(b, 0, class);
        b[2] = ty;
        b[3] = (data.len() / 4) as u8;
        b[4..].copy_from_slice(data);
        self.len = end as u8;
        Ok(())
    }

    /// The options in wire format.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// True when there are no options.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The options (never yields an error: the bytes were validated).
    #[inline]
    pub fn iter(&self) -> GeneveOptions<'_> {
        GeneveOptions::new(self.as_bytes())
    }

    /// True when any option is critical (the C bit a header carrying them should have).
    #[inline]
    pub fn has_critical(&self) -> bool {
        self.iter().flatten().any(|o| o.critical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_list_capacity() {
        let mut l = GeneveOptionList::new();
        assert!(l.push(1, 1, &[0; 3]).is_err());
        assert!(l.push(1, 1, &[0; 128]).is_err());
        for _ in 0..4 {
            l.push(1, 1, &[7; 12]).unwrap();
        }
        assert_eq!(l.as_bytes().len(), 64);
        assert!(matches!(
            l.push(1, 1, &[]),
            Err(WireError::Unsupported { .. })
        ));
        assert_eq!(l.iter().count(), 4);
        assert!(!l.has_critical());
        let mut big = [0u8; 68];
        big[3] = 16;
        assert!(matches!(
            GeneveOptionList::from_wire(&big),
            Err(WireError::Unsupported { value: 68, .. })
        ));
        assert_eq!(
            GeneveOptionList::from_wire(&big[..64]),
            Err(WireError::OptionsOverflow { layer: "geneve" })
        );
    }

    #[test]
    fn iterator_stops_after_an_overflow() {
        // First option fine (no data), second claims a word that is not there.
        let area = [0, 1, 2, 0, 0, 3, 4, 1];
        let all: Vec<_> = GeneveOptions::new(&area).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0],
            Ok(GeneveOption {
                class: 1,
                ty: 2,
                data: &[]
            })
        );
        assert_eq!(all[1], Err(WireError::OptionsOverflow { layer: "geneve" }));
    }
}
