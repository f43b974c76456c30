//! The shared storage of the log: PostgreSQL, through a
//! `[databases.<alias>]` named by `[audit] database`, for sidecars that
//! share grants (schema: `migrations/postgres/*_audit_log.sql`).
//!
//! Several processes may append at once without forking the log: an
//! append is one transaction that first locks the one row of
//! `gatehouse_audit_head` (`SELECT … FOR UPDATE`), so appends run one
//! after another; it then checks the stored tree against the last signed
//! checkpoint and the new tree against the old, as the embedded store
//! does ([`super::log`]), and advances the head by compare-and-swap
//! (`UPDATE … WHERE size = <the size it started from>`). The entries'
//! sequence numbers and the tree's nodes are primary keys, so even a
//! writer that skipped the lock could not store a second entry or node
//! at the same place. Readers see one snapshot (`REPEATABLE READ`).
//!
//! The log's code is synchronous (the sidecar appends from a blocking
//! thread, the CLI from its command); each query is run to completion on
//! the tokio runtime the store was opened in ([`tokio::task::block_in_place`]
//! where needed), so this store must be opened inside a multi-threaded
//! runtime.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use tokio::runtime::Handle;

use super::merkle::Hash;
use super::store::StoreError;
use super::tables::{Tables, WriteTables};
use crate::guest_text;

/// Connections the log holds at most (appends run one at a time; reads
/// for the admin API and the CLI may run beside one).
pub const MAX_CONNECTIONS: u32 = 4;
/// How long one query may take, the wait for a connection included.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a query waits for a connection (a new one when the server
/// was away): a database that does not answer fails a reload in this
/// time, not in [`QUERY_TIMEOUT`].
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The log's tables in one PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    handle: Handle,
    alias: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("alias", &self.alias).finish_non_exhaustive()
    }
}

fn db_error(e: sqlx::Error) -> StoreError {
    StoreError(format!("PostgreSQL: {}", guest_text::escape(&e.to_string(), guest_text::LINE)))
}

fn seq_of(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError(format!("a stored sequence number or size is negative ({n})")))
}

fn db_int(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError(format!("{n} does not fit PostgreSQL's bigint")))
}

impl PgStore {
    /// The log in the database `options` names, as alias `alias`: builds a
    /// small pool and applies the sidecar's migrations (what `gatehouse
    /// run` does). Must be called inside a multi-threaded tokio runtime,
    /// which then runs its queries.
    pub fn open(options: PgConnectOptions, alias: &str) -> Result<PgStore, StoreError> {
        let store = PgStore::connect(options, alias)?;
        store.wait(async {
            crate::databases::migrator().run(&store.pool).await.map_err(|e| {
                StoreError(format!("the database schema: {}", guest_text::escape(&e.to_string(), guest_text::LINE)))
            })
        })?;
        Ok(store)
    }

    /// The log a sidecar made in that database, without creating or
    /// changing anything: what the CLI opens, so that an auditor's role
    /// needs only `SELECT` (and `INSERT`/`UPDATE` for `grants approve`),
    /// and a database with no log is an error, not an empty log.
    pub fn open_existing(options: PgConnectOptions, alias: &str) -> Result<PgStore, StoreError> {
        let store = PgStore::connect(options, alias)?;
        let found: Option<String> = store.wait(async {
            sqlx::query_scalar("SELECT to_regclass('gatehouse_audit_head')::text")
                .fetch_one(&store.pool)
                .await
                .map_err(db_error)
        })?;
        if found.is_none() {
            return Err(StoreError(format!(
                "no audit log in [databases.{alias}] (a sidecar with `[audit] database = \"{alias}\"` creates it)"
            )));
        }
        Ok(store)
    }

    fn connect(options: PgConnectOptions, alias: &str) -> Result<PgStore, StoreError> {
        let handle =
            Handle::try_current().map_err(|_| StoreError("the PostgreSQL audit store needs a tokio runtime".into()))?;
        let pool = {
            let _entered = handle.enter();
            PgPoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .min_connections(0)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .idle_timeout(Duration::from_secs(60))
                .connect_lazy_with(options)
        };
        Ok(PgStore { pool, handle, alias: alias.to_string() })
    }

