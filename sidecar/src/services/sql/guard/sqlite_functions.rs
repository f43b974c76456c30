//! SQLite built-ins whose running time grows with the *product* of their
//! arguments' lengths (`like`, `glob`, `instr`, `replace`, two-argument
//! `trim`/`ltrim`/`rtrim`, and the grantable `unhex(x, y)` and
//! `json_patch`), or whose format is expanded at a far higher cost per
//! byte than the others' (`strftime`), given a bound.
//!
//! One call of a function is one step of SQLite's virtual machine, so the
//! progress handler (the statement's deadline, a call abandoned by its
//! caller) is not reached while it runs, and `sqlite3_interrupt` is not
//! looked at either. An outside review ran `instr()` on a 16 MiB text and an
//! 8 MiB needle for minutes past the statement's deadline, holding its
//! connection, its locks and its memory; a third ran one row of `strftime`
//! over a 1 MiB format of `%J` (each two bytes a `%.16g` number, ~150 ms a
//! call) copied into 334 places by SQLite's flattener, 56 s past a 1 s
//! deadline.
//!
//! [`register`] gives every pooled connection functions of the same names
//! and arities. Each refuses a call over its [`Bound`] with `SQLITE_TOOBIG`
//! (`quota-exceeded`), asks the statement's progress check, and otherwise
//! evaluates SQLite's own built-in on a private in-memory connection of
//! the calling thread, so its answers are SQLite's, byte for byte. The
//! private connection takes the calling connection's `SQLITE_LIMIT_LENGTH`
//! and `SQLITE_LIKE_PATTERN_LENGTH` before each call, and SQLite's
//! process-wide heap limit covers it.
//!
//! Cost of the indirection: a statement step and two or three value copies
//! per call; `LIKE` also loses SQLite's index optimisation for a constant
//! prefix (which only applies to the built-in). `BENCHMARKS.md` has the
//! figures.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use libsqlite3_sys as ffi;

/// Largest product of the first two arguments' lengths (bytes) one call
/// may have: SQLite's algorithms for these functions compare up to that
/// many bytes, a few hundred milliseconds at worst on this project's
/// machines. A number counts as 32 bytes (its text), `NULL` as 0.
pub const COST_LIMIT: u64 = 1 << 28;

/// Longest format (bytes) one `strftime` call may expand: real formats are
/// tens of bytes; at this bound a call costs ~0.1 ms, where a 1 MiB one
/// cost ~150 ms.
pub const FORMAT_LIMIT: u64 = 1 << 10;

/// Most bytes one `json_extract` call may walk: its document's length
/// times its paths. A walk costs ~8 ns a byte here (a path such as
/// `$[#-1]` crosses an array twice), so this is ~70 ms a call; a 1 MiB
/// document may be asked 8 paths at once.
pub const WALK_LIMIT: u64 = 1 << 23;

/// What one call of a bounded function may cost.
#[derive(Clone, Copy)]
enum Bound {
    /// The product of its first two arguments' lengths, at most [`COST_LIMIT`].
    Product,
    /// A JSON patch: the target and the patch's lengths together times the
    /// patch's (each key of the patch is looked for among the target's and
    /// those added before it), at most [`COST_LIMIT`].
    Patch,
    /// Its first argument's length, at most [`FORMAT_LIMIT`].
    Format,
    /// Its first argument's length times the number of the others (each a
    /// path walked through it), at most [`WALK_LIMIT`].
    Walks,
}

/// The functions given a bound: name, arity (-1: any), and bound.
const BOUNDED: &[(&CStr, c_int, Bound)] = &[
    (c"like", 2, Bound::Product),
    (c"like", 3, Bound::Product),
    (c"glob", 2, Bound::Product),
    (c"instr", 2, Bound::Product),
    (c"replace", 3, Bound::Product),
    (c"trim", 2, Bound::Product),
    (c"ltrim", 2, Bound::Product),
    (c"rtrim", 2, Bound::Product),
    (c"unhex", 2, Bound::Product),
    (c"json_patch", 2, Bound::Patch),
    (c"jsonb_patch", 2, Bound::Patch),
    (c"strftime", -1, Bound::Format),
    (c"json_extract", -1, Bound::Walks),
];

