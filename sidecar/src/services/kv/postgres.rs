//! The shared backend: the key-value store in a PostgreSQL database named
//! by a `[databases.<alias>]` alias, so that several sidecar processes
//! serve one store under one set of quotas.
//!
//! # Schema
//! `migrations/postgres/` (embedded as [`MIGRATIONS`], applied with sqlx's
//! migrator when the backend opens): `gatehouse_kv_data (plugin, bucket,
//! key bytea, value bytea)`, and usage rows per plugin and per bucket. Keys
//! are `bytea`, so they sort in byte order exactly as redb's do: cursors
//! ([`Namespace::cursor_after`]) mean the same on both backends.
//!
//! # Group commit, and quotas across processes
//! Writes are queued per plugin ([`group`]) and applied in batches: one
//! transaction per batch first locks its plugin's usage row (an upsert,
//! which takes the row lock), reads every key the batch touches, decides
//! each write in order against the state and usage the writes before it
//! left ([`plan`]: sizes, CAS expectations, counters, quotas), then writes
//! what the accepted ones changed and both usage rows, and commits once.
//! A refused write issues no statement and changes nothing its neighbours
//! see. Batches of one plugin, in any process, therefore run one after
//! another from the lock to the commit: no two can both see room for the
//! last key, and the usage rows change with the data, so they always equal
//! a full scan. Batches of different plugins do not wait for each other.
//!
//! # Durability
//! A write is answered after its batch's `COMMIT` returned: with the
//! server's `synchronous_commit` (on by default), after the commit record
//! is flushed, one flush for the whole batch. A batch made only of writes
//! to relaxed buckets runs `SET LOCAL synchronous_commit = off`:
//! acknowledged before the flush; PostgreSQL flushes it within three times
//! `wal_writer_delay` (600 ms by default), and a server crash may lose
//! what was acknowledged in that window, never part of a write. A relaxed
//! write batched with a durable one is committed durably.
//!
//! # A database that is down
//! Every read and every batch takes a pooled connection within
//! [`ACQUIRE_TIMEOUT`] (one the server closed is replaced, see
//! [`on_a_connection`]) and must finish within [`CALL_TIMEOUT`]
//! (a write may first wait that long for room in the queue and for its
//! plugin's earlier batches, see [`group`]); a
//! connection failure, a server shutting down, a pool timeout or no answer
//! is `unavailable`, for every write of the batch. Nothing is acknowledged
//! unless its batch's `COMMIT` succeeded
//! (a commit whose answer is lost is reported `unavailable` although it
//! may have been applied: retrying a `set` is harmless, an `increment` may
//! then count twice). The pool opens new connections as calls come, so the
//! backend recovers by itself once the server answers again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, Postgres, Row};
use tokio::time::Instant;

use super::backend::{
    Bucket, KvBackend, KvFuture, MAX_BATCH_BYTES as MAX_CALL_BYTES, Page, Usage, UsageReport, check_batch_len,
    check_expected, check_key, check_limit, check_prefix, check_value,
};
use super::error::KvError;
use super::shares::PluginShares;
use crate::guest_text;
use crate::services::fair_places::{Closed, Place, Places};

mod group;
mod plan;

use group::Group;
pub use group::{ENTRY_OVERHEAD, MAX_BATCH_BYTES, MAX_BATCH_OPS, QUEUE_BYTES};
use plan::{Answer, Op, Slot, Stored, Write};

/// Most connections the backend holds (each call uses one at a time).
pub const MAX_CONNECTIONS: u32 = 16;
/// The last free connections kept for plugins that used little of the
/// pool lately while another holds one ([`Places::new`]'s `keep`).
const KEPT_PLACES: usize = 1;
/// How long a call waits for a connection (a new one when the server was
/// down) before it is `unavailable`.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one read or one batch may take in all, the wait for its
/// plugin's lock included, before it is `unavailable`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server lets one statement of the store's run (its
/// `statement_timeout`), under [`CALL_TIMEOUT`]: a batch waiting on its
/// plugin's lock (another sidecar's batch, an operator's transaction) is
/// ended by the server, and its connection comes back to the pool with its
/// place. Cut off by the call's timeout instead, a statement went on
/// waiting on the server after its place was given to another call, which
/// then found no connection (review 31: fourteen batches stuck on their
/// locks took every connection twice over).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(8);
/// How often the server checks, while a statement runs, that the sidecar
/// is still connected (`client_connection_check_interval`): a statement
/// whose connection was closed (its call dropped, [`on_a_connection`]; the
/// sidecar killed) stops within this instead of running on to
/// [`STATEMENT_TIMEOUT`].
const CLIENT_CHECK: Duration = Duration::from_millis(250);
/// A connection idle longer than this is pinged before it is lent, so a
/// server restarted meanwhile costs no call (as the SQL gateway's pools).
const CHECK_AFTER: Duration = Duration::from_secs(1);
/// Idle connections are closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most reads one plugin runs at once, each on a connection of its own (a
/// plugin's further reads wait on it, not on the pool): review 28's two
/// plugins, 16 clients each, held all [`MAX_CONNECTIONS`] and another
/// plugin's `get` waited 70–575 ms for one.
pub const PLUGIN_READS: usize = 4;

