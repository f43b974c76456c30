//! SQLite's own check: an authorizer (`sqlite3_set_authorizer`) that lets a
//! statement be prepared only if everything it touches is in the plugin's
//! grant. SQLite calls it while it compiles a statement, once per table
//! and column read, table written (and column updated), function called,
//! and for every statement kind (`PRAGMA`, `ATTACH`, DDL, transactions).
//! A `SQLITE_DENY` makes the prepare fail with `SQLITE_AUTH` ("not
//! authorized", "access to t.c is prohibited"): the statement never runs.
//!
//! # Use
//! - [`install`] once per connection, which it turns into a [`Guarded`].
//!   From then on the connection refuses every statement until it is told
//!   whose statement comes next.
//! - [`enter`] with the plugin's [`SqliteGrant`] before the plugin's
//!   statement, [`leave`] after it (back to refusing everything);
//!   [`enter_host`] for the sidecar's own statements on the connection
//!   (`BEGIN`/`COMMIT`/`ROLLBACK` around a call, migrations).
//! - Prepare plugin statements with `.persistent(false)`. The authorizer
//!   runs when a statement is *prepared*, not when it runs, so a statement
//!   prepared under one plugin's grant and kept in sqlx's statement cache
//!   would run for the next plugin unchecked. [`enter`] also empties the
//!   connection's cache when it holds anything, so a persistent statement
//!   cached by mistake is prepared (and checked) again.
//!
//! # What it checks
//! Reads per column (`SQLITE_READ`; a read with no column, as in
//! `count(*)`, needs select on the table), `INSERT` and `DELETE` per table,
//! `UPDATE` per column, functions against the dialect's default list plus
//! the policy's `functions` (and `like`/`glob`, which SQLite calls for the
//! operators of those names), table-valued functions read as tables
//! against `table_functions`, `SELECT` and recursive CTEs. Only the `main`
//! database: `temp` and attached ones are refused, and so are SQLite's own
//! `sqlite_*` tables whatever the policy lists. Transactions
//! (`BEGIN`/`COMMIT`/`ROLLBACK`) only when the grant allows them for its
//! door ([`SqlPolicy::transaction_control`]). Everything else is refused:
//! `PRAGMA`, `ATTACH`/`DETACH`, every `CREATE`/`DROP`/`ALTER`, `REINDEX`,
//! `ANALYZE`, virtual tables, savepoints.
//!
//! Writes to a table whose schema resolves conflicts with `REPLACE`
//! (`UNIQUE … ON CONFLICT REPLACE` and the like) delete the rows they
//! conflict with, which SQLite does not report to an authorizer: an
//! `INSERT` or `UPDATE` of such a table needs `delete` on it as well. The
//! tables are read from the schema when a plugin enters and the schema
//! cookie changed since the last read.
//!
//! Not visible to an authorizer: which columns an `INSERT` names (SQLite
//! reports the table only), literals, row counts, `WHERE`-less writes.
//! Reads SQLite makes for foreign keys are reported as reads of the parent
//! key, so a plugin that writes a child table needs select on the parent's
//! key column.
//!
//! # Memory safety
//! All the module's `unsafe` is here. The callback's user data is a
//! per-connection `Arc<Slot>`, one count of which is handed to SQLite with
//! `sqlite3_set_clientdata`, whose destructor SQLite calls when the
//! connection is finally closed, after its last statement is finalized: so
//! the data outlives every statement prepared (or re-prepared after a
//! schema change) under it. The guard's calls use the raw handle from the
//! caller's thread, which SQLite allows because the connection is
//! serialized ([`Guarded`]). The grant inside the slot is swapped under a
//! mutex, never freed while the callback reads it (an `Arc`). The callback
//! never unwinds into SQLite: it catches panics and denies.

#![allow(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use libsqlite3_sys as ffi;
use sqlx::{Connection as _, SqliteConnection};

use super::GuardError;
use crate::services::sql::functions;
use crate::services::sql::sqlite_step::{self, RawDb, StepHandle};
use crate::services::sql::{Access, Dialect, Door, SqlPolicy};

/// The name the slot is registered under (`sqlite3_set_clientdata`).
const SLOT_NAME: &CStr = c"gatehouse.sql.guard";

/// What the authorizer allows for one plugin, derived from its
/// `[sql.<alias>]` grant: names folded to lower case, as SQLite compares
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteGrant {
    tables: BTreeMap<String, Columns>,
    functions: BTreeSet<String>,
    table_functions: BTreeSet<String>,
    transactions: bool,
}

/// One table's grant, per kind of access.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Columns {
    select: Cols,
    insert: bool,
    update: Cols,
    delete: bool,
}

/// Columns of one kind of access, lower case.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Cols {
    #[default]
    None,
    All,
    Some(BTreeSet<String>),
}

impl Cols {
    fn from(access: &Access) -> Cols {
        match access {
            Access::None => Cols::None,
            Access::All => Cols::All,
            Access::Columns(set) => Cols::Some(set.iter().map(|c| c.to_ascii_lowercase()).collect()),
        }
    }

    fn any(&self) -> bool {
        !matches!(self, Cols::None)
    }

    fn has(&self, column: &str) -> bool {
        match self {
            Cols::None => false,
            Cols::All => true,
            Cols::Some(set) => set.contains(column),
        }
    }
}

/// Functions SQLite calls for operators the statement checker accepts
/// (`x LIKE y` is `like(y, x)`, `x GLOB y` is `glob(y, x)`).
const OPERATOR_FUNCTIONS: &[&str] = &["glob", "like"];

impl SqliteGrant {
    /// The grant of `policy` for statements arriving through `door` (which
    /// decides whether `BEGIN`/`COMMIT`/`ROLLBACK` may be prepared).
    pub fn new(policy: &SqlPolicy, door: Door) -> SqliteGrant {
        let tables = policy
            .tables
            .iter()
            .map(|(name, grant)| {
                let columns = Columns {
                    select: Cols::from(&grant.select),
                    insert: grant.insert.is_granted(),
                    update: Cols::from(&grant.update),
                    delete: grant.delete.is_granted(),
                };
                (name.to_ascii_lowercase(), columns)
            })
            .collect();
        let functions = functions::defaults(Dialect::Sqlite)
            .iter()
            .chain(OPERATOR_FUNCTIONS)
            .map(|name| name.to_string())
            .chain(policy.functions.iter().map(|name| name.to_ascii_lowercase()))
            .collect();
        SqliteGrant {
            tables,
            functions,
            table_functions: policy.table_functions.iter().map(|n| n.to_ascii_lowercase()).collect(),
            transactions: policy.transaction_control(door),
        }
    }

    /// Whether a write SQLite asks about may delete rows through a
    /// `REPLACE` conflict clause of its table's schema (`replacing`: such
    /// tables, lower case): only with `delete` on the table.
    pub fn allows_replacing(&self, action: i32, table: Option<&str>, replacing: &BTreeSet<String>) -> bool {
        if !matches!(action, ffi::SQLITE_INSERT | ffi::SQLITE_UPDATE) {
            return true;
        }
        let Some(table) = table.map(str::to_ascii_lowercase) else { return true };
        !replacing.contains(&table) || self.tables.get(&table).is_some_and(|grant| grant.delete)
    }

