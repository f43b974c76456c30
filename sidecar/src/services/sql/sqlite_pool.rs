//! The gateway's SQLite connections ([`super::conn_pool`]): opened
//! serialized, each kept with the raw handle its authorizer uses
//! ([`Guarded`]), so that entering and leaving a plugin's grant are calls
//! on the caller's thread and a call costs one handoff to sqlx's worker
//! thread (its statement) instead of three. sqlx's pool hands out its own
//! connection type, with no room for that handle.

use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::{RwLock, mpsc};

use super::conn_pool::{ConnPool, Connector, Pooled};
use super::guard::sqlite::{self as guard, Guarded};

/// A pool of serialized SQLite connections with the authorizer installed.
pub type SqlitePool = ConnPool<SqliteConnector>;

/// A connection taken from a [`SqlitePool`].
pub type PooledSqlite = Pooled<SqliteConnector>;

/// Opens guarded SQLite connections.
pub struct SqliteConnector {
    options: SqliteConnectOptions,
    max_value_bytes: u32,
    max_database_bytes: Option<u64>,
    checkpoints: mpsc::Sender<()>,
    wal_reads: WalReads,
}

impl SqliteConnector {
    /// The places of the plugins' reads open on the alias's WAL: a read
    /// holds one (shared) from its first statement until it ends, a
    /// transaction until its end, so that the [`checkpointer`] can wait
    /// for the WAL to be free of them (exclusive). Writes outside a
    /// transaction hold none.
    pub fn wal_reads(&self) -> &WalReads {
        &self.wal_reads
    }
}

/// See [`SqliteConnector::wal_reads`].
pub type WalReads = Arc<RwLock<()>>;

/// How many frames the WAL may hold before the checkpointer holds new
/// reads back until it has restarted it ([`checkpointer`]).
const WAL_DRAIN_FRAMES: i64 = (crate::databases::WAL_SIZE_LIMIT / 4096) as i64;

/// A pool over `options` (made serialized here), opening nothing yet, and
/// its checkpointer (a task, which opens its connection when first asked).
/// Call it inside a tokio runtime.
pub fn sqlite_pool(
    options: SqliteConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
    max_value_bytes: u32,
    max_database_bytes: Option<u64>,
) -> SqlitePool {
    let (checkpoints, asked) = mpsc::channel(1);
    let wal_reads = WalReads::default();
    tokio::spawn(checkpointer(options.clone(), asked, Arc::clone(&wal_reads)));
    let connector = SqliteConnector {
        options: options.serialized(true),
        max_value_bytes,
        max_database_bytes,
        checkpoints,
        wal_reads,
    };
    ConnPool::new(connector, max_connections, acquire_timeout)
}

/// Bounds the database file at `bytes` on `conn` (`PRAGMA max_page_count`
/// in the file's own pages; a setting of the connection, which plugins
/// cannot change: the authorizer refuses `PRAGMA`). A file already larger
/// keeps its size as the bound: SQLite never sets it below that.
async fn bound_database(conn: &mut sqlx::SqliteConnection, bytes: u64) -> Result<(), sqlx::Error> {
    use sqlx::Executor as _;
    let page: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut *conn).await?;
    let pages = bytes / u64::try_from(page.max(512)).unwrap_or(512);
    conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA max_page_count = {pages}"))).await.map(drop)
}