    /// The `[databases.<alias>]` the log is in, for messages.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Runs `query` to completion under [`QUERY_TIMEOUT`], blocking this
    /// thread.
    fn wait<T>(&self, query: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let bounded = async {
            tokio::time::timeout(QUERY_TIMEOUT, query)
                .await
                .unwrap_or_else(|_| Err(StoreError(format!("PostgreSQL: no answer within {QUERY_TIMEOUT:?}"))))
        };
        match Handle::try_current() {
            // On a runtime thread: hand its work to another first.
            Ok(_) => tokio::task::block_in_place(|| self.handle.block_on(bounded)),
            Err(_) => self.handle.block_on(bounded),
        }
    }

    /// Runs `read` on one consistent snapshot of the log.
    pub fn read<T, E: From<StoreError>>(&self, read: impl FnOnce(&dyn Tables) -> Result<T, E>) -> Result<T, E> {
        let txn = self.wait(async {
            let mut txn = self.pool.begin().await.map_err(db_error)?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *txn)
                .await
                .map_err(db_error)?;
            Ok(txn)
        })?;
        let tables = PgTables { store: self, txn: RefCell::new(txn), nodes: RefCell::default() };
        read(&tables)
        // Dropped: the read-only transaction is rolled back.
    }

    /// Runs `append` in one write transaction, alone among every process
    /// appending to this database, and commits what it wrote. `append`
    /// returns the tree size it started from and the size after (equal:
    /// nothing to write, nothing is committed); the head moves from the
    /// one to the other only if no other writer moved it meanwhile.
    pub fn append<T, E: From<StoreError>>(
        &self,
        append: impl FnOnce(&mut dyn WriteTables) -> Result<(T, u64, u64), E>,
    ) -> Result<T, E> {
        let (txn, head) = self.wait(async {
            let mut txn = self.pool.begin().await.map_err(db_error)?;
            let head: i64 = sqlx::query("SELECT size FROM gatehouse_audit_head FOR UPDATE")
                .fetch_one(&mut *txn)
                .await
                .map_err(db_error)?
                .try_get(0)
                .map_err(db_error)?;
            Ok((txn, head))
        })?;
        let mut tables = PgTables { store: self, txn: RefCell::new(txn), nodes: RefCell::default() };
        let (value, old, new) = append(&mut tables)?;
        if old == new {
            return Ok(value);
        }
        let mut txn = tables.txn.into_inner();
        self.wait(async {
            if seq_of(head)? != old {
                return Err(StoreError(format!(
                    "the log's head says {head} entries but the append started from {old}; nothing was written"
                )));
            }
            let moved = sqlx::query("UPDATE gatehouse_audit_head SET size = $1 WHERE size = $2")
                .bind(db_int(new)?)
                .bind(db_int(old)?)
                .execute(&mut *txn)
                .await
                .map_err(db_error)?;
            if moved.rows_affected() != 1 {
                return Err(StoreError("another writer moved the log's head; nothing was written".into()));
            }
            txn.commit().await.map_err(db_error)
        })?;
        Ok(value)
    }
}

/// One transaction's view. Nodes read or written are kept, so an append
/// reads each node from the server at most once.
struct PgTables<'s> {
    store: &'s PgStore,
    txn: RefCell<Transaction<'static, Postgres>>,
    nodes: RefCell<HashMap<(u8, u64), Vec<u8>>>,
}

impl PgTables<'_> {
    fn query<T>(
        &self,
        run: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        let mut txn = self.txn.borrow_mut();
        self.store.wait(async { run(&mut txn).await.map_err(db_error) })
    }
}