    /// Whether the action SQLite asks about is granted. `first`, `second`
    /// and `database` are the authorizer's arguments (which depend on the
    /// action; see SQLite's `SQLITE_*` action codes); names compare
    /// ignoring ASCII case, as SQLite does. Pure, so the table of actions
    /// is tested without a database.
    pub fn allows(&self, action: i32, first: Option<&str>, second: Option<&str>, database: Option<&str>) -> bool {
        let lower = |name: Option<&str>| name.map(str::to_ascii_lowercase);
        let (first, second) = (lower(first), lower(second));
        // Only the `main` database (a CTE or sub-query has none).
        let in_main = database.is_none_or(|db| db.eq_ignore_ascii_case("main"));
        let table = || -> Option<&Columns> {
            let name = first.as_deref()?;
            if !in_main || name.starts_with("sqlite_") {
                return None;
            }
            self.tables.get(name)
        };
        match action {
            ffi::SQLITE_SELECT | ffi::SQLITE_RECURSIVE => true,
            ffi::SQLITE_READ => {
                let column = second.as_deref().unwrap_or("");
                match table() {
                    // No column: the table is scanned for its rows only.
                    Some(grant) if column.is_empty() => grant.select.any(),
                    Some(grant) => grant.select.has(column),
                    // Table-valued functions are read like tables.
                    None => in_main && first.as_deref().is_some_and(|name| self.table_functions.contains(name)),
                }
            }
            ffi::SQLITE_INSERT => table().is_some_and(|grant| grant.insert),
            ffi::SQLITE_DELETE => table().is_some_and(|grant| grant.delete),
            ffi::SQLITE_UPDATE => {
                table().is_some_and(|grant| second.as_deref().is_some_and(|column| grant.update.has(column)))
            }
            ffi::SQLITE_FUNCTION => second.as_deref().is_some_and(|name| self.functions.contains(name)),
            ffi::SQLITE_TRANSACTION => self.transactions,
            // PRAGMA, ATTACH/DETACH, DDL, REINDEX, ANALYZE, virtual tables,
            // savepoints, and any action code SQLite adds later.
            _ => false,
        }
    }
}

/// Who the connection's next statements are for.
enum Mode {
    /// Nobody: every statement is refused.
    Closed,
    /// The sidecar itself: everything is allowed.
    Host,
    /// A plugin: its grant, and the tables whose schema resolves
    /// conflicts with `REPLACE`.
    Plugin(Arc<SqliteGrant>, Arc<BTreeSet<String>>),
}

/// The authorizer's user data, one per connection.
struct Slot {
    mode: Mutex<Mode>,
    /// The schema cookie last read, and the `REPLACE` tables it had.
    schema: Mutex<Option<(i64, Arc<BTreeSet<String>>)>>,
    /// The progress check of the statement entered last: the bounded
    /// functions ask it before each call, since SQLite's progress handler
    /// runs only at jumps and a row may hold thousands of calls.
    progress: Mutex<Option<Progress>>,
    /// Where a commit that grew the WAL past [`CHECKPOINT_PAGES`] asks for
    /// a checkpoint ([`Guarded::checkpoint_elsewhere`]); unset, the
    /// committing statement checkpoints itself, as SQLite does by default.
    checkpoints: std::sync::OnceLock<tokio::sync::mpsc::Sender<()>>,
    /// Set while [`ReadEnder::try_end`] rolls a plugin's transaction back
    /// from outside: its `ROLLBACK` is allowed and runs to its end.
    ending: AtomicBool,
}

/// Whether the statement entered last may go on (its deadline not past,
/// its caller still waiting).
type Progress = Arc<dyn Fn() -> bool + Send + Sync>;

impl Slot {
    fn new() -> Slot {
        Slot {
            mode: Mutex::new(Mode::Closed),
            schema: Mutex::new(None),
            progress: Mutex::new(None),
            checkpoints: std::sync::OnceLock::new(),
            ending: AtomicBool::new(false),
        }
    }

