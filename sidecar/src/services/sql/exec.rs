//! Running a checked statement on a pooled connection.
//!
//! [`SqlConnection`] is one pooled connection held for a plugin (with its
//! share's permit): a one-shot call holds one for a single statement, a
//! transaction resource and a Spin connection ([`super::spin`]) hold one
//! across calls. Whatever holds it, these hold:
//!
//! - **The statement is checked first** ([`checked`]): the policy's parse
//!   and walk (`check_for`), then the parameter count. Nothing unchecked
//!   reaches the database.
//! - **No plugin's session state reaches another.** The checker refuses
//!   `SET`, `PREPARE`, temporary tables and every other DDL. SQLite
//!   statements are sent unprepared (`persistent(false)`): the authorizer
//!   checks a statement when it is prepared, so one kept on a pooled
//!   connection would skip the next plugin's check. On PostgreSQL a
//!   statement runs in the plugin's session ([`Session`]: its role and
//!   settings, set again whenever the connection last carried another's),
//!   which keeps that plugin's statements prepared until another session
//!   is entered ([`pg_prepared`]; PostgreSQL checks privileges at every
//!   run).
//! - **Deadlines twice.** The database stops the statement itself
//!   (PostgreSQL `statement_timeout`; SQLite a progress handler that
//!   interrupts it) and the sidecar's own timer stops waiting a little
//!   later. A connection whose statement was cut off, whose transaction was
//!   left open, or whose result was abandoned mid-stream is closed on drop,
//!   never handed back to the pool in an unknown state.
//! - **Results stream.** Rows are decoded one at a time as they arrive and
//!   counted against `max_rows` and `max_result_bytes`; past either the
//!   call is refused (`quota-exceeded`) and the rest is never read.
//! - **Counts are the statement's own.** SQLite keeps the rows changed and
//!   the last inserted rowid on the connection, across borrowers: the rows
//!   changed are reported only for statements that write (a `SELECT` would
//!   report the previous borrower's count), and the last rowid is reset
//!   before each statement ([`Outcome`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use sqlx::Either;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, Postgres};
use sqlx::{Connection as _, Executor as _};

use super::error::SqlError;
use super::guard::postgres as pg_guard;
use super::guard::sqlite::{self as sqlite_guard, Guarded, SqliteGrant};
use super::pg_pool::{PooledPg, Session};
use super::pg_prepared::{self, Plan};
use super::pool::{AliasPool, Conn, Pool};
use super::relay;
use super::sqlite_pool::{DRAIN_GRACE, EndedFor, WalPlace, WalPlaces};
use super::sqlite_step::{self, RowSink as _};
use super::value::{self, Column, Rows, Value};
use super::{Checked, Dialect, Door, SqlPolicy, StatementKind, check_for};
use crate::stop::Stop;

/// Most parameters one statement may carry (PostgreSQL's own limit is
/// 65535; nothing real comes near).
pub const MAX_PARAMS: usize = 1000;

/// How much later than the database's own deadline the sidecar stops
/// waiting: the database's stop gives a clean error and a reusable
/// connection, so it should win the race.
pub const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// What one call may cost, from the plugin's `[sql.<alias>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows a query may return.
    pub max_rows: u64,
    /// Bytes of values a query may return (see [`Value::size`]).
    pub max_result_bytes: u64,
    /// Deadline of one statement.
    pub timeout: Duration,
}

impl From<&SqlPolicy> for Limits {
    fn from(policy: &SqlPolicy) -> Limits {
        Limits { max_rows: policy.max_rows, max_result_bytes: policy.max_result_bytes, timeout: policy.timeout }
    }
}

/// Checks `statement` for `door` against `policy` and its parameters
/// against what it expects.
pub fn checked(
    door: Door,
    dialect: Dialect,
    policy: &SqlPolicy,
    statement: &str,
    params: &[Value],
) -> Result<Checked, SqlError> {
    if params.len() > MAX_PARAMS {
        return Err(SqlError::InvalidInput(format!("{} parameters: at most {MAX_PARAMS}", params.len())));
    }
    let checked = check_for(door, dialect, policy, statement).map_err(SqlError::from_denial)?;
    fits(checked, params)
}

/// `checked`, if `params` are the parameters it expects.
pub fn fits(checked: Checked, params: &[Value]) -> Result<Checked, SqlError> {
    if checked.placeholders != params.len() {
        return Err(SqlError::InvalidInput(format!(
            "the statement takes {} parameters, {} were given",
            checked.placeholders,
            params.len()
        )));
    }
    Ok(checked)
}

/// The database's own check of one plugin's grant on one alias (the
/// second line, [`super::guard`]), built once when the plugin loads.
pub enum Guard {
    /// What the SQLite authorizer allows the plugin's statements.
    Sqlite(Arc<SqliteGrant>),
    /// The plugin's PostgreSQL role, brought in step with the policy at
    /// its first call (and again, once, after each reload that rebuilds
    /// the guard); a failed sync is tried again at the next call.
    Postgres {
        /// The grant the role's privileges follow.
        policy: SqlPolicy,
        /// Set once the role has been synced for this guard.
        synced: tokio::sync::OnceCell<()>,
    },
}

impl Guard {
    /// The guard of `policy` on a database of `dialect`, for `door`.
    pub fn new(dialect: Dialect, policy: &SqlPolicy, door: Door) -> Guard {
        match dialect {
            Dialect::Sqlite => Guard::Sqlite(Arc::new(SqliteGrant::new(policy, door))),
            Dialect::Postgres => Guard::Postgres { policy: policy.clone(), synced: Default::default() },
        }
    }

