//! Spin's sqlite doors (`fermyon:spin/sqlite@2.0.0`,
//! `spin:sqlite/sqlite@3.0.0`) end to end: the `sql-spin` guest, written
//! as a Spin SDK component, through the runtime, on a real SQLite file and
//! the harness's throwaway PostgreSQL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::databases::{DatabaseSettings, PoolSettings};
use gatehouse::services::Services;
use gatehouse::services::sql::spin::MAX_CONNECTIONS;
use gatehouse::services::sql::{Dialect, SqlGateway};
use gatehouse::{Document, Runtime};
use serde_json::{Value as Json, json};

use super::support::{TestDb, pool};
use crate::common::{Policies, capture_logs, guest, settings};

/// The grant every test starts from: `todos` read and written, nothing else
/// (the fixtures' `secrets` among what is not granted).
const TODOS: &str =
    "statements = [\"select\", \"insert\", \"update\"]\ntables = { todos = [\"select\", \"insert\", \"update\"] }\n";

/// `[sql.<alias>]` granting [`TODOS`] plus `extra`.
fn section(alias: &str, extra: &str) -> String {
    format!("[sql.{alias}]\n{extra}\n{TODOS}")
}

/// A gateway whose aliases are `aliases`, all naming `db`.
fn gateway(db: &TestDb, aliases: &[&str], pool: PoolSettings) -> Arc<SqlGateway> {
    let settings = aliases.iter().map(|a| (a.to_string(), db.settings(pool))).collect::<BTreeMap<_, _>>();
    Arc::new(SqlGateway::new(&settings))
}

const CREATE_TODOS: &str = "CREATE TABLE todos (id INTEGER PRIMARY KEY, description TEXT NOT NULL UNIQUE, due TEXT)";

/// `todos` in `db`: ids from SQLite's rowid, or given on PostgreSQL.
async fn todos(db: &TestDb) {
    db.admin(CREATE_TODOS).await;
}

/// A SQLite file for the alias `app` holding only `todos` (the gateway
/// adds the embedded application database's tables at its first use), and
/// a connection to read it from outside.
async fn app_database(dir: &tempfile::TempDir, pool: PoolSettings) -> (Arc<SqlGateway>, sqlx::SqliteConnection) {
    use sqlx::{Connection, Executor};
    let path = dir.path().join("app.db");
    let mut settings = DatabaseSettings::sqlite(path.clone());
    settings.pool = pool;
    let mut admin = sqlx::SqliteConnection::connect_with(&gatehouse::databases::sqlite_options(&path)).await.unwrap();
    admin.execute(CREATE_TODOS).await.unwrap();
    (Arc::new(SqlGateway::new(&BTreeMap::from([("app".to_string(), settings)]))), admin)
}

/// A runtime with `sql-spin` loaded as `spin` under `sections`.
async fn runtime(gateway: Arc<SqlGateway>, sections: &str) -> Runtime {
    let policies = Policies::new();
    let component = guest("sql_spin").display().to_string();
    policies.write(
        "spin.toml",
        &format!("[plugin]\nname = \"spin\"\ncomponent = {component:?}\n[limits]\ntimeout = \"10s\"\n{sections}\n"),
    );
    let services = Services::with_dns(Arc::new(gatehouse::services::http::resolve::SystemLookup)).unwrap();
    let services = Services { sql: gateway, ..services };
    let runtime = Runtime::new(settings(), Arc::new(services)).unwrap();
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let report = runtime.load(&load.set).await;
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    runtime
}

async fn call(runtime: &Runtime, command: Json) -> Json {
    let body = command.to_string().into_bytes();
    let output = runtime.invoke("spin", Document { content_type: "application/json".into(), body }).await.unwrap();
    serde_json::from_slice(&output.body).unwrap()
}

fn step(sql: &str, params: Json) -> Json {
    json!({"sql": sql, "params": params})
}

/// `step` after the component holds its connection idle for 2 s.
fn idle_first(mut step: Json) -> Json {
    step["after_ms"] = json!(2000);
    step
}