    fn allows(&self, action: i32, first: Option<&str>, second: Option<&str>, database: Option<&str>) -> bool {
        if action == ffi::SQLITE_TRANSACTION && self.ending.load(Ordering::SeqCst) {
            return true;
        }
        match &*self.mode.lock().unwrap_or_else(PoisonError::into_inner) {
            Mode::Closed => false,
            Mode::Host => true,
            Mode::Plugin(grant, replacing) => {
                grant.allows(action, first, second, database) && grant.allows_replacing(action, first, replacing)
            }
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    fn set_progress(&self, progress: Option<Progress>) {
        *self.progress.lock().unwrap_or_else(PoisonError::into_inner) = progress;
    }

    /// The progress check of the statement entered last (taken out of the
    /// lock before it is called).
    fn may_go_on(&self) -> bool {
        if self.ending.load(Ordering::SeqCst) {
            return true;
        }
        let progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner).clone();
        progress.is_none_or(|go_on| go_on())
    }
}

/// A SQLite connection whose authorizer is installed ([`install`]), with
/// the raw handle and the slot the guard's calls use.
///
/// Entering and leaving a grant ([`enter`], [`leave`], [`enter_host`])
/// are calls on the caller's thread, straight on the raw handle, rather
/// than a request for sqlx's handle lock each time: that lock is a
/// handoff to the connection's worker thread and back (~50–60 µs on a
/// 2-vCPU VM), and a call used to make two of them besides its
/// statement. It is sound because the connection is serialized
/// (`SQLITE_OPEN_FULLMUTEX`, which [`install`] checks): SQLite takes the
/// connection's own mutex in every API call, whichever thread makes it.
/// `&mut` access to the `Guarded` means no statement of the holder's is
/// in flight meanwhile; one still stepping after its result was abandoned
/// only makes these calls wait for its current step.
pub struct Guarded {
    conn: SqliteConnection,
    db: Db,
    slot: Arc<Slot>,
    /// Held by a statement's thread while it runs on the handle
    /// ([`StepHandle`]); `false` once the connection is closing.
    open: Arc<tokio::sync::Mutex<bool>>,
    /// The database's page size in bytes (a WAL frame holds one page).
    page_size: u64,
}

/// The raw handle of a serialized connection.
struct Db(std::ptr::NonNull<ffi::sqlite3>);

// SAFETY: the connection is serialized (checked by `install`), so SQLite
// allows its API to be called from any thread; the pointer stays valid
// as long as the `SqliteConnection` beside it in `Guarded`.
unsafe impl Send for Db {}
// SAFETY: as above.
unsafe impl Sync for Db {}

impl Guarded {
    /// The sqlx connection, to run statements on.
    pub fn connection(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    /// Runs the sidecar's own `command` (a `BEGIN`, `COMMIT` or `ROLLBACK`
    /// of a plugin's transaction) through sqlx, holding the handle's lock
    /// as a plugin's statement does: SQLite sets a connection back to
    /// autocommit before its commit writes, so a [`ReadEnder`] that looked
    /// mid-commit took the transaction for ended and gave its turn to
    /// write up while the commit still held SQLite's lock, and the next
    /// writer in line waited out its busy timeout ("database is locked";
    /// the tenth outside review, during drains).
    pub async fn execute_host(&mut self, command: &'static str) -> Result<(), sqlx::Error> {
        let _running = Arc::clone(&self.open).lock_owned().await;
        sqlx::Executor::execute(&mut self.conn, command).await.map(drop)
    }

    /// The handle a statement's thread runs on ([`crate::services::sql::sqlite_step`]).
    pub fn step_handle(&self) -> StepHandle {
        StepHandle { db: RawDb(self.db.0), open: Arc::clone(&self.open) }
    }

    /// The sqlx connection, to close it, once no statement runs on the
    /// handle (one abandoned by its caller may still be stopping) and none
    /// will.
    pub async fn into_connection(self) -> SqliteConnection {
        *self.open.lock().await = false;
        self.conn
    }

    /// What ends a plugin's read on this connection from another task
    /// (the checkpointer's, [`ReadEnder`]).
    pub fn read_ender(&self) -> ReadEnder {
        ReadEnder { db: RawDb(self.db.0), open: Arc::clone(&self.open), slot: Arc::clone(&self.slot) }
    }

    fn db(&self) -> *mut ffi::sqlite3 {
        self.db.0.as_ptr()
    }

    /// The bytes the connection's statements have written to the
    /// database's files since the last call (in WAL mode, to the WAL):
    /// the pages SQLite's cache wrote, a page each. None while a statement
    /// still runs on the handle (counted at the next call): the handle's
    /// mutex would hold this thread until its step ends.
    pub fn take_bytes_written(&self) -> u64 {
        let Ok(_no_statement) = self.open.try_lock() else { return 0 };
        let (mut pages, mut highest) = (0, 0);
        // SAFETY: the handle is open and serialized; the call reads and
        // resets a counter of the connection into the two out-pointers.
        unsafe { ffi::sqlite3_db_status(self.db(), ffi::SQLITE_DBSTATUS_CACHE_WRITE, &mut pages, &mut highest, 1) };
        u64::try_from(pages).unwrap_or(0) * self.page_size
    }

    /// From now on a commit that leaves more than [`CHECKPOINT_PAGES`] in
    /// the WAL sends on `checkpoints` (dropped when the channel is full)
    /// instead of checkpointing inside the statement. Set once.
    pub fn checkpoint_elsewhere(&self, checkpoints: tokio::sync::mpsc::Sender<()>) {
        let _ = self.slot.checkpoints.set(checkpoints);
    }
}

/// Most virtual-machine instructions a plugin's statement may compile to
/// (`SQLITE_LIMIT_VDBE_OP`; past it the prepare fails, `quota-exceeded`).
/// SQLite checks a statement's deadline only at the bottom of its loops, so
/// the work one row does between checks is at most the program's length,
/// each step linear in values of at most `max_value_bytes`. The statement
/// checker counts operators in the text, but SQLite's program can hold
/// far more (a sub-query's expression copied into each of its references,
/// `JOIN … USING`, CTEs doubling their work): an outside review ran one row
/// 13 s past its deadline so.
///
/// SQLite compares the limit with the program's *allocated* length, which
/// doubles from 42 (42, 84, …, 1,344, 2,688, 5,376): any limit refuses
/// past the last of those under it, so the bound is one of them. It was
/// 2,000 (so 1,344), which refused an `IN` list of more than 441
/// parameters (the third review); this one lets an `IN` list of the
/// gateway's 1,000 parameters (3,019 instructions) compile. The 42
/// statements of the test fixtures compile to at most 71 instructions.
pub const MAX_PROGRAM_STEPS: c_int = 5_376;

/// How many virtual-machine instructions SQLite runs between two calls of
/// the progress handler (the statement's deadline and stop), at most; it
/// calls it only where the program jumps (a loop, a branch) or returns a
/// row. SQLite's usual figure is 1,000: in a loop each of whose rows calls
/// a function on a 1 MiB value, that is some 200 rows between checks
/// (0.4 s of `hex()`). At 100 a statement that is all loop runs 3–5%
/// slower (measured on a 3-million-row recursive count); the gateway's
/// benchmark queries do not call it at all.
pub const PROGRESS_STEPS: i32 = 100;

/// Registers the authorizer on `conn`, refusing everything until
/// [`enter`] or [`enter_host`], and caps every string and blob the
/// connection makes at `max_value_bytes` (`SQLITE_LIMIT_LENGTH`: past it a
/// statement fails with `SQLITE_TOOBIG`, so nested `replace()` or `||`
/// cannot build gigabytes), bounds the built-ins whose time grows with
/// the product of their arguments' lengths ([`super::sqlite_functions`]),
/// and sets the progress handler that stops a statement once the check
/// its [`enter_with_progress`] gave says so. The connection must be
/// serialized (`SqliteConnectOptions::serialized(true)`); call this after
/// the driver's own setup statements (sqlx's `PRAGMA`s run at connect).
pub async fn install(mut conn: SqliteConnection, max_value_bytes: u32) -> Result<Guarded, GuardError> {
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut conn).await?;
    let slot = Arc::new(Slot::new());
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle();
    let raw = db.as_ptr();
    // SAFETY: `raw` is the open connection sqlx hands out while `handle`
    // holds its lock, so no other thread uses it during these calls.
    if unsafe { ffi::sqlite3_db_mutex(raw) }.is_null() {
        return Err(GuardError::NotSerialized);
    }
    let length = c_int::try_from(max_value_bytes).unwrap_or(c_int::MAX);
    // SAFETY: as above.
    unsafe { ffi::sqlite3_limit(raw, ffi::SQLITE_LIMIT_LENGTH, length) };
    // SAFETY: as above.
    unsafe { ffi::sqlite3_limit(raw, ffi::SQLITE_LIMIT_VDBE_OP, MAX_PROGRAM_STEPS) };
    // SAFETY: as above.
    unsafe { super::sqlite_functions::register(raw) }.map_err(GuardError::Sqlite)?;
    let user = Arc::into_raw(Arc::clone(&slot)).cast_mut().cast::<c_void>();
    // SAFETY: as above for `raw`; the name is a NUL-terminated constant.
    // On success SQLite owns one count of the slot and drops it with
    // `drop_slot` when the connection closes, after every statement is
    // finalized; on failure it has already called `drop_slot`.
    let rc = unsafe { ffi::sqlite3_set_clientdata(raw, SLOT_NAME.as_ptr(), user, Some(drop_slot)) };
    if rc != ffi::SQLITE_OK {
        return Err(GuardError::Sqlite(rc));
    }
    // SAFETY: the count SQLite owns keeps `user` valid until the
    // connection closes, so the authorizer may read it whenever SQLite
    // calls it for this connection; `authorize` only makes shared
    // references.
    let rc = unsafe { ffi::sqlite3_set_authorizer(raw, Some(authorize), user) };
    if rc != ffi::SQLITE_OK {
        return Err(GuardError::Sqlite(rc));
    }
    // SAFETY: as for the authorizer: the count SQLite owns keeps `user`
    // valid while the connection is open, and `wait_for_lock` only makes
    // shared references. This replaces the driver's `busy_timeout`.
    let rc = unsafe { ffi::sqlite3_busy_handler(raw, Some(wait_for_lock), user) };
    if rc != ffi::SQLITE_OK {
        return Err(GuardError::Sqlite(rc));
    }
    // SAFETY: as for the busy handler; `refuse_late_commit` only makes
    // shared references. (It returns the previous hook, none.)
    unsafe { ffi::sqlite3_commit_hook(raw, Some(refuse_late_commit), user) };
    // SAFETY: as for the busy handler; `committed_to_wal` only makes shared
    // references. This replaces SQLite's automatic checkpoint.
    unsafe { ffi::sqlite3_wal_hook(raw, Some(committed_to_wal), user) };
    let progress = Arc::clone(&slot);
    handle.set_progress_handler(PROGRESS_STEPS, move || progress.may_go_on());
    drop(handle);
    let page_size = u64::try_from(page_size).unwrap_or(4096);
    Ok(Guarded { conn, db: Db(db), slot, open: Arc::new(tokio::sync::Mutex::new(true)), page_size })
}

/// What SQLite may allocate in this process, all connections together
/// (`sqlite3_hard_heap_limit64`): past it an allocation fails and the
/// statement that asked gets `SQLITE_NOMEM` (`quota-exceeded`), instead of
/// the sidecar being killed for its memory. A backstop behind each
/// connection's `max_value_bytes`: statements that hold many large values
/// at once still stop here.
pub const SQLITE_HEAP_LIMIT: i64 = 512 << 20;

/// Sets [`SQLITE_HEAP_LIMIT`] (once per process).
pub fn limit_heap() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: a plain setter of SQLite's global allocator, thread-safe.
    ONCE.call_once(|| unsafe {
        ffi::sqlite3_hard_heap_limit64(SQLITE_HEAP_LIMIT);
    });
}