    fn sqlite(&self) -> Option<Arc<SqliteGrant>> {
        match self {
            Guard::Sqlite(grant) => Some(Arc::clone(grant)),
            Guard::Postgres { .. } => None,
        }
    }

    /// Makes sure `plugin`'s PostgreSQL role holds exactly the policy's
    /// privileges before its first statement.
    async fn ready(&self, alias: &AliasPool, plugin: &str) -> Result<(), SqlError> {
        let Guard::Postgres { policy, synced } = self else { return Ok(()) };
        synced
            .get_or_try_init(|| async {
                let Pool::Postgres(pool) = alias.pool().await? else {
                    return Err(SqlError::Internal("a PostgreSQL guard on a SQLite alias".into()));
                };
                // On the sidecar's own connection (in the plugin's place if
                // one is guaranteed to it), which may need a place taken
                // back from plugins holding them all.
                let ready = alias
                    .taking_back(plugin, async {
                        if alias.manages_roles() {
                            let report = pg_guard::sync(pool, plugin, policy).await?;
                            if !report.row_functions.is_empty() {
                                let functions = crate::guest_text::escape(
                                    &report.row_functions.join(", "),
                                    crate::guest_text::SHORT,
                                );
                                tracing::warn!(
                                    plugin,
                                    %functions,
                                    "functions in the database that this plugin's role may execute, each taking a \
                                     row: PostgreSQL calls one as `t.f` for a table `t`, which no policy can see; \
                                     revoke EXECUTE on them from PUBLIC unless plugins may call them"
                                );
                            }
                            Ok(())
                        } else {
                            pg_guard::check_provided(pool, plugin).await
                        }
                    })
                    .await;
                ready.map_err(|e| SqlError::Unavailable {
                    message: format!("the plugin's database role: {e}"),
                    retry_after: Some(super::error::RETRY_UNAVAILABLE),
                })
            })
            .await
            .map(drop)
    }
}

/// One pooled connection held for one plugin.
pub struct SqlConnection {
    conn: Conn,
    dialect: Dialect,
    /// What the SQLite authorizer lets this plugin's statements touch
    /// (`None` on PostgreSQL, where the plugin's role does).
    grant: Option<Arc<SqliteGrant>>,
    /// `plugin`'s PostgreSQL role, set in its session ([`Session`]).
    role: Option<String>,
    /// A transaction the plugin opened is open.
    transaction: bool,
    /// Something left the connection in a state no one knows (a statement
    /// cut off, a result abandoned, a failed rollback): it is closed on
    /// drop, and an open transaction on it is lost.
    broken: bool,
    /// The invocation's stop: its statements stop once it is due.
    stop: Stop,
    /// SQLite: the plugin's transaction is open but its `BEGIN` not yet
    /// sent ([`Self::begin`] says why).
    begin_pending: bool,
    /// SQLite: this connection's place among the statements open on the
    /// WAL ([`super::sqlite_pool::SqliteConnector::wal_places`]), held
    /// while a statement outside a transaction runs and from a
    /// transaction's start to its end; given to the pooled connection on drop, so that it lasts
    /// until a connection being closed has closed. The checkpointer may
    /// end the read first ([`WalPlace::ended`]).
    wal_read: Option<Arc<WalPlace>>,
    /// The plugin whose statements run on it: on SQLite, what they write
    /// to the WAL is charged to it ([`WalPlaces::charge`]).
    plugin: String,
}

impl SqlConnection {
    /// A connection of `alias` for `plugin`, within its share.
    /// `guard` is the database's own check of the plugin's grant: the
    /// SQLite authorizer's grant, or the PostgreSQL role the plugin's
    /// statements run as (synced first if this is its first call).
    /// `stop` is the invocation's: a SQLite statement on the connection
    /// stops once it is due, even while its caller's thread is busy
    /// stepping it.
    pub async fn open(alias: &AliasPool, plugin: &str, guard: &Guard, stop: &Stop) -> Result<SqlConnection, SqlError> {
        Self::connect(alias, plugin, guard, stop, false).await
    }

    /// [`Self::open`]; with `holds_turn`, for a write holding the SQLite
    /// alias's turn to write, which may take the pool's reserved place.
    async fn connect(
        alias: &AliasPool,
        plugin: &str,
        guard: &Guard,
        stop: &Stop,
        holds_turn: bool,
    ) -> Result<SqlConnection, SqlError> {
        guard.ready(alias, plugin).await?;
        let (role, session) = match guard {
            Guard::Postgres { policy, .. } => {
                let role = pg_guard::role_name(plugin).map_err(|e| SqlError::Internal(e.to_string()))?;
                let session = Session::plugin(&role, policy.timeout, policy.max_result_bytes);
                (Some(role), Some(session))
            }
            Guard::Sqlite(_) => (None, None),
        };
        let conn = alias.acquire(plugin, session.as_ref(), holds_turn).await?;
        Ok(SqlConnection {
            conn,
            dialect: alias.dialect,
            grant: guard.sqlite(),
            role,
            transaction: false,
            broken: false,
            stop: stop.clone(),
            begin_pending: false,
            wal_read: None,
            plugin: plugin.to_string(),
        })
    }

