//! The gateway's SQLite connections, pooled here rather than by sqlx: each
//! is kept with the raw handle its authorizer uses ([`Guarded`]), so that
//! entering and leaving a plugin's grant are calls on the caller's thread
//! and a call costs one handoff to sqlx's worker thread (its statement)
//! instead of three. sqlx's pool hands out its own connection type, with
//! no room for that handle.
//!
//! What it keeps of sqlx's pool: at most `max_connections` open, a call
//! that finds none free within `acquire_timeout` refused
//! (`PoolTimedOut`), connections opened lazily and again after an error,
//! an idle connection closed after [`IDLE_TIMEOUT`] (checked whenever one
//! is taken or given back), a connection marked [`PooledSqlite::close_on_drop`]
//! closed instead of reused. A connection being closed still counts, and
//! keeps its place in the pool (and the permits its holder attached), until
//! its worker thread has finished: a statement abandoned on it may still be
//! running (waiting for a lock, say), and a place freed at once let an
//! outside review open hundreds of connections past `max_connections`.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions as _;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::guard::sqlite::{self as guard, Guarded};

/// How long a connection may sit idle before it is closed: the pool
/// shrinks back after a burst (each open connection is a thread and a file
/// handle).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A pool of serialized SQLite connections with the authorizer installed.
#[derive(Clone)]
pub struct SqlitePool {
    inner: Arc<Inner>,
}

struct Inner {
    options: SqliteConnectOptions,
    max_value_bytes: u32,
    acquire_timeout: Duration,
    /// One permit per connection that may be open.
    permits: Arc<Semaphore>,
    /// Connections not held, most recently returned last.
    idle: Mutex<Vec<(Guarded, Instant)>>,
    /// Connections open (held, idle, or closing).
    open: AtomicU32,
}

impl SqlitePool {
    /// A pool over `options` (made serialized here), opening nothing yet.
    pub fn new(
        options: SqliteConnectOptions,
        max_connections: u32,
        acquire_timeout: Duration,
        max_value_bytes: u32,
    ) -> SqlitePool {
        SqlitePool {
            inner: Arc::new(Inner {
                options: options.serialized(true),
                max_value_bytes,
                acquire_timeout,
                permits: Arc::new(Semaphore::new(max_connections as usize)),
                idle: Mutex::default(),
                open: AtomicU32::new(0),
            }),
        }
    }

    /// A connection: an idle one, or a new one if none is idle, within
    /// `acquire_timeout` of waiting for a free place.
    pub async fn acquire(&self) -> Result<PooledSqlite, sqlx::Error> {
        let inner = &self.inner;
        let permit = tokio::time::timeout(inner.acquire_timeout, Arc::clone(&inner.permits).acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        match inner.take_idle() {
            Some(conn) => Ok(Arc::clone(inner).lend(conn, permit)),
            // Opened in a task of its own, holding the place: a caller that
            // goes away meanwhile (its invocation ended) leaves the new
            // connection to the pool instead of a worker thread running
            // on outside it (an outside review saw bursts past
            // `max_connections` from callers hanging up mid-connect).
            None => {
                tokio::spawn(Inner::open(Arc::clone(inner), permit)).await.map_err(|_| sqlx::Error::WorkerCrashed)?
            }
        }
    }

    /// Connections open now, and of them idle.
    pub fn usage(&self) -> (u32, usize) {
        (self.inner.open.load(Ordering::Relaxed), self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner).len())
    }

    /// Closes the idle connections and refuses every later acquire
    /// (held ones close when they are given back).
    pub fn close(&self) {
        self.inner.permits.close();
        let idle = std::mem::take(&mut *self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner));
        self.inner.open.fetch_sub(idle.len() as u32, Ordering::Relaxed);
    }
}

impl Inner {
    /// A new connection, guarded, in `permit`'s place.
    async fn open(self: Arc<Self>, permit: OwnedSemaphorePermit) -> Result<PooledSqlite, sqlx::Error> {
        let conn = self.options.connect().await?;
        let guarded = guard::install(conn, self.max_value_bytes)
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("the SQLite authorizer: {e}")))?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(self.lend(guarded, permit))
    }

    /// `conn`, held in `permit`'s place until it is given back or closed.
    fn lend(self: Arc<Self>, conn: Guarded, permit: OwnedSemaphorePermit) -> PooledSqlite {
        PooledSqlite { conn: Some(conn), pool: self, close: false, permits: vec![permit] }
    }

    /// The most recently returned idle connection, closing those idle
    /// past [`IDLE_TIMEOUT`].
    fn take_idle(&self) -> Option<Guarded> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = idle.partition_point(|(_, since)| since.elapsed() >= IDLE_TIMEOUT);
        let stale: Vec<_> = idle.drain(..fresh).collect();
        let taken = idle.pop().map(|(conn, _)| conn);
        drop(idle);
        self.open.fetch_sub(stale.len() as u32, Ordering::Relaxed);
        // Dropped outside the lock: each drop ends a worker thread.
        drop(stale);
        taken
    }
}

/// A connection taken from a [`SqlitePool`]; back to it on drop, or
/// closed if marked so.
pub struct PooledSqlite {
    conn: Option<Guarded>,
    pool: Arc<Inner>,
    close: bool,
    /// The pool's permit, and those the holder attached: released when the
    /// connection is back in the pool, or has finished closing.
    permits: Vec<OwnedSemaphorePermit>,
}