/// How much SQLite must have freed since its heap's last high point
/// before a finished statement gives free memory back to the system.
const GIVE_BACK_ABOVE: i64 = 64 << 20;

/// Gives the memory SQLite freed back to the system once a statement has
/// freed more than [`GIVE_BACK_ABOVE`] (call it when a statement ends).
/// [`SQLITE_HEAP_LIMIT`] bounds what SQLite holds at once, not what the C
/// allocator keeps after: glibc keeps freed memory in the arena of the
/// thread that used it, and the statements' threads (tokio's blocking
/// pool) each have their own. A 1 KB statement that drives SQLite to the
/// limit while it compiles left the process at 660 MB afterwards; an
/// outside review, repeating it, saw 2 GB, and 680 MB still held after a
/// minute idle. `malloc_trim` walks every arena (289 ms after a statement
/// that freed 512 MiB of small nodes, on that statement's thread);
/// elsewhere than glibc this does nothing.
pub fn give_back_freed_memory() {
    if freed_much() {
        crate::give_back::trim();
    }
}

/// [`give_back_freed_memory`] from async code: the trim, when there is one
/// to do, runs on a blocking thread (it may take a few hundred ms).
pub fn give_back_freed_memory_soon() {
    if freed_much() {
        tokio::task::spawn_blocking(crate::give_back::trim);
    }
}

/// Whether SQLite freed more than [`GIVE_BACK_ABOVE`] since the high point
/// was last read (the high point is reset to what is in use now, so the
/// next caller measures its own).
fn freed_much() -> bool {
    // SAFETY: thread-safe reads of SQLite's statistics.
    let (high, used) = unsafe { (ffi::sqlite3_memory_highwater(1), ffi::sqlite3_memory_used()) };
    high - used > GIVE_BACK_ABOVE
}

/// Ends the read a plugin holds open on a connection, from outside the
/// plugin's call: the checkpointer's, when a read keeps the WAL from
/// restarting for too long (`super::super::sqlite_pool`). A transaction
/// left open between statements holds its snapshot until its owner ends
/// it, which a plugin may put off until its invocation's deadline; this
/// rolls it back without waiting for the owner. Sound because the
/// connection is serialized and no statement of the owner's steps
/// meanwhile (the handle's lock is held throughout); the owner learns of
/// it through its place's stop, before its next statement.
pub struct ReadEnder {
    db: RawDb,
    open: Arc<tokio::sync::Mutex<bool>>,
    slot: Arc<Slot>,
}

/// What [`ReadEnder::try_end`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// No transaction is open on the connection (any there was is rolled
    /// back): it holds no snapshot.
    Ended,
    /// A statement runs on it (or the rollback failed): try again.
    Busy,
    /// It is being closed, which ends whatever it holds.
    Closing,
    /// [`ReadEnder::try_end_open`] found no transaction open: nothing done.
    NotOpen,
}

impl ReadEnder {
    /// Rolls back the transaction open on the connection, if no statement
    /// runs on it now.
    pub fn try_end(&self) -> Ending {
        self.end(false)
    }

    /// [`Self::try_end`] for a transaction open between statements only:
    /// with none open, [`Ending::NotOpen`].
    pub fn try_end_open(&self) -> Ending {
        self.end(true)
    }

    fn end(&self, only_open: bool) -> Ending {
        let Ok(open) = self.open.try_lock() else { return Ending::Busy };
        if !*open {
            return Ending::Closing;
        }
        let db = self.db.0.as_ptr();
        // SAFETY: the connection is open and serialized, and stays open
        // while `open` is held; no statement of the owner's runs.
        if unsafe { ffi::sqlite3_get_autocommit(db) } != 0 {
            return if only_open { Ending::NotOpen } else { Ending::Ended };
        }
        self.slot.ending.store(true, Ordering::SeqCst);
        // SAFETY: as above; the statement is a NUL-terminated constant and
        // no callback or out-pointer is given.
        let rc = unsafe { ffi::sqlite3_exec(db, c"ROLLBACK".as_ptr(), None, ptr::null_mut(), ptr::null_mut()) };
        self.slot.ending.store(false, Ordering::SeqCst);
        give_back_freed_memory_soon();
        // SAFETY: as above.
        if rc == ffi::SQLITE_OK && unsafe { ffi::sqlite3_get_autocommit(db) } != 0 {
            Ending::Ended
        } else {
            Ending::Busy
        }
    }
}

/// Gives the connection to a plugin: statements prepared from now on are
/// checked against `grant`. Empties sqlx's statement cache first when it
/// holds anything, so no statement prepared under an earlier grant is
/// reused.
pub async fn enter(conn: &mut Guarded, grant: Arc<SqliteGrant>) -> Result<(), GuardError> {
    enter_with_progress(conn, grant, || true).await
}

/// Whether the statement running on `db` may go on, by the progress check
/// its [`enter_with_progress`] gave (true when none was given).
///
/// # Safety
/// `db` must be the connection whose statement is running on this thread.
pub(super) unsafe fn may_go_on(db: *mut ffi::sqlite3) -> bool {
    // SAFETY: the caller's promise.
    unsafe { slot_of(db) }.is_none_or(|slot| slot.may_go_on())
}