    /// [`Self::open`] for one statement or one transaction under
    /// `limits`: on SQLite it takes its place among the statements open on
    /// the WAL ([`Self::take_wal_place`]), and for one statement that
    /// writes its turn to write ([`Self::take_write_turn`]), before its
    /// pooled connection, so that those held back by a drain or waiting in
    /// line hold no connection others need (an outside review: writes
    /// queued behind one idle write transaction took a pool of 10 from a
    /// read-only plugin). Returns what is left of `limits`.
    pub async fn open_for(
        alias: &AliasPool,
        plugin: &str,
        guard: &Guard,
        stop: &Stop,
        to: OpenFor,
        limits: Limits,
    ) -> Result<(SqlConnection, Limits), SqlError> {
        let (place, limits) = match alias.pool().await? {
            Pool::Sqlite(pool) => {
                let places = pool.connector().wal_places();
                let (place, left) = wait_for_place(places, to == OpenFor::Transaction, plugin, limits).await?;
                let left = if to == OpenFor::Write { wait_for_turn(places, &place, plugin, left).await? } else { left };
                (Some(place), left)
            }
            _ => (None, limits),
        };
        let holds_turn = place.as_ref().is_some_and(|place| place.has_turn());
        let mut connection = SqlConnection::connect(alias, plugin, guard, stop, holds_turn).await?;
        if let (Some(place), Conn::Sqlite(c)) = (&place, &connection.conn) {
            place.attach(c);
        }
        connection.wal_read = place;
        Ok((connection, limits))
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.transaction
    }

    /// Whether an earlier failure left the connection unusable (it is
    /// closed on drop; every statement on it is refused).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Runs a statement already [`checked`]; returns its rows (none for a
    /// statement that returns none).
    pub async fn query(
        &mut self,
        checked: &Checked,
        statement: &str,
        params: &[Value],
        limits: Limits,
    ) -> Result<Rows, SqlError> {
        self.run(checked, statement, params, limits).await.map(|done| done.rows)
    }

    /// Runs a statement already [`checked`]; returns the rows it changed
    /// (its rows, if any, are read and dropped).
    pub async fn execute(
        &mut self,
        checked: &Checked,
        statement: &str,
        params: &[Value],
        limits: Limits,
    ) -> Result<u64, SqlError> {
        self.statement(checked, Run::Execute, statement, params, limits).await.map(|done| done.changes)
    }

    /// Runs a statement already [`checked`]; returns its rows and what it
    /// changed (Spin's `execute`, which answers both).
    pub async fn run(
        &mut self,
        checked: &Checked,
        statement: &str,
        params: &[Value],
        limits: Limits,
    ) -> Result<Outcome, SqlError> {
        self.statement(checked, Run::Query, statement, params, limits).await
    }

    async fn statement(
        &mut self,
        checked: &Checked,
        run: Run,
        statement: &str,
        params: &[Value],
        limits: Limits,
    ) -> Result<Outcome, SqlError> {
        if statement.contains('\0') {
            // The checker refuses it too; here for the database's sake:
            // both read a NUL as the end of the text, so what runs would
            // be less than what was checked.
            return Err(SqlError::InvalidInput(
                "the statement holds a NUL character (U+0000), which the database would read as its end".into(),
            ));
        }
        if let Some(done) = self.control(checked, limits).await {
            return done.map(|()| Outcome::default());
        }
        self.read_not_ended().await?;
        let limits = if self.begin_pending {
            self.send_begin(writes(checked.kind), limits).await?
        } else {
            self.take_wal_place(limits).await?
        };
        let limits = if writes(checked.kind) { self.take_write_turn(limits).await? } else { limits };
        if let Some(place) = &self.wal_read {
            place.statement_begins();
        }
        let running = match &self.conn {
            Conn::Postgres(c) => Some(c.connector().running().begin(&self.plugin, c.pid())),
            Conn::Sqlite(_) => None,
        };
        let done = self.guarded(limits, run, statement, params).await;
        if let Some(place) = &self.wal_read {
            place.statement_ends();
        }
        let done = match running {
            Some(running) if running.over() => self.ended_for_waiter(done),
            _ => done,
        };
        self.charge_writes();
        if done.is_err() || self.transaction {
            // Rows of a read outside a transaction that ended in time
            // stand; anything else of an ended read does not.
            self.read_not_ended().await?;
        }
        self.leave_reads_when_done();
        let mut done = done?;
        if !writes(checked.kind) {
            done.changes = 0;
            done.last_insert_rowid = None;
        }
        Ok(done)
    }

    /// After a PostgreSQL statement the server was asked to cancel for a
    /// waiting plugin ([`super::running`]): the connection is closed (the
    /// cancel may reach whatever runs on it next, and a transaction on it
    /// is lost), and a failure is told as that; a statement that succeeded
    /// before the cancel stands.
    fn ended_for_waiter(&mut self, done: Result<Outcome, SqlError>) -> Result<Outcome, SqlError> {
        self.broken = true;
        self.transaction = false;
        done.map_err(|_| super::running::ended_for_waiter())
    }

    /// `BEGIN`/`COMMIT`/`ROLLBACK` as statements (doors whose policy allows
    /// them) are the transaction methods, so the executor knows its state.
    /// A SQLite `BEGIN IMMEDIATE` or `EXCLUSIVE` takes the write lock at
    /// once, as asked.
    async fn control(&mut self, checked: &Checked, limits: Limits) -> Option<Result<(), SqlError>> {
        Some(match checked.kind {
            StatementKind::Begin => match self.begin(limits).await {
                Ok(()) if checked.locks_at_begin && self.begin_pending => self.send_begin(true, limits).await.map(drop),
                begun => begun,
            },
            StatementKind::Commit => self.commit().await,
            StatementKind::Rollback => self.rollback().await,
            _ => return None,
        })
    }

