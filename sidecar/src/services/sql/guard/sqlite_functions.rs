//! SQLite built-ins whose running time grows with the *product* of their
//! arguments' lengths (`like`, `glob`, `instr`, `replace`, two-argument
//! `trim`/`ltrim`/`rtrim`), given a bound.
//!
//! One call of a function is one step of SQLite's virtual machine, so the
//! progress handler (the statement's deadline, a call abandoned by its
//! caller) is not reached while it runs, and `sqlite3_interrupt` is not
//! looked at either. An outside review ran `instr()` on a 16 MiB text and an
//! 8 MiB needle for minutes past the statement's deadline, holding its
//! connection, its locks and its memory.
//!
//! [`register`] gives every pooled connection functions of the same names
//! and arities. Each refuses a call whose cost (the product of its first two
//! arguments' lengths in bytes) is over [`COST_LIMIT`] with `SQLITE_TOOBIG`
//! (`quota-exceeded`), and otherwise evaluates SQLite's own built-in on a
//! private in-memory connection of the calling thread, so its answers are
//! SQLite's, byte for byte. The private connection takes the calling
//! connection's `SQLITE_LIMIT_LENGTH` and `SQLITE_LIKE_PATTERN_LENGTH`
//! before each call, and SQLite's process-wide heap limit covers it.
//!
//! Cost of the indirection: a statement step and two or three value copies
//! per call; `LIKE` also loses SQLite's index optimisation for a constant
//! prefix (which only applies to the built-in). `BENCHMARKS.md` has the
//! figures.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{CStr, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use libsqlite3_sys as ffi;

/// Largest product of the first two arguments' lengths (bytes) one call
/// may have: SQLite's algorithms for these functions compare up to that
/// many bytes, a few hundred milliseconds at worst on this project's
/// machines. A number counts as 32 bytes (its text), `NULL` as 0.
pub const COST_LIMIT: u64 = 1 << 28;

/// The functions given a bound: name, arity, and the statement evaluating
/// SQLite's own built-in on the private connection.
const BOUNDED: &[(&CStr, c_int, &CStr)] = &[
    (c"like", 2, c"SELECT like(?1, ?2)"),
    (c"like", 3, c"SELECT like(?1, ?2, ?3)"),
    (c"glob", 2, c"SELECT glob(?1, ?2)"),
    (c"instr", 2, c"SELECT instr(?1, ?2)"),
    (c"replace", 3, c"SELECT replace(?1, ?2, ?3)"),
    (c"trim", 2, c"SELECT trim(?1, ?2)"),
    (c"ltrim", 2, c"SELECT ltrim(?1, ?2)"),
    (c"rtrim", 2, c"SELECT rtrim(?1, ?2)"),
];

/// Registers the bounded functions on `db`, replacing SQLite's built-ins
/// there. Idempotent. Returns SQLite's code when a registration fails.
///
/// # Safety
/// `db` must be an open connection that no other thread uses during the
/// call.
pub(super) unsafe fn register(db: *mut ffi::sqlite3) -> Result<(), c_int> {
    for (index, (name, arity, _)) in BOUNDED.iter().enumerate() {
        let flags = ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC;
        // SAFETY: `db` is open and ours for the call (the caller's promise);
        // the name is NUL-terminated and static; the user data is an index,
        // never dereferenced.
        let rc = unsafe {
            ffi::sqlite3_create_function_v2(
                db,
                name.as_ptr(),
                *arity,
                flags,
                index as *mut c_void,
                Some(call),
                None,
                None,
                None,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(rc);
        }
    }
    Ok(())
}

/// The cost of one call, from its first two arguments (see [`COST_LIMIT`]).
///
/// # Safety
/// Each pointer must be a live argument of the current call.
unsafe fn cost(first: *mut ffi::sqlite3_value, second: *mut ffi::sqlite3_value) -> u64 {
    // SAFETY: live arguments (the caller's promise). Only the type and the
    // length are read; for text and blobs neither converts the value.
    let length = |value| unsafe {
        match ffi::sqlite3_value_type(value) {
            ffi::SQLITE_TEXT | ffi::SQLITE_BLOB => ffi::sqlite3_value_bytes(value).max(0) as u64,
            ffi::SQLITE_NULL => 0,
            _ => 32,
        }
    };
    length(first).saturating_mul(length(second))
}

/// A private in-memory connection of one thread, with SQLite's own
/// built-ins, and one prepared statement per bounded function.
struct Private {
    db: *mut ffi::sqlite3,
    statements: Vec<*mut ffi::sqlite3_stmt>,
}

impl Private {
    fn open() -> Option<Private> {
        let mut db = ptr::null_mut();
        let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_MEMORY | ffi::SQLITE_OPEN_NOMUTEX;
        // SAFETY: a NUL-terminated name and an out-pointer; the handle is
        // closed below on failure, or by `Drop`.
        let rc = unsafe { ffi::sqlite3_open_v2(c":memory:".as_ptr(), &mut db, flags, ptr::null()) };
        let mut private = Private { db, statements: Vec::with_capacity(BOUNDED.len()) };
        if rc != ffi::SQLITE_OK {
            return None;
        }
        for (_, _, sql) in BOUNDED {
            let mut statement = ptr::null_mut();
            // SAFETY: `db` is open and used by this thread only; the text is
            // NUL-terminated (length -1).
            let rc = unsafe { ffi::sqlite3_prepare_v2(db, sql.as_ptr(), -1, &mut statement, ptr::null_mut()) };
            if rc != ffi::SQLITE_OK {
                return None;
            }
            private.statements.push(statement);
        }
        Some(private)
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        // SAFETY: statements and connection were opened by `open` on this
        // thread and are finalized once, statements first.
        unsafe {
            for statement in self.statements.drain(..) {
                ffi::sqlite3_finalize(statement);
            }
            ffi::sqlite3_close(self.db);
        }
    }
}

thread_local! {
    /// Opened on a thread's first bounded call; closed when the thread
    /// ends (sqlx runs each SQLite connection on a thread of its own).
    static PRIVATE: RefCell<Option<Private>> = const { RefCell::new(None) };
}

/// The function SQLite calls for every bounded name.
unsafe extern "C" fn call(context: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: SQLite passes `argc` live arguments and the context of
        // this call, valid until we return.
        unsafe { evaluate(context, argc, argv) }
    }));
    if outcome.is_err() {
        // SAFETY: the context is live until we return.
        unsafe { fail(context, c"internal error in a bounded SQL function", ffi::SQLITE_INTERNAL) };
    }
}

