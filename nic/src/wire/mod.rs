//! Wire formats (to be written).