    /// Opens a transaction that lasts until [`Self::commit`],
    /// [`Self::rollback`], or the drop of the connection (rolled back).
    ///
    /// On SQLite its `BEGIN` waits for the transaction's first statement,
    /// and is `BEGIN IMMEDIATE` if that statement writes: the gateway reads
    /// the schema cookie before each statement (the authorizer's `REPLACE`
    /// tables), which in a deferred transaction starts its snapshot, so a
    /// first write would otherwise fail at once (`SQLITE_BUSY_SNAPSHOT`)
    /// whenever another connection wrote meanwhile, instead of waiting for
    /// the lock as outside a transaction.
    pub async fn begin(&mut self, limits: Limits) -> Result<(), SqlError> {
        self.usable()?;
        if self.transaction {
            return Err(SqlError::InvalidInput("a transaction is already open on this connection".into()));
        }
        self.broken = true;
        let begun = match &mut self.conn {
            Conn::Postgres(c) => match enter_session(c, self.role.as_deref(), limits).await {
                Ok(()) => c.execute("BEGIN").await.map(drop),
                Err(e) => Err(e),
            },
            Conn::Sqlite(_) => {
                self.begin_pending = true;
                Ok(())
            }
        };
        begun.map_err(SqlError::from_database)?;
        self.broken = false;
        self.transaction = true;
        Ok(())
    }

    /// Sends a SQLite transaction's `BEGIN`, before its first statement and
    /// under that statement's deadline and the invocation's stop: waiting
    /// for the WAL's checkpoint ([`Self::take_wal_place`]) or for another
    /// connection's write lock ends with them. Returns what is left of
    /// `limits` for the statement.
    async fn send_begin(&mut self, write: bool, limits: Limits) -> Result<Limits, SqlError> {
        let limits = self.take_wal_place(limits).await?;
        let limits = if write { self.take_write_turn(limits).await? } else { limits };
        let read = self.read_stop();
        let Conn::Sqlite(c) = &mut self.conn else { unreachable!("only SQLite defers its BEGIN") };
        let stops = StatementStops::new(&self.stop, read, limits);
        self.broken = true;
        let command = if write { "BEGIN IMMEDIATE" } else { "BEGIN" };
        host_command(c, command, Some(&stops)).await.map_err(|e| {
            if stops.is_due() {
                SqlError::Timeout("the transaction stopped waiting for the database's lock at its deadline".into())
            } else {
                SqlError::from_database(e)
            }
        })?;
        self.broken = false;
        self.begin_pending = false;
        Ok(limits)
    }

    /// SQLite: takes this connection's place among the statements open on
    /// the WAL, for a transaction waiting (within `limits`' deadline)
    /// while the checkpointer restarts it; returns what is left of
    /// `limits`. Nothing to take on PostgreSQL, or when the place is
    /// already held (in a transaction). Writes take one too, so that a
    /// drain can tell the writes that came after it began.
    async fn take_wal_place(&mut self, limits: Limits) -> Result<Limits, SqlError> {
        let Conn::Sqlite(c) = &self.conn else { return Ok(limits) };
        if self.wal_read.is_some() {
            return Ok(limits);
        }
        let (place, left) = wait_for_place(c.connector().wal_places(), self.transaction, &self.plugin, limits).await?;
        place.attach(c);
        self.wal_read = Some(place);
        Ok(left)
    }

    /// SQLite: takes the alias's turn to write for this connection's place
    /// (kept until the place goes: the statement's end outside a
    /// transaction, the transaction's end inside one), waiting in line
    /// within `limits`' deadline; returns what is left of `limits`.
    async fn take_write_turn(&mut self, limits: Limits) -> Result<Limits, SqlError> {
        let (Conn::Sqlite(c), Some(place)) = (&self.conn, &self.wal_read) else { return Ok(limits) };
        wait_for_turn(c.connector().wal_places(), place, &self.plugin, limits).await
    }

    /// SQLite: charges what the statements on the connection wrote to the
    /// WAL since the last charge to the plugin.
    fn charge_writes(&self) {
        if let Conn::Sqlite(c) = &self.conn {
            let bytes = c.take_bytes_written();
            if bytes > 0 {
                c.connector().wal_places().charge(&self.plugin, bytes);
            }
        }
    }

    /// Gives the place among the WAL's reads back once no read of this
    /// connection's can be open: no transaction, and no statement left in
    /// an unknown state (closed on drop, which keeps the place until then).
    fn leave_reads_when_done(&mut self) {
        if !self.transaction
            && !self.broken
            && let Some(place) = self.wal_read.take()
        {
            place.detach();
        }
    }

    /// The stop the checkpointer raises to end this connection's read.
    fn read_stop(&self) -> Option<Stop> {
        self.wal_read.as_ref().map(|place| place.ended().clone())
    }

    /// Whether the checkpointer has ended this connection's read.
    fn read_ended(&self) -> bool {
        self.wal_read.as_ref().is_some_and(|place| place.ended().is_due())
    }

    /// Refuses to go on once the checkpointer has ended this connection's
    /// read (it kept the WAL from restarting past [`DRAIN_GRACE`]): what
    /// the read's transaction did is rolled back, here too in case a
    /// statement began a new one since, and the connection serves no more
    /// statements (closed on drop).
    async fn read_not_ended(&mut self) -> Result<(), SqlError> {
        if !self.read_ended() {
            return Ok(());
        }
        self.transaction = false;
        self.begin_pending = false;
        self.broken = true;
        if let Conn::Sqlite(c) = &mut self.conn
            && sqlite_guard::leave_in_transaction(c)
        {
            let _ = host_command(c, "ROLLBACK", None).await;
        }
        let why = match self.wal_read.as_ref().and_then(|place| place.ended_for()) {
            Some(EndedFor::IdleWithTurn) => format!(
                "the transaction was ended and rolled back: it held the database's turn to write, idle between \
                 statements, while another write waited {DRAIN_GRACE:?}"
            ),
            Some(EndedFor::PastTurnShare) => "the write was ended (and any transaction it was part of rolled \
                 back): its plugin held the database's turn to write past its share while other writes waited"
                .to_string(),
            Some(EndedFor::ForWaiter) => return Err(super::running::ended_for_waiter()),
            _ => format!(
                "the read was ended (and any transaction it was part of rolled back): it was among the reads that \
                 kept the database's WAL from its checkpoint for {DRAIN_GRACE:?}"
            ),
        };
        Err(SqlError::Unavailable {
            message: format!("{why}; this connection serves no more statements"),
            retry_after: Some(super::error::RETRY_UNAVAILABLE),
        })
    }

