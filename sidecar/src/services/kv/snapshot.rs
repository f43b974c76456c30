//! The embedded store's latest committed state, opened once and shared by
//! reads until the writer's next commit.
//!
//! Opening a redb read transaction and its table costs about ten times a
//! point read inside them (0.35 µs against 0.04 µs here, BENCHMARKS.md),
//! so a `get` that opened its own paid mostly for the opening. Reads take
//! the shared snapshot instead. The writer is the only one that commits,
//! and after each commit, before it answers any write of the batch, it
//! drops the snapshot ([`Latest::committed`]): a read that starts after a
//! write was acknowledged opens a new one and sees it.
//!
//! A snapshot opened while a commit lands may predate it, so it is kept
//! only if no commit was counted since the read began ([`Latest::keep`]);
//! the read that opened it still uses it, which is right for a read that
//! began before the write was acknowledged.
//!
//! A live read transaction keeps redb from reusing the pages later commits
//! free. The kept snapshot is always the latest state, so it holds back
//! nothing; an older one lives only as long as a read that began before
//! the commit.

use std::sync::{Arc, Mutex, MutexGuard};

use ::redb::{Database, ReadOnlyTable, ReadableDatabase, TableDefinition};

use super::error::KvError;

/// The table every key, value and usage row is in.
pub(super) type DataTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// The shared snapshot of one store, and the commits counted so far.
#[derive(Default)]
pub(super) struct Latest {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    commits: u64,
    snapshot: Option<Arc<DataTable>>,
}

impl Latest {
    /// The latest committed state of `table` in `db`: the kept snapshot,
    /// or a new one (kept for the reads after this one).
    pub(super) fn table(
        &self,
        db: &Database,
        table: TableDefinition<'static, &'static [u8], &'static [u8]>,
    ) -> Result<Arc<DataTable>, KvError> {
        let commits = match self.kept() {
            Ok(snapshot) => return Ok(snapshot),
            Err(commits) => commits,
        };
        let txn = db.begin_read().map_err(unavailable)?;
        let snapshot = Arc::new(txn.open_table(table).map_err(unavailable)?);
        self.keep(commits, &snapshot);
        Ok(snapshot)
    }

    /// The kept snapshot, or the count of commits before opening one.
    fn kept(&self) -> Result<Arc<DataTable>, u64> {
        let state = self.lock();
        state.snapshot.clone().ok_or(state.commits)
    }

    /// Keeps `snapshot`, opened after `commits` commits were counted, if
    /// none was counted since (else it may predate the last one).
    fn keep(&self, commits: u64, snapshot: &Arc<DataTable>) {
        let mut state = self.lock();
        if state.commits == commits {
            state.snapshot = Some(Arc::clone(snapshot));
        }
    }

    /// Called by the writer after each commit (a failed one too: what it
    /// left is not known), before it answers: the kept snapshot is dropped.
    pub(super) fn committed(&self) {
        let old = {
            let mut state = self.lock();
            // Compared for equality only.
            state.commits = state.commits.wrapping_add(1);
            state.snapshot.take()
        };
        // Its read transaction ends here (or with the last read using it),
        // outside the lock.
        drop(old);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn unavailable(e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");

    fn write(db: &Database, value: &[u8]) {
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert(&b"k"[..], value).unwrap();
        txn.commit().unwrap();
    }

    /// A store holding `k = one`, and no snapshot kept yet.
    fn holding_one() -> (tempfile::TempDir, Database, Latest) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("s.redb")).unwrap();
        write(&db, b"one");
        (dir, db, Latest::default())
    }

    fn value(table: &DataTable) -> Vec<u8> {
        table.get(&b"k"[..]).unwrap().unwrap().value().to_vec()
    }

    #[test]
    fn reads_share_one_snapshot_until_a_commit_is_counted() {
        let (_dir, db, latest) = holding_one();
        let first = latest.table(&db, TABLE).unwrap();
        assert!(Arc::ptr_eq(&first, &latest.table(&db, TABLE).unwrap()), "the second read opened its own");

        write(&db, b"two");
        // Not counted yet: the kept snapshot is what reads see.
        assert_eq!(value(&latest.table(&db, TABLE).unwrap()), b"one");
        latest.committed();
        let after = latest.table(&db, TABLE).unwrap();
        assert_eq!(value(&after), b"two");
        assert!(!Arc::ptr_eq(&first, &after));
        // The snapshot a read still holds is unchanged (MVCC).
        assert_eq!(value(&first), b"one");
    }

    #[test]
    fn a_snapshot_opened_across_a_commit_is_used_once_and_not_kept() {
        let (_dir, db, latest) = holding_one();
        // A read counts the commits, opens its snapshot; meanwhile the
        // writer commits and counts it; then the read offers its snapshot.
        let commits = latest.kept().unwrap_err();
        let stale = Arc::new(db.begin_read().unwrap().open_table(TABLE).unwrap());
        write(&db, b"two");
        latest.committed();
        latest.keep(commits, &stale);
        assert!(latest.kept().is_err(), "a snapshot older than the last commit was kept");
        assert_eq!(value(&latest.table(&db, TABLE).unwrap()), b"two");
    }
}