/// The PostgreSQL backend.
pub struct PostgresBackend {
    pool: PgPool,
    /// One place per connection: every call takes its plugin's place
    /// before it asks the pool, so a freed connection goes to the waiting
    /// plugin holding the fewest, not to the first in line (review 29:
    /// ten plugins reading hard kept a light plugin's calls waiting up to
    /// 1.5 s, some `unavailable`).
    places: Arc<Places>,
    group: Group,
    reads: PluginShares,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend").finish_non_exhaustive()
    }
}

/// A database error as the guest sees it: connection trouble is
/// `unavailable`, the rest `internal`. The server's text is escaped and
/// bounded (it comes from the network).
fn db_error(e: sqlx::Error) -> KvError {
    let text = |e: &dyn std::fmt::Display| guest_text::escape(&e.to_string(), guest_text::LINE);
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => KvError::Unavailable(text(&e)),
        // sqlx's words ("pool timed out while waiting for an open
        // connection") read as a full pool; with a place held, the pool
        // has room, and no connection means none could be opened.
        sqlx::Error::PoolTimedOut => KvError::Unavailable(format!(
            "no connection to the database within {ACQUIRE_TIMEOUT:?}: it did not answer or refused more connections, or ours are still closing"
        )),
        sqlx::Error::Database(db) => {
            // 08 connection exception, 53 insufficient resources, 57
            // operator intervention (shutdown), 58 system error, 40
            // transaction rollback (serialization failure, deadlock).
            let class = db.code().map(|c| c.chars().take(2).collect::<String>()).unwrap_or_default();
            // The server's message, without sqlx's "at line N" of the
            // server's own source.
            let said = text(&format_args!("the database said: {}", db.message()));
            if matches!(class.as_str(), "08" | "53" | "57" | "58" | "40") {
                KvError::Unavailable(said)
            } else {
                KvError::Internal(said)
            }
        }
        _ => KvError::Internal(text(&e)),
    }
}

fn migrate_error(e: sqlx::migrate::MigrateError) -> KvError {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => db_error(e),
        other => KvError::Unavailable(format!(
            "the database schema: {}",
            guest_text::escape(&other.to_string(), guest_text::LINE)
        )),
    }
}

/// A place in the pool for `plugin` ([`PostgresBackend::places`]), by
/// `deadline`.
async fn take_place(places: &Arc<Places>, plugin: &str, deadline: Instant) -> Result<Place, KvError> {
    match tokio::time::timeout_at(deadline, places.take(plugin)).await {
        Ok(Ok(place)) => Ok(place),
        Ok(Err(Closed)) => Err(KvError::Unavailable("the connection pool is closed".into())),
        Err(_) => Err(no_connection()),
    }
}

/// The pool's failure to lend a connection: `unavailable` whatever the
/// server said, a refused login included (`pg_hba.conf`, a database not
/// accepting connections: review 35 saw those answered `internal`, which
/// tells callers not to retry).
fn no_login(e: sqlx::Error) -> KvError {
    match db_error(e) {
        KvError::Internal(text) => KvError::Unavailable(text),
        other => other,
    }
}

fn no_connection() -> KvError {
    KvError::Unavailable(format!("no database connection free within {ACQUIRE_TIMEOUT:?}"))
}

/// Why a call's work on one connection failed.
enum Failed {
    /// The connection was already closed when the call's first statement
    /// met it, so nothing of the call was done: it may run on another.
    Lost(KvError),
    /// Anything else: the call's answer.
    Other(KvError),
}

impl From<KvError> for Failed {
    fn from(e: KvError) -> Failed {
        Failed::Other(e)
    }
}

/// [`db_error`] for a statement whose failure leaves nothing done (a read;
/// a batch's `BEGIN`): a connection the server closed (an idle-session
/// timeout, a terminated backend, a restart: a `FATAL` answer) or whose
/// socket is gone is [`Failed::Lost`].
fn nothing_done(e: sqlx::Error) -> Failed {
    if connection_lost(&e) { Failed::Lost(db_error(e)) } else { Failed::Other(db_error(e)) }
}

/// Whether `e` ended the connection: its socket is gone, or the server
/// answered `FATAL` (a terminated backend, a shutdown, an idle-session
/// timeout) and closed it.
fn connection_lost(e: &sqlx::Error) -> bool {
    use sqlx::postgres::{PgDatabaseError, PgSeverity};
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        _ => false,
    }
}