    /// Commits the open transaction.
    pub async fn commit(&mut self) -> Result<(), SqlError> {
        self.finish("COMMIT").await
    }

    /// Rolls the open transaction back.
    pub async fn rollback(&mut self) -> Result<(), SqlError> {
        self.finish("ROLLBACK").await
    }

    async fn finish(&mut self, command: &'static str) -> Result<(), SqlError> {
        self.read_not_ended().await?;
        self.usable()?;
        if !self.transaction {
            return Err(SqlError::InvalidInput("no transaction is open on this connection".into()));
        }
        self.transaction = false;
        if std::mem::take(&mut self.begin_pending) {
            // Nothing ran: nothing to end.
            return Ok(());
        }
        self.broken = true;
        let done = match &mut self.conn {
            Conn::Postgres(c) => c.execute(command).await.map(drop),
            Conn::Sqlite(c) => host_command(c, command, None).await,
        };
        self.charge_writes();
        if let Err(e) = done {
            self.read_not_ended().await?;
            return Err(SqlError::from_database(e));
        }
        self.broken = false;
        self.leave_reads_when_done();
        Ok(())
    }

    fn usable(&self) -> Result<(), SqlError> {
        if self.broken {
            return Err(SqlError::InvalidInput(
                "this connection was abandoned after an earlier error (its transaction is rolled back)".into(),
            ));
        }
        Ok(())
    }

    /// One statement under both deadlines. The connection is marked
    /// broken while the statement runs: if the future is dropped (the
    /// sidecar's timer, the invocation's deadline) it stays so and the
    /// connection is closed on drop.
    async fn guarded(
        &mut self,
        limits: Limits,
        run: Run,
        statement: &str,
        params: &[Value],
    ) -> Result<Outcome, SqlError> {
        self.usable()?;
        self.broken = true;
        let in_transaction = self.transaction;
        let role = self.role.clone();
        let grant = self.grant.clone();
        let (stop, read) = (self.stop.clone(), self.read_stop());
        let work = async {
            match &mut self.conn {
                Conn::Postgres(c) => postgres(c, role.as_deref(), in_transaction, limits, run, statement, params).await,
                Conn::Sqlite(c) => {
                    let stops = StatementStops::new(&stop, read, limits);
                    sqlite(c, grant, stops, in_transaction, limits, run, statement, params).await
                }
            }
        };
        let outcome = match tokio::time::timeout(limits.timeout + DEADLINE_GRACE, work).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.transaction = false;
                return Err(SqlError::Timeout(format!(
                    "statement stopped at its deadline of {:?} (the connection is closed)",
                    limits.timeout
                )));
            }
        };
        match outcome {
            Ok(done) => {
                self.broken = false;
                Ok(done)
            }
            Err(Failure { error, clean }) => {
                // A failed statement aborts a PostgreSQL transaction: the
                // plugin may only roll it back, which the drop does.
                if clean && !(in_transaction && self.dialect == Dialect::Postgres) {
                    self.broken = false;
                } else {
                    self.transaction = false;
                }
                Err(error)
            }
        }
    }
}

impl Drop for SqlConnection {
    fn drop(&mut self) {
        if (self.transaction && !self.begin_pending) || self.broken || self.read_ended() {
            // Closing rolls back whatever is open, on both databases, and
            // no later borrower inherits the state.
            self.conn.close_on_drop();
        }
        if let (Some(place), Conn::Sqlite(c)) = (self.wal_read.take(), &mut self.conn) {
            c.hold(place);
        }
    }
}

/// A place among `places` (for a transaction if `lasting`) for `plugin`,
/// waited for within `limits`' deadline; and what is left of `limits`.
async fn wait_for_place(
    places: &WalPlaces,
    lasting: bool,
    plugin: &str,
    limits: Limits,
) -> Result<(Arc<WalPlace>, Limits), SqlError> {
    within(limits, places.enter(lasting, plugin), || {
        SqlError::Timeout(format!(
            "the statement waited its whole deadline of {:?} for the database's WAL checkpoint",
            limits.timeout
        ))
    })
    .await
}

/// `place`'s turn to write among `places`, waited for within `limits`'
/// deadline; what is left of `limits`. First `plugin` pays off what it
/// wrote past its `plugin_write_rate`, holding no turn meanwhile (a
/// transaction already holding its turn writes on).
async fn wait_for_turn(
    places: &WalPlaces,
    place: &Arc<WalPlace>,
    plugin: &str,
    limits: Limits,
) -> Result<Limits, SqlError> {
    if place.has_turn() {
        return Ok(limits);
    }
    let owed = places.owed(plugin);
    if owed >= limits.timeout {
        return Err(SqlError::RateLimited {
            message: format!(
                "the plugin's writes to this database passed its plugin_write_rate; its next write may run \
                 in {} ms",
                owed.as_millis()
            ),
            retry_after: owed.max(super::error::RETRY_BUSY),
        });
    }
    let late = || SqlError::RateLimited {
        message: format!(
            "database busy: the statement waited its whole deadline of {:?} for its turn to write \
             (other statements were writing, or the WAL was being checkpointed)",
            limits.timeout
        ),
        retry_after: super::error::RETRY_BUSY,
    };
    let paid_then_turn = async {
        tokio::time::sleep(owed).await;
        places.write_turn(place, plugin).await;
    };
    within(limits, paid_then_turn, late).await.map(|((), left)| left)
}

