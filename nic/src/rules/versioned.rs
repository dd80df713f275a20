//! Rule tables replaced whole while traffic flows.
//!
//! A published table is immutable; an update publishes a new version. Readers keep the
//! version they hold for a whole burst and check for a newer one between bursts with
//! one atomic load, so no packet ever sees a half-updated table and readers never wait
//! in steady state (only on the burst after an update, for one uncontended lock).

use crate::sync::{Arc, AtomicU64, Mutex, Ordering};

struct Slot<T> {
    version: u64,
    table: Arc<T>,
}

struct Shared<T> {
    latest: AtomicU64,
    slot: Mutex<Slot<T>>,
}

/// Where new table versions are published; cloning gives another handle on the same
/// tables (for the control path and for each worker).
pub struct Versioned<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Versioned<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Versioned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versioned")
            .field("version", &self.shared.latest.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T> Versioned<T> {
    /// Starts at version 1 with `table`.
    pub fn new(table: T) -> Self {
        Self {
            shared: Arc::new(Shared {
                latest: AtomicU64::new(1),
                slot: Mutex::new(Slot {
                    version: 1,
                    table: Arc::new(table),
                }),
            }),
        }
    }

    /// Publishes `table` as the next version; returns its version number.
    pub fn publish(&self, table: T) -> u64 {
        let mut slot = self.shared.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.version += 1;
        slot.table = Arc::new(table);
        let version = slot.version;
        // After the swap, under the lock: a reader that sees this number finds (at
        // least) this table behind the lock.
        self.shared.latest.store(version, Ordering::Release);
        version
    }

    /// The current table and its version.
    pub fn current(&self) -> (u64, Arc<T>) {
        let slot = self.shared.slot.lock().unwrap_or_else(|p| p.into_inner());
        (slot.version, slot.table.clone())
    }

    /// A reader for one worker.
    pub fn reader(&self) -> Reader<T> {
        let (seen, table) = self.current();
        Reader {
            shared: self.clone(),
            seen,
            table,
        }
    }
}

/// A worker's view: the table version it uses for the current burst.
pub struct Reader<T> {
    shared: Versioned<T>,
    seen: u64,
    table: Arc<T>,
}

impl<T> std::fmt::Debug for Reader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("version", &self.seen)
            .finish()
    }
}

impl<T> Reader<T> {
    /// Moves to the newest table if there is one; call once per burst, then use
    /// [`table`](Reader::table) for every packet of the burst.
    #[inline]
    pub fn refresh(&mut self) -> &T {
        if self.shared.shared.latest.load(Ordering::Acquire) != self.seen {
            let (version, table) = self.shared.current();
            self.seen = version;
            self.table = table;
        }
        &self.table
    }

    /// The table in use.
    #[inline]
    pub fn table(&self) -> &T {
        &self.table
    }

    /// Its version number.
    pub fn version(&self) -> u64 {
        self.seen
    }
}
