//! SQLite's own check: an authorizer (`sqlite3_set_authorizer`) that lets a
//! statement be prepared only if everything it touches is in the plugin's
//! grant. SQLite calls it while it compiles a statement, once per table
//! and column read, table written (and column updated), function called,
//! and for every statement kind (`PRAGMA`, `ATTACH`, DDL, transactions).
//! A `SQLITE_DENY` makes the prepare fail with `SQLITE_AUTH` ("not
//! authorized", "access to t.c is prohibited"): the statement never runs.
//!
//! # Use
//! - [`install`] once per connection (the pool's `after_connect`). From
//!   then on the connection refuses every statement until it is told whose
//!   statement comes next.
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
//! Not visible to an authorizer: which columns an `INSERT` names (SQLite
//! reports the table only), literals, row counts, `WHERE`-less writes.
//! Reads SQLite makes for foreign keys are reported as reads of the parent
//! key, so a plugin that writes a child table needs select on the parent's
//! key column.
//!
//! # Memory safety
//! All the module's `unsafe` is here. The callback's user data is a
//! per-connection `Box<Slot>` handed to SQLite with
//! `sqlite3_set_clientdata`, whose destructor SQLite calls when the
//! connection is finally closed, after its last statement is finalized: so
//! the data outlives every statement prepared (or re-prepared after a
//! schema change) under it. The grant inside the slot is swapped under a
//! mutex, never freed while the callback reads it (an `Arc`). The callback
//! never unwinds into SQLite: it catches panics and denies.

#![allow(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use libsqlite3_sys as ffi;
use sqlx::{Connection, SqliteConnection};

use super::GuardError;
use crate::services::sql::functions;
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
    /// A plugin: its grant.
    Plugin(Arc<SqliteGrant>),
}

/// The authorizer's user data, one per connection.
struct Slot {
    mode: Mutex<Mode>,
}

impl Slot {
    fn allows(&self, action: i32, first: Option<&str>, second: Option<&str>, database: Option<&str>) -> bool {
        match &*self.mode.lock().unwrap_or_else(PoisonError::into_inner) {
            Mode::Closed => false,
            Mode::Host => true,
            Mode::Plugin(grant) => grant.allows(action, first, second, database),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }
}

/// Registers the authorizer on `conn`, refusing everything until
/// [`enter`] or [`enter_host`]. Idempotent. Call it after the driver's own
/// setup statements (sqlx's `PRAGMA`s run at connect, before the pool's
/// `after_connect`).
pub async fn install(conn: &mut SqliteConnection) -> Result<(), GuardError> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is the open connection sqlx hands out while `handle`
    // holds its lock, so no other thread uses it during these calls; the
    // name is a NUL-terminated constant.
    if !unsafe { ffi::sqlite3_get_clientdata(db, SLOT_NAME.as_ptr()) }.is_null() {
        return Ok(());
    }
    let slot = Box::into_raw(Box::new(Slot { mode: Mutex::new(Mode::Closed) }));
    // SAFETY: as above for `db`. On success SQLite owns `slot` and frees it
    // with `drop_slot` when the connection closes, after every statement
    // is finalized; on failure it has already called `drop_slot` on it.
    let rc = unsafe { ffi::sqlite3_set_clientdata(db, SLOT_NAME.as_ptr(), slot.cast(), Some(drop_slot)) };
    if rc != ffi::SQLITE_OK {
        return Err(GuardError::Sqlite(rc));
    }
    // SAFETY: `slot` stays valid until the connection closes (above), so
    // the authorizer may read it whenever SQLite calls it for this
    // connection; `authorize` only reads it through a shared reference.
    let rc = unsafe { ffi::sqlite3_set_authorizer(db, Some(authorize), slot.cast()) };
    if rc != ffi::SQLITE_OK {
        return Err(GuardError::Sqlite(rc));
    }
    Ok(())
}

/// Gives the connection to a plugin: statements prepared from now on are
/// checked against `grant`. Empties sqlx's statement cache first when it
/// holds anything, so no statement prepared under an earlier grant is
/// reused.
pub async fn enter(conn: &mut SqliteConnection, grant: Arc<SqliteGrant>) -> Result<(), GuardError> {
    if conn.cached_statements_size() > 0 {
        conn.clear_cached_statements().await?;
    }
    set(conn, Mode::Plugin(grant)).await
}

/// Gives the connection to the sidecar itself (everything allowed), for
/// its own statements around a plugin's: `BEGIN`, `COMMIT`, `ROLLBACK`.
/// Never run a plugin's statement in this mode.
pub async fn enter_host(conn: &mut SqliteConnection) -> Result<(), GuardError> {
    set(conn, Mode::Host).await
}

/// Takes the connection back: every statement is refused until the next
/// [`enter`].
pub async fn leave(conn: &mut SqliteConnection) -> Result<(), GuardError> {
    set(conn, Mode::Closed).await
}

async fn set(conn: &mut SqliteConnection, mode: Mode) -> Result<(), GuardError> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is open and locked for us (see `install`).
    let slot = unsafe { ffi::sqlite3_get_clientdata(db, SLOT_NAME.as_ptr()) };
    if slot.is_null() {
        return Err(GuardError::NotInstalled);
    }
    // SAFETY: a non-null slot under our name is the `Box<Slot>` `install`
    // registered; it lives until the connection closes, which cannot
    // happen while we hold `handle`. Only shared references are made.
    let slot = unsafe { &*slot.cast::<Slot>() };
    slot.set(mode);
    Ok(())
}

/// SQLite's destructor for the slot.
unsafe extern "C" fn drop_slot(slot: *mut c_void) {
    // SAFETY: SQLite passes back the pointer `install` made with
    // `Box::into_raw`, once, when the connection closes (or when the
    // registration fails); nothing uses it afterwards. Dropping a mutex and
    // an `Arc` cannot panic.
    drop(unsafe { Box::from_raw(slot.cast::<Slot>()) });
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
        let slot = Slot { mode: Mutex::new(Mode::Closed) };
        assert!(!slot.allows(ffi::SQLITE_SELECT, None, None, None));
        slot.set(Mode::Host);
        assert!(slot.allows(ffi::SQLITE_PRAGMA, Some("x"), None, None));
        slot.set(Mode::Plugin(Arc::new(grant(""))));
        assert!(slot.allows(ffi::SQLITE_SELECT, None, None, None));
        assert!(!slot.allows(ffi::SQLITE_PRAGMA, Some("x"), None, None));
    }
}