/// Registers the bounded functions on `db`, replacing SQLite's built-ins
/// there. Idempotent. Returns SQLite's code when a registration fails.
///
/// # Safety
/// `db` must be an open connection that no other thread uses during the
/// call.
pub(super) unsafe fn register(db: *mut ffi::sqlite3) -> Result<(), c_int> {
    for (index, (name, arity, _)) in BOUNDED.iter().enumerate() {
        // A JSON result keeps its subtype (so that `json_object` nests it
        // as JSON, not as a string), as SQLite's own functions' do: the
        // flag says so to SQLite.
        let flags = ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC | ffi::SQLITE_RESULT_SUBTYPE;
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

/// A value's length for [`Bound`]: a number counts as 32 bytes (its text),
/// `NULL` as 0.
///
/// # Safety
/// `value` must be a live argument of the current call.
unsafe fn length(value: *mut ffi::sqlite3_value) -> u64 {
    // SAFETY: a live argument (the caller's promise). Only the type and the
    // length are read; for text and blobs neither converts the value.
    unsafe {
        match ffi::sqlite3_value_type(value) {
            ffi::SQLITE_TEXT | ffi::SQLITE_BLOB => ffi::sqlite3_value_bytes(value).max(0) as u64,
            ffi::SQLITE_NULL => 0,
            _ => 32,
        }
    }
}

/// Why a call of `name` with `args` is over `bound`, if it is.
///
/// # Safety
/// Each pointer must be a live argument of the current call.
unsafe fn over_bound(name: &CStr, bound: Bound, args: &[*mut ffi::sqlite3_value]) -> Option<String> {
    let name = name.to_string_lossy();
    // SAFETY: live arguments (the caller's promise).
    let length = |at: usize| args.get(at).map_or(0, |value| unsafe { length(*value) });
    match bound {
        Bound::Product => {
            let cost = length(0).saturating_mul(length(1));
            (cost > COST_LIMIT).then(|| {
                format!(
                    "{name}(): its first two arguments' lengths multiply to {cost}, over its cost bound of {COST_LIMIT}"
                )
            })
        }
        Bound::Patch => {
            let cost = length(0).saturating_add(length(1)).saturating_mul(length(1));
            (cost > COST_LIMIT).then(|| {
                format!(
                    "{name}(): a patch of {} bytes on {} bytes costs {cost}, over its cost bound of {COST_LIMIT}",
                    length(1),
                    length(0)
                )
            })
        }
        Bound::Walks => {
            let walked = length(0).saturating_mul(args.len().saturating_sub(1).max(1) as u64);
            (walked > WALK_LIMIT).then(|| {
                format!(
                    "{name}(): {} paths through {} bytes walk {walked}, over its bound of {WALK_LIMIT}",
                    args.len().saturating_sub(1),
                    length(0)
                )
            })
        }
        Bound::Format => {
            let format = length(0);
            (format > FORMAT_LIMIT)
                .then(|| format!("{name}(): a format of {format} bytes, over its bound of {FORMAT_LIMIT}"))
        }
    }
}

/// A private in-memory connection of one thread, with SQLite's own
/// built-ins, and the statements evaluating them, prepared on first use.
struct Private {
    db: *mut ffi::sqlite3,
    /// By index in [`BOUNDED`] and number of arguments.
    statements: HashMap<(usize, usize), *mut ffi::sqlite3_stmt>,
}

/// Most statements a [`Private`] keeps (a variadic function has one per
/// number of arguments): past it they are all finalized.
const MAX_PRIVATE_STATEMENTS: usize = 64;

impl Private {
    fn open() -> Option<Private> {
        let mut db = ptr::null_mut();
        // The name `:memory:` alone makes the database in-memory; one thread
        // uses it, so no mutex.
        let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX;
        // SAFETY: a NUL-terminated name and an out-pointer; the handle is
        // closed below on failure, or by `Drop`.
        let rc = unsafe { ffi::sqlite3_open_v2(c":memory:".as_ptr(), &mut db, flags, ptr::null()) };
        let private = Private { db, statements: HashMap::new() };
        (rc == ffi::SQLITE_OK).then_some(private)
    }

    /// The statement `SELECT name(?1, …, ?n)` for `BOUNDED[index]` with `n`
    /// arguments, or SQLite's code when it cannot be prepared.
    fn statement(&mut self, index: usize, n: usize) -> Result<*mut ffi::sqlite3_stmt, c_int> {
        if let Some(statement) = self.statements.get(&(index, n)) {
            return Ok(*statement);
        }
        if self.statements.len() >= MAX_PRIVATE_STATEMENTS {
            self.finalize_all();
        }
        let (name, _, _) = BOUNDED[index];
        let params: Vec<String> = (1..=n).map(|at| format!("?{at}")).collect();
        let sql = format!("SELECT {}({})", name.to_string_lossy(), params.join(", "));
        let sql = std::ffi::CString::new(sql).map_err(|_| ffi::SQLITE_MISUSE)?;
        let mut statement = ptr::null_mut();
        // SAFETY: `db` is open and used by this thread only; the text is
        // NUL-terminated (length -1).
        let rc = unsafe { ffi::sqlite3_prepare_v2(self.db, sql.as_ptr(), -1, &mut statement, ptr::null_mut()) };
        if rc != ffi::SQLITE_OK {
            return Err(rc);
        }
        self.statements.insert((index, n), statement);
        Ok(statement)
    }

    fn finalize_all(&mut self) {
        for (_, statement) in self.statements.drain() {
            // SAFETY: prepared by `statement` on this connection, finalized once.
            unsafe { ffi::sqlite3_finalize(statement) };
        }
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.finalize_all();
        // SAFETY: opened by `open` on this thread, its statements finalized.
        unsafe { ffi::sqlite3_close(self.db) };
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
    let (index, args) = unsafe {
        let args = if argc > 0 { std::slice::from_raw_parts(argv, argc as usize) } else { &[] };
        (ffi::sqlite3_user_data(context) as usize, args)
    };
    let Some((name, arity, bound)) = BOUNDED.get(index) else {
        // SAFETY: live context.
        return unsafe { fail(context, c"bounded SQL function called wrongly", ffi::SQLITE_MISUSE) };
    };
    debug_assert!(*arity < 0 || *arity as usize == args.len());
    // SAFETY: live arguments.
    if let Some(over) = unsafe { over_bound(name, *bound, args) } {
        let message = std::ffi::CString::new(over).unwrap_or_default();
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
        let Some(private) = private.as_mut() else {
            // SAFETY: live context.
            return unsafe { fail(context, c"cannot open the private SQLite connection", ffi::SQLITE_NOMEM) };
        };
        let statement = match private.statement(index, args.len()) {
            Ok(statement) => statement,
            // SAFETY: live context; SQLite copies the message.
            Err(code) => unsafe {
                ffi::sqlite3_result_error(context, ffi::sqlite3_errmsg(private.db), -1);
                return ffi::sqlite3_result_error_code(context, code);
            },
        };
        // SAFETY: the private connection and its statements belong to this
        // thread; the outer connection is the one running this call, on
        // this thread; the arguments are live, and `bind_value` copies them.
        unsafe {
            let outer = ffi::sqlite3_context_db_handle(context);
            for limit in [ffi::SQLITE_LIMIT_LENGTH, ffi::SQLITE_LIMIT_LIKE_PATTERN_LENGTH] {
                ffi::sqlite3_limit(private.db, limit, ffi::sqlite3_limit(outer, limit, -1));
            }
            for (at, arg) in args.iter().enumerate() {
                ffi::sqlite3_bind_value(statement, at as c_int + 1, *arg);
            }
            match ffi::sqlite3_step(statement) {
                // The copy keeps the value's subtype.
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
        // The grantable quadratic ones, on values of their own kinds too.
        let more = [
            text("616263"),
            text("61-62 63"),
            text("- "),
            text(r#"{"a":1,"b":{"c":2}}"#),
            text(r#"{"b":{"c":null,"d":[1]},"e":"x"}"#),
            text("[1,2]"),
            text("not json"),
        ];
        for sql in ["unhex(?, ?)", "json_patch(?, ?)", "jsonb_patch(?, ?)"] {
            for a in values.iter().chain(&more) {
                for b in values.iter().chain(&more) {
                    let args = [a.clone(), b.clone()];
                    let expected = answer(&mut plain, sql, &args).await;
                    assert_eq!(answer(&mut bounded, sql, &args).await, expected, "{sql} {args:?}");
                    compared += 1;
                }
            }
        }
        // json_extract with one path or several, and nested in the JSON
        // functions, which read its result's subtype.
        let docs = [
            text(r#"{"a":1,"b":{"c":[1,2,{"d":"x"}]},"e":null,"f":"s"}"#),
            text("[1,[2,3],{\"k\":true}]"),
            text("not json"),
            Arg::Null,
            Arg::Int(3),
        ];
        let paths = [text("$"), text("$.b"), text("$.b.c[2]"), text("$[#-1]"), text("$.f"), text("$.e"), text("bad")];
        for doc in &docs {
            for path in &paths {
                for sql in [
                    "json_extract(?, ?)",
                    "json_object('k', json_extract(?, ?))",
                    "json_array(json_extract(?, ?))",
                    "json_extract(?, ?, '$.a', '$[0]')",
                ] {
                    let args = [doc.clone(), path.clone()];
                    let expected = answer(&mut plain, sql, &args).await;
                    assert_eq!(answer(&mut bounded, sql, &args).await, expected, "{sql} {args:?}");
                    compared += 1;
                }
            }
        }
        // strftime with any number of arguments (not `now`: it moves).
        let formats = [text("%Y-%m-%d %H:%M:%f"), text("%J %s %j %w"), text("%%"), text(""), Arg::Null, Arg::Int(5)];
        let times =
            [text("2026-12-05 04:20:00.5"), text("2460000.5"), Arg::Int(1_700_000_000), text("junk"), Arg::Null];
        let modifiers = [text("+1 day"), text("start of month"), text("unixepoch"), text("bogus")];
        for format in &formats {
            let args = [format.clone()];
            let (ours, sqlites) =
                (answer(&mut bounded, "strftime(?)", &args).await, answer(&mut plain, "strftime(?)", &args).await);
            assert_eq!(ours.split(' ').next(), sqlites.split(' ').next(), "{args:?}: the same type");
            for time in &times {
                let args = [format.clone(), time.clone()];
                let expected = answer(&mut plain, "strftime(?, ?)", &args).await;
                assert_eq!(answer(&mut bounded, "strftime(?, ?)", &args).await, expected, "{args:?}");
                for modifier in &modifiers {
                    let args = [format.clone(), time.clone(), modifier.clone(), text("+2 hours")];
                    let expected = answer(&mut plain, "strftime(?, ?, ?, ?)", &args).await;
                    assert_eq!(answer(&mut bounded, "strftime(?, ?, ?, ?)", &args).await, expected, "{args:?}");
                    compared += 2;
                }
            }
        }
        assert!(compared > 2_500, "{compared}");
    }

    /// A thread's private statements (one per function and number of
    /// arguments) are kept for reuse, and never more than
    /// `MAX_PRIVATE_STATEMENTS` of them.
    #[test]
    fn private_statements_are_kept_and_bounded() {
        let mut private = Private::open().unwrap();
        let strftime = BOUNDED.iter().position(|(name, _, _)| *name == c"strftime").unwrap();
        for n in 1..=10 {
            private.statement(strftime, n).unwrap();
        }
        assert_eq!(private.statements.len(), 10, "each kept");
        for n in 1..=200 {
            private.statement(strftime, n).unwrap();
            assert!(private.statements.len() <= MAX_PRIVATE_STATEMENTS);
        }
        assert!(private.statements.contains_key(&(strftime, 200)));
    }

    /// A thread's private connection is closed when the thread ends:
    /// tokio's blocking threads come and go, and each would otherwise
    /// leave one behind.
    #[test]
    fn a_private_connection_ends_with_its_thread() {
        // SAFETY: a read of SQLite's global counter.
        let used = || unsafe { ffi::sqlite3_memory_used() };
        let before = used();
        std::thread::spawn(move || {
            PRIVATE.with(|private| {
                let mut opened = Private::open().unwrap();
                opened.statement(0, 2).unwrap();
                *private.borrow_mut() = Some(opened);
            });
            assert!(used() > 0);
        })
        .join()
        .unwrap();
        assert!(used() <= before + 4096, "{} bytes left of {}", used() - before, before);
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
        // The grantable quadratic ones.
        let hex = "61".repeat(1 << 19);
        for sql in ["SELECT unhex(?1, ?2)", "SELECT json_patch(?1, ?2)"] {
            let error =
                sqlx::query(sql).bind(&hex).bind(&needle).fetch_one(&mut bounded).await.map(|_| ()).unwrap_err();
            let database = error.as_database_error().expect("a database error");
            assert_eq!(database.code().as_deref(), Some("18"), "{sql}: {database}");
            assert!(database.message().contains("cost bound"), "{database}");
        }
        // A patch costs with its own length squared, whatever the target.
        let patch = format!("{{{}}}", (0..100_000).map(|k| format!("\"k{k}\":1")).collect::<Vec<_>>().join(","));
        for sql in ["SELECT json_patch('{}', ?1)", "SELECT jsonb_patch('{}', ?1)"] {
            let error = sqlx::query(sql).bind(&patch).fetch_one(&mut bounded).await.map(|_| ()).unwrap_err();
            let database = error.as_database_error().expect("a database error");
            assert_eq!(database.code().as_deref(), Some("18"), "{sql}: {database}");
        }
        // json_extract: a document's length times its paths.
        let document = format!("[{}]", vec!["1"; 500_000].join(","));
        let walks = |n: usize| {
            let paths = vec!["'$[#-1]'"; n].join(", ");
            format!("SELECT json_extract(?1, {paths})")
        };
        let most = (WALK_LIMIT / document.len() as u64) as usize;
        assert!(most >= 8, "{most}");
        let error = sqlx::query(sqlx::AssertSqlSafe(walks(most + 1))).bind(&document).fetch_one(&mut bounded).await;
        let error = error.map(|_| ()).unwrap_err();
        let database = error.as_database_error().expect("a database error");
        assert_eq!(database.code().as_deref(), Some("18"), "{database}");
        assert!(database.message().contains("paths through"), "{database}");
        let row = sqlx::query(sqlx::AssertSqlSafe(walks(most))).bind(&document).fetch_one(&mut bounded).await.unwrap();
        assert_eq!(row.get::<String, _>(0), format!("[{}]", vec!["1"; most].join(",")));
        // strftime: a format over its bound, whatever follows it; one at it runs.
        for sql in [
            "SELECT strftime(?1)",
            "SELECT strftime(?1, 0, 'unixepoch')",
            "SELECT strftime(?1, 0, 'unixepoch', '+1 day')",
        ] {
            let long = "%J".repeat(FORMAT_LIMIT as usize / 2 + 1);
            let error = sqlx::query(sql).bind(&long).fetch_one(&mut bounded).await.map(|_| ()).unwrap_err();
            let database = error.as_database_error().expect("a database error");
            assert_eq!(database.code().as_deref(), Some("18"), "{sql}: {database}");
            assert!(database.message().contains("a format of 1026 bytes"), "{database}");
            let at = "%Y".repeat(FORMAT_LIMIT as usize / 2);
            let row = sqlx::query(sql).bind(&at).fetch_one(&mut bounded).await.unwrap();
            assert_eq!(row.get::<String, _>(0).len(), 2 * FORMAT_LIMIT as usize, "{sql}");
        }
        // Just under the limit: SQLite's answer.
        let needle = "a".repeat(255);
        let row = sqlx::query("SELECT instr(?1, ?2)").bind(&haystack).bind(&needle).fetch_one(&mut bounded).await;
        assert_eq!(row.unwrap().get::<i64, _>(0), 1);
    }
}