impl Tables for PgTables<'_> {
    fn size(&self) -> Result<u64, StoreError> {
        let size: i64 = self.query(async |c| {
            sqlx::query("SELECT COALESCE(MAX(seq) + 1, 0) FROM gatehouse_audit_entries").fetch_one(c).await?.try_get(0)
        })?;
        seq_of(size)
    }

    fn entry(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let seq = db_int(seq)?;
        self.query(async |c| {
            let row = sqlx::query("SELECT entry FROM gatehouse_audit_entries WHERE seq = $1")
                .bind(seq)
                .fetch_optional(c)
                .await?;
            row.map(|r| r.try_get(0)).transpose()
        })
    }

    fn entries(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let from = db_int(from)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query(async |c| {
            let rows =
                sqlx::query("SELECT seq, entry FROM gatehouse_audit_entries WHERE seq >= $1 ORDER BY seq LIMIT $2")
                    .bind(from)
                    .bind(limit)
                    .fetch_all(c)
                    .await?;
            rows.iter()
                .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        rows.into_iter().map(|(seq, bytes)| Ok((seq_of(seq)?, bytes))).collect()
    }

    fn node(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(hash) = self.nodes.borrow().get(&(level, index)) {
            return Ok(Some(hash.clone()));
        }
        let at = db_int(index)?;
        let hash: Option<Vec<u8>> = self.query(async |c| {
            let row = sqlx::query("SELECT hash FROM gatehouse_audit_nodes WHERE level = $1 AND index = $2")
                .bind(i16::from(level))
                .bind(at)
                .fetch_optional(c)
                .await?;
            row.map(|r| r.try_get(0)).transpose()
        })?;
        if let Some(hash) = &hash {
            self.nodes.borrow_mut().insert((level, index), hash.clone());
        }
        Ok(hash)
    }

    fn last_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let last: Option<(i64, String)> = self.query(async |c| {
            let row = sqlx::query("SELECT size, note FROM gatehouse_audit_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(c)
                .await?;
            row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
        })?;
        last.map(|(size, note)| Ok((seq_of(size)?, note))).transpose()
    }

    fn checkpoints(&self) -> Result<Vec<String>, StoreError> {
        self.query(async |c| {
            let rows = sqlx::query("SELECT note FROM gatehouse_audit_checkpoints ORDER BY size").fetch_all(c).await?;
            rows.iter().map(|r| r.try_get(0)).collect()
        })
    }

    fn grants(&self) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        self.query(async |c| {
            let rows = sqlx::query("SELECT plugin, grants FROM gatehouse_audit_grants").fetch_all(c).await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
        })
    }

    fn head(&self) -> Result<Option<u64>, StoreError> {
        let size: i64 =
            self.query(async |c| sqlx::query("SELECT size FROM gatehouse_audit_head").fetch_one(c).await?.try_get(0))?;
        Ok(Some(seq_of(size)?))
    }
}

impl WriteTables for PgTables<'_> {
    fn put_entry(&mut self, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let seq = db_int(seq)?;
        self.query(async |c| {
            sqlx::query("INSERT INTO gatehouse_audit_entries (seq, entry) VALUES ($1, $2)")
                .bind(seq)
                .bind(bytes)
                .execute(c)
                .await
                .map(drop)
        })
    }

    fn put_node(&mut self, level: u8, index: u64, hash: &Hash) -> Result<(), StoreError> {
        let at = db_int(index)?;
        self.query(async |c| {
            sqlx::query("INSERT INTO gatehouse_audit_nodes (level, index, hash) VALUES ($1, $2, $3)")
                .bind(i16::from(level))
                .bind(at)
                .bind(hash.as_slice())
                .execute(c)
                .await
                .map(drop)
        })?;
        self.nodes.borrow_mut().insert((level, index), hash.to_vec());
        Ok(())
    }

    fn put_checkpoint(&mut self, size: u64, note: &str) -> Result<(), StoreError> {
        let size = db_int(size)?;
        self.query(async |c| {
            sqlx::query("INSERT INTO gatehouse_audit_checkpoints (size, note) VALUES ($1, $2)")
                .bind(size)
                .bind(note)
                .execute(c)
                .await
                .map(drop)
        })
    }

    fn set_grant(&mut self, plugin: &str, row: Option<&[u8]>) -> Result<(), StoreError> {
        self.query(async |c| {
            match row {
                Some(bytes) => {
                    sqlx::query(
                        "INSERT INTO gatehouse_audit_grants (plugin, grants) VALUES ($1, $2) \
                     ON CONFLICT (plugin) DO UPDATE SET grants = EXCLUDED.grants",
                    )
                    .bind(plugin)
                    .bind(bytes)
                    .execute(c)
                    .await
                }
                None => {
                    sqlx::query("DELETE FROM gatehouse_audit_grants WHERE plugin = $1").bind(plugin).execute(c).await
                }
            }
            .map(drop)
        })
    }
}