/// Each step's error (`""` for a step that succeeded).
fn errors(answer: &Json) -> Vec<&str> {
    answer["results"].as_array().unwrap().iter().map(|r| r["error"].as_str().unwrap_or("")).collect()
}

/// A SQLite `db` holding `todos`, a pool of two places whose waiters have
/// one taken back after half a second, and `sql-spin` granted `todos`.
async fn take_back_setup() -> (TestDb, Arc<SqlGateway>, Runtime) {
    let db = TestDb::start(Dialect::Sqlite).await;
    todos(&db).await;
    let gateway = gateway(&db, &["db"], PoolSettings { acquire_timeout: Duration::from_secs(1), ..pool(2, 2) });
    let runtime = runtime(Arc::clone(&gateway), &section("db", "")).await;
    (db, gateway, runtime)
}

/// Another plugin waits for a place once `sql-spin` holds one, and is
/// served by taking that one back.
async fn take_back_one(gateway: &SqlGateway) {
    super::support::until_held(gateway, "spin", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = "SELECT name FROM products WHERE id = 1";
    assert_eq!(super::support::query_as(gateway, "other", other).await.unwrap().rows.len(), 1);
}

/// Lets a closed connection's rollback land before the database is read
/// from outside.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The Spin SDK's sample as its authors write it: `open("default")`,
/// `BEGIN TRANSACTION`, an `INSERT`, `END TRANSACTION` as separate
/// `execute` calls, then a `SELECT` with a parameter. It runs unchanged
/// through both versions, "default" opens `[sql.app]`, the write is
/// committed, and 3.0.0's counters are the connection's: the `SELECT`
/// after the `INSERT` leaves `changes` at 1 and `last-insert-rowid` at the
/// new row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spin_sdk_component_runs_unchanged_through_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, mut admin) = app_database(&dir, pool(4, 4)).await;
    let mut count =
        async || -> i64 { sqlx::query_scalar("SELECT count(*) FROM todos").fetch_one(&mut admin).await.unwrap() };
    let runtime = runtime(gateway, &section("app", "")).await;
    let answer = call(&runtime, json!({"todo": "water plants", "version": 2})).await;
    assert_eq!(answer["columns"], json!(["id", "description", "due"]), "{answer}");
    assert_eq!(answer["rows"], json!([[{"int": 1}, {"text": "water plants"}, {"text": "2026-12-24"}]]));
    assert!(answer.get("changes").is_none(), "2.0.0 has no counters: {answer}");
    let answer = call(&runtime, json!({"todo": "feed cat", "version": 3})).await;
    assert_eq!(answer["rows"][1], json!([{"int": 2}, {"text": "feed cat"}, {"text": "2026-12-24"}]), "{answer}");
    assert_eq!((answer["last_insert_rowid"].clone(), answer["changes"].clone()), (json!(2), json!(1)));
    assert_eq!(count().await, 2);
    // The second run's INSERT meets the UNIQUE description: the error
    // comes back as `io`, its kind first, and the transaction it was in is
    // rolled back when the connection is dropped.
    let answer = call(&runtime, json!({"todo": "feed cat", "version": 3})).await;
    let error = answer["error"].as_str().unwrap();
    assert!(error.starts_with("io: conflict: constraint violated"), "{answer}");
    settle().await;
    assert_eq!(count().await, 2);
    let answer = call(&runtime, json!({"todo": "walk dog", "version": 2})).await;
    assert_eq!(answer["rows"].as_array().map(Vec::len), Some(3), "the pool still serves: {answer}");
}

