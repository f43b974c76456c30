//! The SQL gateway's second line alone (`services::sql::guard`): the
//! database's own check, with the statement checker switched off. Every
//! statement here goes straight to a real database (a SQLite file, the
//! harness's throwaway PostgreSQL) loaded with the fixture schema, on a
//! connection entered for the fixture policy (`tests/fixtures/sql/`).
//!
//! Attacks tried: the whole bypass table of `sql_policy` (stacked
//! statements, CTE reads and writes, sub-queries in every clause,
//! `INSERT … SELECT`, column grants dodged with `*`, whole-row and
//! correlated references, quoted / case-folded / schema-qualified /
//! Unicode-escaped names, system tables, denied functions, table
//! functions, SQL in strings, DDL, `SET ROLE`, `COPY … PROGRAM`, `DO`,
//! `PREPARE`, `PRAGMA`, `ATTACH`, `VACUUM INTO`, …); a statement cached
//! under one plugin's grant replayed for another; a role keeping a
//! privilege its policy dropped; settings left behind by a call.
//!
//! Each row is either refused by the database, or runs: then it must be
//! in the documented list of what this line cannot catch on its own (with
//! why), it must return no secret value, and it must leave the ungranted
//! data unchanged. A row that changes category fails the test.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::services::sql::guard::{GuardError, postgres, sqlite};
use gatehouse::services::sql::sqlite_step::RowSink;
use gatehouse::services::sql::{Column, Dialect, Door, SqlError, SqlPolicy, Value, check};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool, Row, SqliteConnection};

use super::postgres::TestPostgres;
use super::sql_policy::{BYPASSES, allowed, fixture, policy, with};

/// Values the fixture policy never lets a plugin read.
const SECRETS: &[&str] = &["the launch codes", "vip", "owes money", "ada@example.com", "grace@example.com"];

/// Bypass rows the SQLite authorizer lets run, and why that is all it can
/// do: an authorizer sees what a statement touches, not how it is written.
const SQLITE_NOT_REFUSED: &[(&str, Not, &str)] = &[
    (
        "UPDATE products SET stock = $1::numeric(10/*) --*/) WHERE id = 1",
        Not::FailsOtherwise,
        "parameter syntax: one `$…` name to SQLite; every table it reaches is granted",
    ),
    (
        "SELECT id FROM products WHERE id = $1::int",
        Not::FailsOtherwise,
        "parameter syntax: the gateway binds `?`/`?NNN` only",
    ),
    (
        "SELECT id FROM products WHERE id = $id",
        Not::FailsOtherwise,
        "parameter syntax: the gateway binds `?`/`?NNN` only",
    ),
    (
        "SELECT id FROM products WHERE id = :id",
        Not::FailsOtherwise,
        "parameter syntax: the gateway binds `?`/`?NNN` only",
    ),
    (
        "SELECT id FROM products WHERE id = @id",
        Not::FailsOtherwise,
        "parameter syntax: the gateway binds `?`/`?NNN` only",
    ),
    (
        "DELETE FROM orders -- \0\n WHERE id = 2",
        Not::Runs,
        "SQLite reads the text up to the NUL (a WHERE-less delete of a granted table): the checker and the executor refuse a NUL",
    ),
    (
        "UPDATE customers SET name = ? -- \0\n WHERE id = 1",
        Not::FailsOtherwise,
        "the text up to the NUL has a parameter this row binds no value to",
    ),
    (
        "SELECT id FROM orders WHERE id = ? -- \0\n + ?",
        Not::FailsOtherwise,
        "the text up to the NUL has a parameter this row binds no value to",
    ),
    ("", Not::Runs, "empty: nothing to authorize"),
    ("-- nothing but a comment", Not::Runs, "empty: nothing to authorize"),
    (
        "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM products) SELECT * FROM a",
        Not::Runs,
        "reads granted products only",
    ),
    (
        "WITH a AS (SELECT 1), a AS (SELECT 2) SELECT * FROM a",
        Not::FailsOtherwise,
        "SQLite's parser: duplicate WITH name",
    ),
    (
        "INSERT OR REPLACE INTO products (id, name, price, stock) VALUES (1, 'a', 1, 1)",
        Not::Runs,
        "REPLACE's delete of the conflicting row is not reported (only INSERT); insert and update are granted",
    ),
    (
        "REPLACE INTO products (id, name, price, stock) VALUES (1, 'a', 1, 1)",
        Not::Runs,
        "REPLACE's delete of the conflicting row is not reported (only INSERT); insert and update are granted",
    ),
    ("SELECT p.id FROM products p NATURAL JOIN customers", Not::Runs, "joins on id and name, both granted"),
    ("UPDATE orders SET status = 'x'", Not::Runs, "WHERE-less write to a granted table: not an authorizer action"),
    ("DELETE FROM orders", Not::Runs, "WHERE-less write to a granted table: not an authorizer action"),
    (
        "INSERT INTO audit_log VALUES (1, '2026', 'a', 'b')",
        Not::FailsOtherwise,
        "allowed: SQLite reports INSERT per table, not per column; only id 1's uniqueness stops it here",
    ),
    (
        "INSERT INTO audit_log (id, at, actor, action) VALUES (1, 'x', 'a', 'b')",
        Not::FailsOtherwise,
        "allowed: SQLite reports INSERT per table, not per column; only id 1's uniqueness stops it here",
    ),
    ("EXPLAIN SELECT * FROM products", Not::Runs, "explains a statement on a granted table"),
    ("SELECT id FROM products WHERE name = 'x'", Not::Runs, "literals (params_only): not an authorizer action"),
    ("SELECT id FROM products LIMIT 10", Not::Runs, "literals (params_only): not an authorizer action"),
    ("SELECT id FROM products WHERE name = X'41'", Not::Runs, "literals (params_only): not an authorizer action"),
    (
        "SELECT id FROM products WHERE id = ? AND name = :n",
        Not::FailsOtherwise,
        "parameter syntax: the gateway binds `?`/`?NNN` only",
    ),
    ("SELEC id FROM products", Not::FailsOtherwise, "SQLite's parser"),
    (
        "WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets",
        Not::FailsOtherwise,
        "SQLite: circular reference",
    ),
    (
        "UPDATE OR REPLACE products SET id = 2 WHERE id = 1",
        Not::FailsOtherwise,
        "allowed (update of id granted; REPLACE's delete not reported): only the foreign key stops it here",
    ),
    ("MERGE INTO products USING orders ON 1 = 1 WHEN MATCHED THEN DELETE", Not::FailsOtherwise, "no MERGE in SQLite"),
    ("SELECT name FROM customers JOIN orders USING (secret_note)", Not::FailsOtherwise, "no such column in orders"),
    ("SELECT * FROM temp.products", Not::FailsOtherwise, "no such table (reads of temp are refused when it has one)"),
    ("SELECT * FROM other.products", Not::FailsOtherwise, "no such database"),
    ("SELECT repeat('x', 1000000000)", Not::FailsOtherwise, "no such function in SQLite"),
    ("SELECT readfile('/etc/passwd')", Not::FailsOtherwise, "no such function (a shell extension)"),
    ("SELECT id FROM products WHERE id = ?0", Not::FailsOtherwise, "SQLite: ?0 is not a parameter"),
    ("SELECT id FROM products WHERE id = ?01", Not::FailsOtherwise, "SQLite reads ?01 as ?1: no value given"),
    ("SELECT id FROM products WHERE id = ?32767", Not::FailsOtherwise, "SQLite numbers to ?32766"),
    ("SELECT id FROM products WHERE id = ?1000000", Not::FailsOtherwise, "SQLite numbers to ?32766"),
];