/// [`enter`], also giving the progress handler (called at most every
/// [`PROGRESS_STEPS`] virtual-machine steps) the check that stops this
/// statement (`false` interrupts it) and forgetting the connection's last inserted rowid (so
/// that a non-zero one after the statement is the statement's own, never
/// an earlier borrower's). The check is swapped first, so that the
/// previous statement's (its deadline past) cannot interrupt the schema
/// read here.
pub async fn enter_with_progress(
    conn: &mut Guarded,
    grant: Arc<SqliteGrant>,
    progress: impl Fn() -> bool + Send + Sync + 'static,
) -> Result<(), GuardError> {
    if conn.conn.cached_statements_size() > 0 {
        conn.conn.clear_cached_statements().await?;
    }
    conn.slot.set_progress(Some(Arc::new(progress)));
    // SAFETY: a `Guarded` handle is open and serialized.
    unsafe { ffi::sqlite3_set_last_insert_rowid(conn.db(), 0) };
    conn.slot.set(Mode::Host);
    // SAFETY: as above; the slot is in host mode, so the reads are allowed.
    let replacing = unsafe { replacing_tables(conn.db(), &conn.slot) };
    match replacing {
        Ok(replacing) => {
            conn.slot.set(Mode::Plugin(grant, replacing));
            Ok(())
        }
        Err(e) => {
            conn.slot.set(Mode::Closed);
            Err(e)
        }
    }
}

/// Gives the connection to the sidecar itself (everything allowed), for
/// its own statements around a plugin's: `BEGIN`, `COMMIT`, `ROLLBACK`.
/// Never run a plugin's statement in this mode. The last statement's
/// progress check is dropped: the sidecar's own statements run (and wait
/// for locks) whether or not that statement's caller is still there.
pub fn enter_host(conn: &mut Guarded) {
    conn.slot.set_progress(None);
    conn.slot.set(Mode::Host);
}

/// [`enter_host`] for the sidecar's own `BEGIN` of a plugin's transaction,
/// sent with the plugin's first statement: a wait for another connection's
/// lock ends when the statement's `progress` check says stop, as the
/// statement's own would.
pub fn enter_host_with_progress(conn: &mut Guarded, progress: impl Fn() -> bool + Send + Sync + 'static) {
    conn.slot.set_progress(Some(Arc::new(progress)));
    conn.slot.set(Mode::Host);
}

/// Takes the connection back: every statement is refused until the next
/// [`enter`].
pub fn leave(conn: &mut Guarded) {
    conn.slot.set(Mode::Closed);
}

/// [`leave`], and whether a transaction is open on the connection
/// (`sqlite3_get_autocommit`): the executor compares it with the
/// transactions it opened itself, so a statement that opened one unseen
/// (a `BEGIN` the statement check did not read) is caught before the
/// connection goes back to the pool.
pub fn leave_in_transaction(conn: &mut Guarded) -> bool {
    leave(conn);
    // SAFETY: a `Guarded` handle is open and serialized; the call only
    // reads the connection's state.
    unsafe { ffi::sqlite3_get_autocommit(conn.db()) == 0 }
}

/// The slot [`install`] registered on `db`.
///
/// # Safety
/// `db` is an open connection: the one whose statement is running on this
/// thread.
unsafe fn slot_of<'a>(db: *mut ffi::sqlite3) -> Option<&'a Slot> {
    // SAFETY: the caller's promise; the name is a NUL-terminated constant.
    let slot = unsafe { ffi::sqlite3_get_clientdata(db, SLOT_NAME.as_ptr()) };
    if slot.is_null() {
        return None;
    }
    // SAFETY: a non-null slot under our name is the `Arc<Slot>` count
    // `install` registered; it lives until the connection closes, which
    // cannot happen while one of its statements runs. Only shared
    // references are made.
    Some(unsafe { &*slot.cast::<Slot>() })
}

/// The tables of `db` whose schema resolves a conflict with `REPLACE`,
/// read again only when the schema cookie changed since the slot's last
/// read (a `PRAGMA schema_version`, microseconds, otherwise).
///
/// # Safety
/// `db` is a [`Guarded`] handle, and the slot is in host mode (the reads
/// are allowed).
unsafe fn replacing_tables(db: *mut ffi::sqlite3, slot: &Slot) -> Result<Arc<BTreeSet<String>>, GuardError> {
    let mut cookie = 0;
    // SAFETY: the caller's promise.
    unsafe { each_row(db, c"PRAGMA schema_version", |row| cookie = row.int(0))? };
    let mut cached = slot.schema.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((seen, tables)) = &*cached
        && *seen == cookie
    {
        return Ok(Arc::clone(tables));
    }
    let mut tables = BTreeSet::new();
    let sql = c"SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND sql IS NOT NULL";
    // SAFETY: the caller's promise.
    unsafe {
        each_row(db, sql, |row| {
            if resolves_by_replace(&row.text(1)) {
                tables.insert(row.text(0).to_ascii_lowercase());
            }
        })?
    };
    let tables = Arc::new(tables);
    *cached = Some((cookie, Arc::clone(&tables)));
    Ok(tables)
}

/// Whether a `CREATE TABLE` statement has a `REPLACE` conflict clause,
/// read token by token (an identifier or string spelled `replace` is not
/// one). Text the tokenizer cannot read counts as having one.
pub fn resolves_by_replace(create_table: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&sqlparser::dialect::SQLiteDialect {}, create_table).tokenize() else {
        return true;
    };
    let words: Vec<Option<&str>> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.as_str()),
            _ => None,
        })
        .collect();
    words.windows(3).any(|w| {
        let is = |i: usize, word: &str| w[i].is_some_and(|v| v.eq_ignore_ascii_case(word));
        is(0, "on") && is(1, "conflict") && is(2, "replace")
    })
}

/// One row of [`each_row`].
struct Row(*mut ffi::sqlite3_stmt);

impl Row {
    fn int(&self, column: c_int) -> i64 {
        // SAFETY: the statement is on a row (each_row's promise).
        unsafe { ffi::sqlite3_column_int64(self.0, column) }
    }

    fn text(&self, column: c_int) -> String {
        // SAFETY: the statement is on a row; the text (or null) is
        // NUL-terminated and valid until the next step, and copied before it.
        unsafe { sqlite_step::text_of(ffi::sqlite3_column_text(self.0, column).cast()) }
    }
}

/// Runs `sql` on `db`, calling `row` for each row.
///
/// # Safety
/// `db` is a [`Guarded`] handle (open and serialized).
unsafe fn each_row(db: *mut ffi::sqlite3, sql: &CStr, mut row: impl FnMut(&Row)) -> Result<(), GuardError> {
    let mut statement = ptr::null_mut();
    // SAFETY: the caller's promise; `sql` is NUL-terminated.
    let rc = unsafe { ffi::sqlite3_prepare_v2(db, sql.as_ptr(), -1, &mut statement, ptr::null_mut()) };
    if rc != ffi::SQLITE_OK {
        return Err(GuardError::Sqlite(rc));
    }
    let outcome = loop {
        // SAFETY: `statement` was prepared above and is finalized below.
        match unsafe { ffi::sqlite3_step(statement) } {
            ffi::SQLITE_ROW => row(&Row(statement)),
            ffi::SQLITE_DONE => break Ok(()),
            rc => break Err(GuardError::Sqlite(rc)),
        }
    };
    // SAFETY: finalized once, not used afterwards.
    unsafe { ffi::sqlite3_finalize(statement) };
    outcome
}