/// Runs `work` on a connection of `pool`, holding `plugin`'s place among
/// `places` for it. Dropped before `work` is done (its caller gone, or
/// the call's timeout), the connection is closed rather than given back:
/// sqlx takes a connection dropped mid-statement back only once the
/// statement ends (up to [`STATEMENT_TIMEOUT`] later, a lock wait's whole
/// length), while its place would already serve another call, which then
/// found no connection. Closed, the server stops the statement at its next
/// client check ([`CLIENT_CHECK`]) and the pool may open another at once.
///
/// A connection idle for less than [`CHECK_AFTER`] is lent unchecked, so
/// one the server closed meanwhile (an `idle_session_timeout` under a
/// second, a terminated backend, a restart) is found closed by `work`'s
/// first statement ([`Failed::Lost`]): `work` then runs again on another,
/// each pinged first (after a restart every idle connection is closed),
/// within the same [`ACQUIRE_TIMEOUT`]. Review 34 saw every second call of
/// a lightly used sidecar fail under a 300 ms `idle_session_timeout`.
async fn on_a_connection<T>(
    pool: &PgPool,
    places: &Arc<Places>,
    plugin: &str,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, Failed> + Clone,
) -> Result<T, KvError> {
    // One wait for both, so that a free place with no connection behind it
    // yet (one being opened, or closing) adds nothing to the bound.
    let deadline = Instant::now() + ACQUIRE_TIMEOUT;
    let place = take_place(places, plugin, deadline).await?;
    let mut lost: Option<KvError> = None;
    // After a lost connection, every other idle one may be closed too (a
    // restart: `MAX_CONNECTIONS - 1`) and the pool then opens one: each is
    // checked, and that many checks at most, so a server that closes
    // connections as they open costs each call a bounded number of logins
    // (review 35: ~258 a second for one caller, unbounded).
    let mut checks = MAX_CONNECTIONS;
    let done = loop {
        if let Some(e) = &lost {
            if checks == 0 {
                break Err(e.clone());
            }
            checks -= 1;
        }
        // After a lost connection, its error says more than the pool's.
        let conn = match tokio::time::timeout_at(deadline, pool.acquire()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => break Err(lost.unwrap_or_else(|| no_login(e))),
            Err(_) => break Err(lost.unwrap_or_else(no_connection)),
        };
        let mut conn = InUse(Some(conn));
        let c = conn.0.as_mut().expect("taken only here");
        if lost.is_some() && c.ping().await.is_err() {
            continue;
        }
        let result = work.clone()(c).await;
        // Given back, unless lost (then closed on drop).
        if !matches!(result, Err(Failed::Lost(_))) {
            drop(conn.0.take());
        }
        match result {
            Ok(answer) => break Ok(answer),
            Err(Failed::Lost(e)) if lost.is_none() => lost = Some(e),
            Err(Failed::Lost(e) | Failed::Other(e)) => break Err(e),
        }
    };
    hand_on(places, place).await;
    done
}

/// A connection of the pool that a call is using: closed when dropped
/// before the call is done with it ([`on_a_connection`]).
struct InUse(Option<PoolConnection<Postgres>>);

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}

/// Gives `place` back once the connection it stood for is back in the
/// pool, when a call waits for it: sqlx returns a connection from a task
/// it spawns as the call drops it, so one yield first lets that task run,
/// and the next holder finds the connection instead of waiting on the
/// pool for it (two hand-offs: a light plugin's `get` beside ten heavy
/// plugins took a p50 of 4.3–4.9 ms without the yield, 2.1 ms with it;
/// BENCHMARKS.md).
async fn hand_on(places: &Places, place: Place) {
    if places.is_awaited() {
        tokio::task::yield_now().await;
    }
    drop(place);
}

/// Runs `call` under [`CALL_TIMEOUT`].
async fn bounded<T>(call: impl Future<Output = Result<T, KvError>>) -> Result<T, KvError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(KvError::Unavailable(format!("no answer from the database within {CALL_TIMEOUT:?}"))))
}

/// The smallest byte string above every key that starts with `prefix`
/// (keys are UTF-8, so no key byte is 0xFF and `[0xFF]` is above them all).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.split_last() {
        // UTF-8 never holds 0xF5..=0xFF, so `last + 1` cannot overflow.
        Some((last, head)) => [head, &[last + 1]].concat(),
        None => vec![0xFF],
    }
}

fn usage_of(keys: i64, bytes: i64) -> Result<Usage, KvError> {
    let count = |n: i64| u64::try_from(n).map_err(|_| KvError::Internal("a usage row is negative".into()));
    Ok(Usage { keys: count(keys)?, bytes: count(bytes)? })
}