/// Bypass rows PostgreSQL lets run under the plugin's role, and why.
const PG_NOT_REFUSED: &[(&str, Not, &str)] = &[
    ("DELETE FROM orders -- \0\n WHERE id = 2", Not::FailsOtherwise, "a NUL: the server refuses the message"),
    (
        "UPDATE customers SET name = ? -- \0\n WHERE id = 1",
        Not::FailsOtherwise,
        "a NUL: the server refuses the message",
    ),
    ("SELECT id FROM orders WHERE id = ? -- \0\n + ?", Not::FailsOtherwise, "a NUL: the server refuses the message"),
    ("", Not::Runs, "empty: nothing runs"),
    ("-- nothing but a comment", Not::Runs, "empty: nothing runs"),
    ("UPDATE orders SET status = 'x'", Not::Runs, "WHERE-less write to a granted table: privileges have no WHERE"),
    ("DELETE FROM orders", Not::Runs, "WHERE-less write to a granted table: privileges have no WHERE"),
    ("SELECT pg_catalog.lower(name) FROM products", Not::Runs, "EXECUTE is PUBLIC: functions are the checker's"),
    (
        "SELECT i.pg_typeof FROM products i",
        Not::Runs,
        "`t.f` is `f(t)`, EXECUTE is PUBLIC: functions are the checker's",
    ),
    (
        "SELECT products.pg_column_size FROM products",
        Not::Runs,
        "`t.f` is `f(t)`, EXECUTE is PUBLIC: functions are the checker's",
    ),
    (
        "SELECT o.row_to_json FROM orders o WHERE o.id = 1",
        Not::Runs,
        "`t.f` is `f(t)`, EXECUTE is PUBLIC: functions are the checker's",
    ),
    (
        "SELECT id FROM products p ORDER BY p.hash_record",
        Not::Runs,
        "`t.f` is `f(t)`, EXECUTE is PUBLIC: functions are the checker's",
    ),
    ("SELECT x.setseed FROM unnest(ARRAY[0.5]) x", Not::Runs, "`x.f` is `f(x)`, EXECUTE is PUBLIC: the checker's"),
    (
        "SELECT x.current_setting FROM unnest(ARRAY['search_path']) AS x(v)",
        Not::Runs,
        "`x.f` is `f(x)`, EXECUTE is PUBLIC: the checker's",
    ),
    (
        "SELECT g.g FROM generate_series(1, 2) g WHERE g.pg_try_advisory_lock",
        Not::Runs,
        "`x.f` is `f(x)`, EXECUTE is PUBLIC: the checker's (the lock goes with the test's own connection)",
    ),
    (
        "SELECT ts_stat.ts_stat FROM jsonb_array_elements_text('[\"SELECT 1\"]') ts_stat",
        Not::FailsOtherwise,
        "`x.f` is `f(x)`: ts_stat runs the string, which returns no tsvector",
    ),
    (
        "SELECT current_setting.current_setting FROM json_array_elements_text('[\"search_path\"]') current_setting",
        Not::Runs,
        "`x.f` is `f(x)`, EXECUTE is PUBLIC: the checker's",
    ),
    (
        "SELECT current_setting.current_setting FROM unnest(ARRAY['search_path'], ARRAY[1]) current_setting",
        Not::FailsOtherwise,
        "no current_setting of a row",
    ),
    (
        "SELECT x.a FROM json_to_record('{\"a\": 1259}') AS x(a regclass)",
        Not::Runs,
        "a column definition's type is the checker's, like a cast's",
    ),
    (
        "SELECT x.a FROM jsonb_to_recordset('[{\"a\": null}]') AS x(a secrets)",
        Not::Runs,
        "a column definition's type is the checker's (a null row: nothing of the table)",
    ),
    ("SELECT current_role", Not::Runs, "the session's role name: a function, EXECUTE is PUBLIC"),
    ("SELECT id FROM products WHERE name = current_schema", Not::Runs, "the schema's name: a function"),
    (
        "SELECT x.ordinality FROM unnest(ARRAY[1]) WITH ORDINALITY AS x(v, n)",
        Not::FailsOtherwise,
        "no function `ordinality` on the test server",
    ),
    (
        "WITH \"session_user\" AS (SELECT 1 AS a) SELECT * FROM session_user",
        Not::Runs,
        "the login's name: a function in FROM, EXECUTE is PUBLIC",
    ),
    ("SELECT p.xmin FROM products p", Not::Runs, "system columns come with the table's privilege"),
    ("SELECT id FROM products WHERE xmax <> '0'", Not::Runs, "system columns come with the table's privilege"),
    ("SELECT id FROM products ORDER BY id USING <", Not::Runs, "operators are the checker's"),
    ("SELECT lastval()", Not::FailsOtherwise, "no sequence used yet on the test's own connection"),
    ("SELECT txid_current_snapshot()", Not::Runs, "EXECUTE is PUBLIC: functions are the checker's"),
    ("SELECT 'pg_authid'::regclass", Not::Runs, "catalog names are readable by every role"),
    ("SELECT * FROM information_schema.tables", Not::Runs, "lists only what the role may see"),
    ("SET search_path = evil", Not::Runs, "only loses the fixed path for the rest of the transaction"),
    ("RESET ALL", Not::Runs, "resets settings, not the role; SET LOCAL values come back with the next call"),
    ("PREPARE p AS SELECT * FROM secrets", Not::Runs, "privileges are checked when a prepared statement runs"),
    ("DECLARE c CURSOR FOR SELECT * FROM products", Not::Runs, "a cursor on a granted table"),
    ("LISTEN ch", Not::Runs, "LISTEN and NOTIFY are open to every role"),
    ("NOTIFY ch, 'x'", Not::Runs, "LISTEN and NOTIFY are open to every role"),
    ("LOCK TABLE products", Not::Runs, "UPDATE on products lets the role lock it"),
    ("REVOKE ALL ON products FROM PUBLIC", Not::Runs, "a warning, nothing revoked: the role owns nothing"),
    ("EXPLAIN ANALYZE SELECT * FROM products", Not::Runs, "runs a read of a granted table"),
    ("EXPLAIN SELECT * FROM products", Not::Runs, "explains a read of a granted table"),
    ("SELECT id FROM products FOR UPDATE", Not::Runs, "UPDATE on products lets the role lock its rows"),
    ("SELECT id FROM products FOR SHARE", Not::Runs, "UPDATE on products lets the role lock its rows"),
    ("SELECT id FROM products WHERE name = 'x'", Not::Runs, "literals (params_only): not a privilege"),
    ("SELECT id FROM products LIMIT 10", Not::Runs, "literals (params_only): not a privilege"),
    ("SELECT id FROM products WHERE name = E'x'", Not::Runs, "literals (params_only): not a privilege"),
    ("SELECT id FROM products WHERE name = $$x$$", Not::Runs, "literals (params_only): not a privilege"),
    (
        "SELECT id FROM orders WHERE created_at > DATE '2026-01-01'",
        Not::Runs,
        "literals (params_only): not a privilege",
    ),
    (
        "SELECT id FROM products; DELETE FROM orders",
        Not::FailsOtherwise,
        "the protocol: a prepared statement holds one",
    ),
    ("SELECT 'a\\'; DELETE FROM orders; --'", Not::FailsOtherwise, "the protocol: a prepared statement holds one"),
    ("SELECT 1; SELECT 2", Not::FailsOtherwise, "the protocol: a prepared statement holds one"),
    ("SELEC id FROM products", Not::FailsOtherwise, "PostgreSQL's parser"),
    (
        "WITH a AS (SELECT * FROM b), b AS (SELECT * FROM products) SELECT * FROM a",
        Not::FailsOtherwise,
        "no relation b: a later CTE is not in scope",
    ),
    ("WITH a AS (SELECT 1), a AS (SELECT 2) SELECT * FROM a", Not::FailsOtherwise, "duplicate WITH name"),
    (
        "SELECT * FROM (WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING id) SELECT * FROM d) x",
        Not::FailsOtherwise,
        "a data-modifying WITH only at the top level",
    ),
    (
        "SELECT id FROM products WHERE id IN (SELECT secret_note FROM customers)",
        Not::FailsOtherwise,
        "integer = text: types are checked before privileges",
    ),
    ("SELECT a FROM customers AS c(a, b)", Not::Runs, "reads id, which is granted, under another name"),
    ("SELECT p.id FROM products p NATURAL JOIN customers", Not::Runs, "joins on id and name, both granted"),
    ("SELECT name FROM customers JOIN orders USING (secret_note)", Not::FailsOtherwise, "no such column in orders"),
    ("SELECT * FROM \"Products\"", Not::FailsOtherwise, "no such relation"),
    ("SELECT * FROM other.products", Not::FailsOtherwise, "no such schema"),
    ("SELECT * FROM mydb.public.products", Not::FailsOtherwise, "no cross-database references"),
    ("SELECT U&'\\0041' FROM products", Not::Runs, "a string literal"),
    (
        "SELECT name + U&\"\\0073ecret_note\" FROM customers",
        Not::FailsOtherwise,
        "text + text: types are checked before privileges",
    ),
    (
        "SELECT * FROM products_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Not::FailsOtherwise,
        "no such relation",
    ),
    ("SELECT dblink('host=evil', 'select 1')", Not::FailsOtherwise, "dblink is not installed"),
    ("SELECT * FROM dblink('x', 'select 1') AS t(a int)", Not::FailsOtherwise, "dblink is not installed"),
    ("SELECT nextval('orders_id_seq')", Not::FailsOtherwise, "no such sequence"),
    ("BEGIN", Not::Runs, "a warning: the call's transaction is already open"),
    (
        "COMMIT",
        Not::Runs,
        "ends the call's transaction and the role with it: the gateway must run nothing after it as that call",
    ),
    ("DISCARD ALL", Not::FailsOtherwise, "not inside a transaction block"),
    ("CALL do_it()", Not::FailsOtherwise, "no such procedure"),
    ("EXECUTE p", Not::FailsOtherwise, "no prepared p on this connection; it would run under the role"),
    ("DEALLOCATE ALL", Not::Runs, "drops the session's prepared statements: no privilege"),
    ("SELECT id FROM products WHERE id = $0", Not::FailsOtherwise, "no parameter $0"),
    ("SELECT id FROM products WHERE id = $01", Not::FailsOtherwise, "read as $1: no value given"),
    ("SELECT id FROM products WHERE id = $65536", Not::FailsOtherwise, "past the protocol's 65,535 parameters"),
    ("SELECT id FROM products WHERE id = $99999999999999999999999", Not::FailsOtherwise, "read as $-1 (overflow)"),
];