/// # Safety
/// As SQLite calls [`call`]: a live context and `argc` live arguments.
unsafe fn evaluate(context: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    // SAFETY: the caller's promise.
    let (index, args) =
        unsafe { (ffi::sqlite3_user_data(context) as usize, std::slice::from_raw_parts(argv, argc.max(0) as usize)) };
    let (Some((name, arity, _)), [first, second, ..]) = (BOUNDED.get(index), args) else {
        // SAFETY: live context.
        return unsafe { fail(context, c"bounded SQL function called wrongly", ffi::SQLITE_MISUSE) };
    };
    debug_assert_eq!(*arity as usize, args.len());
    // SAFETY: live arguments.
    let cost = unsafe { cost(*first, *second) };
    if cost > COST_LIMIT {
        let message = format!(
            "{}(): its first two arguments' lengths multiply to {cost}, over its cost bound of {COST_LIMIT}",
            name.to_string_lossy()
        );
        let message = std::ffi::CString::new(message).unwrap_or_default();
        // SAFETY: live context.
        return unsafe { fail(context, &message, ffi::SQLITE_TOOBIG) };
    }
    // One row may hold thousands of calls with no jump between them, where
    // SQLite's progress handler runs: each call asks the statement's
    // progress check itself (an outside review ran 100 calls of 0.6 s in
    // one row, a minute past a 500 ms deadline).
    // SAFETY: the context's connection is the one running this call.
    if !unsafe { super::sqlite::may_go_on(ffi::sqlite3_context_db_handle(context)) } {
        // SAFETY: live context.
        return unsafe { fail(context, c"interrupted", ffi::SQLITE_INTERRUPT) };
    }
    PRIVATE.with(|private| {
        let mut private = private.borrow_mut();
        if private.is_none() {
            *private = Private::open();
        }
        let Some(private) = private.as_ref() else {
            // SAFETY: live context.
            return unsafe { fail(context, c"cannot open the private SQLite connection", ffi::SQLITE_NOMEM) };
        };
        // SAFETY: the private connection and its statements belong to this
        // thread; the outer connection is the one running this call, on
        // this thread; the arguments are live, and `bind_value` copies them.
        unsafe {
            let outer = ffi::sqlite3_context_db_handle(context);
            for limit in [ffi::SQLITE_LIMIT_LENGTH, ffi::SQLITE_LIMIT_LIKE_PATTERN_LENGTH] {
                ffi::sqlite3_limit(private.db, limit, ffi::sqlite3_limit(outer, limit, -1));
            }
            let statement = private.statements[index];
            for (at, arg) in args.iter().enumerate() {
                ffi::sqlite3_bind_value(statement, at as c_int + 1, *arg);
            }
            match ffi::sqlite3_step(statement) {
                ffi::SQLITE_ROW => ffi::sqlite3_result_value(context, ffi::sqlite3_column_value(statement, 0)),
                _ => {
                    let code = ffi::sqlite3_errcode(private.db);
                    ffi::sqlite3_result_error(context, ffi::sqlite3_errmsg(private.db), -1);
                    ffi::sqlite3_result_error_code(context, code);
                }
            }
            ffi::sqlite3_reset(statement);
            ffi::sqlite3_clear_bindings(statement);
        }
    })
}