/// What `wait` gives within `limits`' deadline, and what is left of
/// `limits` for the statement; `late()` past it.
async fn within<T>(
    limits: Limits,
    wait: impl Future<Output = T>,
    late: impl FnOnce() -> SqlError,
) -> Result<(T, Limits), SqlError> {
    let waited = Instant::now();
    match tokio::time::timeout(limits.timeout, wait).await {
        Ok(done) => Ok((done, Limits { timeout: limits.timeout.saturating_sub(waited.elapsed()), ..limits })),
        Err(_) => Err(late()),
    }
}

/// What a connection is opened for ([`SqlConnection::open_for`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OpenFor {
    /// One statement that only reads.
    Read,
    /// One statement that writes.
    Write,
    /// A transaction.
    Transaction,
}

impl OpenFor {
    /// One statement of `kind`.
    pub fn statement(kind: StatementKind) -> OpenFor {
        if writes(kind) { OpenFor::Write } else { OpenFor::Read }
    }
}

/// Whether a statement's rows are wanted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Collected under the caps.
    Query,
    /// Read and dropped (`execute` of a statement that returns rows).
    Execute,
}

/// What one statement did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The rows it returned (none for a statement that returns none).
    pub rows: Rows,
    /// The rows it inserted, updated or deleted; 0 for a statement that
    /// writes nothing (SQLite would report the connection's previous
    /// count, possibly another plugin's).
    pub changes: u64,
    /// SQLite: the rowid of the last row it inserted, if it inserted one
    /// into a rowid table (the connection's value is reset before each
    /// statement, so it is never an earlier borrower's). `None` on
    /// PostgreSQL.
    pub last_insert_rowid: Option<i64>,
}

/// Whether statements of `kind` write rows (and so report changes).
pub fn writes(kind: StatementKind) -> bool {
    matches!(kind, StatementKind::Insert | StatementKind::Update | StatementKind::Delete | StatementKind::Merge)
}

/// A failed statement, and whether the connection is known to be fine.
struct Failure {
    error: SqlError,
    clean: bool,
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Failure {
        if let sqlx::Error::Database(db) = &error
            && db.code().as_deref() == Some(relay::OVERSIZED)
        {
            // The relay refused a row past the limit and closed the
            // connection; the executor says why in the caps' own words.
            let why = crate::guest_text::escape(db.message(), crate::guest_text::LINE);
            return Failure {
                error: SqlError::TooLarge(format!(
                    "the result is larger than max_result_bytes allows, {why}: refused (narrow the query or page it)"
                )),
                clean: false,
            };
        }
        // The database answered with an error: the connection is in step
        // (unless the error ended the session).
        let answered = super::pg_pool::survives(&error);
        let error = SqlError::from_database(error);
        // Except a statement stopped at its deadline: SQLite leaves the
        // transaction of an interrupted read open and goes on, so a
        // transaction cut off so would commit what came before and after
        // it. Cut off is cut off, on both databases: the connection is
        // closed and its transaction lost.
        let clean = answered && !matches!(error, SqlError::Timeout(_));
        Failure { error, clean }
    }
}

impl From<SqlError> for Failure {
    // Refused by the gateway mid-result: rows are still in flight.
    fn from(error: SqlError) -> Failure {
        Failure { error, clean: false }
    }
}

/// Puts a PostgreSQL connection in the plugin's session ([`Session`]):
/// its role (the database's own check, see [`pg_guard`]; `None` only for
/// the sidecar's own use), the statement timeout, the search path fixed to
/// the schema the checker resolves names in, and the [`relay`]'s bound on
/// each row (`max_result_bytes`). No round trip when the connection
/// already carries it.
async fn enter_session(conn: &mut PooledPg, role: Option<&str>, limits: Limits) -> Result<(), sqlx::Error> {
    let session = match role {
        Some(role) => Session::plugin(role, limits.timeout, limits.max_result_bytes),
        None => Session::own(),
    };
    session.enter(conn).await
}

/// What stops one SQLite statement (or the `BEGIN` sent for it): its own
/// deadline, also raised when its caller's future is dropped, and its
/// invocation's stop.
#[derive(Clone)]
struct StatementStops {
    own: Stop,
    invocation: Stop,
    /// The checkpointer's, ending the read the statement is part of.
    read: Option<Stop>,
}

impl StatementStops {
    fn new(invocation: &Stop, read: Option<Stop>, limits: Limits) -> StatementStops {
        StatementStops { own: Stop::new().until(Instant::now() + limits.timeout), invocation: invocation.clone(), read }
    }

    fn is_due(&self) -> bool {
        self.own.is_due() || self.invocation.is_due() || self.read.as_ref().is_some_and(Stop::is_due)
    }

    /// The check SQLite's progress and busy handlers ask: `false` stops.
    fn may_go_on(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let stops = self.clone();
        move || !stops.is_due()
    }
}

/// Makes a SQLite connection ready for one statement of a plugin: its
/// authorizer gets the plugin's grant (none: every statement refused), and
/// its progress handler interrupts the statement once `stops` are
/// due (`SQLITE_INTERRUPT`, reported as `timeout`).
async fn prepare_connection_sqlite(
    conn: &mut Guarded,
    grant: Option<Arc<SqliteGrant>>,
    stops: StatementStops,
) -> Result<(), SqlError> {
    match grant {
        // Asked at most every `PROGRESS_STEPS` instructions: microseconds of work.
        Some(grant) => sqlite_guard::enter_with_progress(conn, grant, stops.may_go_on())
            .await
            .map_err(|e| SqlError::Internal(format!("the SQLite authorizer: {e}"))),
        // Nothing will be authorized: no handler needed.
        None => {
            sqlite_guard::leave(conn);
            Ok(())
        }
    }
}