impl PooledSqlite {
    /// Keeps `permit` (a plugin's share, say) as long as this connection's
    /// place in the pool: until it is given back, or has finished closing.
    pub fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.permits.push(permit);
    }

    /// Closes the connection when it is dropped instead of giving it back:
    /// for a connection whose state is unknown. Closing rolls back a
    /// transaction left open.
    pub fn close_on_drop(&mut self) {
        self.close = true;
    }
}

impl Deref for PooledSqlite {
    type Target = Guarded;
    fn deref(&self) -> &Guarded {
        self.conn.as_ref().expect("a pooled connection until dropped")
    }
}

impl DerefMut for PooledSqlite {
    fn deref_mut(&mut self) -> &mut Guarded {
        self.conn.as_mut().expect("a pooled connection until dropped")
    }
}

impl Drop for PooledSqlite {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.close && !self.pool.permits.is_closed() {
            self.pool.idle.lock().unwrap_or_else(PoisonError::into_inner).push((conn, Instant::now()));
            return;
        }
        let (pool, permits) = (Arc::clone(&self.pool), std::mem::take(&mut self.permits));
        let closed = move || {
            pool.open.fetch_sub(1, Ordering::Relaxed);
            drop(permits);
        };
        match tokio::runtime::Handle::try_current() {
            // The worker finishes what it runs, then closes the database.
            Ok(runtime) => drop(runtime.spawn(async move {
                let _ = sqlx::Connection::close(conn.into_connection()).await;
                closed();
            })),
            // No runtime to wait on (a drop at shutdown): the worker
            // closes the database when it ends.
            Err(_) => {
                drop(conn);
                closed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(dir: &tempfile::TempDir, max: u32) -> SqlitePool {
        let options = crate::databases::sqlite_options(&dir.path().join("pool.db"));
        SqlitePool::new(options, max, Duration::from_millis(200), crate::databases::DEFAULT_MAX_VALUE_BYTES)
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
        let a = pool.acquire().await.unwrap();
        let b = pool.acquire().await.unwrap();
        assert_eq!(pool.usage(), (2, 0));
        let refused = pool.acquire().await.err().unwrap();
        assert!(matches!(refused, sqlx::Error::PoolTimedOut), "{refused}");

        drop(a);
        assert_eq!(pool.usage(), (2, 1));
        let c = pool.acquire().await.unwrap();
        assert_eq!(pool.usage(), (2, 0), "the idle one is taken, none opened");

        let mut c = c;
        c.close_on_drop();
        drop(c);
        // Its place is freed once the worker has closed the database.
        let closed = Instant::now();
        while pool.usage() != (1, 0) {
            assert!(closed.elapsed() < Duration::from_secs(10), "never closed: {:?}", pool.usage());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(b);
        assert_eq!(pool.usage(), (1, 1));

        pool.close();
        assert_eq!(pool.usage(), (0, 0));
        assert!(matches!(pool.acquire().await.err().unwrap(), sqlx::Error::PoolClosed));
    }

    /// Every connection the pool opens is guarded: it refuses a statement
    /// until a grant is entered, and is serialized.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_connection_is_guarded() {
        use sqlx::Executor as _;
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir, 1);
        let mut conn = pool.acquire().await.unwrap();
        let err = conn.connection().execute("SELECT 1").await.unwrap_err();
        assert!(err.to_string().contains("not authorized"), "{err}");
        guard::enter_host(&mut conn);
        conn.connection().execute("SELECT 1").await.unwrap();
        guard::leave(&mut conn);
        assert!(conn.connection().execute("SELECT 1").await.is_err());
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
        let (older, mut newer) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        mark(&mut newer).await;
        drop(older);
        drop(newer);
        assert_eq!(pool.usage(), (2, 2));
        let long_ago = Instant::now().checked_sub(IDLE_TIMEOUT + Duration::from_secs(1)).unwrap();
        pool.inner.idle.lock().unwrap()[0].1 = long_ago;
        let conn = pool.acquire().await.unwrap();
        assert_eq!(pool.usage(), (1, 0), "the stale one closed");
        let mut conn = conn;
        assert!(marked(&mut conn).await, "the fresh one taken");
        drop(conn);
        pool.inner.idle.lock().unwrap()[0].1 = long_ago;
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(pool.usage(), (1, 0));
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

        let mut conn = pool.acquire().await.unwrap();
        guard::enter_host(&mut conn);
        let write =
            tokio::time::timeout(Duration::from_millis(100), conn.connection().execute("INSERT INTO t VALUES (1)"));
        assert!(write.await.is_err(), "the write waits for the lock");
        conn.close_on_drop();
        drop(conn);
        assert!(matches!(pool.acquire().await.err().unwrap(), sqlx::Error::PoolTimedOut), "its place is still taken");
        assert_eq!(pool.usage(), (1, 0));

        holder.execute("ROLLBACK").await.unwrap();
        let freed = Instant::now();
        loop {
            match pool.acquire().await {
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
        let mut acquiring = Box::pin(pool.acquire());
        assert!(futures::FutureExt::now_or_never(&mut acquiring).is_none(), "the connection is being opened");
        drop(acquiring);
        let left = Instant::now();
        while pool.usage() != (1, 1) {
            assert!(left.elapsed() < Duration::from_secs(10), "not in the pool: {:?}", pool.usage());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _conn = pool.acquire().await.unwrap();
        assert_eq!(pool.usage(), (1, 0), "reused, none opened past the bound");
    }
}