/// Bypass rows not sent to PostgreSQL at all: they would make the test
/// machine's server allocate a gigabyte. Only the checker's function
/// allow-list refuses them (PostgreSQL's `EXECUTE` is `PUBLIC`).
const PG_NOT_SENT: &[(&str, &str)] = &[("SELECT repeat('x', 1000000000)", "a 1 GB string: repeat is PUBLIC")];

/// What one statement did.
#[derive(Debug)]
enum Outcome {
    /// The database's check refused it (SQLite's authorizer, PostgreSQL's
    /// privileges or its statement timeout); the message.
    Denied(String),
    /// The database refused it for another reason (syntax, a constraint,
    /// the protocol); the message.
    Failed(#[allow(dead_code, reason = "shown through Debug when a row changes category")] String),
    /// It ran; what it returned, as text where the value is text.
    Ran(Vec<String>),
}

impl Outcome {
    fn of_error(error: sqlx::Error) -> Outcome {
        let code = match &error {
            sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        };
        // SQLITE_AUTH (SQLite reports a denied function as a plain error
        // saying "not authorized"); insufficient_privilege; query_canceled
        // (the statement timeout `enter` sets).
        let text = error.to_string();
        match code.as_deref() {
            Some("23" | "42501" | "57014") => Outcome::Denied(text),
            Some("1") if text.contains("not authorized to use function") => Outcome::Denied(text),
            _ => Outcome::Failed(text),
        }
    }
}

/// How a bypass row the database's check does not refuse ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Not {
    /// It runs (within the grant, or outside what the check sees).
    Runs,
    /// The database refuses it, but not its check: syntax, a constraint,
    /// the protocol. The check itself would have let it through.
    FailsOtherwise,
}

