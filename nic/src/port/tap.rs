//! TAP port (being written).