/// Copies the WAL into the database whenever a pooled connection's commit
/// asks ([`Guarded::checkpoint_elsewhere`]), on a connection of its own, so
/// that no plugin's statement runs a checkpoint in its last step (past its
/// deadline's last check) and none waits for one. `PASSIVE`: it copies
/// what no reader still needs and never waits for a lock. Ends, closing
/// its connection, once the pool and every connection it opened are gone.
///
/// A checkpoint cannot copy past the oldest open read, and the WAL restarts
/// only when no read uses it: reads that overlap one another (one plugin's
/// chained on purpose, or just many plugins' busy reads) kept it growing at
/// the writers' rate (an outside review: 5.6 GiB in 60 s). So once it
/// holds more than [`WAL_DRAIN_FRAMES`], the checkpointer takes
/// `wal_reads` exclusively: new reads wait, those open end (each within
/// its deadline), and with none left a `TRUNCATE` checkpoint copies the
/// rest and empties the file. Writes outside a transaction go on meanwhile
/// (they hold no place; `TRUNCATE` waits for the one running, at most the
/// busy timeout, and holds the next back only while it copies). Waiting
/// for readers inside SQLite instead (`TRUNCATE` alone) was tried and
/// undone: it holds the write lock while it waits, and one plugin's 18 s
/// read held every plugin's writes back 15.8 s.
async fn checkpointer(options: SqliteConnectOptions, mut asked: mpsc::Receiver<()>, wal_reads: WalReads) {
    let mut conn: Option<sqlx::SqliteConnection> = None;
    while asked.recv().await.is_some() {
        if conn.is_none() {
            conn = options.connect().await.ok();
        }
        let Some(open) = conn.as_mut() else { continue };
        let done = match checkpoint(open, "PRAGMA wal_checkpoint(PASSIVE)").await {
            Ok(frames) if frames > WAL_DRAIN_FRAMES => {
                let _no_reads = wal_reads.write().await;
                checkpoint(open, "PRAGMA wal_checkpoint(TRUNCATE)").await
            }
            done => done,
        };
        if done.is_err() {
            conn = None;
        }
    }
    if let Some(conn) = conn {
        let _ = sqlx::Connection::close(conn).await;
    }
}

/// Runs `checkpoint` (a `PRAGMA wal_checkpoint`); the frames the WAL
/// holds after it.
async fn checkpoint(conn: &mut sqlx::SqliteConnection, checkpoint: &'static str) -> Result<i64, sqlx::Error> {
    let (_busy, frames, _copied): (i64, i64, i64) = sqlx::query_as(checkpoint).fetch_one(conn).await?;
    Ok(frames)
}

impl Connector for SqliteConnector {
    type Conn = Guarded;