fn texts_pg(rows: &[PgRow]) -> Vec<String> {
    rows.iter()
        .flat_map(|row| (0..row.len()).filter_map(|i| row.try_get::<Option<String>, _>(i).ok().flatten()))
        .collect()
}

/// What the fixture policy lets plugins neither read nor write, read as
/// the sidecar.
const UNGRANTED: &str = "SELECT (SELECT group_concat(value, ',') FROM secrets), \
     (SELECT group_concat(coalesce(email, '') || '/' || coalesce(secret_note, ''), ',') FROM customers)";
const UNGRANTED_PG: &str = "SELECT (SELECT string_agg(value, ',' ORDER BY id) FROM public.secrets), \
     (SELECT string_agg(coalesce(email, '') || '/' || coalesce(secret_note, ''), ',' ORDER BY id) FROM public.customers)";

// ---------------------------------------------------------------- SQLite

/// A SQLite file with the fixture schema and seed rows, written once; each
/// statement then runs on a fresh copy, so rows that write (in autocommit,
/// as Spin's door runs them) cannot disturb the next.
async fn sqlite_template() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new().filename(dir.path().join("template.db")).create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("{}\n{SIDECAR_TABLES}", fixture("schema.sql"))))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    dir
}

/// Stand-ins for the sidecar's own tables, as a database shared with the
/// key-value store and the audit log has them: no grant reaches them, so
/// the database's own check refuses the bypass rows that name them.
const SIDECAR_TABLES: &str = "CREATE TABLE gatehouse_kv_data (v TEXT);\n\
    CREATE TABLE gatehouse_audit_entries (v TEXT);\n\
    CREATE TABLE \"GATEHOUSE_AUDIT_GRANTS\" (v TEXT);\n\
    CREATE TABLE _sqlx_migrations (version BIGINT);";

/// The statements sqlx has cached on `conn`. sqlx's worker thread
/// updates the count after it has sent a statement's result, so the count
/// is read once it has stopped changing.
async fn cached_statements(conn: &SqliteConnection) -> usize {
    let mut last = sqlx::Connection::cached_statements_size(conn);
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let now = sqlx::Connection::cached_statements_size(conn);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// A connection to a fresh copy of the template, the authorizer installed.
async fn sqlite_copy(template: &tempfile::TempDir) -> (tempfile::TempDir, sqlite::Guarded) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(template.path().join("template.db"), dir.path().join("app.db")).unwrap();
    let options = SqliteConnectOptions::new().filename(dir.path().join("app.db")).serialized(true);
    let conn = SqliteConnection::connect_with(&options).await.unwrap();
    let conn = sqlite::install(conn, gatehouse::databases::DEFAULT_MAX_VALUE_BYTES).await.unwrap();
    (dir, conn)
}

fn sqlite_grant(policy: &SqlPolicy) -> Arc<sqlite::SqliteGrant> {
    Arc::new(sqlite::SqliteGrant::new(policy, Door::Gatehouse))
}

async fn ungranted_sqlite(conn: &mut sqlite::Guarded) -> Vec<String> {
    sqlite::enter_host(conn);
    let row = sqlx::query(UNGRANTED).fetch_one(conn.connection()).await.unwrap();
    (0..2).map(|i| row.try_get::<String, _>(i).unwrap_or_else(|_| row.get::<i64, _>(i).to_string())).collect()
}