/// # Safety
/// A live context.
unsafe fn fail(context: *mut ffi::sqlite3_context, message: &CStr, code: c_int) {
    // SAFETY: the caller's promise; SQLite copies the message.
    unsafe {
        ffi::sqlite3_result_error(context, message.as_ptr(), -1);
        ffi::sqlite3_result_error_code(context, code);
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Row, SqliteConnection};

    use super::*;

    async fn connection(bounded: bool) -> SqliteConnection {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        if bounded {
            let mut handle = conn.lock_handle().await.unwrap();
            // SAFETY: the handle's lock keeps other threads off the
            // connection during the call.
            unsafe { register(handle.as_raw_handle().as_ptr()) }.unwrap();
        }
        conn
    }

    /// The answer of `expr` (or its error), as SQLite's `typeof` and
    /// `quote` of it: exact for every type.
    async fn answer(conn: &mut SqliteConnection, expr: &str, args: &[Arg]) -> String {
        let sql = format!("SELECT typeof(r), quote(r) FROM (SELECT {expr} AS r)");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for arg in args {
            query = match arg {
                Arg::Text(text) => query.bind(text.clone()),
                Arg::Blob(blob) => query.bind(blob.clone()),
                Arg::Int(n) => query.bind(*n),
                Arg::Null => query.bind(None::<String>),
            };
        }
        match query.fetch_one(conn).await {
            Ok(row) => format!("{} {}", row.get::<String, _>(0), row.get::<String, _>(1)),
            Err(e) => format!("error {e}"),
        }
    }

    #[derive(Clone, Debug)]
    enum Arg {
        Text(String),
        Blob(Vec<u8>),
        Int(i64),
        Null,
    }

    #[tokio::test]
    async fn bounded_functions_answer_as_sqlites_own() {
        let mut plain = connection(false).await;
        let mut bounded = connection(true).await;
        let text = |s: &str| Arg::Text(s.to_string());
        let values = [
            text(""),
            text("a"),
            text("abcabc"),
            text("ABC"),
            text("a%c"),
            text("a_c"),
            text("x*y?[a-c]"),
            text("héllo wörld"),
            text("  padded  "),
            text("%"),
            text("_"),
            text("\\"),
            Arg::Blob(b"ab\0cab".to_vec()),
            Arg::Blob(vec![]),
            Arg::Int(12312),
            Arg::Int(-3),
            Arg::Null,
        ];
        let mut compared = 0;
        for sql in [
            "like(?, ?)",
            "glob(?, ?)",
            "instr(?, ?)",
            "trim(?, ?)",
            "ltrim(?, ?)",
            "rtrim(?, ?)",
            "? LIKE ?",
            "? GLOB ?",
        ] {
            for a in &values {
                for b in &values {
                    let args = [a.clone(), b.clone()];
                    let expected = answer(&mut plain, sql, &args).await;
                    assert_eq!(answer(&mut bounded, sql, &args).await, expected, "{sql} {args:?}");
                    compared += 1;
                }
            }
        }
        for sql in ["replace(?, ?, ?)", "like(?, ?, ?)", "? LIKE ? ESCAPE ?"] {
            for a in &values {
                for b in &values {
                    for c in [text(""), text("\\"), text("zz"), Arg::Int(7), Arg::Null] {
                        let args = [a.clone(), b.clone(), c];
                        let expected = answer(&mut plain, sql, &args).await;
                        assert_eq!(answer(&mut bounded, sql, &args).await, expected, "{sql} {args:?}");
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared > 2_000, "{compared}");
    }

    #[tokio::test]
    async fn calls_past_the_cost_limit_are_too_big_and_others_run() {
        let mut bounded = connection(true).await;
        let haystack = "a".repeat(1 << 20);
        let needle = "a".repeat(300);
        // 2^20 × 300 > 2^28: refused before SQLite's own instr runs.
        for sql in ["SELECT instr(?1, ?2)", "SELECT replace(?1, ?2, 'b')", "SELECT ?2 LIKE ?1", "SELECT trim(?1, ?2)"] {
            let error =
                sqlx::query(sql).bind(&haystack).bind(&needle).fetch_one(&mut bounded).await.map(|_| ()).unwrap_err();
            let database = error.as_database_error().expect("a database error");
            assert_eq!(database.code().as_deref(), Some("18"), "{sql}: {database}"); // SQLITE_TOOBIG
        }
        // Just under the limit: SQLite's answer.
        let needle = "a".repeat(255);
        let row = sqlx::query("SELECT instr(?1, ?2)").bind(&haystack).bind(&needle).fetch_one(&mut bounded).await;
        assert_eq!(row.unwrap().get::<i64, _>(0), 1);
    }
}
