//! A plugin's SQLite statement run on the connection's raw handle, on one
//! thread, start to finish: prepared, bound, stepped and finalized there,
//! its rows decoded under the caps as they come.
//!
//! sqlx runs a SQLite connection on a worker thread of its own and sends
//! each row back to the caller over a channel; a caller that keeps up with
//! the worker waits for, and is woken by, every row. On a 2-vCPU VM that
//! cost a 50-row query more than the statement itself, and put whole runs
//! in a state of ~8 context switches a query (BENCHMARKS.md). Here a
//! statement runs on one thread whatever its rows: the executor
//! ([`super::exec`]) steps it on the invocation's own thread where it can
//! (no handoff at all), else on a thread of tokio's blocking pool. At most
//! one runs per pooled connection, so their number is bounded by the
//! pools' sizes.
//!
//! The connection is serialized (`SQLITE_OPEN_FULLMUTEX`, checked when it
//! is guarded), so SQLite allows its API from any thread. The grant, the
//! progress handler (the statement's deadline, and the invocation's stop)
//! and the busy handler are the connection's, set by
//! [`super::guard::sqlite`] before the statement, and work on whichever
//! thread steps. A caller on another thread that goes away does not wait
//! for the statement: its stop interrupts it at the next progress check,
//! and the connection, marked broken, is closed only once the statement
//! has let go of it ([`StepHandle`]'s lock), never under it.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int};
use std::ptr;
use std::sync::Arc;

use libsqlite3_sys as ffi;

use super::error::SqlError;
use super::value::{Column, Value};

/// What a statement's thread needs of its connection: the raw handle, and
/// the lock that keeps the connection open while a statement runs on it
/// (`true` once it is closed).
#[derive(Clone)]
pub struct StepHandle {
    pub(super) db: RawDb,
    pub(super) open: Arc<tokio::sync::Mutex<bool>>,
}

/// The raw handle of a serialized connection.
#[derive(Clone, Copy)]
pub(super) struct RawDb(pub(super) ptr::NonNull<ffi::sqlite3>);

// SAFETY: the connection is serialized (checked when it is guarded), so
// SQLite allows its API from any thread; the pointer is used only while
// the `StepHandle`'s lock says the connection is open.
unsafe impl Send for RawDb {}
// SAFETY: as above.
unsafe impl Sync for RawDb {}

/// A statement's rows as they come: each gets its values only if it fits
/// the caps (`decode` answers `None` past the bytes left).
pub trait RowSink {
    /// Takes one row; an error stops the statement.
    fn row(
        &mut self,
        columns: &dyn Fn() -> Vec<Column>,
        decode: &mut dyn FnMut(u64) -> Result<Option<Vec<Value>>, SqlError>,
    ) -> Result<(), SqlError>;
}

/// What a statement changed, once it is done.
pub struct Done {
    /// `sqlite3_changes64` after it.
    pub changes: u64,
    /// `sqlite3_last_insert_rowid` after it, unless 0.
    pub last_insert_rowid: Option<i64>,
}

/// How a statement failed, and whether the connection is known to be
/// fine (the database answered, and did not interrupt the statement).
pub struct Failed {
    /// What the guest is told.
    pub error: SqlError,
    /// Whether the connection may serve on.
    pub clean: bool,
}

impl From<SqlError> for Failed {
    fn from(error: SqlError) -> Failed {
        Failed { error, clean: false }
    }
}

impl StepHandle {
    /// Runs `statement` with `params` (bound to SQLite's own parameter
    /// numbers, `?` and `?NNN`), handing each row to `rows`. Blocks: call
    /// it on a blocking thread. `wanted` is false for a statement whose
    /// rows are read and dropped.
    pub fn run(&self, statement: &str, params: &[Value], wanted: bool, rows: &mut dyn RowSink) -> Result<Done, Failed> {
        let done = self.run_on_open(statement, params, wanted, rows);
        super::guard::sqlite::give_back_freed_memory();
        done
    }

