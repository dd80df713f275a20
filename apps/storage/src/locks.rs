//! Per-page locks taken by a transaction's prepare analysis.
//!
//! **No-wait policy.** A prepare either takes *all* its page locks at once, with every
//! expected version matching the page's current version, or fails immediately with a
//! typed [`PrepareError`] and holds nothing. It never waits for a holder, so there are no
//! lock-wait cycles and no deadlocks across the chain; the price is that a transaction
//! which conflicts with one in flight aborts (`Conflict { page, holder }`) and the client
//! retries. Locks are held from a successful prepare until the node learns the outcome
//! (commit applied or abort), including across a crash: recovery re-takes the locks of
//! in-doubt intents with [`LockTable::restore`].
//!
//! The table is `Sync` (one mutex around the whole map, taken once per prepare or
//! release, never across I/O) so several tasks of a node can share it; under
//! `--cfg loom` the mutex is loom's and `tests/loom_locks.rs` model checks it.

use std::collections::BTreeMap;

use crate::sync::{Mutex, MutexGuard};
use crate::types::{PageId, TxnId, Version};

/// Why a transaction's prepare analysis failed on this node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(not(loom), derive(serde::Serialize, serde::Deserialize))]
pub enum PrepareError {
    /// Another transaction holds a lock on `page` (no-wait: we abort instead of waiting).
    #[error("page {page} is locked by transaction {holder} — retry")]
    Conflict {
        /// The contended page.
        page: PageId,
        /// The transaction holding it.
        holder: TxnId,
    },
    /// The page changed since the client read it (optimistic concurrency check).
    #[error(
        "page {page} is at version {found}, the transaction expected {expected} — read it again and retry"
    )]
    VersionMismatch {
        /// The page whose version differs.
        page: PageId,
        /// The version the transaction's write was based on.
        expected: Version,
        /// The page's current committed version.
        found: Version,
    },
    /// Taking the locks would exceed the table's capacity (admission control).
    #[error("the node's lock table is full — retry later")]
    NoSpace,
    /// The same page appears twice in one transaction's writes on this node.
    #[error("page {page} is written twice by one transaction — write it once")]
    DuplicatePage {
        /// The repeated page.
        page: PageId,
    },
    /// The page is beyond the node's page file.
    #[error("page {page} is beyond the node's {capacity} pages")]
    OutOfRange {
        /// The page asked for.
        page: PageId,
        /// Pages the node has.
        capacity: u64,
    },
    /// The write carries more than a page of data.
    #[error("{len} bytes for page {page} exceed a page (at most 8192)")]
    TooLarge {
        /// The page.
        page: PageId,
        /// The data's length.
        len: usize,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Inner {
    holders: BTreeMap<PageId, TxnId>,
    by_txn: BTreeMap<TxnId, Vec<PageId>>,
}

/// A node's page locks: page → holding transaction, bounded by a capacity.
///
/// ```
/// use pipewright_storage::locks::{LockTable, PrepareError};
/// use pipewright_storage::{PageId, TxnId};
///
/// let locks = LockTable::new(16);
/// let current = |_page: PageId| 0; // every page at version 0
/// locks.prepare(TxnId(1), &[(PageId(7), 0)], current).unwrap();
/// assert_eq!(
///     locks.prepare(TxnId(2), &[(PageId(7), 0)], current),
///     Err(PrepareError::Conflict { page: PageId(7), holder: TxnId(1) })
/// );
/// assert_eq!(locks.release(TxnId(1)), 1);
/// locks.prepare(TxnId(2), &[(PageId(7), 0)], current).unwrap();
/// ```
pub struct LockTable {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl LockTable {
    /// An empty table holding at most `capacity` page locks at once.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the table cannot leave it half-updated (every update
        // is computed before it is written), so a poisoned mutex is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// All-or-nothing prepare: lock every page of `wants` for `txn` and check that each
    /// page's `current` version equals the expected one. On error nothing stays locked
    /// (pages `txn` already held before the call stay held). `current` is called with
    /// the table's mutex held and must be a cheap in-memory lookup.
    pub fn prepare(
        &self,
        txn: TxnId,
        wants: &[(PageId, Version)],
        current: impl Fn(PageId) -> Version,
    ) -> Result<(), PrepareError> {
        // Duplicates first, outside the mutex and in O(n log n): a hostile prepare may
        // name hundreds of thousands of pages.
        let mut seen = std::collections::HashSet::with_capacity(wants.len());
        if let Some(&(page, _)) = wants.iter().find(|(p, _)| !seen.insert(*p)) {
            return Err(PrepareError::DuplicatePage { page });
        }
        let mut inner = self.lock();
        let mut fresh = Vec::with_capacity(wants.len());
        for &(page, expected) in wants {
            match inner.holders.get(&page) {
                Some(&holder) if holder != txn => {
                    return Err(PrepareError::Conflict { page, holder })
                }
                Some(_) => {}
                None => fresh.push(page),
            }
            let found = current(page);
            if found != expected {
                return Err(PrepareError::VersionMismatch {
                    page,
                    expected,
                    found,
                });
            }
        }
        if inner.holders.len() + fresh.len() > self.capacity {
            return Err(PrepareError::NoSpace);
        }
        for &page in &fresh {
            inner.holders.insert(page, txn);
        }
        inner.by_txn.entry(txn).or_default().extend(fresh);
        Ok(())
    }

    /// Re-take locks for an in-doubt intent during recovery: no version check and no
    /// capacity limit (the node already promised these pages before it crashed). Fails
    /// only if another transaction holds one of the pages, which a consistent log never
    /// produces.
    pub fn restore(&self, txn: TxnId, pages: &[PageId]) -> Result<(), PrepareError> {
        let mut inner = self.lock();
        for &page in pages {
            if let Some(&holder) = inner.holders.get(&page) {
                if holder != txn {
                    return Err(PrepareError::Conflict { page, holder });
                }
            }
        }
        for &page in pages {
            if inner.holders.insert(page, txn).is_none() {
                inner.by_txn.entry(txn).or_default().push(page);
            }
        }
        Ok(())
    }

    /// Release every lock `txn` holds; returns how many were released.
    pub fn release(&self, txn: TxnId) -> usize {
        let mut inner = self.lock();
        let pages = inner.by_txn.remove(&txn).unwrap_or_default();
        for page in &pages {
            inner.holders.remove(page);
        }
        pages.len()
    }

    /// The transaction holding `page`, if any.
    pub fn holder(&self, page: PageId) -> Option<TxnId> {
        self.lock().holders.get(&page).copied()
    }

    /// How many pages are locked.
    pub fn len(&self) -> usize {
        self.lock().holders.len()
    }

    /// Whether no page is locked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table's capacity in page locks.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every (page, holder) pair, in page order.
    pub fn snapshot(&self) -> Vec<(PageId, TxnId)> {
        self.lock().holders.iter().map(|(&p, &t)| (p, t)).collect()
    }
}

impl Clone for LockTable {
    /// A deep copy (a snapshot of the current holders), not a shared handle.
    fn clone(&self) -> Self {
        Self {
            inner: Mutex::new(self.lock().clone()),
            capacity: self.capacity,
        }
    }
}

impl PartialEq for LockTable {
    fn eq(&self, other: &Self) -> bool {
        self.capacity == other.capacity && self.snapshot() == other.snapshot()
    }
}

impl Eq for LockTable {}

impl std::hash::Hash for LockTable {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.capacity.hash(state);
        self.snapshot().hash(state);
    }
}

impl std::fmt::Debug for LockTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockTable")
            .field("capacity", &self.capacity)
            .field("holders", &self.snapshot())
            .finish()
    }
}
