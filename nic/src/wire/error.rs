//! The one error type of the wire layer.

/// Why bytes could not be viewed or parsed as a packet, or a value not emitted.
///
/// Every variant is `Copy` and allocation-free, so the data plane can count it by
/// [`reason`](WireError::reason) and drop the frame without further cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer is shorter than the header (or a length field) requires.
    #[error("{layer}: truncated: need {needed} bytes, got {got}")]
    Truncated {
        /// The layer being read ("ipv4", "udp", ...).
        layer: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// A length field is inconsistent with itself or with another length field.
    #[error("{layer}: bad {field}: {value}")]
    BadLength {
        /// The layer being read.
        layer: &'static str,
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: usize,
    },
    /// The version field holds a version this format does not accept.
    #[error("{layer}: unsupported version {version}")]
    BadVersion {
        /// The layer being read.
        layer: &'static str,
        /// The version found.
        version: u8,
    },
    /// A checksum does not verify.
    #[error("{layer}: bad checksum")]
    BadChecksum {
        /// The layer whose checksum failed.
        layer: &'static str,
    },
    /// The EtherType is not one the caller handles.
    #[error("unknown ethertype {0:#06x}")]
    UnknownEtherType(u16),
    /// Options (or extension headers) run past the area that should hold them.
    #[error("{layer}: options overflow their area")]
    OptionsOverflow {
        /// The layer being read.
        layer: &'static str,
    },
    /// The packet is an IP fragment (not first-and-only); fragments are not parsed.
    #[error("packet is a fragment")]
    Fragmented,
    /// The IP protocol (or next header) is not one the caller handles.
    #[error("unsupported IP protocol {0}")]
    UnsupportedProtocol(u8),
    /// A field holds a value the format does not allow (a required flag is clear, a
    /// value is wider than its field, a header is out of order).
    #[error("{layer}: bad {field}")]
    BadField {
        /// The layer being read or written.
        layer: &'static str,
        /// The offending field.
        field: &'static str,
    },
    /// A field holds a legal value that this implementation does not support (an ARP
    /// hardware type other than Ethernet, more Geneve options than a value can hold).
    #[error("{layer}: unsupported {field} {value:#x}")]
    Unsupported {
        /// The layer being read.
        layer: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// More chained headers than the walk allows (IPv6 extension headers).
    #[error("{layer}: too many chained headers")]
    TooManyHeaders {
        /// The layer being walked.
        layer: &'static str,
    },
}

impl WireError {
    /// A short, stable label for metrics (`"truncated"`, `"bad_checksum"`, ...).
    ///
    /// ```
    /// use pipewright_nic::wire::WireError;
    /// assert_eq!(WireError::BadChecksum { layer: "ipv4" }.reason(), "bad_checksum");
    /// ```
    #[inline]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadLength { .. } => "bad_length",
            Self::BadVersion { .. } => "bad_version",
            Self::BadChecksum { .. } => "bad_checksum",
            Self::UnknownEtherType(_) => "unknown_ethertype",
            Self::OptionsOverflow { .. } => "options_overflow",
            Self::Fragmented => "fragmented",
            Self::UnsupportedProtocol(_) => "unsupported_protocol",
            Self::BadField { .. } => "bad_field",
            Self::Unsupported { .. } => "unsupported",
            Self::TooManyHeaders { .. } => "too_many_headers",
        }
    }

    /// The layer the error happened in, when it has one (for labels).
    #[inline]
    pub fn layer(&self) -> Option<&'static str> {
        match *self {
            Self::Truncated { layer, .. }
            | Self::BadLength { layer, .. }
            | Self::BadVersion { layer, .. }
            | Self::BadChecksum { layer }
            | Self::OptionsOverflow { layer }
            | Self::BadField { layer, .. }
            | Self::Unsupported { layer, .. }
            | Self::TooManyHeaders { layer } => Some(layer),
            Self::UnknownEtherType(_) => Some("ethernet"),
            Self::Fragmented | Self::UnsupportedProtocol(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_distinct_and_display_mentions_layer() {
        let all = [
            WireError::Truncated {
                layer: "udp",
                needed: 8,
                got: 3,
            },
            WireError::BadLength {
                layer: "udp",
                field: "length",
                value: 4,
            },
            WireError::BadVersion {
                layer: "ipv4",
                version: 6,
            },
            WireError::BadChecksum { layer: "ipv4" },
            WireError::UnknownEtherType(0x1234),
            WireError::OptionsOverflow { layer: "geneve" },
            WireError::Fragmented,
            WireError::UnsupportedProtocol(99),
            WireError::BadField {
                layer: "vxlan",
                field: "flags",
            },
            WireError::Unsupported {
                layer: "arp",
                field: "htype",
                value: 6,
            },
            WireError::TooManyHeaders { layer: "ipv6" },
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.reason(), b.reason());
            }
            if let Some(layer) = a.layer() {
                if !matches!(a, WireError::UnknownEtherType(_)) {
                    assert!(a.to_string().contains(layer), "{a}");
                }
            }
        }
        assert_eq!(all[0].to_string(), "udp: truncated: need 8 bytes, got 3");
    }
}