/// Runs `sql` for a plugin with `grant` on a fresh copy of the fixture, in
/// autocommit; binds 1 to each of `params` placeholders.
async fn run_sqlite(
    template: &tempfile::TempDir,
    grant: &Arc<sqlite::SqliteGrant>,
    sql: &str,
    params: usize,
) -> Outcome {
    let (_dir, mut conn) = sqlite_copy(template).await;
    let before = ungranted_sqlite(&mut conn).await;
    sqlite::enter(&mut conn, grant.clone()).await.unwrap();
    // As the gateway runs a plugin's statement: stepped on the raw handle
    // (`services::sql::sqlite_step`), each placeholder bound to 1.
    let (handle, sql_owned) = (conn.step_handle(), sql.to_string());
    let result = tokio::task::spawn_blocking(move || {
        let mut rows = Texts::default();
        handle.run(&sql_owned, &vec![Value::Int(1); params], true, &mut rows).map(|_| rows.0)
    })
    .await
    .unwrap();
    let outcome = match result {
        Ok(texts) => {
            assert_eq!(ungranted_sqlite(&mut conn).await, before, "SQLite: {sql} changed ungranted data");
            Outcome::Ran(texts)
        }
        Err(failed) => match failed.error {
            SqlError::Denied(text) | SqlError::Timeout(text) => Outcome::Denied(text),
            other => Outcome::Failed(other.to_string()),
        },
    };
    sqlite::leave(&mut conn);
    outcome
}

/// The text values of the rows a statement returns.
#[derive(Default)]
struct Texts(Vec<String>);

impl RowSink for Texts {
    fn row(
        &mut self,
        _: &dyn Fn() -> Vec<Column>,
        decode: &mut dyn FnMut(u64) -> Result<Option<Vec<Value>>, SqlError>,
    ) -> Result<(), SqlError> {
        let values = decode(u64::MAX)?.unwrap_or_default();
        self.0.extend(values.into_iter().filter_map(|v| match v {
            Value::Text(text) => Some(text),
            _ => None,
        }));
        Ok(())
    }
}

/// Checks a bypass table's outcomes against the documented rows the
/// database's check does not refuse, and that rows that run leak no
/// secret. On failure, prints every outcome.
fn judge(name: &str, outcomes: &[(String, Outcome)], not_refused: &[(&str, Not, &str)]) {
    let mut wrong = Vec::new();
    let mut denied = 0;
    for (sql, outcome) in outcomes {
        let listed = not_refused.iter().find(|(listed, _, _)| listed == sql).map(|(_, not, _)| *not);
        match (outcome, listed) {
            (Outcome::Denied(_), None) => denied += 1,
            (Outcome::Ran(_), Some(Not::Runs)) | (Outcome::Failed(_), Some(Not::FailsOtherwise)) => {}
            (outcome, listed) => wrong.push(format!("{name}: listed as {listed:?}: {sql:?}\n    -> {outcome:?}")),
        }
        if let Outcome::Ran(values) = outcome
            && let Some(secret) = values.iter().find(|v| SECRETS.iter().any(|s| v.contains(s)))
        {
            wrong.push(format!("{name}: {sql} returned a secret: {secret}"));
        }
    }
    for (sql, _, _) in not_refused {
        if !outcomes.iter().any(|(seen, _)| seen == sql) {
            wrong.push(format!("{name}: listed but not in the bypass table: {sql}"));
        }
    }
    eprintln!(
        "{name}: {} rows, {denied} refused by the database's check, {} not",
        outcomes.len(),
        outcomes.len() - denied
    );
    assert!(wrong.is_empty(), "{} wrong:\n{}", wrong.len(), wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_alone_refuses_the_bypass_table_except_the_documented_rows() {
    let template = sqlite_template().await;
    let mut outcomes = Vec::new();
    for (dialects, extra, sql, _, _) in BYPASSES {
        if dialects.contains(&Dialect::Sqlite) {
            let outcome = run_sqlite(&template, &sqlite_grant(&with(extra)), sql, 0).await;
            outcomes.push((sql.to_string(), outcome));
        }
    }
    judge("SQLite", &outcomes, SQLITE_NOT_REFUSED);
}

/// The allowed table runs through the authorizer alone, each statement
/// with its placeholders bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_alone_runs_the_allowed_table() {
    let template = sqlite_template().await;
    let policy = policy();
    let grant = sqlite_grant(&policy);
    let mut failures = Vec::new();
    let statements = allowed(Dialect::Sqlite);
    for sql in &statements {
        let params = check(Dialect::Sqlite, &policy, sql).map(|c| c.placeholders).unwrap_or(0);
        if let outcome @ (Outcome::Denied(_) | Outcome::Failed(_)) = run_sqlite(&template, &grant, sql, params).await {
            failures.push(format!("{sql}\n    -> {outcome:?}"));
        }
    }
    assert!(statements.len() >= 40, "{}", statements.len());
    assert!(failures.is_empty(), "{} refused:\n{}", failures.len(), failures.join("\n"));
}

/// A connection with the authorizer refuses everything until a grant is
/// entered, and again after `leave`; a connection that is not serialized
/// is not guarded. `VACUUM`, which SQLite never
/// reports to an authorizer, is still refused: its own `ATTACH` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_without_a_grant_refuses_everything() {
    let template = sqlite_template().await;
    let (dir, mut conn) = sqlite_copy(&template).await;
    for sql in ["SELECT 1", "SELECT id FROM products", "BEGIN", "PRAGMA user_version"] {
        let err = sqlx::query(sql).persistent(false).fetch_all(conn.connection()).await.unwrap_err();
        assert!(err.to_string().contains("not authorized"), "{sql}: {err}");
    }
    sqlite::enter(&mut conn, sqlite_grant(&policy())).await.unwrap();
    sqlx::query("SELECT id FROM products").persistent(false).fetch_all(conn.connection()).await.unwrap();
    let copy = dir.path().join("copy.db");
    for vacuum in [format!("VACUUM INTO '{}'", copy.display()), "VACUUM".into()] {
        let err =
            sqlx::query(AssertSqlSafe(vacuum.clone())).persistent(false).execute(conn.connection()).await.unwrap_err();
        assert!(matches!(Outcome::of_error(err), Outcome::Denied(_)), "{vacuum}");
    }
    assert!(!copy.exists());
    sqlite::leave(&mut conn);
    assert!(sqlx::query("SELECT 1").persistent(false).fetch_all(conn.connection()).await.is_err());

    // The guard uses the raw handle from the caller's thread: only a
    // serialized connection may be guarded.
    let options = SqliteConnectOptions::new().filename(dir.path().join("bare.db")).create_if_missing(true);
    let bare = SqliteConnection::connect_with(&options.serialized(false)).await.unwrap();
    let err = sqlite::install(bare, gatehouse::databases::DEFAULT_MAX_VALUE_BYTES).await.err().unwrap();
    assert!(matches!(err, GuardError::NotSerialized), "{err}");
}