    fn run_on_open(
        &self,
        statement: &str,
        params: &[Value],
        wanted: bool,
        rows: &mut dyn RowSink,
    ) -> Result<Done, Failed> {
        let open = self.open.blocking_lock();
        if !*open {
            return Err(SqlError::Internal("the connection was closed before its statement ran".into()).into());
        }
        let db = self.db.0.as_ptr();
        // SAFETY: the connection is open and stays so while `open` is held.
        let prepared = unsafe { Prepared::new(db, statement) }?;
        let Some(prepared) = prepared else {
            // Only comments or spaces: nothing runs.
            return Ok(Done { changes: 0, last_insert_rowid: None });
        };
        prepared.bind(params)?;
        let columns = || prepared.columns();
        loop {
            // SAFETY: the statement is prepared and bound, not finalized.
            match unsafe { ffi::sqlite3_step(prepared.statement) } {
                ffi::SQLITE_ROW if wanted => rows.row(&columns, &mut |left| prepared.values(left))?,
                ffi::SQLITE_ROW => {}
                ffi::SQLITE_DONE => break,
                _ => return Err(prepared.error()),
            }
        }
        // SAFETY: the connection is open; plain reads of its state.
        let (changes, rowid) = unsafe { (ffi::sqlite3_changes64(db), ffi::sqlite3_last_insert_rowid(db)) };
        Ok(Done { changes: u64::try_from(changes).unwrap_or(0), last_insert_rowid: (rowid != 0).then_some(rowid) })
    }
}

/// A prepared statement, finalized on drop.
struct Prepared {
    db: *mut ffi::sqlite3,
    statement: *mut ffi::sqlite3_stmt,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: prepared by `new`, finalized once, here.
        unsafe { ffi::sqlite3_finalize(self.statement) };
    }
}

impl Prepared {
    /// Prepares the one statement of `text` (`None`: there is none). More
    /// than one is refused: the door runs exactly one statement per call.
    ///
    /// # Safety
    /// `db` is an open, serialized connection, not closed while the
    /// returned statement lives.
    unsafe fn new(db: *mut ffi::sqlite3, text: &str) -> Result<Option<Prepared>, Failed> {
        let Some((statement, rest)) = (unsafe { prepare(db, text) })? else { return Ok(None) };
        let prepared = Prepared { db, statement };
        if !rest.trim().is_empty()
            && let Some((second, _)) = unsafe { prepare(db, rest) }?
        {
            drop(Prepared { db, statement: second });
            return Err(
                SqlError::Denied("the text holds more than one statement: send exactly one per call".into()).into()
            );
        }
        Ok(Some(prepared))
    }