/// How often [`wait_for_lock`] looks again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// SQLite's busy handler: waits for another connection's lock up to
/// [`crate::databases::SQLITE_BUSY_TIMEOUT`], as the driver's
/// `busy_timeout` did, but also stops waiting (the statement fails with
/// `SQLITE_BUSY`) as soon as the statement's progress check says stop: its
/// caller gone or its deadline past. SQLite's progress handler does not
/// run while a statement waits for a lock, and a write whose caller had
/// been answered `timeout` went on waiting and then committed (an outside
/// review). Returns 1 to wait again, 0 to give up.
unsafe extern "C" fn wait_for_lock(slot: *mut c_void, waits: c_int) -> c_int {
    let wait = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `slot` is the pointer `install` registered with this
        // handler, valid while the connection is open.
        let slot = unsafe { &*slot.cast::<Slot>() };
        let waited = LOCK_POLL.saturating_mul(u32::try_from(waits).unwrap_or(u32::MAX));
        if waited >= crate::databases::SQLITE_BUSY_TIMEOUT || !slot.may_go_on() {
            return false;
        }
        std::thread::sleep(LOCK_POLL);
        true
    }));
    c_int::from(wait.unwrap_or(false))
}

/// SQLite's commit hook: a statement whose progress check says stop (its
/// deadline past, its invocation ended) commits nothing. SQLite turns the
/// commit into a rollback and the statement fails
/// (`SQLITE_CONSTRAINT_COMMITHOOK`), which the executor reports as
/// `timeout`. The progress handler runs only where the program jumps, so a
/// short program whose one row ran long (flattened calls on large values)
/// reached its commit unchecked: an outside review saw writes answered
/// `timeout` and committed, which a client retrying on `timeout` doubles.
/// The sidecar's own `COMMIT` of a plugin's transaction runs with no check
/// ([`enter_host`]), so it is never refused here. Returns non-zero to refuse.
unsafe extern "C" fn refuse_late_commit(slot: *mut c_void) -> c_int {
    let go_on = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `slot` is the pointer `install` registered with this
        // hook, valid while the connection is open.
        unsafe { &*slot.cast::<Slot>() }.may_go_on()
    }));
    c_int::from(!go_on.unwrap_or(false))
}

/// How many pages a WAL may hold before a checkpoint copies them into the
/// database (SQLite's own default for its automatic checkpoint).
pub const CHECKPOINT_PAGES: c_int = 1000;

/// SQLite's WAL hook, called after each commit with the pages the WAL
/// holds. SQLite's own (the automatic checkpoint) copies them into the
/// database right there, inside the committing statement's last step,
/// after its deadline's last check: an outside review inserted 260–600
/// rows of 1 MiB within a 1 s deadline, and the checkpoint that followed
/// the commit (1.2–1.4 s for 400 MB here) made the caller's answer
/// `timeout` for rows that were committed. Past [`CHECKPOINT_PAGES`] this
/// asks the pool's checkpointer instead (when there is one) and returns at
/// once.
unsafe extern "C" fn committed_to_wal(
    slot: *mut c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    pages: c_int,
) -> c_int {
    if pages < CHECKPOINT_PAGES {
        return ffi::SQLITE_OK;
    }
    // SAFETY: `slot` is the pointer `install` registered with this hook,
    // valid while the connection is open.
    let slot = unsafe { &*slot.cast::<Slot>() };
    match slot.checkpoints.get() {
        // A full channel means a checkpoint is already asked for.
        Some(checkpoints) => {
            let _ = checkpoints.try_send(());
        }
        // SAFETY: SQLite's arguments: the committing connection, inside
        // its call, and the database's name.
        None => {
            unsafe { ffi::sqlite3_wal_checkpoint(db, name) };
        }
    }
    ffi::SQLITE_OK
}

/// SQLite's destructor for the slot.
unsafe extern "C" fn drop_slot(slot: *mut c_void) {
    // SAFETY: SQLite passes back the pointer `install` made with
    // `Arc::into_raw`, once, when the connection closes (or when the
    // registration fails); nothing uses it afterwards. Dropping mutexes and
    // `Arc`s cannot panic.
    drop(unsafe { Arc::from_raw(slot.cast::<Slot>()) });
}

/// The authorizer SQLite calls while it prepares a statement.
unsafe extern "C" fn authorize(
    slot: *mut c_void,
    action: c_int,
    first: *const c_char,
    second: *const c_char,
    database: *const c_char,
    _trigger_or_view: *const c_char,
) -> c_int {
    let decided = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `slot` is the pointer `install` registered with this
        // callback; it is valid until the connection closes, and SQLite
        // calls the authorizer only on the open connection.
        let slot = unsafe { &*slot.cast::<Slot>() };
        // SAFETY: SQLite passes NULL or NUL-terminated strings valid for
        // the duration of the call.
        let (first, second, database) = unsafe { (text(first), text(second), text(database)) };
        // A name that is not UTF-8 matches no grant.
        let valid = |arg: &Option<Option<&str>>| !matches!(arg, Some(None));
        if !(valid(&first) && valid(&second) && valid(&database)) {
            return false;
        }
        slot.allows(action, first.flatten(), second.flatten(), database.flatten())
    }));
    match decided {
        Ok(true) => ffi::SQLITE_OK,
        _ => ffi::SQLITE_DENY,
    }
}