/// Two plugins on one connection: A may read `secrets`, B may not. A
/// statement A ran *persistent* (cached by sqlx) is not reused for B:
/// `enter` empties the cache, and B's prepare is refused. Switching back
/// and forth takes effect each time; the Spin door's grant allows `BEGIN`
/// and `COMMIT`, the custom door's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_grants_switch_per_statement_and_cached_statements_are_not_reused() {
    let template = sqlite_template().await;
    let (_dir, mut conn) = sqlite_copy(&template).await;
    let a = sqlite_grant(&SqlPolicy::from_toml("statements = [\"select\"]\n[tables]\nsecrets = \"select\"").unwrap());
    let b = sqlite_grant(&policy());
    let read = "SELECT value FROM secrets WHERE id = ?";

    sqlite::enter(&mut conn, a.clone()).await.unwrap();
    let row = sqlx::query(read).bind(1i64).fetch_one(conn.connection()).await.unwrap();
    assert_eq!(row.get::<String, _>(0), "the launch codes");
    assert_eq!(cached_statements(conn.connection()).await, 1, "persistent: cached under A's grant");

    sqlite::enter(&mut conn, b.clone()).await.unwrap();
    assert_eq!(cached_statements(conn.connection()).await, 0, "enter empties the cache");
    let err = sqlx::query(read).bind(1i64).fetch_one(conn.connection()).await.unwrap_err();
    assert!(err.to_string().contains("prohibited"), "{err}");

    for _ in 0..3 {
        sqlite::enter(&mut conn, a.clone()).await.unwrap();
        assert!(sqlx::query(read).bind(1i64).persistent(false).fetch_one(conn.connection()).await.is_ok());
        sqlite::enter(&mut conn, b.clone()).await.unwrap();
        assert!(sqlx::query(read).bind(1i64).persistent(false).fetch_one(conn.connection()).await.is_err());
    }

    let spin = Arc::new(sqlite::SqliteGrant::new(&policy(), Door::Spin));
    sqlite::enter(&mut conn, spin).await.unwrap();
    conn.connection().execute(sqlx::query("BEGIN TRANSACTION").persistent(false)).await.unwrap();
    conn.connection()
        .execute(sqlx::query("UPDATE products SET stock = 1 WHERE id = ?").bind(1i64).persistent(false))
        .await
        .unwrap();
    conn.connection().execute(sqlx::query("END TRANSACTION").persistent(false)).await.unwrap();
    sqlite::enter(&mut conn, b).await.unwrap();
    let err = conn.connection().execute(sqlx::query("BEGIN").persistent(false)).await.unwrap_err();
    assert!(err.to_string().contains("not authorized"), "{err}");
}

// ------------------------------------------------------------ PostgreSQL

const PLUGIN: &str = "fixture-plugin";
const TIMEOUT: Duration = Duration::from_millis(500);

/// A throwaway cluster whose login owns the fixture tables and may manage
/// roles, and a pool on it.
async fn pg_fixture() -> (TestPostgres, PgPool, gatehouse::services::sql::pg_pool::PgPool) {
    let server = TestPostgres::start("gatehouse", "guard-test-password", "app");
    server.psql("ALTER ROLE gatehouse CREATEROLE");
    let pool = PgPoolOptions::new().max_connections(2).connect(&server.url()).await.unwrap();
    let roles = gatehouse_pg_pool(&server.url());
    sqlx::raw_sql(AssertSqlSafe(format!("{}\n{SIDECAR_TABLES}", fixture("schema.sql")))).execute(&pool).await.unwrap();
    // PostgreSQL has no rowid: `INSERT INTO audit_log (at, actor, action)`
    // needs a default for `id`. An identity (not a serial) needs no
    // privilege on its sequence, so the plugin's role can insert.
    sqlx::raw_sql("ALTER TABLE audit_log ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (START WITH 100)")
        .execute(&pool)
        .await
        .unwrap();
    (server, pool, roles)
}

async fn ungranted_pg(conn: &mut PgConnection) -> Vec<Option<String>> {
    // Not cached: a row may have said `DEALLOCATE ALL`.
    let row = sqlx::query(UNGRANTED_PG).persistent(false).fetch_one(&mut *conn).await.unwrap();
    (0..2).map(|i| row.get::<Option<String>, _>(i)).collect()
}