/// The sidecar's own `BEGIN`/`COMMIT`/`ROLLBACK` around a plugin's
/// statements on SQLite: run with the authorizer in host mode, then closed
/// to everything again. With `stops` (a transaction's deferred `BEGIN`,
/// sent for its first statement), a wait for another connection's lock
/// ends when they are due, as the statement's own would; without, nothing
/// stops it (and the commit hook never refuses it).
async fn host_command(
    conn: &mut Guarded,
    command: &'static str,
    stops: Option<&StatementStops>,
) -> Result<(), sqlx::Error> {
    match stops {
        Some(stops) => sqlite_guard::enter_host_with_progress(conn, stops.may_go_on()),
        None => sqlite_guard::enter_host(conn),
    }
    let done = conn.execute_host(command).await;
    sqlite_guard::leave(conn);
    // The end of a transaction frees what it held (its statement journal):
    // given back now, not when some later statement ends.
    sqlite_guard::give_back_freed_memory_soon();
    done
}

async fn postgres(
    conn: &mut PooledPg,
    role: Option<&str>,
    in_transaction: bool,
    limits: Limits,
    run: Run,
    statement: &str,
    params: &[Value],
) -> Result<Outcome, Failure> {
    if !in_transaction {
        // Then the statement runs in autocommit: nothing to end after it.
        enter_session(conn, role, limits).await?;
    }
    let kinds = pg_prepared::kinds(params);
    let mut replanned = false;
    loop {
        let keep = match conn.prepared().plan(statement, &kinds) {
            Plan::Keep => true,
            Plan::ClearFirst => {
                conn.unprepare().await?;
                true
            }
            Plan::Once => false,
        };
        let before = conn.cached_statements_size();
        let outcome = postgres_statement(conn, keep, limits, run, statement, params).await;
        if conn.cached_statements_size() > before {
            conn.prepared().kept(statement, kinds.clone());
        }
        match outcome {
            // A kept statement whose result's shape changed (an operator's
            // migration) is prepared again, once. Outside a transaction
            // only: the refusal comes before the statement runs, and any
            // other error of its code was rolled back with the statement;
            // a transaction it aborted is the plugin's to roll back.
            Err(Ok(error)) if pg_prepared::replanned(&error) && !in_transaction && !replanned => {
                replanned = true;
                conn.unprepare().await?;
            }
            Err(Ok(error)) => return Err(error.into()),
            Err(Err(failure)) => return Err(failure),
            Ok(done) => return Ok(done),
        }
    }
}

/// One run of a statement, kept prepared or not: the database's error
/// apart from the gateway's refusals (a cap), for [`pg_prepared::replanned`].
async fn postgres_statement(
    conn: &mut PooledPg,
    keep: bool,
    limits: Limits,
    run: Run,
    statement: &str,
    params: &[Value],
) -> Result<Outcome, Result<sqlx::Error, Failure>> {
    let mut query = sqlx::query::<Postgres>(sqlx::AssertSqlSafe(statement.to_string())).persistent(keep);
    for param in params {
        query = match param.clone() {
            Value::Null => query.bind(UntypedNull),
            Value::Bool(b) => query.bind(b),
            Value::Int(i) => query.bind(i),
            Value::Float(f) => query.bind(f),
            Value::Text(t) => query.bind(t),
            Value::Blob(b) => query.bind(b),
        };
    }
    let connection: &mut sqlx::PgConnection = conn;
    let mut stream = connection.fetch_many(query);
    let mut collected = Collector::new(limits, run);
    loop {
        match stream.try_next().await {
            Ok(Some(Either::Right(row))) => collected.push(&row, value::postgres_values).map_err(|e| Err(e.into()))?,
            Ok(Some(Either::Left(done))) => collected.changes += done.rows_affected(),
            Ok(None) => return Ok(collected.done(None)),
            Err(e) => return Err(Ok(e)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn sqlite(
    conn: &mut Guarded,
    grant: Option<Arc<SqliteGrant>>,
    stops: StatementStops,
    in_transaction: bool,
    limits: Limits,
    run: Run,
    statement: &str,
    params: &[Value],
) -> Result<Outcome, Failure> {
    // Due at the statement's deadline, when the invocation's stop is, when
    // the checkpointer ends its read, and when this future is dropped
    // mid-statement (possible only where the statement runs on another
    // thread, see `sqlite_statement`): that thread would otherwise go on
    // until the deadline, holding the connection (closing it waits for
    // the statement).
    let _dropped = stops.own.raise_on_drop();
    prepare_connection_sqlite(conn, grant, stops.clone()).await?;
    let mut outcome = sqlite_statement(conn, limits, run, statement, params).await;
    let stopped = || Failure {
        error: SqlError::Timeout("the statement was stopped: its deadline passed or its invocation ended".into()),
        clean: false,
    };
    if stops.is_due() {
        match &mut outcome {
            // Stopped while it waited for a lock (the busy handler gives up
            // with `SQLITE_BUSY`) or between steps: it is the deadline or
            // the invocation's end, not a busy database, that ended it.
            Err(failure) if !matches!(failure.error, SqlError::Timeout(_)) => *failure = stopped(),
            // Ended past its deadline without meeting a check (one long
            // row): in a transaction its work would be committed with the
            // rest, so it fails as an interrupted one does, taking the
            // transaction with it. (Outside one the commit hook refused a
            // write's commit, and a read's rows are answered.)
            Ok(_) if in_transaction => outcome = Err(stopped()),
            _ => {}
        }
    }
    // Closed to everything until the next statement enters a grant.
    let open = sqlite_guard::leave_in_transaction(conn);
    if open != in_transaction {
        if outcome.as_ref().is_err_and(|f| matches!(f.error, SqlError::Timeout(_))) {
            // SQLite rolls the whole transaction back when it interrupts a
            // write in it: it ended with the statement, not by it.
            return Err(stopped());
        }
        if let Err(failure) = outcome
            && matches!(failure.error, SqlError::TooLarge(_))
        {
            // So it does when a write finds the database full
            // (`max_database_bytes`): the plugin's quota, not a statement
            // that ended a transaction.
            return Err(Failure { clean: false, ..failure });
        }
        // Only the executor begins and ends transactions: a statement that
        // did either is refused, and its connection closed (rolling back
        // whatever it opened) instead of going back to the pool.
        return Err(Failure {
            error: SqlError::Denied("the statement began or ended a transaction, which only the door may do".into()),
            clean: false,
        });
    }
    outcome
}

/// Steps a statement on the connection's raw handle. On a multi-threaded
/// runtime it runs on the caller's own thread (`block_in_place` hands the
/// thread's other tasks to another one first): no thread handoff, which
/// for a point select is most of its time. There the caller's future
/// cannot be dropped until the statement ends, so the statement stops
/// through the invocation's [`Stop`] instead (its deadline; raised by
/// whoever watches the invocation from another task). Elsewhere (a
/// current-thread runtime, where `block_in_place` is not allowed) it runs
/// on a thread of the blocking pool and stops when this future is dropped.
async fn sqlite_statement(
    conn: &mut Guarded,
    limits: Limits,
    run: Run,
    statement: &str,
    params: &[Value],
) -> Result<Outcome, Failure> {
    let handle = conn.step_handle();
    let on_many_threads = tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if on_many_threads {
        return tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(&handle, limits, run, statement, params)))
                .unwrap_or_else(|_| Err(thread_failed("it panicked")))
        });
    }
    let (statement, params) = (statement.to_owned(), params.to_vec());
    let stepped = tokio::task::spawn_blocking(move || step(&handle, limits, run, &statement, &params));
    stepped.await.unwrap_or_else(|e| Err(thread_failed(&e.to_string())))
}