/// An authorizer argument: `None` for NULL, `Some(None)` for bytes that
/// are not UTF-8.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string valid for `'a`.
unsafe fn text<'a>(ptr: *const c_char) -> Option<Option<&'a str>> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller's promise.
    Some(unsafe { CStr::from_ptr(ptr) }.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's backstop: all SQLite connections of the process hold
    /// at most 512 MiB (what a statement past it gets is tested with a
    /// lower limit in `sqlite_temp_files`; a limit of 0 would be none).
    #[test]
    fn the_heap_limit_in_force_is_512_mib() {
        limit_heap();
        // SAFETY: a negative argument only reads the limit.
        assert_eq!(unsafe { ffi::sqlite3_hard_heap_limit64(-1) }, 512 << 20);
    }

    fn grant(extra: &str) -> SqliteGrant {
        let policy = SqlPolicy::from_toml(&format!(
            "statements = [\"select\", \"insert\", \"update\", \"delete\"]\n{extra}\n[tables]\n\
             products = [\"select\", \"insert\", \"update\"]\n\
             customers = {{ select = [\"id\", \"Name\"], update = [\"name\"] }}\n\
             audit_log = {{ insert = [\"at\"] }}\n"
        ))
        .unwrap();
        SqliteGrant::new(&policy, Door::Gatehouse)
    }

    #[test]
    fn actions_are_decided_by_the_grant() {
        let g = grant("functions = [\"Similarity\"]\ntable_functions = [\"json_each\"]");
        let main = Some("main");
        // (action, first, second, database, allowed)
        type Case<'a> = (i32, Option<&'a str>, Option<&'a str>, Option<&'a str>, bool);
        let cases: &[Case] = &[
            (ffi::SQLITE_SELECT, None, None, None, true),
            (ffi::SQLITE_READ, Some("products"), Some("price"), main, true),
            (ffi::SQLITE_READ, Some("PRODUCTS"), Some("PRICE"), main, true),
            (ffi::SQLITE_READ, Some("products"), Some(""), main, true),
            (ffi::SQLITE_READ, Some("products"), Some("price"), Some("temp"), false),
            (ffi::SQLITE_READ, Some("products"), Some("price"), Some("other"), false),
            (ffi::SQLITE_READ, Some("customers"), Some("name"), main, true),
            (ffi::SQLITE_READ, Some("customers"), Some("secret_note"), main, false),
            (ffi::SQLITE_READ, Some("customers"), Some(""), main, true),
            (ffi::SQLITE_READ, Some("audit_log"), Some("at"), main, false),
            (ffi::SQLITE_READ, Some("audit_log"), Some(""), main, false),
            (ffi::SQLITE_READ, Some("secrets"), Some("value"), main, false),
            (ffi::SQLITE_READ, Some("sqlite_master"), Some("sql"), main, false),
            (ffi::SQLITE_READ, Some("json_each"), Some("value"), main, true),
            (ffi::SQLITE_READ, Some("pragma_table_info"), Some("name"), main, false),
            (ffi::SQLITE_INSERT, Some("audit_log"), None, main, true),
            (ffi::SQLITE_INSERT, Some("customers"), None, main, false),
            (ffi::SQLITE_INSERT, Some("sqlite_master"), None, main, false),
            (ffi::SQLITE_UPDATE, Some("customers"), Some("name"), main, true),
            (ffi::SQLITE_UPDATE, Some("customers"), Some("email"), main, false),
            (ffi::SQLITE_UPDATE, Some("customers"), None, main, false),
            (ffi::SQLITE_DELETE, Some("products"), None, main, false),
            (ffi::SQLITE_FUNCTION, None, Some("lower"), None, true),
            (ffi::SQLITE_FUNCTION, None, Some("LIKE"), None, true),
            (ffi::SQLITE_FUNCTION, None, Some("similarity"), None, true),
            (ffi::SQLITE_FUNCTION, None, Some("load_extension"), None, false),
            (ffi::SQLITE_FUNCTION, None, Some("randomblob"), None, false),
            (ffi::SQLITE_FUNCTION, None, None, None, false),
            (ffi::SQLITE_TRANSACTION, Some("BEGIN"), None, None, false),
            (ffi::SQLITE_RECURSIVE, None, None, None, true),
            (ffi::SQLITE_PRAGMA, Some("writable_schema"), None, None, false),
            (ffi::SQLITE_ATTACH, Some("/tmp/x"), None, None, false),
            (ffi::SQLITE_DETACH, Some("x"), None, None, false),
            (ffi::SQLITE_CREATE_TABLE, Some("x"), None, main, false),
            (ffi::SQLITE_CREATE_TEMP_TABLE, Some("x"), None, Some("temp"), false),
            (ffi::SQLITE_DROP_TABLE, Some("products"), None, main, false),
            (ffi::SQLITE_ALTER_TABLE, Some("main"), Some("products"), None, false),
            (ffi::SQLITE_SAVEPOINT, Some("BEGIN"), Some("x"), None, false),
            (ffi::SQLITE_ANALYZE, Some("products"), None, main, false),
            (ffi::SQLITE_CREATE_VTABLE, Some("x"), Some("fts5"), main, false),
            (ffi::SQLITE_COPY, None, None, None, false),
            (1000, None, None, None, false),
        ];
        for (action, first, second, db, expected) in cases {
            assert_eq!(g.allows(*action, *first, *second, *db), *expected, "{action} {first:?} {second:?} {db:?}");
        }
    }

    /// A write to a table whose schema replaces conflicting rows deletes
    /// them: the plugin needs `delete` on it. Attack: an insert-only
    /// plugin overwriting rows through `UNIQUE … ON CONFLICT REPLACE`.
    #[test]
    fn writes_to_a_replacing_table_need_delete() {
        let g = grant("");
        let replacing: BTreeSet<String> = ["products".into(), "audit_log".into()].into();
        let slot = Slot::new();
        slot.set(Mode::Plugin(Arc::new(g.clone()), Arc::new(replacing.clone())));
        // products: insert and update granted, delete not.
        for action in [ffi::SQLITE_INSERT, ffi::SQLITE_UPDATE] {
            assert!(!g.allows_replacing(action, Some("Products"), &replacing));
            assert!(g.allows_replacing(action, Some("customers"), &replacing));
        }
        assert!(!slot.allows(ffi::SQLITE_INSERT, Some("products"), None, Some("main")));
        assert!(g.allows_replacing(ffi::SQLITE_READ, Some("products"), &replacing));
        let with_delete = SqlPolicy::from_toml(
            "statements = [\"insert\", \"delete\"]\n[tables]\nproducts = [\"insert\", \"delete\"]\n",
        )
        .unwrap();
        let g = SqliteGrant::new(&with_delete, Door::Gatehouse);
        assert!(g.allows_replacing(ffi::SQLITE_INSERT, Some("products"), &replacing));
    }

    #[test]
    fn replace_conflict_clauses_are_found_by_token() {
        for (sql, replaces) in [
            ("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE ON CONFLICT REPLACE)", true),
            ("CREATE TABLE t (id INTEGER, UNIQUE (id) on   conflict\n replace)", true),
            ("CREATE TABLE t (id INTEGER PRIMARY KEY ON CONFLICT REPLACE)", true),
            ("CREATE TABLE t (id INTEGER UNIQUE ON CONFLICT ABORT, note TEXT DEFAULT 'on conflict replace')", false),
            ("CREATE TABLE \"on conflict replace\" (\"replace\" TEXT)", false),
            ("CREATE TABLE t (id INTEGER, \"on\" TEXT, \"conflict\" TEXT, \"replace\" TEXT)", false),
            // A column "on" of type "conflict" "replace": quoted, so names.
            ("CREATE TABLE t (\"on\" \"conflict\" \"replace\")", false),
            ("CREATE TABLE t (x TEXT DEFAULT 'unterminated", true),
        ] {
            assert_eq!(resolves_by_replace(sql), replaces, "{sql}");
        }
    }

    #[test]
    fn transactions_follow_the_door_and_the_policy() {
        let policy = SqlPolicy::from_toml("statements = [\"select\"]").unwrap();
        assert!(SqliteGrant::new(&policy, Door::Spin).allows(ffi::SQLITE_TRANSACTION, Some("BEGIN"), None, None));
        assert!(!SqliteGrant::new(&policy, Door::Gatehouse).allows(ffi::SQLITE_TRANSACTION, Some("BEGIN"), None, None));
        let off = SqlPolicy::from_toml("statements = [\"select\"]\ntransaction_control = false").unwrap();
        assert!(!SqliteGrant::new(&off, Door::Spin).allows(ffi::SQLITE_TRANSACTION, Some("COMMIT"), None, None));
    }

    #[test]
    fn a_closed_slot_refuses_and_a_host_slot_allows() {
        let slot = Slot::new();
        assert!(!slot.allows(ffi::SQLITE_SELECT, None, None, None));
        slot.set(Mode::Host);
        assert!(slot.allows(ffi::SQLITE_PRAGMA, Some("x"), None, None));
        slot.set(Mode::Plugin(Arc::new(grant("")), Arc::default()));
        assert!(slot.allows(ffi::SQLITE_SELECT, None, None, None));
        assert!(!slot.allows(ffi::SQLITE_PRAGMA, Some("x"), None, None));
    }

    /// A guarded connection on a file with `products` and `secrets`.
    async fn guarded(dir: &tempfile::TempDir) -> Guarded {
        use sqlx::ConnectOptions as _;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("guard.db"))
            .create_if_missing(true)
            .serialized(true);
        let mut conn = options.connect().await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, price REAL, stock INTEGER);
             CREATE TABLE secrets (id INTEGER PRIMARY KEY, value TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO products (name) SELECT 'p' || i FROM n;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        install(conn, 1 << 20).await.unwrap()
    }

    async fn runs(conn: &mut Guarded, sql: &str) -> Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).persistent(false).execute(conn.connection()).await
    }

    /// Memory goes back to the system after a statement that freed more
    /// than 64 MiB, not after every statement (a trim walks every arena:
    /// hundreds of ms after a large statement).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_statement_that_freed_much_gives_memory_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = guarded(&dir).await;
        enter_host(&mut conn);
        freed_much();
        runs(&mut conn, "SELECT count(*) FROM products").await.unwrap();
        assert!(!freed_much(), "a small statement");
        runs(&mut conn, "PRAGMA temp_store = MEMORY").await.unwrap();
        freed_much();
        let hundred_mb =
            "SELECT count(DISTINCT b) FROM (SELECT randomblob(1000000) AS b FROM products WHERE id <= 100)";
        runs(&mut conn, hundred_mb).await.unwrap();
        assert!(freed_much(), "a statement that held and freed 100 MB");
        assert!(!freed_much(), "measured again from what is in use");
        // 60 MB kept in the page cache is in use, not freed.
        runs(&mut conn, "PRAGMA cache_size = -200000").await.unwrap();
        runs(&mut conn, "CREATE TABLE big (b BLOB)").await.unwrap();
        let fill = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60) \
                    INSERT INTO big SELECT randomblob(1000000) FROM n";
        runs(&mut conn, fill).await.unwrap();
        freed_much();
        runs(&mut conn, "SELECT count(*) FROM big WHERE length(b) > 0").await.unwrap();
        assert!(!freed_much(), "a statement reading 60 MB from the cache");
    }

    /// The guard's calls on the raw handle, one by one: closed after
    /// `install` and `leave`, the grant after `enter`, everything in host
    /// mode; `leave_in_transaction` says whether a transaction is open;
    /// `enter` empties sqlx's statement cache and forgets the last
    /// inserted rowid; the progress check given to `enter_with_progress`
    /// stops a statement when it says so, and only then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_guard_follows_enter_and_leave_on_the_raw_handle() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = guarded(&dir).await;
        let not_authorized = |r: Result<_, sqlx::Error>| r.is_err_and(|e| e.to_string().contains("not authorized"));
        assert!(not_authorized(runs(&mut conn, "SELECT id FROM products").await), "closed after install");
        enter(&mut conn, Arc::new(grant(""))).await.unwrap();
        runs(&mut conn, "SELECT id FROM products").await.unwrap();
        assert!(runs(&mut conn, "SELECT value FROM secrets").await.is_err(), "not in the grant");
        leave(&mut conn);
        assert!(not_authorized(runs(&mut conn, "SELECT id FROM products").await), "closed after leave");

        enter_host(&mut conn);
        runs(&mut conn, "SELECT value FROM secrets").await.unwrap();
        runs(&mut conn, "BEGIN").await.unwrap();
        assert!(leave_in_transaction(&mut conn), "a transaction is open");
        assert!(not_authorized(runs(&mut conn, "SELECT 1").await), "leave_in_transaction leaves");
        enter_host(&mut conn);
        runs(&mut conn, "ROLLBACK").await.unwrap();
        assert!(!leave_in_transaction(&mut conn), "none is open");

        // A statement cached under the host is not kept for a plugin.
        enter_host(&mut conn);
        sqlx::query("SELECT value FROM secrets").execute(conn.connection()).await.unwrap();
        assert!(conn.connection().cached_statements_size() > 0);
        enter(&mut conn, Arc::new(grant(""))).await.unwrap();
        assert_eq!(conn.connection().cached_statements_size(), 0);

        // The last inserted rowid is forgotten on enter.
        enter_host(&mut conn);
        let inserted = runs(&mut conn, "INSERT INTO secrets (value) VALUES ('x')").await.unwrap();
        assert_ne!(inserted.last_insert_rowid(), 0);
        enter(&mut conn, Arc::new(grant(""))).await.unwrap();
        let nothing = runs(&mut conn, "INSERT INTO products (name) SELECT name FROM products WHERE 0").await.unwrap();
        assert_eq!(nothing.last_insert_rowid(), 0, "not the host's rowid");

        let long = "SELECT count(*) FROM products AS a, products AS b";
        enter_with_progress(&mut conn, Arc::new(grant("")), || false).await.unwrap();
        let stopped = runs(&mut conn, long).await.unwrap_err();
        assert!(stopped.to_string().contains("interrupt"), "{stopped}");
        enter_with_progress(&mut conn, Arc::new(grant("")), || true).await.unwrap();
        runs(&mut conn, long).await.unwrap();
    }

    /// The progress check is asked every `PROGRESS_STEPS` instructions, not
    /// SQLite's usual 1,000: a loop over 60 rows (some 250 instructions) is
    /// stopped by a check that says stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_loop_meets_the_progress_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = guarded(&dir).await;
        let short = "SELECT count(*) FROM products WHERE id <= 60";
        enter_with_progress(&mut conn, Arc::new(grant("")), || false).await.unwrap();
        let stopped = runs(&mut conn, short).await.unwrap_err();
        assert!(stopped.to_string().contains("interrupt"), "{stopped}");
    }

    /// A connection that is not serialized is refused: the guard's calls
    /// would use it from another thread than its worker's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_is_not_serialized_is_refused() {
        use sqlx::ConnectOptions as _;
        let dir = tempfile::tempdir().unwrap();
        let options =
            sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("plain.db")).create_if_missing(true);
        let conn = options.serialized(false).connect().await.unwrap();
        assert!(matches!(install(conn, 1 << 20).await, Err(GuardError::NotSerialized)));
    }
}