/// Runs `sql` as `plugin` in a transaction that is rolled back, on a
/// connection of its own (a row such as `DEALLOCATE ALL` changes the
/// session), binding 1 to each of `params` placeholders (an array for
/// `::int[]`).
async fn run_pg(url: &str, plugin: &str, sql: &str, params: usize) -> Outcome {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let before = ungranted_pg(&mut tx).await;
    postgres::enter(&mut tx, plugin, TIMEOUT).await.unwrap();
    let mut query = sqlx::query(AssertSqlSafe(sql.to_string()));
    for _ in 0..params {
        query = if sql.contains("int[]") { query.bind(vec![1i32]) } else { query.bind(1i64) };
    }
    let outcome = match query.fetch_all(&mut *tx).await {
        Ok(rows) => {
            sqlx::query("RESET ROLE").persistent(false).execute(&mut *tx).await.unwrap();
            assert_eq!(ungranted_pg(&mut tx).await, before, "PostgreSQL: {sql} changed ungranted data");
            Outcome::Ran(texts_pg(&rows))
        }
        Err(e) => Outcome::of_error(e),
    };
    // A row may have ended the transaction itself (`COMMIT`): then there
    // is nothing to roll back, and the connection is dropped anyway.
    let _ = tx.rollback().await;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_refuses_the_bypass_table_except_the_documented_rows() {
    let (server, _pool, roles) = pg_fixture().await;
    let mut outcomes = Vec::new();
    let not_sent: BTreeSet<&str> = PG_NOT_SENT.iter().map(|(sql, _)| *sql).collect();
    for (dialects, extra, sql, _, _) in BYPASSES {
        if !dialects.contains(&Dialect::Postgres) || not_sent.contains(sql) {
            continue;
        }
        postgres::sync(&roles, PLUGIN, &with(extra)).await.unwrap();
        outcomes.push((sql.to_string(), run_pg(&server.url(), PLUGIN, sql, 0).await));
    }
    assert!(BYPASSES.iter().any(|(_, _, sql, _, _)| not_sent.contains(sql)));
    judge("PostgreSQL", &outcomes, PG_NOT_REFUSED);
}

/// PostgreSQL's functions that take a whole row as their one argument: what
/// `t.f` may call when `t` has no column `f` (plain functions and plain
/// aggregates; window and ordered-set ones refuse the notation).
const ROW_FUNCTIONS: &str = "SELECT DISTINCT p.proname::text FROM pg_proc p \
     LEFT JOIN pg_aggregate a ON a.aggfnoid = p.oid \
     WHERE p.prokind IN ('f', 'a') AND coalesce(a.aggkind, 'n') = 'n' AND ( \
       (p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 AND format_type(p.proargtypes[0], NULL) IN \
         ('\"any\"', 'anyelement', 'anynonarray', 'anycompatible', 'anycompatiblenonarray', 'record')) \
       OR (p.pronargs = 1 AND p.provariadic = 'pg_catalog.\"any\"'::regtype))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_a_row_reaches_is_listed_on_postgres() {
    // The checker refuses `t.f` for these unless `f` is allowed (an outside
    // review called `pg_typeof`, `pg_column_size`, `row_to_json` and
    // `num_nulls` as `i.pg_typeof`, …): its list must hold every one this
    // server has.
    let (_server, pool, _) = pg_fixture().await;
    let names: Vec<String> = sqlx::query_scalar(ROW_FUNCTIONS).fetch_all(&pool).await.unwrap();
    assert!(names.iter().any(|n| n == "pg_typeof") && names.len() >= 20, "{names:?}");
    let listed = gatehouse::services::sql::functions::POSTGRES_ON_A_ROW;
    let missing: Vec<&String> = names.iter().filter(|n| listed.binary_search(&n.as_str()).is_err()).collect();
    assert!(missing.is_empty(), "not in functions::POSTGRES_ON_A_ROW: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_alone_runs_the_allowed_table() {
    let (server, _pool, roles) = pg_fixture().await;
    let policy = policy();
    let report = postgres::sync(&roles, PLUGIN, &policy).await.unwrap();
    assert!(report.created && report.revoked.is_empty() && report.missing_tables.is_empty(), "{report:?}");
    assert_eq!(report.role, postgres::role_name(PLUGIN).unwrap(), "the report names the role");
    // Every kind a policy grants is read back as held: a second sync
    // changes nothing.
    let kinds: std::collections::BTreeSet<String> =
        report.granted.iter().map(|p| p.to_string().split(' ').next().unwrap().to_string()).collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["DELETE", "INSERT", "SELECT", "UPDATE"]);
    let again = postgres::sync(&roles, PLUGIN, &policy).await.unwrap();
    assert!(again.granted.is_empty() && again.revoked.is_empty(), "{again:?}");
    let mut failures = Vec::new();
    let statements = allowed(Dialect::Postgres);
    for sql in &statements {
        let params = check(Dialect::Postgres, &policy, sql).map(|c| c.placeholders).unwrap_or(0);
        if let outcome @ (Outcome::Denied(_) | Outcome::Failed(_)) = run_pg(&server.url(), PLUGIN, sql, params).await {
            failures.push(format!("{sql}\n    -> {outcome:?}"));
        }
    }
    assert!(statements.len() >= 45, "{}", statements.len());
    assert!(failures.is_empty(), "{} refused:\n{}", failures.len(), failures.join("\n"));
}

