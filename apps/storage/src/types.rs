//! Identifiers shared by the log, the page store, the lock table and the protocol.

#[cfg(not(loom))]
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(not(loom), derive(Serialize, Deserialize))]
        pub struct $name(pub $inner);

        /// The bare number (messages name what it is: "node 2", "page 100").
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A storage node of the chain.
    NodeId(u32)
);
id_type!(
    /// A distributed transaction. Unique for the lifetime of the cluster, and
    /// increasing per client ([`ClientId`]): a node remembers a finished transaction
    /// for a while, then forgets it and keeps only its client's highest forgotten id
    /// (a low-water mark), below which a late `Prepare` is refused.
    TxnId(u64)
);
id_type!(
    /// A page of one node's page file (a slot index).
    PageId(u64)
);
id_type!(
    /// The client (coordinator) that started a transaction and awaits its outcome.
    ClientId(u64)
);

/// A page's version: 0 for a page never written, incremented by every committed write.
pub type Version = u64;