/// 3.0.0's counters come from each statement's own result, never from the
/// pooled connection: a connection the same plugin used a moment earlier
/// (one connection in the pool) starts at 0/0; a `SELECT` does not set
/// `changes` (SQLite's own `changes()` would still report the previous
/// statement's, possibly another plugin's), an `INSERT OR IGNORE` that
/// inserts nothing does not move `last-insert-rowid`, an `UPDATE` sets
/// `changes` to the rows it touched. (Here `"default"` is the policy's own
/// `[sql.default]`, which the label names before `[sql.app]`.)
/// Attack: read what an earlier borrower of the connection wrote, through
/// the counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_are_the_connections_own() {
    let db = TestDb::start(Dialect::Sqlite).await;
    todos(&db).await;
    let runtime = runtime(gateway(&db, &["default"], pool(1, 1)), &section("default", "")).await;
    let insert = "INSERT INTO todos (id, description) VALUES (?, ?)";
    let answer = call(
        &runtime,
        json!({"version": 3, "steps": [
            step(insert, json!([{"int": 41}, {"text": "a"}])),
            step(insert, json!([{"int": 42}, {"text": "b"}])),
            step("UPDATE todos SET due = ? WHERE id >= ?", json!([{"text": "soon"}, {"int": 0}])),
        ]}),
    )
    .await;
    let counters = |r: &Json| (r["last_insert_rowid"].as_i64().unwrap(), r["changes"].as_u64().unwrap());
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.iter().map(counters).collect::<Vec<_>>(), [(41, 1), (42, 1), (42, 2)], "{answer}");

    let answer = call(
        &runtime,
        json!({"version": 3, "steps": [
            step("SELECT count(*) FROM todos", json!([])),
            step("INSERT OR IGNORE INTO todos (id, description) VALUES (?, ?)", json!([{"int": 42}, {"text": "b"}])),
            step(insert, json!([{"int": 7}, {"text": "c"}])),
            step("SELECT description FROM todos WHERE id = ?", json!([{"int": 7}])),
        ]}),
    )
    .await;
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["rows"], json!([[{"int": 2}]]), "{answer}");
    assert_eq!(results.iter().map(counters).collect::<Vec<_>>(), [(0, 0), (0, 0), (7, 1), (7, 1)], "{answer}");
}

