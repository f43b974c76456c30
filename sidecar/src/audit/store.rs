//! The embedded storage of the log: one redb file (by default
//! `<data_dir>/audit/log.redb`), four tables.
//!
//! - `audit_entries`: `seq -> canonical entry bytes`.
//! - `audit_nodes`: `(level, index) -> 32-byte hash` for every complete
//!   subtree (level 0 = leaf hashes), written when its last leaf is
//!   appended and never changed (see [`super::merkle`]).
//! - `audit_checkpoints`: `tree size -> signed checkpoint note`, one per
//!   appended batch. Keeping every checkpoint, not just the latest, lets a
//!   verifier say which batch an edit is in.
//! - `audit_grants`: `plugin -> canonical JSON {"file", "grants"}`: the
//!   grants in force as the entries left them, written in the same
//!   transaction as the entries that changed them (see
//!   [`super::trail`]). Not part of the tree: it is what the next load
//!   is compared with, so a restart with the same policies writes nothing.
//!   Each signed checkpoint carries its digest ([`grants_digest`]), and
//!   every append checks it first: an edit of the table made while no
//!   sidecar runs stops the log instead of hiding a change.
//!
//! An append is one write transaction over the three tables, committed
//! with `Durability::Immediate`: after a crash the file holds a batch with
//! its signed checkpoint, or neither.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition};

use super::merkle::Hash;
use super::tables::{Tables, WriteTables};

/// Entries by sequence number.
pub const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_entries");
/// Complete-subtree hashes by (level, index).
pub const NODES: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("audit_nodes");
/// Signed checkpoints by tree size.
pub const CHECKPOINTS: TableDefinition<u64, &str> = TableDefinition::new("audit_checkpoints");
/// The grants in force, by plugin.
pub const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_grants");

/// A storage failure, with what redb said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit store: {0}")]
pub struct StoreError(pub String);

/// Wraps any redb error.
pub fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Opens or creates the file and its tables. A file that is not a redb
/// database, or is damaged, is an error, never a panic.
pub fn open(path: &Path) -> Result<Database, ReadOpenError> {
    let shown = crate::policy::shown(path);
    let db = match crate::quiet_panic::catch(|| Database::builder().create(path)) {
        Some(Ok(db)) => db,
        Some(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => return Err(ReadOpenError::Locked(shown)),
        Some(Err(e)) => return Err(StoreError(format!("cannot open {shown}: {e}")).into()),
        None => return Err(StoreError(format!("cannot open {shown}: the file is damaged")).into()),
    };
    crate::data_dir::make_private(path).map_err(|e| StoreError(format!("cannot make {shown} private: {e}")))?;
    // The tables exist after the first open: skip the write transaction
    // (and its fsync) the sidecar would otherwise pay on every append.
    let read = db.begin_read().map_err(store_error)?;
    let ready = read.open_table(ENTRIES).is_ok()
        && read.open_table(NODES).is_ok()
        && read.open_table(CHECKPOINTS).is_ok()
        && read.open_table(GRANTS).is_ok();
    drop(read);
    if ready {
        return Ok(db);
    }
    let txn = db.begin_write().map_err(store_error)?;
    {
        txn.open_table(ENTRIES).map_err(store_error)?;
        txn.open_table(NODES).map_err(store_error)?;
        txn.open_table(CHECKPOINTS).map_err(store_error)?;
        txn.open_table(GRANTS).map_err(store_error)?;
    }
    txn.commit().map_err(store_error)?;
    Ok(db)
}

/// The four tables of one redb transaction: read-only tables (a log
/// written before `audit_grants` existed has none) or a write
/// transaction's.
pub struct RedbTables<E, N, C, G> {
    entries: E,
    nodes: N,
    checkpoints: C,
    grants: Option<G>,
}

/// The tables of a write transaction.
pub type RedbWrite<'t> = RedbTables<
    redb::Table<'t, u64, &'static [u8]>,
    redb::Table<'t, (u8, u64), &'static [u8]>,
    redb::Table<'t, u64, &'static str>,
    redb::Table<'t, &'static str, &'static [u8]>,
>;

/// The tables of a read transaction.
pub type RedbRead = RedbTables<
    redb::ReadOnlyTable<u64, &'static [u8]>,
    redb::ReadOnlyTable<(u8, u64), &'static [u8]>,
    redb::ReadOnlyTable<u64, &'static str>,
    redb::ReadOnlyTable<&'static str, &'static [u8]>,
>;

/// Opens the tables of a write transaction.
pub fn write_tables(txn: &redb::WriteTransaction) -> Result<RedbWrite<'_>, StoreError> {
    Ok(RedbTables {
        entries: txn.open_table(ENTRIES).map_err(store_error)?,
        nodes: txn.open_table(NODES).map_err(store_error)?,
        checkpoints: txn.open_table(CHECKPOINTS).map_err(store_error)?,
        grants: Some(txn.open_table(GRANTS).map_err(store_error)?),
    })
}

/// Opens the tables of a read transaction of `db`.
pub fn read_tables(db: &impl ReadableDatabase) -> Result<RedbRead, StoreError> {
    let txn = db.begin_read().map_err(store_error)?;
    let grants = match txn.open_table(GRANTS) {
        Ok(table) => Some(table),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(store_error(e)),
    };
    Ok(RedbTables {
        entries: txn.open_table(ENTRIES).map_err(store_error)?,
        nodes: txn.open_table(NODES).map_err(store_error)?,
        checkpoints: txn.open_table(CHECKPOINTS).map_err(store_error)?,
        grants,
    })
}

