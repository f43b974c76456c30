//! The gateway's PostgreSQL connections ([`super::conn_pool`]), each
//! remembering the session it carries: the settings a plugin's statements
//! run under (its role, statement timeout, search path, the relay's row
//! limit), set with one simple query ([`Session`]).
//!
//! A call sets its plugin's session only when the connection carries
//! another one, and runs its statement in autocommit: one round trip fewer
//! than a transaction per call with `SET LOCAL`s (`BEGIN` and its settings,
//! the statement, `COMMIT`), and two fewer when the plugin's previous call
//! left the connection in its session. The pool lends a connection already
//! in the caller's session when it has one idle.
//!
//! Between calls a connection keeps the session of the plugin that last
//! used it, and the statements that plugin prepared on it
//! ([`super::pg_prepared`]). Nothing runs on it until the next caller has
//! set its own (a different plugin, or the sidecar's own work:
//! [`Session::own`], which resets the role and every setting), closing
//! those statements first, so no plugin's statement runs under another's
//! role or settings, and none runs another's statements.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _, Executor as _};

use super::conn_pool::{ConnPool, Connector, Pooled};
use super::guard::postgres as pg_guard;
use super::pg_prepared::{self, Prepared};
use super::relay;
use super::running::PgRunning;

/// A pool of PostgreSQL connections that remember their session.
pub type PgPool = ConnPool<PgConnector>;

/// A connection taken from a [`PgPool`].
pub type PooledPg = Pooled<PgConnector>;

/// How long an idle connection is lent without a check: one idle longer
/// is pinged first, so a server restarted meanwhile costs no plugin's call.
/// (sqlx's pool pings before every acquire: a round trip per call.)
pub const CHECK_AFTER: Duration = Duration::from_secs(1);

/// How long the check of an idle connection may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a PostgreSQL server running a plugin's statement checks that
/// the sidecar is still connected (`client_connection_check_interval`):
/// otherwise a statement whose connection the sidecar closed (its
/// invocation ended) runs on until its `statement_timeout`, since the
/// server notices a closed socket only when it next writes.
const CLIENT_CHECK_MILLIS: u32 = 250;

/// Opens PostgreSQL connections (through the alias's relay).
pub struct PgConnector {
    options: PgConnectOptions,
    /// The plugins' statements running on its connections.
    running: PgRunning,
}

/// A pool over `options`, opening nothing yet.
pub fn pg_pool(options: PgConnectOptions, max_connections: u32, acquire_timeout: Duration) -> PgPool {
    // As many as the gateway keeps, which closes them all before it would
    // keep one more: sqlx never drops one of its own accord, and its cache
    // is exactly what `Prepared` records.
    let options = options.statement_cache_capacity(pg_prepared::PER_CONNECTION);
    ConnPool::new(PgConnector { options, running: PgRunning::default() }, max_connections, acquire_timeout)
}

/// A pooled PostgreSQL connection and the statements kept prepared on it
/// for the session it carries.
pub struct PgConn {
    conn: PgConnection,
    prepared: Prepared,
    /// Its server process.
    pid: i32,
}

impl PgConn {
    /// Its server process (`pg_backend_pid()`), which a cancel names.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The statements kept on it.
    pub fn prepared(&mut self) -> &mut Prepared {
        &mut self.prepared
    }

    /// Closes every statement kept on it, on the server too (one round
    /// trip, none when there is nothing to close).
    pub async fn unprepare(&mut self) -> Result<(), sqlx::Error> {
        self.prepared.clear();
        self.conn.clear_cached_statements().await
    }
}

impl Deref for PgConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Connector for PgConnector {
    type Conn = PgConn;

    const CHECK_AFTER: Duration = CHECK_AFTER;

    async fn open(&self) -> Result<PgConn, sqlx::Error> {
        let mut conn = self.options.connect().await?;
        // Not kept prepared: the connection's statement cache holds only
        // what `Prepared` records.
        let pid = sqlx::query_scalar("SELECT pg_backend_pid()").persistent(false).fetch_one(&mut conn).await?;
        Ok(PgConn { conn, prepared: Prepared::default(), pid })
    }

    async fn check(conn: &mut PgConn) -> bool {
        matches!(tokio::time::timeout(CHECK_TIMEOUT, conn.conn.ping()).await, Ok(Ok(())))
    }

    async fn close(conn: PgConn) {
        let _ = conn.conn.close().await;
    }
}

impl PgConnector {
    /// The plugins' statements running on its connections.
    pub fn running(&self) -> &PgRunning {
        &self.running
    }

    /// Ends one long statement for `waiter`, waiting since `waiting_since`
    /// ([`PgRunning::pick_for_waiter`]): the server cancels it, asked on a
    /// connection of the sidecar's login opened for that alone, outside
    /// the pool (one at a time per alias, within [`CHECK_TIMEOUT`]), since
    /// the pool has no place free and sqlx does not expose the cancel key
    /// of its connections. Returns whose it was and how long it had run.
    pub fn end_for_waiter(
        &self,
        waiter: &str,
        waiting_since: Instant,
        held_by: impl Fn(&str) -> usize,
    ) -> Option<(Arc<str>, Duration)> {
        let (pid, plugin, since, cancelling) = self.running.pick_for_waiter(waiter, waiting_since, held_by)?;
        let options = self.options.clone();
        tokio::spawn(async move {
            let cancel = async {
                let mut conn = options.connect().await?;
                sqlx::query("SELECT pg_cancel_backend($1)").bind(pid).execute(&mut conn).await?;
                conn.close().await
            };
            if let Err(error) =
                tokio::time::timeout(CHECK_TIMEOUT, cancel).await.unwrap_or(Err(sqlx::Error::PoolTimedOut))
            {
                tracing::warn!(%error, "a long statement could not be cancelled for a waiting plugin");
            }
            drop(cancelling);
        });
        Some((plugin, since.elapsed()))
    }
}

