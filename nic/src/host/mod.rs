//! Host harness (being written).