fn step(
    handle: &sqlite_step::StepHandle,
    limits: Limits,
    run: Run,
    statement: &str,
    params: &[Value],
) -> Result<Outcome, Failure> {
    let mut collected = Collector::new(limits, run);
    let done = handle.run(statement, params, run == Run::Query, &mut collected);
    match done {
        Ok(done) => {
            collected.changes = done.changes;
            Ok(collected.done(done.last_insert_rowid))
        }
        Err(failed) => Err(Failure { error: failed.error, clean: failed.clean }),
    }
}

fn thread_failed(why: &str) -> Failure {
    Failure { error: SqlError::Internal(format!("the statement's thread: {why}")), clean: false }
}

/// The rows of a query as they stream in, refused past the caps (or read
/// and dropped, for [`Run::Execute`]), and the rows changed.
struct Collector {
    limits: Limits,
    run: Run,
    rows: Rows,
    bytes: u64,
    changes: u64,
}

impl Collector {
    fn new(limits: Limits, run: Run) -> Collector {
        Collector { limits, run, rows: Rows::default(), bytes: 0, changes: 0 }
    }

    fn done(self, last_insert_rowid: Option<i64>) -> Outcome {
        Outcome { rows: self.rows, changes: self.changes, last_insert_rowid }
    }

    /// Takes a sqlx `row` if it fits. `decode` makes its values, or `None`
    /// once they would pass the bytes left (before making the one that
    /// would).
    fn push<R: sqlx::Row>(
        &mut self,
        row: &R,
        decode: impl Fn(&R, u64) -> Result<Option<Vec<Value>>, SqlError>,
    ) -> Result<(), SqlError> {
        self.row(&|| value::columns_of(row), &mut |left| decode(row, left))
    }
}

impl sqlite_step::RowSink for Collector {
    fn row(
        &mut self,
        columns: &dyn Fn() -> Vec<Column>,
        decode: &mut dyn FnMut(u64) -> Result<Option<Vec<Value>>, SqlError>,
    ) -> Result<(), SqlError> {
        if self.run == Run::Execute {
            return Ok(());
        }
        if self.rows.rows.len() as u64 >= self.limits.max_rows {
            return Err(SqlError::TooLarge(format!(
                "the result has more than max_rows = {} rows: refused (narrow the query or page it)",
                self.limits.max_rows
            )));
        }
        if self.rows.columns.is_empty() {
            self.rows.columns = columns();
        }
        let too_large = || {
            SqlError::TooLarge(format!(
                "the result is larger than max_result_bytes = {} bytes: refused (narrow the query or page it)",
                self.limits.max_result_bytes
            ))
        };
        let left = self.limits.max_result_bytes.saturating_sub(self.bytes);
        let values = decode(left)?.ok_or_else(too_large)?;
        self.bytes += values.iter().map(Value::size).sum::<u64>();
        if self.bytes > self.limits.max_result_bytes {
            return Err(too_large());
        }
        self.rows.rows.push(values);
        Ok(())
    }
}

/// A PostgreSQL `NULL` parameter of no declared type (OID 0): the server
/// infers the type from where it stands, as for a literal `NULL`.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(&self, _: &mut PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}