/// A transaction a component leaves open, by returning without dropping
/// its connection or by dropping it, is rolled back, and the connection
/// goes back: with one connection in the plugin's share, the next
/// invocation still gets one and sees none of the rows.
/// Attacks: `BEGIN` and return with the connection held (the host must end
/// it at the invocation's end); `BEGIN` and drop the connection mid-
/// transaction; hold the plugin's only connection so the next call starves.
async fn a_transaction_left_open_is_rolled_back(dialect: Dialect) {
    let db = TestDb::start(dialect).await;
    todos(&db).await;
    let runtime = runtime(gateway(&db, &["db"], pool(2, 1)), &section("db", "")).await;
    let p = |n| super::support::placeholder(dialect, n);
    let insert = format!("INSERT INTO todos (id, description) VALUES ({}, {})", p(1), p(2));
    for (version, end) in [(2, "leave"), (3, "leave"), (2, "drop"), (3, "drop")] {
        let id = version * 10 + i64::from(end == "drop");
        let answer = call(
            &runtime,
            json!({"db": "db", "version": version, "end": end, "steps": [
                step("BEGIN TRANSACTION", json!([])),
                step(&insert, json!([{"int": id}, {"text": format!("t{id}")}])),
                step("SELECT count(*) FROM todos", json!([])),
            ]}),
        )
        .await;
        assert_eq!(answer["results"][2]["rows"], json!([[{"int": 1}]]), "its own write is seen: {answer}");
        settle().await;
        assert_eq!(db.count("SELECT count(*) FROM todos").await, 0, "v{version} {end}");
    }
    let answer = call(&runtime, json!({"db": "db", "steps": [step("SELECT count(*) FROM todos", json!([]))]})).await;
    assert_eq!(answer["results"][0]["rows"], json!([[{"int": 0}]]), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_is_rolled_back_on_sqlite() {
    a_transaction_left_open_is_rolled_back(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_is_rolled_back_on_postgres() {
    a_transaction_left_open_is_rolled_back(Dialect::Postgres).await;
}

/// On PostgreSQL, where the door is the same and only the SQL differs: the
/// SDK's `BEGIN TRANSACTION` / `END TRANSACTION` commit; a failed statement
/// inside a transaction aborts it, so the door answers `invalid-connection`
/// until the component says `ROLLBACK` (no later statement may run outside
/// the transaction it believes open), then serves it on a fresh
/// connection; `last-insert-rowid` stays 0 and `changes` counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_their_failures_on_postgres() {
    let db = TestDb::start(Dialect::Postgres).await;
    todos(&db).await;
    let runtime = runtime(gateway(&db, &["app"], pool(2, 1)), &section("app", "")).await;
    let insert = "INSERT INTO todos (id, description) VALUES ($1, $2)";
    let answer = call(
        &runtime,
        json!({"version": 3, "steps": [
            step("BEGIN TRANSACTION", json!([])),
            step(insert, json!([{"int": 1}, {"text": "a"}])),
            step("END TRANSACTION", json!([])),
            step("BEGIN", json!([])),
            step(insert, json!([{"int": 2}, {"text": "a"}])),
            step(insert, json!([{"int": 3}, {"text": "c"}])),
            step("COMMIT", json!([])),
            step("ROLLBACK", json!([])),
            step(insert, json!([{"int": 4}, {"text": "d"}])),
            step("SELECT id FROM todos ORDER BY id", json!([])),
        ]}),
    )
    .await;
    let results = answer["results"].as_array().unwrap();
    let errors = errors(&answer);
    assert!(errors[4].starts_with("io: conflict:"), "{answer}");
    assert_eq!(&errors[5..=6], ["invalid-connection", "invalid-connection"], "{answer}");
    assert_eq!(errors.iter().filter(|e| !e.is_empty()).count(), 3, "{answer}");
    assert_eq!(results[9]["rows"], json!([[{"int": 1}], [{"int": 4}]]), "{answer}");
    assert_eq!((results[8]["last_insert_rowid"].as_i64(), results[8]["changes"].as_u64()), (Some(0), Some(1)));
    assert_eq!(db.count("SELECT count(*) FROM todos").await, 2);
}

/// What the policy does not grant is `access-denied`, and the reason is in
/// the log with the statement escaped: a table not granted, statements
/// never allowed, transaction control other than plain BEGIN/COMMIT/END/
/// ROLLBACK, and BEGIN itself when the policy turns it off. The connection
/// stays usable after each refusal.
/// Attacks: read `secrets` directly and through a sub-query; `ATTACH` a
/// file; `PRAGMA`; `SAVEPOINT`; stacked statements after `BEGIN`;
/// terminal escapes and newlines in the statement to forge log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_access_denied_with_the_reason_in_the_log() {
    let db = TestDb::start(Dialect::Sqlite).await;
    todos(&db).await;
    let runtime = runtime(gateway(&db, &["default"], pool(4, 4)), &section("default", "")).await;
    let (logs, _guard) = capture_logs();
    let forged = "SELECT value FROM secrets /* \u{1b}[2J\nINFO forged line */";
    let refused = [
        forged,
        "SELECT description FROM todos WHERE due IN (SELECT value FROM secrets)",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA writable_schema = 1",
        "SAVEPOINT s1",
        "BEGIN; SELECT value FROM secrets",
        "DELETE FROM todos WHERE id = 1",
    ];
    let mut steps: Vec<Json> = refused.iter().map(|s| step(s, json!([]))).collect();
    steps.push(step("SELECT count(*) FROM todos", json!([])));
    let answer = call(&runtime, json!({"version": 2, "steps": steps})).await;
    let results = answer["results"].as_array().unwrap();
    for (statement, result) in refused.iter().zip(results) {
        assert_eq!(result["error"], "access-denied", "{statement:?}: {result}");
    }
    assert_eq!(results[refused.len()]["rows"], json!([[{"int": 0}]]), "{answer}");

    let events = logs.events();
    let logged: Vec<_> =
        events.iter().filter(|e| e.fields.get("message").is_some_and(|m| m == "SQL call refused")).collect();
    assert_eq!(logged.len(), refused.len(), "{events:#?}");
    assert!(
        logged
            .iter()
            .all(|e| e.fields["kind"] == "denied" && e.fields["plugin"] == "spin" && e.fields["database"] == "default")
    );
    assert!(logged[0].fields["error"].contains("secrets"), "{:?}", logged[0]);
    assert!(logged[2].fields["error"].to_lowercase().contains("attach"), "{:?}", logged[2]);
    let statement = &logged[0].fields["statement"];
    assert!(!statement.contains('\n') && !statement.contains('\u{1b}'), "{statement:?}");

    // Transaction control is a policy switch, on by default for this door.
    let runtime =
        self::runtime(gateway(&db, &["default"], pool(4, 4)), &section("default", "transaction_control = false")).await;
    let answer = call(&runtime, json!({"todo": "x"})).await;
    assert_eq!(answer["error"], "access-denied", "{answer}");
    assert_eq!(db.count("SELECT count(*) FROM todos").await, 0);
}

/// `open` of a label the policy does not grant is `access-denied`, whether
/// or not the settings define it: another alias of the settings, "default"
/// when there is no `[sql.app]`, a name with control characters (logged
/// escaped). A plugin importing the doors without any `[sql.*]` is refused
/// at load, like one importing `gatehouse:services/sql`.
/// Attacks: open a database another plugin uses; open by a name crafted
/// for the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_label_not_granted_is_access_denied() {
    let db = TestDb::start(Dialect::Sqlite).await;
    todos(&db).await;
    let runtime = runtime(gateway(&db, &["app", "db"], pool(4, 4)), &section("db", "")).await;
    let (logs, _guard) = capture_logs();
    for (version, label) in [(2, "app"), (3, "app"), (2, "default"), (3, "nosuch"), (2, "db\n\u{1b}[31mx"), (3, "")] {
        let answer = call(&runtime, json!({"version": version, "db": label, "steps": []})).await;
        assert_eq!(answer, json!({"error": "access-denied"}), "v{version} {label:?}");
    }
    let answer =
        call(&runtime, json!({"version": 3, "db": "db", "steps": [step("SELECT count(*) FROM todos", json!([]))]}))
            .await;
    assert_eq!(answer["results"][0]["rows"], json!([[{"int": 0}]]), "the granted label opens: {answer}");
    let events = logs.events();
    let databases: Vec<&String> = events
        .iter()
        .filter(|e| e.fields.get("message").is_some_and(|m| m == "SQL call refused"))
        .filter_map(|e| e.fields.get("database"))
        .collect();
    assert_eq!(databases.len(), 6, "{events:#?}");
    assert!(databases.iter().all(|d| !d.contains('\n') && !d.contains('\u{1b}')), "{databases:?}");

    // With `[sql.app]` granted, "default" opens it, and nothing else does.
    let dir = tempfile::tempdir().unwrap();
    let (app, _admin) = app_database(&dir, pool(4, 4)).await;
    let runtime = self::runtime(app, &section("app", "")).await;
    for (version, label) in [(2, "db"), (3, "nosuch")] {
        let answer = call(&runtime, json!({"version": version, "db": label, "steps": []})).await;
        assert_eq!(answer, json!({"error": "access-denied"}), "v{version} {label:?} with [sql.app]");
    }
    let answer = call(&runtime, json!({"version": 2, "steps": [step("SELECT count(*) FROM todos", json!([]))]})).await;
    assert_eq!(answer["results"][0]["rows"], json!([[{"int": 0}]]), "\"default\" opens [sql.app]: {answer}");

    let policies = Policies::new();
    let component = guest("sql_spin").display().to_string();
    policies.write("spin.toml", &format!("[plugin]\nname = \"spin\"\ncomponent = {component:?}\n"));
    let runtime = Runtime::new(settings(), crate::common::services()).unwrap();
    let refused = format!("{:?}", runtime.load(&policies.load().set).await.refused);
    for import in ["fermyon:spin/sqlite@2.0.0", "spin:sqlite/sqlite@3.0.0"] {
        assert!(refused.contains(&format!("imports `{import}`, which needs a [sql] section")), "{refused}");
    }
}

/// Host state a guest can cause: open Spin connections per invocation are
/// capped at `MAX_CONNECTIONS` across both versions (each also holds one of
/// the plugin's connections), and all are released when the invocation
/// ends; a share smaller than the cap answers `rate-limited` with a retry
/// hint, as `io`.
/// Attacks: open connections in a loop and never drop them; alternate
/// versions to get around a per-version count; starve the next invocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped_per_invocation_and_released_at_its_end() {
    let db = TestDb::start(Dialect::Sqlite).await;
    todos(&db).await;
    let cap = MAX_CONNECTIONS as u64;
    let runtime =
        runtime(gateway(&db, &["default"], pool(cap as u32 + 4, cap as u32 + 2)), &section("default", "")).await;
    for version in [2, 3] {
        let answer = call(&runtime, json!({"version": version, "hold": cap})).await;
        assert_eq!(answer, json!({"held": cap}));
        let answer = call(&runtime, json!({"version": version, "hold": cap + 1})).await;
        assert_eq!(answer["opened"], json!(cap), "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with("io: invalid-input:") && error.contains("connections are open"), "{answer}");
    }
    // Both versions count against one cap.
    let answer = call(&runtime, json!({"alternate": true, "hold": cap + 1})).await;
    assert_eq!(answer["opened"], json!(cap), "{answer}");
    assert_eq!(call(&runtime, json!({"alternate": true, "hold": cap})).await, json!({"held": cap}));

    // A share smaller than the cap: the plugin's share refuses first.
    let runtime = self::runtime(gateway(&db, &["default"], pool(4, 2)), &section("default", "")).await;
    let answer = call(&runtime, json!({"version": 3, "hold": 3})).await;
    assert_eq!(answer["opened"], json!(2), "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.starts_with("io: rate-limited:") && error.contains("retry after"), "{answer}");
    assert_eq!(call(&runtime, json!({"version": 2, "hold": 2})).await, json!({"held": 2}));
}

/// A statement refused mid-result (past `max_rows`) leaves its connection
/// in an unknown state, so the door closes it. Outside a transaction the
/// next statement quietly gets a fresh connection (nothing was lost);
/// inside one, the transaction is gone, so every statement is
/// `invalid-connection` until the component says `ROLLBACK`, and none of
/// the transaction's writes is kept.
/// Attack: keep writing after the transaction was lost, so that the rest
/// of a unit of work would commit on its own, statement by statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_lost_mid_result_is_refused_until_rolled_back() {
    let db = TestDb::start(Dialect::Sqlite).await;
    todos(&db).await;
    db.admin("INSERT INTO todos (id, description) VALUES (1, 'a'), (2, 'b')").await;
    let runtime = runtime(gateway(&db, &["db"], pool(2, 1)), &section("db", "max_rows = 1")).await;
    let insert = "INSERT INTO todos (id, description) VALUES (?, ?)";
    let count = step("SELECT count(*) FROM todos", json!([]));
    let answer = call(
        &runtime,
        json!({"db": "db", "version": 3, "steps": [
            step("SELECT id FROM todos", json!([])),
            count,
            step("BEGIN TRANSACTION", json!([])),
            step(insert, json!([{"int": 10}, {"text": "c"}])),
            step("SELECT id FROM todos", json!([])),
            step(insert, json!([{"int": 11}, {"text": "d"}])),
            step("END TRANSACTION", json!([])),
            step("ROLLBACK", json!([])),
            count,
        ]}),
    )
    .await;
    let results = answer["results"].as_array().unwrap();
    let errors = errors(&answer);
    assert!(errors[0].starts_with("io: quota-exceeded:") && errors[4].starts_with("io: quota-exceeded:"), "{answer}");
    assert_eq!(&errors[5..=6], ["invalid-connection", "invalid-connection"], "{answer}");
    assert_eq!(errors.iter().filter(|e| !e.is_empty()).count(), 4, "{answer}");
    assert_eq!(
        (results[1]["rows"].clone(), results[8]["rows"].clone()),
        (json!([[{"int": 2}]]), json!([[{"int": 2}]]))
    );
    settle().await;
    assert_eq!(db.count("SELECT count(*) FROM todos").await, 2);
}
/// Attack (outside reviews 13 and 14): Spin connections held idle fill
/// the pool. A plugin waiting half its `acquire_timeout` has one taken
/// back. Outside a transaction the component never notices: its next
/// statement runs on a fresh connection. Inside one, the transaction is
/// rolled back, and the component is told as Spin tells a lost
/// connection: `invalid-connection` until it says `ROLLBACK`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spin_connection_held_idle_is_taken_back_for_a_waiting_plugin() {
    let (db, gateway, runtime) = take_back_setup().await;
    let count = step("SELECT count(*) FROM todos", json!([]));
    let idle_count = idle_first(count.clone());
    let insert = "INSERT INTO todos (id, description) VALUES (?, ?)";
    let idle_insert = idle_first(step(insert, json!([{"int": 11}, {"text": "d"}])));
    let component = tokio::spawn(async move {
        call(
            &runtime,
            json!({"db": "db", "version": 3, "steps": [
                count,
                idle_count,
                step("BEGIN TRANSACTION", json!([])),
                step(insert, json!([{"int": 10}, {"text": "c"}])),
                idle_insert,
                step("END TRANSACTION", json!([])),
                step("ROLLBACK", json!([])),
                count,
            ]}),
        )
        .await
    });
    for _ in 0..2 {
        take_back_one(&gateway).await;
    }
    // The pool's one place stays taken while the component goes on: its
    // ROLLBACK needs none (review 18: it was refused, and the connection
    // stayed unusable); its next statement waits for one and is refused.
    let policy = super::support::policy("");
    let guard =
        gatehouse::services::sql::exec::Guard::new(Dialect::Sqlite, &policy, gatehouse::services::sql::Door::Gatehouse);
    let alias = gateway.alias("db").unwrap();
    let stop = gatehouse::stop::Stop::new();
    let holding = gatehouse::services::sql::SqlConnection::open(alias, "other", &guard, &stop).await.unwrap();
    let answer = component.await.unwrap();
    drop(holding);
    let results = answer["results"].as_array().unwrap();
    let errors = errors(&answer);
    assert_eq!(errors[..7], ["", "", "", "", "invalid-connection", "invalid-connection", ""], "{answer}");
    assert_ne!(errors[7], "", "a statement ran with no place free: {answer}");
    assert_eq!(results[1]["rows"], json!([[{"int": 0}]]), "{answer}");
    settle().await;
    assert_eq!(db.count("SELECT count(*) FROM todos").await, 0);
}

/// A component may decide to roll back while its connection sits idle:
/// when the transaction was taken back meanwhile, its `ROLLBACK` (and only
/// that) is served, and the next statement runs on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_right_after_a_take_back_is_served() {
    let (db, gateway, runtime) = take_back_setup().await;
    let idle_rollback = idle_first(step("ROLLBACK", json!([])));
    let component = tokio::spawn(async move {
        call(
            &runtime,
            json!({"db": "db", "steps": [
                step("BEGIN TRANSACTION", json!([])),
                step("INSERT INTO todos (id, description) VALUES (10, 'c')", json!([])),
                idle_rollback,
                step("SELECT count(*) FROM todos", json!([])),
            ]}),
        )
        .await
    });
    take_back_one(&gateway).await;
    let answer = component.await.unwrap();
    let results = answer["results"].as_array().unwrap();
    let errors = errors(&answer);
    assert_eq!(errors, ["", "", "", ""], "{answer}");
    assert_eq!(results[3]["rows"], json!([[{"int": 0}]]), "{answer}");
    settle().await;
    assert_eq!(db.count("SELECT count(*) FROM todos").await, 0);
}