impl<E, N, C, G> Tables for RedbTables<E, N, C, G>
where
    E: ReadableTable<u64, &'static [u8]>,
    N: ReadableTable<(u8, u64), &'static [u8]>,
    C: ReadableTable<u64, &'static str>,
    G: ReadableTable<&'static str, &'static [u8]>,
{
    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.entries.last().map_err(store_error)?.map_or(0, |(k, _)| k.value() + 1))
    }

    fn entry(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.get(seq).map_err(store_error)?.map(|v| v.value().to_vec()))
    }

    fn entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for row in self.entries.range(from..).map_err(store_error)?.take(limit) {
            let (seq, bytes) = row.map_err(store_error)?;
            out.push((seq.value(), bytes.value().to_vec()));
        }
        Ok(out)
    }

    fn node(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.nodes.get((level, index)).map_err(store_error)?.map(|v| v.value().to_vec()))
    }

    fn last_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self.checkpoints.last().map_err(store_error)?.map(|(k, v)| (k.value(), v.value().to_string())))
    }

    fn checkpoints(&self) -> Result<Vec<String>, StoreError> {
        let mut notes = Vec::new();
        for row in self.checkpoints.iter().map_err(store_error)? {
            notes.push(row.map_err(store_error)?.1.value().to_string());
        }
        Ok(notes)
    }

    fn grants(&self) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let mut out = BTreeMap::new();
        let Some(table) = &self.grants else { return Ok(out) };
        for row in table.iter().map_err(store_error)? {
            let (plugin, bytes) = row.map_err(store_error)?;
            out.insert(plugin.value().to_string(), bytes.value().to_vec());
        }
        Ok(out)
    }
}

impl WriteTables for RedbWrite<'_> {
    fn put_entry(&mut self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.entries.insert(seq, bytes).map_err(store_error).map(drop)
    }

    fn put_node(&mut self, level: u8, index: u64, hash: &Hash) -> Result<(), StoreError> {
        self.nodes.insert((level, index), hash.as_slice()).map_err(store_error).map(drop)
    }

    fn put_checkpoint(&mut self, size: u64, note: &str) -> Result<(), StoreError> {
        self.checkpoints.insert(size, note).map_err(store_error).map(drop)
    }

    fn set_grant(&mut self, plugin: &str, row: Option<&[u8]>) -> Result<(), StoreError> {
        let table = self.grants.as_mut().ok_or_else(|| StoreError("the grants table is not open".into()))?;
        match row {
            Some(bytes) => table.insert(plugin, bytes).map_err(store_error).map(drop),
            None => table.remove(plugin).map_err(store_error).map(drop),
        }
    }
}

/// The digest of the grants in force (the `audit_grants` rows), signed in
/// each checkpoint's `gatehouse-grants` line: SHA-256 over
/// `gatehouse-grants-v1\n`, then for each row in key order the plugin's
/// name and the row's bytes, each preceded by its length as a big-endian
/// u64.
pub fn grants_digest<'a>(rows: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Hash {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"gatehouse-grants-v1\n");
    for (plugin, row) in rows {
        for part in [plugin.as_bytes(), row] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
    }
    hasher.finalize().into()
}

/// [`grants_digest`] of the stored rows.
pub fn stored_grants_digest(tables: &dyn Tables) -> Result<Hash, StoreError> {
    let rows = tables.grants()?;
    Ok(grants_digest(rows.iter().map(|(p, b)| (p.as_str(), b.as_slice()))))
}

/// Why the file could not be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum ReadOpenError {
    /// There is no file: nothing was ever recorded there.
    #[error("no audit log at {0}")]
    Missing(String),
    /// Another process has it open for writing (a sidecar appending).
    #[error("{0} is open in another process")]
    Locked(String),
    /// Its writer was killed mid-write; only a writer repairs it.
    #[error("{0} was not closed cleanly; the sidecar repairs it when it next opens the log (at start or reload)")]
    NeedsRepair(String),
    /// Anything else.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens `path` for reading only: never creates, repairs or writes it.
/// Several processes may read at once; none while one writes, so hold
/// it briefly.
pub fn open_read_only(path: &Path) -> Result<ReadOnlyDatabase, ReadOpenError> {
    let shown = crate::policy::shown(path);
    if !path.exists() {
        return Err(ReadOpenError::Missing(shown));
    }
    match crate::quiet_panic::catch(|| redb::Builder::new().open_read_only(path)) {
        Some(Ok(db)) => Ok(db),
        Some(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(ReadOpenError::Locked(shown)),
        Some(Err(redb::DatabaseError::RepairAborted)) => Err(ReadOpenError::NeedsRepair(shown)),
        Some(Err(e)) => Err(StoreError(format!("cannot open {shown}: {e}")).into()),
        None => Err(StoreError(format!("cannot open {shown}: the file is damaged")).into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// The log is the audit trail of every grant: readable by the owner
    /// only, whatever the umask (an outside review found it 0644), and a
    /// file made readable to others later is made private again on open.
    #[test]
    fn the_store_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        drop(super::open(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(super::open(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