    async fn open(&self) -> Result<Guarded, sqlx::Error> {
        let mut conn = self.options.connect().await?;
        if let Some(bytes) = self.max_database_bytes {
            bound_database(&mut conn, bytes).await?;
        }
        let conn = guard::install(conn, self.max_value_bytes)
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("the SQLite authorizer: {e}")))?;
        conn.checkpoint_elsewhere(self.checkpoints.clone());
        Ok(conn)
    }

    /// Waits for a statement still stopping on the handle, then the
    /// worker finishes what it runs and closes the database. What the
    /// connection held (a transaction's statement journal and pages, left
    /// by a plugin that dropped it or a caller that hung up) goes back to
    /// the system, as after a `COMMIT` or `ROLLBACK`.
    async fn close(conn: Guarded) {
        let _ = sqlx::Connection::close(conn.into_connection().await).await;
        guard::give_back_freed_memory_soon();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::services::sql::conn_pool::IDLE_TIMEOUT;

    fn pool(dir: &tempfile::TempDir, max: u32) -> SqlitePool {
        let options = crate::databases::sqlite_options(&dir.path().join("pool.db"));
        sqlite_pool(options, max, Duration::from_millis(200), crate::databases::DEFAULT_MAX_VALUE_BYTES, None)
    }

    /// At most `max_connections` are held; the next caller is refused
    /// with `PoolTimedOut` after `acquire_timeout`, and gets one as soon as
    /// one is given back. Given-back connections are reused, not reopened;
    /// one marked `close_on_drop` is closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_bounded_reused_and_closed_when_marked() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 2);
        assert_eq!(pool.usage(), (0, 0), "nothing opened before the first call");
        let a = pool.acquire(None).await.unwrap();
        let b = pool.acquire(None).await.unwrap();
        assert_eq!(pool.usage(), (2, 0));
        let refused = pool.acquire(None).await.err().unwrap();
        assert!(matches!(refused, sqlx::Error::PoolTimedOut), "{refused}");

        drop(a);
        assert_eq!(pool.usage(), (2, 1));
        let c = pool.acquire(None).await.unwrap();
        assert_eq!(pool.usage(), (2, 0), "the idle one is taken, none opened");

        let mut c = c;
        c.close_on_drop();
        drop(c);
        // Its place is freed once the worker has closed the database.
        settled(&pool, (1, 0)).await;
        drop(b);
        assert_eq!(pool.usage(), (1, 1));

        pool.close();
        settled(&pool, (0, 0)).await;
        assert!(matches!(pool.acquire(None).await.err().unwrap(), sqlx::Error::PoolClosed));
    }

    /// Every connection the pool opens is guarded: it refuses a statement
    /// until a grant is entered, and is serialized; its temporary storage
    /// is in files of the gateway's VFS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_connection_is_guarded() {
        use sqlx::Executor as _;
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 1);
        let mut conn = pool.acquire(None).await.unwrap();
        let err = conn.connection().execute("SELECT 1").await.unwrap_err();
        assert!(err.to_string().contains("not authorized"), "{err}");
        guard::enter_host(&mut conn);
        conn.connection().execute("SELECT 1").await.unwrap();
        // Temporary storage in files (1 = FILE), so that the sorter sorts in
        // runs; those files are the gateway's VFS's, in memory (its tests),
        // and sorted by this thread alone (no helper threads: 0).
        let temp_store: i64 = sqlx::query_scalar("PRAGMA temp_store").fetch_one(conn.connection()).await.unwrap();
        assert_eq!(temp_store, 1);
        let threads: i64 = sqlx::query_scalar("PRAGMA threads").fetch_one(conn.connection()).await.unwrap();
        assert_eq!(threads, 0);
        guard::leave(&mut conn);
        assert!(conn.connection().execute("SELECT 1").await.is_err());
    }

    /// A commit that leaves the WAL past its checkpoint threshold returns
    /// without copying it into the database and asks for a checkpoint
    /// (before, SQLite's automatic checkpoint ran inside the statement,
    /// past its deadline's last check); the pool's checkpointer then copies
    /// it. The first half runs on a connection with no checkpointer behind
    /// its channel, so nothing else can have copied the WAL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_leaves_the_checkpoint_to_the_checkpointer() {
        use sqlx::Executor as _;
        let dir = tempfile::tempdir().unwrap();
        let db_file = || std::fs::metadata(dir.path().join("pool.db")).unwrap().len();
        let written = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500) \
                       INSERT INTO t SELECT zeroblob(8000) FROM c";
        let options = crate::databases::sqlite_options(&dir.path().join("pool.db")).serialized(true);
        let mut alone = guard::install(options.connect().await.unwrap(), 1 << 20).await.unwrap();
        let (asks, mut asked) = mpsc::channel(1);
        alone.checkpoint_elsewhere(asks);
        guard::enter_host(&mut alone);
        alone.connection().execute("CREATE TABLE t (v BLOB)").await.unwrap();
        assert!(asked.try_recv().is_err(), "a small commit asks for nothing");
        alone.connection().execute(written).await.unwrap();
        assert!(db_file() < 1 << 20, "checkpointed in the statement: {} bytes", db_file());
        assert!(asked.try_recv().is_ok(), "no checkpoint asked for");
        guard::leave(&mut alone);
        sqlx::Connection::close(alone.into_connection().await).await.unwrap();

        let pool = pool(&dir, 1);
        let mut conn = pool.acquire(None).await.unwrap();
        guard::enter_host(&mut conn);
        conn.connection().execute(written).await.unwrap();
        guard::leave(&mut conn);
        drop(conn);
        let waited = Instant::now();
        while db_file() < 16 << 20 {
            assert!(waited.elapsed() < Duration::from_secs(10), "never checkpointed: {} bytes", db_file());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Once the checkpointer has copied a WAL grown past `WAL_SIZE_LIMIT`,
    /// the next commit cuts the file back to it: it does not keep its
    /// largest size until a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grown_wal_is_cut_back_after_its_checkpoint() {
        use sqlx::Executor as _;
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 1);
        let mut conn = pool.acquire(None).await.unwrap();
        guard::enter_host(&mut conn);
        let wal = || std::fs::metadata(dir.path().join("pool.db-wal")).map_or(0, |m| m.len());
        conn.connection().execute("CREATE TABLE t (v BLOB)").await.unwrap();
        let written = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000) \
                       INSERT INTO t SELECT zeroblob(8000) FROM c";
        conn.connection().execute(written).await.unwrap();
        assert!(wal() > crate::databases::WAL_SIZE_LIMIT, "the WAL did not grow: {} bytes", wal());
        let waited = Instant::now();
        // Small commits until one follows a whole checkpoint and restarts
        // the WAL.
        while wal() > crate::databases::WAL_SIZE_LIMIT {
            assert!(waited.elapsed() < Duration::from_secs(20), "the WAL stayed at {} bytes", wal());
            conn.connection().execute("INSERT INTO t VALUES (x'00')").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the pool's usage is `usage` (closing is asynchronous).
    async fn settled(pool: &SqlitePool, usage: (u32, usize)) {
        let waited = Instant::now();
        while pool.usage() != usage {
            assert!(waited.elapsed() < Duration::from_secs(10), "{:?}, not {usage:?}", pool.usage());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Marks a connection (a temporary table is the connection's own).
    async fn mark(conn: &mut PooledSqlite) {
        use sqlx::Executor as _;
        guard::enter_host(conn);
        conn.connection().execute("CREATE TEMP TABLE mark (x INTEGER)").await.unwrap();
        guard::leave(conn);
    }

    async fn marked(conn: &mut PooledSqlite) -> bool {
        use sqlx::Executor as _;
        guard::enter_host(conn);
        let found = conn.connection().execute("SELECT count(*) FROM temp.mark").await.is_ok();
        guard::leave(conn);
        found
    }

    /// A connection idle past [`IDLE_TIMEOUT`] is closed when the next
    /// one is taken, and a fresh one opened in its place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_idle_too_long_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 2);
        let (older, mut newer) = (pool.acquire(None).await.unwrap(), pool.acquire(None).await.unwrap());
        mark(&mut newer).await;
        drop(older);
        drop(newer);
        assert_eq!(pool.usage(), (2, 2));
        let long_ago = Instant::now().checked_sub(IDLE_TIMEOUT + Duration::from_secs(1)).unwrap();
        pool.idle_since(0, long_ago);
        let conn = pool.acquire(None).await.unwrap();
        settled(&pool, (1, 0)).await;
        let mut conn = conn;
        assert!(marked(&mut conn).await, "the fresh one taken");
        drop(conn);
        pool.idle_since(0, long_ago);
        let mut conn = pool.acquire(None).await.unwrap();
        settled(&pool, (1, 0)).await;
        assert!(!marked(&mut conn).await, "none fresh: a new one opened, the stale one closed");
    }

    /// A connection closed while a statement still runs on it (abandoned
    /// while it waits for another connection's write lock) keeps its place
    /// until the statement is done: no connection past `max_connections`
    /// is opened meanwhile. (An outside review opened hundreds, each a
    /// thread and a file handle, by hanging up on writes under contention.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closing_connection_keeps_its_place_until_its_statement_is_done() {
        use sqlx::{ConnectOptions as _, Executor as _};
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 1);
        let mut holder = crate::databases::sqlite_options(&dir.path().join("pool.db")).connect().await.unwrap();
        holder.execute("CREATE TABLE t (v INTEGER)").await.unwrap();
        holder.execute("BEGIN IMMEDIATE").await.unwrap();

        let mut conn = pool.acquire(None).await.unwrap();
        guard::enter_host(&mut conn);
        let write =
            tokio::time::timeout(Duration::from_millis(100), conn.connection().execute("INSERT INTO t VALUES (1)"));
        assert!(write.await.is_err(), "the write waits for the lock");
        conn.close_on_drop();
        drop(conn);
        assert!(
            matches!(pool.acquire(None).await.err().unwrap(), sqlx::Error::PoolTimedOut),
            "its place is still taken"
        );
        assert_eq!(pool.usage(), (1, 0));

        holder.execute("ROLLBACK").await.unwrap();
        let freed = Instant::now();
        loop {
            match pool.acquire(None).await {
                Ok(_) => break,
                Err(e) => assert!(freed.elapsed() < Duration::from_secs(10), "never freed: {e}"),
            }
        }
    }

    /// A caller that goes away while its new connection is being opened
    /// leaves that connection to the pool (idle, counted), not to a worker
    /// thread outside the bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_whose_caller_left_while_it_opened_goes_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 1);
        let mut acquiring = Box::pin(pool.acquire(None));
        assert!(futures::FutureExt::now_or_never(&mut acquiring).is_none(), "the connection is being opened");
        drop(acquiring);
        let left = Instant::now();
        while pool.usage() != (1, 1) {
            assert!(left.elapsed() < Duration::from_secs(10), "not in the pool: {:?}", pool.usage());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _conn = pool.acquire(None).await.unwrap();
        assert_eq!(pool.usage(), (1, 0), "reused, none opened past the bound");
    }
}
