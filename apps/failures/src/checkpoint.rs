//! Checkpoints of the aggregates in an embedded store (`redb`).
//!
//! One table holds the canonical aggregates (postcard) and the log offset they
//! include, written in one durable transaction: after a crash, the state is the last
//! checkpoint plus the log records after its offset.

use std::path::Path;

use redb::{Database, TableDefinition};

use crate::aggregate::Canonical;

const TABLE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("checkpoint");

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store could not be opened, read or written.
    #[error("checkpoint store: {0}; check the data directory's permissions and free space")]
    Store(String),
    /// A checkpoint did not decode.
    #[error("checkpoint does not decode ({0}); move the data directory aside to start empty")]
    Corrupt(String),
}

fn store<E: std::fmt::Display>(e: E) -> CheckpointError {
    CheckpointError::Store(e.to_string())
}

/// The checkpoint store.
#[derive(Debug)]
pub struct Checkpoints {
    db: Database,
}

impl Checkpoints {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let db = Database::create(path).map_err(store)?;
        Ok(Self { db })
    }

    /// The last checkpoint: aggregates and the log offset they include.
    pub fn load(&self) -> Result<Option<(Canonical, u64)>, CheckpointError> {
        let tx = self.db.begin_read().map_err(store)?;
        let table = match tx.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(store(e)),
        };
        let (Some(state), Some(offset)) = (
            table.get("state").map_err(store)?,
            table.get("log_offset").map_err(store)?,
        ) else {
            return Ok(None);
        };
        let canonical: Canonical = postcard::from_bytes(state.value())
            .map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
        let offset = u64::from_le_bytes(
            offset
                .value()
                .try_into()
                .map_err(|_| CheckpointError::Corrupt("log offset is not 8 bytes".into()))?,
        );
        Ok(Some((canonical, offset)))
    }

    /// Writes a checkpoint durably (one redb transaction, committed with fsync).
    pub fn save(&self, state: &Canonical, log_offset: u64) -> Result<(), CheckpointError> {
        let bytes =
            postcard::to_allocvec(state).map_err(|e| CheckpointError::Store(e.to_string()))?;
        let tx = self.db.begin_write().map_err(store)?;
        {
            let mut table = tx.open_table(TABLE).map_err(store)?;
            table.insert("state", &bytes[..]).map_err(store)?;
            table
                .insert("log_offset", &log_offset.to_le_bytes()[..])
                .map_err(store)?;
        }
        tx.commit().map_err(store)?;
        Ok(())
    }
}