/// The role follows the policy: a table granted, then taken away, then a
/// column grant narrowed; a second sync changes nothing; removing the
/// plugin drops its role. Nothing `enter` sets survives the transaction,
/// committed or rolled back, and `enter` outside a transaction is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_roles_follow_the_policy_and_settings_end_with_the_transaction() {
    let (server, pool, roles) = pg_fixture().await;
    let url = server.url();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let read = "SELECT value FROM secrets";
    let granted = SqlPolicy::from_toml("statements = [\"select\"]\n[tables]\nsecrets = \"select\"").unwrap();
    let report = postgres::sync(&roles, PLUGIN, &granted).await.unwrap();
    assert_eq!(report.granted.iter().map(ToString::to_string).collect::<Vec<_>>(), ["SELECT on secrets"]);
    assert!(matches!(run_pg(&url, PLUGIN, read, 0).await, Outcome::Ran(v) if v == ["the launch codes"]));

    let again = postgres::sync(&roles, PLUGIN, &granted).await.unwrap();
    assert!(!again.created && again.granted.is_empty() && again.revoked.is_empty(), "{again:?}");

    let report = postgres::sync(&roles, PLUGIN, &policy()).await.unwrap();
    assert!(report.revoked.iter().any(|p| p.to_string() == "SELECT on secrets"), "{report:?}");
    assert!(matches!(run_pg(&url, PLUGIN, read, 0).await, Outcome::Denied(e) if e.contains("permission denied")));
    assert!(matches!(run_pg(&url, PLUGIN, "SELECT email FROM customers", 0).await, Outcome::Denied(_)));
    assert!(matches!(run_pg(&url, PLUGIN, "SELECT name FROM customers", 0).await, Outcome::Ran(_)));

    // From every column to some: the table grant goes, the columns stay.
    let wide = SqlPolicy::from_toml("statements = [\"select\"]\n[tables]\ncustomers = \"select\"").unwrap();
    postgres::sync(&roles, PLUGIN, &wide).await.unwrap();
    assert!(matches!(run_pg(&url, PLUGIN, "SELECT email FROM customers", 0).await, Outcome::Ran(_)));
    let narrow =
        SqlPolicy::from_toml("statements = [\"select\"]\n[tables]\ncustomers = { select = [\"name\"] }").unwrap();
    let report = postgres::sync(&roles, PLUGIN, &narrow).await.unwrap();
    assert_eq!(report.granted.iter().map(ToString::to_string).collect::<Vec<_>>(), ["SELECT (name) on customers"]);
    assert!(matches!(run_pg(&url, PLUGIN, "SELECT email FROM customers", 0).await, Outcome::Denied(_)));
    assert!(matches!(run_pg(&url, PLUGIN, "SELECT name FROM customers", 0).await, Outcome::Ran(_)));
    assert!(matches!(run_pg(&url, PLUGIN, "SELECT id FROM products", 0).await, Outcome::Denied(_)));

    // Settings end with the transaction, committed or rolled back.
    let settings = "SELECT current_user::text, current_setting('statement_timeout'), current_setting('search_path')";
    let outside: (String, String, String) = sqlx::query_as(settings).fetch_one(&mut conn).await.unwrap();
    for commit in [true, false] {
        let mut tx = conn.begin().await.unwrap();
        postgres::enter(&mut tx, PLUGIN, TIMEOUT).await.unwrap();
        let inside: (String, String, String) = sqlx::query_as(settings).fetch_one(&mut *tx).await.unwrap();
        assert_eq!(inside, (postgres::role_name(PLUGIN).unwrap(), "500ms".into(), "public, pg_temp".into()));
        if commit {
            tx.commit().await.unwrap()
        } else {
            tx.rollback().await.unwrap()
        }
        let after: (String, String, String) = sqlx::query_as(settings).fetch_one(&mut conn).await.unwrap();
        assert_eq!(after, outside, "commit {commit}");
    }
    let err = postgres::enter(&mut conn, PLUGIN, TIMEOUT).await.unwrap_err();
    assert!(matches!(err, GuardError::NotInTransaction), "{err}");

    // The statement timeout is the database's: a sleep is cancelled.
    let sleep = run_pg(&url, PLUGIN, "SELECT pg_sleep(5)", 0).await;
    assert!(matches!(&sleep, Outcome::Denied(e) if e.contains("statement timeout")), "{sleep:?}");

    conn.close().await.unwrap();
    assert!(postgres::remove(&roles, PLUGIN).await.unwrap());
    let role = postgres::role_name(PLUGIN).unwrap();
    assert_eq!(server.psql(&format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'")).trim(), "0");
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    assert!(postgres::enter(&mut tx, PLUGIN, TIMEOUT).await.is_err(), "no role, no call");
}

/// Several plugins' roles synced at once (their first calls after a
/// reload) all succeed. Attack (an outside review): four at once failed
/// one or two with "tuple concurrently updated", their `GRANT`s on the
/// shared schema colliding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_roles_of_several_plugins_sync_at_once() {
    let (_server, _pool, _) = pg_fixture().await;
    let roles = gatehouse::services::sql::pg_pool::pg_pool(_server.url().parse().unwrap(), 8, Duration::from_secs(30));
    for round in 0..3 {
        let syncs = (0..6).map(|i| {
            let roles = roles.clone();
            async move { postgres::sync(&roles, &format!("p{round}-{i}"), &policy()).await }
        });
        for outcome in futures::future::join_all(syncs).await {
            outcome.unwrap();
        }
    }
}

/// Without CREATEROLE, `sync` fails with a message that says what the
/// login needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sync_without_createrole_says_what_is_missing() {
    let server = TestPostgres::start("gatehouse", "guard-test-password", "app");
    let roles = gatehouse_pg_pool(&server.url());
    let err = postgres::sync(&roles, PLUGIN, &policy()).await.unwrap_err();
    assert!(matches!(err, GuardError::RoleManagement(_)), "{err}");
    assert!(err.to_string().contains("CREATEROLE"), "{err}");
}

/// The gateway's own PostgreSQL pool, which the role sync takes its
/// connections from.
fn gatehouse_pg_pool(url: &str) -> gatehouse::services::sql::pg_pool::PgPool {
    gatehouse::services::sql::pg_pool::pg_pool(url.parse().unwrap(), 2, std::time::Duration::from_secs(10))
}

/// An operator's function taking a table's row is one PostgreSQL calls as
/// `t.f`, past the checker (an outside review read an ungranted table
/// through a `SECURITY DEFINER` one): the role sync names each the plugin's
/// role may execute and its policy does not list, and none once `EXECUTE`
/// is revoked from `PUBLIC`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_sync_names_functions_a_row_reaches() {
    let (server, pool, roles) = pg_fixture().await;
    sqlx::raw_sql(
        "CREATE FUNCTION leak(p products) RETURNS text LANGUAGE sql SECURITY DEFINER \
           AS 'SELECT value FROM secrets LIMIT 1'; \
         CREATE FUNCTION twice(i integer) RETURNS integer LANGUAGE sql AS 'SELECT i * 2'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = postgres::sync(&roles, PLUGIN, &policy()).await.unwrap();
    assert_eq!(report.row_functions, ["leak(products)"], "a function of an integer is not reached by a row");
    // What the warning is about: the checker passes it as a column.
    let sql = "SELECT p.leak FROM products p";
    check(Dialect::Postgres, &policy(), sql).unwrap();
    assert!(
        matches!(run_pg(&server.url(), PLUGIN, sql, 0).await, Outcome::Ran(v) if v.iter().any(|v| SECRETS.contains(&v.as_str())))
    );
    let listed = postgres::sync(&roles, PLUGIN, &with("functions = [\"leak\"]")).await.unwrap();
    assert!(listed.row_functions.is_empty(), "{:?}", listed.row_functions);
    sqlx::raw_sql("REVOKE EXECUTE ON FUNCTION leak(products) FROM PUBLIC").execute(&pool).await.unwrap();
    let report = postgres::sync(&roles, PLUGIN, &policy()).await.unwrap();
    assert!(report.row_functions.is_empty(), "{:?}", report.row_functions);
    assert!(matches!(run_pg(&server.url(), PLUGIN, sql, 0).await, Outcome::Denied(_)));
}