impl PostgresBackend {
    /// A backend on the database `options` names: builds the pool and
    /// applies the migrations. `unavailable` when the database cannot be
    /// reached (the caller may try again later).
    pub async fn open(options: PgConnectOptions) -> Result<PostgresBackend, KvError> {
        let millis = |d: Duration| d.as_millis().to_string();
        let options = options.options([
            ("statement_timeout", millis(STATEMENT_TIMEOUT)),
            ("client_connection_check_interval", millis(CLIENT_CHECK)),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(IDLE_TIMEOUT)
            // sqlx pings every connection it lends, a round trip per call:
            // only one idle longer than `CHECK_AFTER` is checked.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > CHECK_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        bounded(async { crate::databases::migrator().run(&pool).await.map_err(migrate_error) }).await?;
        Ok(PostgresBackend::with_pool(pool))
    }

    /// A backend on `pool`, whose schema is in place.
    fn with_pool(pool: PgPool) -> PostgresBackend {
        let places = Places::new(MAX_CONNECTIONS as usize, KEPT_PLACES);
        PostgresBackend {
            group: Group::new(pool.clone(), Arc::clone(&places)),
            pool,
            places,
            reads: PluginShares::new(PLUGIN_READS),
        }
    }

    /// Runs a read of `plugin`'s under [`CALL_TIMEOUT`], holding one of its
    /// [`PLUGIN_READS`] places, then a connection of the pool with its place
    /// (the waits for them included).
    async fn reading<T>(
        &self,
        plugin: &str,
        read: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error> + Clone,
    ) -> Result<T, KvError> {
        let share = self.reads.of(plugin);
        bounded(async {
            let _share = share.acquire().await.map_err(|_| KvError::Internal("the read share is closed".into()))?;
            // A read changes nothing: it may run again whatever failed.
            on_a_connection(&self.pool, &self.places, plugin, async |conn| {
                read.clone()(conn).await.map_err(nothing_done)
            })
            .await
        })
        .await
    }

    async fn read_value(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.reading(bucket.namespace.plugin(), async |conn| {
            let row = sqlx::query("SELECT value FROM gatehouse_kv_data WHERE plugin = $1 AND bucket = $2 AND key = $3")
                .bind(bucket.namespace.plugin())
                .bind(bucket.namespace.bucket())
                .bind(key.as_bytes())
                .fetch_optional(&mut *conn)
                .await?;
            row.map(|r| r.try_get(0)).transpose()
        })
        .await
    }
}

/// One batch of `plugin`'s writes as one transaction: lock the plugin's
/// usage row, read every key the batch touches, decide each write in order
/// ([`plan::plan`]), write what the accepted ones changed and both usage
/// rows, commit. `Ok` holds one answer per write (refusals included), given
/// only after the `COMMIT` succeeded; `Err` fails the whole batch, and then
/// none of it is reported done (a failed `COMMIT` is `unavailable`).
/// `relaxed`: every write is to a relaxed bucket, so the commit does not
/// wait for the flush.
async fn commit_batch(
    conn: &mut PgConnection,
    plugin: &str,
    writes: &[&Write],
    relaxed: bool,
) -> Result<Vec<Result<Answer, KvError>>, Failed> {
    let mut tx =
        if relaxed { conn.begin_with("BEGIN; SET LOCAL synchronous_commit = off").await } else { conn.begin().await }
            .map_err(nothing_done)?;
    // The lock: every batch of this plugin, in any process, waits here.
    let row = sqlx::query(
        "INSERT INTO gatehouse_kv_plugin_usage (plugin) VALUES ($1) \
         ON CONFLICT (plugin) DO UPDATE SET keys = gatehouse_kv_plugin_usage.keys \
         RETURNING keys, bytes",
    )
    .bind(plugin)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    let usage = usage_of(row.try_get(0).map_err(db_error)?, row.try_get(1).map_err(db_error)?)?;

    // Every key of the batch, once, with the most bytes of its value
    // any write needs to see.
    let mut reads: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for write in writes {
        for (key, wanted) in write.reads() {
            let most = reads.entry((write.bucket.as_str(), key)).or_default();
            *most = (*most).max(wanted);
        }
    }
    let buckets: Vec<&str> = reads.keys().map(|(b, _)| *b).collect();
    let keys: Vec<&[u8]> = reads.keys().map(|(_, k)| k.as_bytes()).collect();
    let wanted: Vec<i64> = reads.values().map(|&n| n as i64).collect();
    let rows: Vec<PgRow> = sqlx::query(
        "SELECT d.bucket, d.key, octet_length(d.value)::bigint, \
         CASE WHEN octet_length(d.value) <= t.n THEN d.value END \
         FROM unnest($2::text[], $3::bytea[], $4::bigint[]) AS t(b, k, n) \
         JOIN gatehouse_kv_data d ON d.plugin = $1 AND d.bucket = t.b AND d.key = t.k",
    )
    .bind(plugin)
    .bind(&buckets)
    .bind(&keys)
    .bind(&wanted)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_error)?;
    let mut stored: BTreeMap<Slot, Stored> = BTreeMap::new();
    for row in rows {
        let bucket: String = row.try_get(0).map_err(db_error)?;
        let key: Vec<u8> = row.try_get(1).map_err(db_error)?;
        let key = String::from_utf8(key).map_err(|_| KvError::Internal("a stored key is not UTF-8".into()))?;
        let len: i64 = row.try_get(2).map_err(db_error)?;
        stored.insert((bucket, key), Stored { len: len as u64, value: row.try_get(3).map_err(db_error)? });
    }

    let outcome = plan::plan(writes, usage, stored);
    if outcome.changes.is_empty() {
        // Nothing to make durable: every write was refused or changed
        // nothing, and each answer rests on what the lock let it read.
        let _ = tx.rollback().await;
        return Ok(outcome.answers);
    }
    let (mut set_buckets, mut set_keys, mut set_values) = (Vec::new(), Vec::new(), Vec::new());
    let (mut del_buckets, mut del_keys) = (Vec::new(), Vec::new());
    for ((bucket, key), value) in &outcome.changes {
        match value {
            Some(value) => {
                set_buckets.push(bucket.as_str());
                set_keys.push(key.as_bytes());
                set_values.push(value.as_ref());
            }
            None => {
                del_buckets.push(bucket.as_str());
                del_keys.push(key.as_bytes());
            }
        }
    }
    if !set_keys.is_empty() {
        sqlx::query(
            "INSERT INTO gatehouse_kv_data (plugin, bucket, key, value) \
             SELECT $1, b, k, v FROM unnest($2::text[], $3::bytea[], $4::bytea[]) AS t(b, k, v) \
             ON CONFLICT (plugin, bucket, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(plugin)
        .bind(&set_buckets)
        .bind(&set_keys)
        .bind(&set_values)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    }
    if !del_keys.is_empty() {
        sqlx::query(
            "DELETE FROM gatehouse_kv_data d USING unnest($2::text[], $3::bytea[]) AS t(b, k) \
             WHERE d.plugin = $1 AND d.bucket = t.b AND d.key = t.k",
        )
        .bind(plugin)
        .bind(&del_buckets)
        .bind(&del_keys)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    }
    if !outcome.buckets.is_empty() {
        let names: Vec<&str> = outcome.buckets.keys().map(String::as_str).collect();
        let delta_keys: Vec<i64> = outcome.buckets.values().map(|d| d.0).collect();
        let delta_bytes: Vec<i64> = outcome.buckets.values().map(|d| d.1).collect();
        sqlx::query(
            "WITH p AS (UPDATE gatehouse_kv_plugin_usage SET keys = keys + $5, bytes = bytes + $6 \
             WHERE plugin = $1) \
             INSERT INTO gatehouse_kv_bucket_usage (plugin, bucket, keys, bytes) \
             SELECT $1, b, k, n FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS t(b, k, n) \
             ON CONFLICT (plugin, bucket) DO UPDATE \
             SET keys = gatehouse_kv_bucket_usage.keys + EXCLUDED.keys, \
             bytes = gatehouse_kv_bucket_usage.bytes + EXCLUDED.bytes",
        )
        .bind(plugin)
        .bind(&names)
        .bind(&delta_keys)
        .bind(&delta_bytes)
        .bind(outcome.plugin.0)
        .bind(outcome.plugin.1)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    }
    // Refused by the server, the commit wrote nothing; lost with its
    // connection, it may have been applied (review 34: most were).
    tx.commit().await.map_err(|e| {
        let lost = connection_lost(&e);
        match db_error(e) {
            KvError::Internal(text) | KvError::Unavailable(text) if lost => KvError::Unavailable(format!(
                "the connection was lost at the commit, which may have been applied (a retried increment may count twice): {text}"
            )),
            KvError::Internal(text) | KvError::Unavailable(text) => {
                KvError::Unavailable(format!("the commit failed, nothing of the batch was written: {text}"))
            }
            other => other,
        }
    })?;
    Ok(outcome.answers)
}

impl KvBackend for PostgresBackend {
    fn get<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            check_key(key)?;
            self.read_value(bucket, key).await
        })
    }

    fn exists<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(async move {
            check_key(key)?;
            self.reading(bucket.namespace.plugin(), async |conn| {
                let row = sqlx::query("SELECT 1 FROM gatehouse_kv_data WHERE plugin = $1 AND bucket = $2 AND key = $3")
                    .bind(bucket.namespace.plugin())
                    .bind(bucket.namespace.bucket())
                    .bind(key.as_bytes())
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(row.is_some())
            })
            .await
        })
    }

    fn set<'a>(&'a self, bucket: &'a Bucket, key: String, value: Vec<u8>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            check_key(&key)?;
            check_value(&bucket.quota, &value)?;
            let bytes = (key.len() + value.len()) as u64;
            self.group.submit(bucket, Op::Set { key, value }, bytes, 1).await.map(drop)
        })
    }

    fn delete<'a>(&'a self, bucket: &'a Bucket, key: String) -> KvFuture<'a, bool> {
        Box::pin(async move {
            check_key(&key)?;
            let bytes = key.len() as u64;
            match self.group.submit(bucket, Op::Delete { key }, bytes, 1).await? {
                Answer::Bool(existed) => Ok(existed),
                _ => Err(KvError::Internal("unexpected answer to delete".into())),
            }
        })
    }

    fn list_keys<'a>(
        &'a self,
        bucket: &'a Bucket,
        prefix: &'a str,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> KvFuture<'a, Page> {
        Box::pin(async move {
            check_prefix(prefix)?;
            let limit = check_limit(limit)?;
            let after = cursor.map(|c| bucket.namespace.resume_after(c)).transpose()?;
            // The first key strictly after `after` is `after` followed by a
            // NUL byte: one inclusive bound serves both cases.
            let start = match after {
                Some(after) if after.as_str() >= prefix => [after.as_bytes(), &[0]].concat(),
                _ => prefix.as_bytes().to_vec(),
            };
            let end = prefix_end(prefix.as_bytes());
            let rows = self
                .reading(bucket.namespace.plugin(), async |conn| {
                    sqlx::query(
                        "SELECT key FROM gatehouse_kv_data WHERE plugin = $1 AND bucket = $2 \
                     AND key >= $3 AND key < $4 ORDER BY key LIMIT $5",
                    )
                    .bind(bucket.namespace.plugin())
                    .bind(bucket.namespace.bucket())
                    .bind(&start)
                    .bind(&end)
                    .bind(i64::from(limit) + 1)
                    .fetch_all(&mut *conn)
                    .await
                })
                .await?;
            let more = rows.len() > limit as usize;
            let mut keys = Vec::with_capacity(rows.len().min(limit as usize));
            for row in rows.into_iter().take(limit as usize) {
                let key: Vec<u8> = row.try_get(0).map_err(db_error)?;
                keys.push(String::from_utf8(key).map_err(|_| KvError::Internal("a stored key is not UTF-8".into()))?);
            }
            let cursor = if more { keys.last().map(|k| bucket.namespace.cursor_after(k)) } else { None };
            Ok(Page { keys, cursor })
        })
    }

    fn get_many<'a>(&'a self, bucket: &'a Bucket, keys: &'a [String]) -> KvFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            check_batch_len(keys.len())?;
            keys.iter().try_for_each(|k| check_key(k))?;
            let key_bytes: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            // One statement, one snapshot. The server sends the values only
            // when all of them fit in the call's bound, so an answer past it
            // is never transferred.
            let rows = self
                .reading(bucket.namespace.plugin(), async |conn| {
                    sqlx::query(
                        "WITH found AS (SELECT key, value FROM gatehouse_kv_data \
                     WHERE plugin = $1 AND bucket = $2 AND key = ANY($3)) \
                     SELECT key, octet_length(value)::bigint, \
                     CASE WHEN (SELECT coalesce(sum(octet_length(value)), 0) FROM found) <= $4 THEN value END \
                     FROM found",
                    )
                    .bind(bucket.namespace.plugin())
                    .bind(bucket.namespace.bucket())
                    .bind(&key_bytes)
                    .bind(MAX_CALL_BYTES as i64)
                    .fetch_all(&mut *conn)
                    .await
                })
                .await?;
            let mut found: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)> = BTreeMap::new();
            for row in rows {
                let len: i64 = row.try_get(1).map_err(db_error)?;
                found.insert(row.try_get(0).map_err(db_error)?, (len as u64, row.try_get(2).map_err(db_error)?));
            }
            // The bound as redb counts it: each named key and its value.
            let total: u64 =
                keys.iter().map(|k| k.len() as u64 + found.get(k.as_bytes()).map_or(0, |(len, _)| *len)).sum();
            if total > MAX_CALL_BYTES {
                return Err(KvError::call_bound(total, MAX_CALL_BYTES));
            }
            keys.iter()
                .map(|k| match found.get(k.as_bytes()) {
                    None => Ok(None),
                    Some((_, Some(value))) => Ok(Some(value.clone())),
                    Some((_, None)) => Err(KvError::Internal("a value was withheld below the bound".into())),
                })
                .collect()
        })
    }

    fn set_many<'a>(&'a self, bucket: &'a Bucket, items: Vec<(String, Vec<u8>)>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            check_batch_len(items.len())?;
            let mut bytes = 0u64;
            for (key, value) in &items {
                check_key(key)?;
                check_value(&bucket.quota, value)?;
                bytes += (key.len() + value.len()) as u64;
            }
            if bytes > MAX_CALL_BYTES {
                return Err(KvError::call_bound(bytes, MAX_CALL_BYTES));
            }
            let n = items.len() as u64;
            self.group.submit(bucket, Op::SetMany(items), bytes, n).await.map(drop)
        })
    }

    fn delete_many<'a>(&'a self, bucket: &'a Bucket, keys: Vec<String>) -> KvFuture<'a, u64> {
        Box::pin(async move {
            check_batch_len(keys.len())?;
            keys.iter().try_for_each(|k| check_key(k))?;
            let bytes = keys.iter().map(|k| k.len() as u64).sum();
            let n = keys.len() as u64;
            match self.group.submit(bucket, Op::DeleteMany(keys), bytes, n).await? {
                Answer::Count(n) => Ok(n),
                _ => Err(KvError::Internal("unexpected answer to delete_many".into())),
            }
        })
    }

    fn increment<'a>(&'a self, bucket: &'a Bucket, key: String, delta: i64) -> KvFuture<'a, i64> {
        Box::pin(async move {
            check_key(&key)?;
            let bytes = key.len() as u64 + plan::COUNTER_READ;
            match self.group.submit(bucket, Op::Increment { key, delta }, bytes, 1).await? {
                Answer::Int(n) => Ok(n),
                _ => Err(KvError::Internal("unexpected answer to increment".into())),
            }
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        bucket: &'a Bucket,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> KvFuture<'a, bool> {
        Box::pin(async move {
            check_key(&key)?;
            check_value(&bucket.quota, &new)?;
            check_expected(expected.as_deref())?;
            // The expected value counts twice: the stored value of that
            // length is read back to compare.
            let bytes = (key.len() + new.len()) as u64 + 2 * expected.as_ref().map_or(0, |e| e.len() as u64);
            match self.group.submit(bucket, Op::Cas { key, expected, new }, bytes, 1).await? {
                Answer::Bool(swapped) => Ok(swapped),
                _ => Err(KvError::Internal("unexpected answer to compare_and_swap".into())),
            }
        })
    }

    fn buckets<'a>(&'a self, plugin: &'a str) -> KvFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.reading(plugin, async |conn| {
                sqlx::query_scalar(
                    "SELECT bucket FROM gatehouse_kv_bucket_usage WHERE plugin = $1 AND keys > 0 ORDER BY bucket COLLATE \"C\"",
                )
                .bind(plugin)
                .fetch_all(&mut *conn)
                .await
            })
            .await
        })
    }

    fn usage<'a>(&'a self, bucket: &'a Bucket) -> KvFuture<'a, UsageReport> {
        Box::pin(async move {
            let row = self
                .reading(bucket.namespace.plugin(), async |conn| {
                    // One statement: both counts from one snapshot.
                    sqlx::query(
                        "SELECT \
                     (SELECT keys FROM gatehouse_kv_bucket_usage WHERE plugin = $1 AND bucket = $2), \
                     (SELECT bytes FROM gatehouse_kv_bucket_usage WHERE plugin = $1 AND bucket = $2), \
                     (SELECT keys FROM gatehouse_kv_plugin_usage WHERE plugin = $1), \
                     (SELECT bytes FROM gatehouse_kv_plugin_usage WHERE plugin = $1)",
                    )
                    .bind(bucket.namespace.plugin())
                    .bind(bucket.namespace.bucket())
                    .fetch_one(&mut *conn)
                    .await
                })
                .await?;
            let column = |i: usize| -> Result<i64, KvError> {
                Ok(row.try_get::<Option<i64>, _>(i).map_err(db_error)?.unwrap_or(0))
            };
            Ok(UsageReport {
                bucket: usage_of(column(0)?, column(1)?)?,
                plugin: usage_of(column(2)?, column(3)?)?,
                quota: bucket.quota,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::backend::Namespace;
    use super::super::policy::{Durability, Quota};
    use super::*;

    /// A backend on a server that is not there: a call that gets its place
    /// in the pool is answered `unavailable` after the pool's 200 ms.
    fn backend_on_nothing() -> Arc<PostgresBackend> {
        let options = "postgres://nobody:x@127.0.0.1:1/none".parse().unwrap();
        let pool = PgPoolOptions::new().acquire_timeout(Duration::from_millis(200)).connect_lazy_with(options);
        Arc::new(PostgresBackend::with_pool(pool))
    }

    /// Every place in `backend`'s pool, held by `plugin`.
    async fn every_place(backend: &Arc<PostgresBackend>, plugin: &str) -> Vec<Place> {
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(backend.places.take(plugin).await.unwrap());
        }
        held
    }

    fn bucket(plugin: &str) -> Bucket {
        Bucket {
            namespace: Namespace::new(plugin, "default").unwrap(),
            quota: Quota::default(),
            durability: Durability::Immediate,
        }
    }

    /// Review 29: ten plugins reading hard took every freed connection in
    /// turn, first come first served, and a light plugin's calls waited up
    /// to 1.5 s. With every place held by a heavy plugin and its read and
    /// write waiting first, the freed places go to the light plugin's read
    /// and write, which hold none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_freed_connection_goes_to_the_waiting_plugin_holding_the_fewest() {
        let backend = backend_on_nothing();
        let mut heavy = every_place(&backend, "heavy").await;
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        // A read and a write of `plugin`'s, each answered `Ok(())` or its error.
        let calls = |plugin: &'static str| {
            let (reader, writer) = (Arc::clone(&backend), Arc::clone(&backend));
            let read = tokio::spawn(async move { reader.get(&bucket(plugin), "k").await.map(drop) });
            let write = tokio::spawn(async move { writer.set(&bucket(plugin), "k".into(), b"v".to_vec()).await });
            (read, write)
        };
        let (heavy_read, heavy_write) = calls("heavy");
        settle().await;
        let (light_read, light_write) = calls("light");
        settle().await;
        assert_eq!(backend.places.held_by("light"), 0);
        heavy.truncate(MAX_CONNECTIONS as usize - 2);
        settle().await;
        assert_eq!(backend.places.held_by("light"), 2, "the freed places went to the heavy plugin's calls");
        assert_eq!(backend.places.held_by("heavy"), MAX_CONNECTIONS as usize - 2);
        for light in [light_read.await.unwrap(), light_write.await.unwrap()] {
            assert!(matches!(light, Err(KvError::Unavailable(_))), "{light:?}");
        }
        for heavy in [heavy_read.await.unwrap(), heavy_write.await.unwrap()] {
            assert!(matches!(&heavy, Err(KvError::Unavailable(_))), "{heavy:?}");
        }
        drop(heavy);
        assert_eq!(backend.places.free(), MAX_CONNECTIONS as usize, "places come back");
    }

    /// With every place held, a call waits [`ACQUIRE_TIMEOUT`] for one, as
    /// it waited for the pool's connection before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_finding_no_place_is_unavailable_after_the_acquire_timeout() {
        let backend = backend_on_nothing();
        let _held = every_place(&backend, "heavy").await;
        let started = std::time::Instant::now();
        let read = backend.get(&bucket("light"), "k").await;
        assert!(matches!(&read, Err(KvError::Unavailable(m)) if m.contains("free within")), "{read:?}");
        let write = backend.set(&bucket("light"), "k".into(), b"v".to_vec()).await;
        assert!(matches!(&write, Err(KvError::Unavailable(m)) if m.contains("free within")), "{write:?}");
        assert!(started.elapsed() >= ACQUIRE_TIMEOUT * 2, "{:?}", started.elapsed());
    }

    /// A server that logs every connection in and closes it at its first
    /// statement (review 35, through a proxy: a call tried ~258 logins a
    /// second for its whole 1 s). The first connection is lost at the
    /// read's statement, then each other is checked, at most
    /// `MAX_CONNECTIONS` of them: the call is `unavailable` after a
    /// bounded number of logins. (No TLS offered; trust login.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_closing_every_connection_costs_a_call_a_bounded_number_of_logins() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let logins = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&logins);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    loop {
                        let mut length = [0u8; 4];
                        socket.read_exact(&mut length).await?;
                        let mut body = vec![0u8; (u32::from_be_bytes(length) as usize).saturating_sub(4)];
                        socket.read_exact(&mut body).await?;
                        // An SSLRequest is declined; the startup message logs in.
                        if body.starts_with(&[0x04, 0xd2, 0x16, 0x2f]) {
                            socket.write_all(b"N").await?;
                            continue;
                        }
                        break;
                    }
                    // AuthenticationOk, BackendKeyData, ReadyForQuery (idle).
                    socket.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).await?;
                    socket.write_all(&[b'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 2]).await?;
                    socket.write_all(&[b'Z', 0, 0, 0, 5, b'I']).await?;
                    let _ = socket.read(&mut [0u8; 1]).await?;
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        let options = format!("postgres://nobody@127.0.0.1:{port}/none?sslmode=disable").parse().unwrap();
        let pool = PgPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT).connect_lazy_with(options);
        let backend = PostgresBackend::with_pool(pool);
        let read = backend.get(&bucket("p"), "k").await;
        assert!(matches!(read, Err(KvError::Unavailable(_))), "{read:?}");
        let logins = logins.load(Ordering::SeqCst);
        assert!((2..=MAX_CONNECTIONS + 1).contains(&logins), "{logins} logins for one call");
    }

    /// The 1 s is one wait for a place and its connection together
    /// (review 32: a place freed after most of a second, then the pool's
    /// own wait for a connection it could not open, answered after 2 s).
    /// Here the pool would wait 5 s for a server that is not there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wait_for_a_place_and_its_connection_is_one_second_in_all() {
        let options = "postgres://nobody:x@127.0.0.1:1/none".parse().unwrap();
        let pool = PgPoolOptions::new().acquire_timeout(Duration::from_secs(5)).connect_lazy_with(options);
        let backend = Arc::new(PostgresBackend::with_pool(pool));
        let mut held = every_place(&backend, "heavy").await;
        let started = std::time::Instant::now();
        let read = {
            let backend = Arc::clone(&backend);
            tokio::spawn(async move { backend.get(&bucket("light"), "k").await })
        };
        tokio::time::sleep(Duration::from_millis(900)).await;
        held.pop();
        let read = read.await.unwrap();
        assert!(matches!(&read, Err(KvError::Unavailable(m)) if m.contains("free within")), "{read:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    /// Review 28: two plugins' reads held every connection of the pool.
    /// With alpha's read places all taken, its next read waits on its own
    /// share, while beta's goes on to the pool (here a server that is not
    /// there, so beta is answered `unavailable` at the pool's timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_past_its_read_share_waits_and_others_go_on() {
        let backend = backend_on_nothing();
        let read = |plugin: &str| {
            let (backend, bucket) = (Arc::clone(&backend), bucket(plugin));
            tokio::spawn(async move { backend.get(&bucket, "k").await })
        };
        let held = backend.reads.of("alpha").acquire_many_owned(PLUGIN_READS as u32).await.unwrap();
        let waiting = read("alpha");
        let other = read("beta").await.unwrap();
        assert!(matches!(other, Err(KvError::Unavailable(_))), "{other:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "alpha read past its share");
        drop(held);
        let answer = waiting.await.unwrap();
        assert!(matches!(answer, Err(KvError::Unavailable(_))), "alpha's read went on to the pool: {answer:?}");
        assert_eq!(backend.reads.of("alpha").available_permits(), PLUGIN_READS, "places come back");
    }

    #[test]
    fn prefix_ends_bound_exactly_the_keys_with_the_prefix() {
        assert_eq!(prefix_end(b""), vec![0xFF]);
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        for prefix in ["", "a", "k\u{7f}", "é", "\u{10FFFF}"] {
            let end = prefix_end(prefix.as_bytes());
            for key in ["a", "a\0", "ab", "b", "k\u{7f}\u{10FFFF}", "é", "éz", "\u{10FFFF}", "\u{10FFFF}\u{10FFFF}"] {
                let inside = key.as_bytes() >= prefix.as_bytes() && key.as_bytes() < end.as_slice();
                assert_eq!(inside, key.starts_with(prefix), "{prefix:?} {key:?}");
            }
        }
    }

    #[test]
    fn connection_trouble_is_unavailable_and_the_rest_internal() {
        assert!(matches!(db_error(sqlx::Error::PoolTimedOut), KvError::Unavailable(_)));
        assert!(matches!(
            db_error(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into())),
            KvError::Unavailable(_)
        ));
        assert!(matches!(db_error(sqlx::Error::RowNotFound), KvError::Internal(_)));
        let forged = db_error(sqlx::Error::Protocol("line\n2026 INFO forged".into())).to_string();
        assert!(!forged.contains('\n'), "{forged}");
    }
}