/// Whether a connection is still in step after `error`: the server
/// answered with an error that did not end the session (not `FATAL` or
/// `PANIC`, such as a shutdown's or a terminated backend's).
pub fn survives(error: &sqlx::Error) -> bool {
    use sqlx::postgres::{PgDatabaseError, PgSeverity};
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_none_or(|pg| !matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        _ => false,
    }
}

/// How often settings cancelled by the previous session's timeout are
/// tried again ([`Session::enter`]).
const CANCELLED_RETRIES: usize = 3;

/// Whether `error` is PostgreSQL's `query_canceled` (a statement timeout).
fn cancelled(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

/// The settings statements run under on a connection, as the one simple
/// query that sets them (which is also how a connection remembers them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    text: Arc<str>,
    /// Where the settings begin, after the relay's marker.
    settings_at: usize,
}

impl Session {
    /// A plugin's: its `role`, the statement timeout, the search path fixed
    /// to the schema the checker resolves names in, strings read as the
    /// checker reads them (whatever the server's default), the server's check
    /// for a vanished client, and the relay's bound on each row
    /// (`max_result_bytes`). Session-level: they outlast the call, and
    /// the next caller of another session sets its own first.
    pub fn plugin(role: &str, timeout: Duration, max_result_bytes: u64) -> Session {
        let millis = timeout.as_millis().clamp(1, i32::MAX as u128);
        let settings = format!(
            "SET ROLE {}; SET statement_timeout = {millis}; \
             SET client_connection_check_interval = {CLIENT_CHECK_MILLIS}; SET search_path = {}; \
             SET standard_conforming_strings = on",
            pg_guard::quote(role),
            pg_guard::quote(pg_guard::SCHEMA)
        );
        Session::new(max_result_bytes, &settings)
    }

    /// The sidecar's own (the role sync): the login's role and defaults,
    /// and no plugin's row limit.
    pub fn own() -> Session {
        Session::new(relay::UNMARKED, "RESET ROLE; RESET ALL")
    }

    fn new(max_result_bytes: u64, settings: &str) -> Session {
        let marker = relay::marker(max_result_bytes);
        Session { text: Arc::from(format!("{marker}{settings}")), settings_at: marker.len() }
    }

    /// The query that sets it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The query that sets it on a connection that carried another session
    /// (or an unknown one): first what that session's calls may have left
    /// in the server process: every setting (`set_config` reached past the
    /// checker made other plugins' writes read-only and their strings read
    /// with backslash escapes), sequences' `currval`/`lastval`, advisory
    /// locks, and the state of `random()`, seeded afresh from the system's
    /// random source. The checker keeps plugins from the functions that
    /// change these; this is the database's own line, after three outside
    /// reviews reached them. Not `DISCARD ALL`, which cannot run in the one
    /// query and would close the kept statements the pool tracks.
    fn switch_query(&self) -> String {
        let seed = getrandom::u64().unwrap_or_else(|_| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish()
        });
        // setseed takes [-1, 1].
        let seed = (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        let (marker, settings) = self.text.split_at(self.settings_at);
        format!(
            "{marker}RESET ROLE; RESET ALL; DISCARD SEQUENCES; SELECT pg_advisory_unlock_all(), setseed({seed}); \
             {settings}"
        )
    }

    /// Puts `conn` in this session, unless it is already (no round trip
    /// then), first closing the statements kept for the session it
    /// carried. While the session changes it is unknown: a caller that
    /// leaves meanwhile leaves a connection that is set again by whoever
    /// takes it next.
    pub async fn enter(&self, conn: &mut PooledPg) -> Result<(), sqlx::Error> {
        if conn.session() == Some(self.as_str()) {
            return Ok(());
        }
        conn.set_session(None);
        let query = self.switch_query();
        let mut set = match conn.unprepare().await {
            Ok(()) => conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(query.clone()))).await,
            Err(e) => Err(e),
        };
        // The settings run under the previous session's `statement_timeout`,
        // which may be a plugin's 1 ms: cancelled, they are sent again after
        // clearing it on its own (a trivial statement, tried a few times),
        // so that no plugin's timeout decides another's call (an outside
        // review saw 1 switch in ~700 away from a 1 ms plugin fail).
        for _ in 0..CANCELLED_RETRIES {
            if !set.as_ref().is_err_and(cancelled) {
                break;
            }
            if conn.execute("SET statement_timeout = 0").await.is_ok() {
                set = conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(query.clone()))).await;
            }
        }
        match set {
            Ok(_) => {
                conn.set_session(Some(Arc::clone(&self.text)));
                Ok(())
            }
            // The server refused a setting (a role that is gone): the
            // connection is fine, in no one's session.
            Err(e) if survives(&e) => Err(e),
            // The connection is not (the server restarted, say): closed,
            // so it fails no other call.
            Err(e) => {
                conn.close_on_drop();
                Err(e)
            }
        }
    }

    /// A connection of `pool` in this session: one idle in it if there is
    /// one, else another set to it.
    pub async fn acquire(&self, pool: &PgPool) -> Result<PooledPg, sqlx::Error> {
        self.acquire_for(pool, "").await
    }

    /// [`Self::acquire`], its place charged to `holder` (a plugin the
    /// sidecar works for: its role is made before its first call, in a
    /// place guaranteed to it if it has one).
    pub async fn acquire_for(&self, pool: &PgPool, holder: &str) -> Result<PooledPg, sqlx::Error> {
        let mut conn = pool.acquire_for(holder, Some(self.as_str()), false).await?;
        self.enter(&mut conn).await?;
        Ok(conn)
    }
}