    fn bind(&self, params: &[Value]) -> Result<(), Failed> {
        // SAFETY: the statement is prepared (all the calls below are on it).
        let count = unsafe { ffi::sqlite3_bind_parameter_count(self.statement) };
        for index in 1..=count {
            // SAFETY: as above; the name (or null) is valid while the statement is.
            let name = unsafe { ffi::sqlite3_bind_parameter_name(self.statement, index) };
            if !name.is_null() && unsafe { *name } != b'?' as c_char {
                return Err(Failed {
                    error: SqlError::InvalidInput(
                        "named parameters (`:name`, `@name`, `$name`) are not supported on SQLite: use `?` or `?NNN`"
                            .into(),
                    ),
                    clean: true,
                });
            }
            let Some(value) = usize::try_from(index - 1).ok().and_then(|i| params.get(i)) else {
                return Err(Failed {
                    error: SqlError::InvalidInput(format!(
                        "the statement has {count} parameters and {} values were given",
                        params.len()
                    )),
                    clean: true,
                });
            };
            // SQLITE_TRANSIENT: SQLite copies text and blobs before the call returns.
            let rc = unsafe {
                match value {
                    Value::Null => ffi::sqlite3_bind_null(self.statement, index),
                    Value::Bool(b) => ffi::sqlite3_bind_int64(self.statement, index, i64::from(*b)),
                    Value::Int(i) => ffi::sqlite3_bind_int64(self.statement, index, *i),
                    Value::Float(f) => ffi::sqlite3_bind_double(self.statement, index, *f),
                    Value::Text(t) => ffi::sqlite3_bind_text64(
                        self.statement,
                        index,
                        t.as_ptr().cast(),
                        t.len() as u64,
                        ffi::SQLITE_TRANSIENT(),
                        ffi::SQLITE_UTF8 as u8,
                    ),
                    Value::Blob(b) => ffi::sqlite3_bind_blob64(
                        self.statement,
                        index,
                        b.as_ptr().cast(),
                        b.len() as u64,
                        ffi::SQLITE_TRANSIENT(),
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(self.error());
            }
        }
        Ok(())
    }

    /// The result's columns: each name, and its type as sqlx names it
    /// (the declared type read by SQLite's affinity words; `NULL` for an
    /// expression or a declared type those words do not name).
    fn columns(&self) -> Vec<Column> {
        // SAFETY: the statement is prepared; names and declared types are
        // valid until it is finalized, and copied here.
        let count = unsafe { ffi::sqlite3_column_count(self.statement) };
        (0..count)
            .map(|i| {
                let name = unsafe { text_of(ffi::sqlite3_column_name(self.statement, i)) };
                let declared = unsafe { text_of(ffi::sqlite3_column_decltype(self.statement, i)) };
                Column { name, type_name: declared_type(&declared).to_string() }
            })
            .collect()
    }

    /// The current row's values by storage class, or `None` once their
    /// sizes ([`Value::size`]) pass `left`, before the one that would is
    /// copied.
    fn values(&self, left: u64) -> Result<Option<Vec<Value>>, SqlError> {
        // SAFETY: the statement is on a row; each column's text or blob is
        // valid until the next step and copied before it (text first, then
        // its length, as SQLite asks).
        let count = unsafe { ffi::sqlite3_column_count(self.statement) };
        let mut values = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut size = 0u64;
        for i in 0..count {
            let value = unsafe {
                match ffi::sqlite3_column_type(self.statement, i) {
                    ffi::SQLITE_NULL => Value::Null,
                    ffi::SQLITE_INTEGER => Value::Int(ffi::sqlite3_column_int64(self.statement, i)),
                    ffi::SQLITE_FLOAT => Value::Float(ffi::sqlite3_column_double(self.statement, i)),
                    kind => {
                        let data = if kind == ffi::SQLITE_TEXT {
                            ffi::sqlite3_column_text(self.statement, i)
                        } else {
                            ffi::sqlite3_column_blob(self.statement, i).cast()
                        };
                        let len = usize::try_from(ffi::sqlite3_column_bytes(self.statement, i)).unwrap_or(0);
                        if size + len as u64 > left {
                            return Ok(None);
                        }
                        let bytes = if data.is_null() { &[][..] } else { std::slice::from_raw_parts(data, len) };
                        if kind == ffi::SQLITE_TEXT {
                            let text = std::str::from_utf8(bytes).map_err(|_| {
                                SqlError::InvalidInput(format!("column {} holds text that is not UTF-8", i + 1))
                            })?;
                            Value::Text(text.to_owned())
                        } else {
                            Value::Blob(bytes.to_vec())
                        }
                    }
                }
            };
            size += value.size();
            if size > left {
                return Ok(None);
            }
            values.push(value);
        }
        Ok(Some(values))
    }

    /// The connection's last error, as the door reports it.
    fn error(&self) -> Failed {
        // SAFETY: the connection is open (`new`'s promise).
        unsafe { last_error(self.db) }
    }
}

/// The last error on `db`, as the door reports it. Interrupted (its
/// deadline, its caller gone) leaves the connection unclean: cut off is
/// cut off, as on PostgreSQL (see `exec::Failure`).
///
/// # Safety
/// `db` is an open connection.
unsafe fn last_error(db: *mut ffi::sqlite3) -> Failed {
    // SAFETY: the caller's promise; the message is copied at once.
    let (code, message) = unsafe { (ffi::sqlite3_extended_errcode(db), text_of(ffi::sqlite3_errmsg(db))) };
    let error = SqlError::from_sqlite(code, &message);
    let clean = !matches!(error, SqlError::Timeout(_));
    Failed { error, clean }
}

/// Prepares the first statement of `text`: it and the text after it, or
/// `None` when the text holds only comments and spaces.
///
/// # Safety
/// `db` is an open, serialized connection.
unsafe fn prepare(db: *mut ffi::sqlite3, text: &str) -> Result<Option<(*mut ffi::sqlite3_stmt, &str)>, Failed> {
    let len = c_int::try_from(text.len())
        .map_err(|_| SqlError::InvalidInput("the statement is too long for SQLite".into()))?;
    let mut statement = ptr::null_mut();
    let mut tail: *const c_char = ptr::null();
    // SAFETY: the caller's promise; `text` is valid for `len` bytes and
    // SQLite reads no further (no NUL needed).
    let rc = unsafe { ffi::sqlite3_prepare_v2(db, text.as_ptr().cast(), len, &mut statement, &mut tail) };
    if rc != ffi::SQLITE_OK {
        // SAFETY: as above.
        return Err(unsafe { last_error(db) });
    }
    if statement.is_null() {
        return Ok(None);
    }
    // SQLite's tail points into `text`, at a character boundary (it stops
    // after a `;` or at the end).
    let consumed = (tail as usize).saturating_sub(text.as_ptr() as usize).min(text.len());
    Ok(Some((statement, text.get(consumed..).unwrap_or(""))))
}

/// A C string SQLite hands out, copied (empty for null).
///
/// # Safety
/// `text` is null or a NUL-terminated string valid for this call.
pub(super) unsafe fn text_of(text: *const c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: the caller's promise.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

/// The name sqlx gives a column of declared type `declared` (its
/// `DataType::from_str`, then `TypeInfo::name`): the door's column types
/// stayed what they were when statements ran through sqlx.
fn declared_type(declared: &str) -> &'static str {
    let lower = declared.to_ascii_lowercase();
    match lower.as_str() {
        "boolean" | "bool" => "BOOLEAN",
        "date" => "DATE",
        "time" => "TIME",
        "datetime" | "timestamp" => "DATETIME",
        _ if lower.contains("int") => "INTEGER",
        _ if lower.contains("char") || lower.contains("clob") || lower.contains("text") => "TEXT",
        _ if lower.contains("blob") => "BLOB",
        _ if lower.contains("real") || lower.contains("floa") || lower.contains("doub") => "REAL",
        _ => "NULL",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::services::sql::guard::sqlite::{self as guard, Guarded};

    /// A guarded connection in host mode (everything allowed).
    async fn host(dir: &tempfile::TempDir) -> Guarded {
        use sqlx::ConnectOptions as _;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("step.db"))
            .create_if_missing(true)
            .serialized(true);
        let mut conn = guard::install(options.connect().await.unwrap(), 1 << 20).await.unwrap();
        guard::enter_host(&mut conn);
        conn
    }

    /// Keeps every row's values, and when the last one came.
    #[derive(Default)]
    struct Kept {
        rows: Vec<Vec<Value>>,
        first: Option<std::sync::mpsc::Sender<()>>,
        last: Option<Instant>,
    }

    impl RowSink for Kept {
        fn row(
            &mut self,
            _: &dyn Fn() -> Vec<Column>,
            decode: &mut dyn FnMut(u64) -> Result<Option<Vec<Value>>, SqlError>,
        ) -> Result<(), SqlError> {
            if let Some(first) = self.first.take() {
                let _ = first.send(());
            }
            self.rows.push(decode(u64::MAX)?.expect("no cap"));
            self.last = Some(Instant::now());
            Ok(())
        }
    }

    async fn run(conn: &Guarded, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, SqlError> {
        let (handle, sql, params) = (conn.step_handle(), sql.to_string(), params.to_vec());
        tokio::task::spawn_blocking(move || {
            let mut kept = Kept::default();
            handle.run(&sql, &params, true, &mut kept).map(|_| kept.rows).map_err(|f| f.error)
        })
        .await
        .unwrap()
    }

    /// Closing a connection waits for a statement still running on its
    /// handle (one whose caller left), and a handle kept past the close
    /// runs nothing: no statement ever steps on a closed connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_waits_for_the_running_statement_and_a_closed_handle_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = host(&dir).await;
        let handle = conn.step_handle();
        let (first, started) = std::sync::mpsc::channel();
        let running = tokio::task::spawn_blocking(move || {
            let mut kept = Kept { first: Some(first), ..Kept::default() };
            let sql =
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) SELECT i FROM n";
            let done = handle.run(sql, &[], true, &mut kept);
            (done.is_ok(), kept.rows.len(), kept.last.unwrap(), handle)
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap()).await.unwrap();
        let sqlx_conn = conn.into_connection().await;
        let closed_at = Instant::now();
        let (ok, rows, last_row, handle) = running.await.unwrap();
        assert!(ok && rows == 300_000, "the statement ran to its end");
        assert!(closed_at > last_row, "the close waited for the statement's last row");
        sqlx::Connection::close(sqlx_conn).await.unwrap();
        let stale = tokio::task::spawn_blocking(move || handle.run("SELECT 1", &[], true, &mut Kept::default()));
        let refused = stale.await.unwrap().err().expect("a closed connection runs nothing");
        assert!(matches!(refused.error, SqlError::Internal(_)), "{}", refused.error);
    }

    /// A statement that drives SQLite's heap to its limit while it
    /// compiles (a 1 KB chain of CTEs each doubling the expression it
    /// flattens: the third outside review's F8) fails `quota-exceeded`, and
    /// the memory SQLite freed goes back to the system instead of staying
    /// with the thread's arena (660 MB of the process's memory before).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_a_statement_drove_up_goes_back_to_the_system() {
        let rss = || {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().to_string();
            line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
        };
        super::super::guard::sqlite::limit_heap();
        let dir = tempfile::tempdir().unwrap();
        let conn = host(&dir).await;
        let mut ctes = vec!["c0(a) AS (SELECT 1)".to_string()];
        ctes.extend((1..=22).map(|i| format!("c{i}(a) AS (SELECT a + a FROM c{})", i - 1)));
        let doubling = format!("WITH {} SELECT a FROM c22", ctes.join(", "));
        let before = rss();
        let refused = run(&conn, &doubling, &[]).await.unwrap_err();
        assert!(matches!(refused, SqlError::TooLarge(_)), "{refused}");
        let kept = rss().saturating_sub(before);
        assert!(kept < 128 << 20, "{} MiB still held after the statement", kept >> 20);
    }

    /// One statement per text (a second one is refused, comments and a
    /// trailing `;` are not a statement); parameters by SQLite's own
    /// numbers, named ones refused, missing ones refused; values by
    /// storage class; text that is not UTF-8 refused, not mangled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statements_parameters_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let conn = host(&dir).await;
        let one = vec![vec![Value::Int(1)]];
        assert_eq!(run(&conn, "SELECT 1; -- the end", &[]).await.unwrap(), one);
        assert_eq!(run(&conn, " /* nothing */ ", &[]).await.unwrap(), Vec::<Vec<Value>>::new());
        let stacked = run(&conn, "SELECT 1; SELECT 2", &[]).await.unwrap_err();
        assert!(matches!(stacked, SqlError::Denied(_)), "{stacked}");

        let params = [Value::Text("a".into()), Value::Blob(vec![0, 1]), Value::Float(0.5), Value::Bool(true)];
        let got = run(&conn, "SELECT ?2, ?1, ?3, ?4, NULL", &params).await.unwrap();
        let want =
            vec![Value::Blob(vec![0, 1]), Value::Text("a".into()), Value::Float(0.5), Value::Int(1), Value::Null];
        assert_eq!(got, vec![want]);
        for named in ["SELECT :a", "SELECT @a", "SELECT $a"] {
            let refused = run(&conn, named, &[Value::Int(1)]).await.unwrap_err();
            assert!(refused.to_string().contains("named parameters"), "{named}: {refused}");
        }
        let missing = run(&conn, "SELECT ?, ?", &[Value::Int(1)]).await.unwrap_err();
        assert!(matches!(missing, SqlError::InvalidInput(_)), "{missing}");
        let mangled = run(&conn, "SELECT CAST(x'ff' AS TEXT)", &[]).await.unwrap_err();
        assert!(matches!(mangled, SqlError::InvalidInput(_)), "{mangled}");

        // A database stored in UTF-16 still gives UTF-8 text, and blobs
        // as they are.
        use sqlx::ConnectOptions as _;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("utf16.db"))
            .create_if_missing(true)
            .pragma("encoding", "'UTF-16le'")
            .serialized(true);
        let mut utf16 = guard::install(options.connect().await.unwrap(), 1 << 20).await.unwrap();
        guard::enter_host(&mut utf16);
        let encoding = run(&utf16, "PRAGMA encoding", &[]).await.unwrap();
        assert_eq!(encoding, vec![vec![Value::Text("UTF-16le".into())]]);
        let got = run(&utf16, "SELECT 'é', x'e900'", &[]).await.unwrap();
        assert_eq!(got, vec![vec![Value::Text("é".into()), Value::Blob(vec![0xe9, 0])]]);
    }

    /// Rows of a statement run for its changes only (`wanted` false) are
    /// stepped through, never handed on; the rows a write changed and the
    /// rowid it inserted are reported, a statement that inserted nothing
    /// reports no rowid.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_and_rowids_and_unwanted_rows() {
        let dir = tempfile::tempdir().unwrap();
        let conn = host(&dir).await;
        let handle = conn.step_handle();
        tokio::task::spawn_blocking(move || {
            let mut kept = Kept::default();
            let run = |sql: &str, wanted: bool, kept: &mut Kept| handle.run(sql, &[], wanted, kept).ok().unwrap();
            run("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", true, &mut kept);
            let inserted = run("INSERT INTO t (v) VALUES ('a'), ('b') RETURNING id", false, &mut kept);
            assert_eq!((inserted.changes, inserted.last_insert_rowid), (2, Some(2)));
            assert!(kept.rows.is_empty(), "rows not wanted are not handed on");
            let updated = run("UPDATE t SET v = 'c' WHERE id = 1", true, &mut kept);
            assert_eq!(updated.changes, 1);
            let fresh = StepHandle { db: handle.db, open: Arc::clone(&handle.open) };
            let none = conn_rowid_after_reset(&fresh);
            assert_eq!(none, None, "no rowid from a statement that inserted none");
        })
        .await
        .unwrap();
    }

    /// A `SELECT` on a connection whose last insert rowid was reset (as
    /// entering a grant does) reports none.
    fn conn_rowid_after_reset(handle: &StepHandle) -> Option<i64> {
        // SAFETY: the connection is open (the test holds it).
        unsafe { ffi::sqlite3_set_last_insert_rowid(handle.db.0.as_ptr(), 0) };
        handle.run("SELECT 1", &[], false, &mut Kept::default()).ok().unwrap().last_insert_rowid
    }

    /// Values past the bytes left are not copied: the row is refused
    /// (`None`) at the value that would pass, and one that fits exactly is
    /// taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn values_past_the_bytes_left_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = host(&dir).await;
        let handle = conn.step_handle();
        tokio::task::spawn_blocking(move || {
            struct Budget(u64, Vec<Option<Vec<Value>>>);
            impl RowSink for Budget {
                fn row(
                    &mut self,
                    _: &dyn Fn() -> Vec<Column>,
                    decode: &mut dyn FnMut(u64) -> Result<Option<Vec<Value>>, SqlError>,
                ) -> Result<(), SqlError> {
                    self.1.push(decode(self.0)?);
                    Ok(())
                }
            }
            // 'abcd' is 4 bytes, x'0102' 2, 7 an integer (8).
            let sql = "SELECT 'abcd', x'0102', 7";
            let cases = [
                (sql, 14, true),
                (sql, 13, false),
                (sql, 5, false),
                (sql, 4, false),
                ("SELECT 'abcd'", 4, true),
                ("SELECT 'abcd', x'0102'", 6, true),
            ];
            for (sql, left, fits) in cases {
                let mut budget = Budget(left, Vec::new());
                handle.run(sql, &[], true, &mut budget).ok().unwrap();
                assert_eq!(budget.1[0].is_some(), fits, "{sql}: {left} bytes left");
            }
        })
        .await
        .unwrap();
    }

    /// A result's columns carry their names and declared types (`NULL`
    /// for an expression).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn columns_are_named_with_their_declared_types() {
        let dir = tempfile::tempdir().unwrap();
        let conn = host(&dir).await;
        let handle = conn.step_handle();
        let columns = tokio::task::spawn_blocking(move || {
            struct Columns(Vec<Column>);
            impl RowSink for Columns {
                fn row(
                    &mut self,
                    columns: &dyn Fn() -> Vec<Column>,
                    _: &mut dyn FnMut(u64) -> Result<Option<Vec<Value>>, SqlError>,
                ) -> Result<(), SqlError> {
                    self.0 = columns();
                    Ok(())
                }
            }
            let mut kept = Kept::default();
            handle.run("CREATE TABLE d (n VARCHAR(9), r DOUBLE)", &[], true, &mut kept).ok().unwrap();
            handle.run("INSERT INTO d VALUES ('a', 1.5)", &[], true, &mut kept).ok().unwrap();
            let mut columns = Columns(Vec::new());
            handle.run("SELECT n, r, 1 + 1 AS two FROM d", &[], true, &mut columns).ok().unwrap();
            columns.0
        })
        .await
        .unwrap();
        let named: Vec<(&str, &str)> = columns.iter().map(|c| (c.name.as_str(), c.type_name.as_str())).collect();
        assert_eq!(named, [("n", "TEXT"), ("r", "REAL"), ("two", "NULL")]);
    }

    /// A statement stopped by its progress check (its deadline, its
    /// caller gone) is `timeout` and leaves its connection marked unclean
    /// (the executor closes it); one the database refused for its data
    /// leaves the connection clean.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_interrupted_statement_leaves_its_connection_unclean() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = host(&dir).await;
        let handle = conn.step_handle();
        let failed = |sql: &'static str| {
            let handle = handle.clone();
            tokio::task::spawn_blocking(move || handle.run(sql, &[], true, &mut Kept::default()).err().unwrap())
        };
        let refused = failed("SELECT json('not json')").await.unwrap();
        assert!(refused.clean && !matches!(refused.error, SqlError::Timeout(_)), "{}", refused.error);
        let grant = Arc::new(guard::SqliteGrant::new(
            &crate::services::sql::SqlPolicy::from_toml("statements = [\"select\"]").unwrap(),
            crate::services::sql::Door::Gatehouse,
        ));
        guard::enter_with_progress(&mut conn, grant, || false).await.unwrap();
        let slow =
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000000) SELECT max(i) FROM n";
        let stopped = failed(slow).await.unwrap();
        assert!(matches!(stopped.error, SqlError::Timeout(_)), "{}", stopped.error);
        assert!(!stopped.clean);
    }

    #[test]
    fn declared_types_are_named_as_sqlx_names_them() {
        for (declared, name) in [
            ("INTEGER", "INTEGER"),
            ("int8", "INTEGER"),
            ("INT4", "INTEGER"),
            ("BIGINT", "INTEGER"),
            ("VARCHAR(20)", "TEXT"),
            ("clob", "TEXT"),
            ("BLOB", "BLOB"),
            ("DOUBLE PRECISION", "REAL"),
            ("float", "REAL"),
            ("BOOLEAN", "BOOLEAN"),
            ("timestamp", "DATETIME"),
            ("DATE", "DATE"),
            ("TIME", "TIME"),
            ("NUMERIC", "NULL"),
            ("", "NULL"),
        ] {
            assert_eq!(declared_type(declared), name, "{declared}");
        }
    }
}
