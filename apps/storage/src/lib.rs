//! The storage commit chain (being written).
