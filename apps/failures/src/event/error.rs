//! Why a line was refused: the typed errors of [`parse_line`](super::parse_line) and
//! the reasons the bad-line counters are keyed by.

use std::fmt;

/// Why a line was refused: the key of the bad-line counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not a JSON object.
    MalformedJson,
    /// A field has the wrong JSON type.
    WrongType,
    /// A required field is absent or empty.
    MissingField,
    /// `type` is neither `failure` nor `exposure`.
    UnknownType,
    /// The line is longer than [`Limits::max_line_bytes`].
    LineTooLong,
    /// More attributes than [`Limits::max_attributes`].
    TooManyAttributes,
    /// A new attribute name or value would pass the state's bounds.
    AttributeExplosion,
    /// A string longer than [`Limits::max_value_bytes`].
    ValueTooLong,
    /// Exposure negative, not finite, too large, or both units given.
    BadExposure,
    /// `time` is not an RFC 3339 time.
    BadTime,
    /// `time` too far in the future or the past of the ingesting clock.
    ClockSkew,
}

impl Reason {
    /// Every reason, in a fixed order.
    pub const ALL: [Reason; 11] = [
        Reason::MalformedJson,
        Reason::WrongType,
        Reason::MissingField,
        Reason::UnknownType,
        Reason::LineTooLong,
        Reason::TooManyAttributes,
        Reason::AttributeExplosion,
        Reason::ValueTooLong,
        Reason::BadExposure,
        Reason::BadTime,
        Reason::ClockSkew,
    ];

    /// The snake_case name used in reports and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::WrongType => "wrong_type",
            Reason::MissingField => "missing_field",
            Reason::UnknownType => "unknown_type",
            Reason::LineTooLong => "line_too_long",
            Reason::TooManyAttributes => "too_many_attributes",
            Reason::AttributeExplosion => "attribute_explosion",
            Reason::ValueTooLong => "value_too_long",
            Reason::BadExposure => "bad_exposure",
            Reason::BadTime => "bad_time",
            Reason::ClockSkew => "clock_skew",
        }
    }

    /// The reason named `name` (see [`Reason::as_str`]).
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// The line is not a JSON object.
    #[error("not a JSON object ({0}); send one JSON object per line")]
    MalformedJson(String),
    /// A field has the wrong type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// A required field is absent or empty.
    #[error("field `{0}` is missing or empty; every event needs type, time, app, app_type and resources")]
    MissingField(&'static str),
    /// `type` is not known.
    #[error("unknown event type `{0}`; use \"failure\" or \"exposure\"")]
    UnknownType(String),
    /// The line is too long.
    #[error("line of {len} bytes is longer than the limit of {limit}; split the event or raise the limit")]
    LineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many attributes on one event.
    #[error("{count} resource attributes, more than the limit of {limit}; send fewer attributes or raise the limit")]
    TooManyAttributes {
        /// How many the event has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A new name or value would pass the state's bounds.
    #[error("{what} would exceed the limit of {limit} distinct values; this usually means an identifier (host name, request id) was sent as a resource attribute")]
    AttributeExplosion {
        /// What overflowed (`attribute names`, `values of attribute X`, `app types`).
        what: String,
        /// The limit.
        limit: usize,
    },
    /// A string is too long.
    #[error("field `{field}` has {len} bytes, more than the limit of {limit}")]
    ValueTooLong {
        /// The field.
        field: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Exposure is not usable.
    #[error("bad exposure: {0}; give exactly one of \"hours\" or \"launches\", a finite non-negative number")]
    BadExposure(String),
    /// `time` does not parse.
    #[error("time `{0}` is not RFC 3339 (e.g. 2026-12-01T10:00:00Z)")]
    BadTime(String),
    /// `time` is too far from the ingesting clock.
    #[error("time is {skew_secs} s from the ingesting clock, beyond the allowed skew; fix the sender's clock")]
    ClockSkew {
        /// Event time minus ingest time, in seconds.
        skew_secs: i64,
    },
}

impl EventError {
    /// The counter this error is counted under.
    pub fn reason(&self) -> Reason {
        match self {
            EventError::MalformedJson(_) => Reason::MalformedJson,
            EventError::WrongType { .. } => Reason::WrongType,
            EventError::MissingField(_) => Reason::MissingField,
            EventError::UnknownType(_) => Reason::UnknownType,
            EventError::LineTooLong { .. } => Reason::LineTooLong,
            EventError::TooManyAttributes { .. } => Reason::TooManyAttributes,
            EventError::AttributeExplosion { .. } => Reason::AttributeExplosion,
            EventError::ValueTooLong { .. } => Reason::ValueTooLong,
            EventError::BadExposure(_) => Reason::BadExposure,
            EventError::BadTime(_) => Reason::BadTime,
            EventError::ClockSkew { .. } => Reason::ClockSkew,
        }
    }
}
