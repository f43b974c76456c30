//! The `gatehouse:services/sql` door end to end: the `sql-demo` guest
//! through the runtime, on a real SQLite file and a throwaway PostgreSQL.

use std::sync::Arc;

use gatehouse::services::Services;
use gatehouse::services::sql::{Dialect, SqlGateway};
use gatehouse::{Document, ErrorKind, InvokeError, Runtime};
use serde_json::{Value as Json, json};

use super::support::{TestDb, policy_section, pool};
use crate::common::{Policies, guest, settings};

/// A runtime whose SQL gateway is `gateway`, with `sql-demo` loaded as
/// `demo` under `[sql...]` sections `sections`.
async fn runtime(gateway: Arc<SqlGateway>, sections: &str) -> Runtime {
    let policies = Policies::new();
    let component = guest("sql_demo").display().to_string();
    policies.write(
        "demo.toml",
        &format!("[plugin]\nname = \"demo\"\ncomponent = {component:?}\n[limits]\ntimeout = \"10s\"\n{sections}\n"),
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

async fn call(runtime: &Runtime, command: Json) -> Result<Json, InvokeError> {
    let body = command.to_string().into_bytes();
    let output = runtime.invoke("demo", Document { content_type: "application/json".into(), body }).await?;
    Ok(serde_json::from_slice(&output.body).unwrap())
}

fn kind(result: Result<Json, InvokeError>) -> ErrorKind {
    result.expect_err("expected an error").kind()
}

/// Every value kind goes in as a parameter and comes back as it went, on
/// both databases; decimals, timestamps, uuids and json travel as text.
async fn values_round_trip(dialect: Dialect) {
    let db = TestDb::start(dialect).await;
    let blob_type = if dialect == Dialect::Sqlite { "BLOB" } else { "BYTEA" };
    let real_type = if dialect == Dialect::Sqlite { "REAL" } else { "DOUBLE PRECISION" };
    db.admin(&format!(
        "CREATE TABLE kinds (id INTEGER PRIMARY KEY, b BOOLEAN, i BIGINT, f {real_type}, t TEXT, bl {blob_type}, n TEXT)"
    ))
    .await;
    let runtime = runtime(
        db.gateway(pool(4, 4)),
        "[sql.db]\nstatements = [\"select\", \"insert\"]\n[sql.db.tables]\nkinds = [\"select\", \"insert\"]\n",
    )
    .await;
    let p: Vec<String> = (1..=7).map(|n| super::support::placeholder(dialect, n)).collect();
    let params = json!([{"int": 1}, {"bool": true}, {"int": i64::MIN}, {"real": -0.125}, {"text": "hé 'x' ✓"},
        {"blob": [0, 255, 10]}, null]);
    let insert = format!("INSERT INTO kinds (id, b, i, f, t, bl, n) VALUES ({})", p.join(", "));
    assert_eq!(
        call(&runtime, json!({"db": "db", "execute": insert, "params": params})).await.unwrap(),
        json!({"changed": 1})
    );
    let rows = call(&runtime, json!({"db": "db", "query": "SELECT id, b, i, f, t, bl, n FROM kinds", "params": []}))
        .await
        .unwrap();
    let bool_back = if dialect == Dialect::Sqlite { json!({"int": 1}) } else { json!({"bool": true}) };
    let expected = json!([[{"int": 1}, bool_back, {"int": i64::MIN}, {"real": -0.125}, {"text": "hé 'x' ✓"},
        {"blob": [0, 255, 10]}, null]]);
    assert_eq!(rows["rows"], expected);
    if dialect == Dialect::Postgres {
        let params = json!([{"int": 2}, {"bool": false}, {"int": 7}, {"real": 1e300}, {"text": "plain"},
            {"blob": []}, null]);
        call(&runtime, json!({"db": "db", "execute": insert, "params": params})).await.unwrap();
        let rows = call(&runtime, json!({"db": "db", "query": "SELECT b, f, t, bl, n FROM kinds WHERE id = 2"})).await;
        assert_eq!(
            rows.unwrap()["rows"],
            json!([[{"bool": false}, {"real": 1e300}, {"text": "plain"}, {"blob": []}, null]])
        );
        // Types without a value kind of their own, as text.
        let sql = "SELECT $1::numeric, $2::timestamp, $3::timestamptz, $4::uuid, $5::jsonb, $6::date";
        let params = json!([{"text": "-12345.678900"}, {"text": "2026-12-02 10:11:12.5"},
            {"text": "2026-12-02 10:11:12+02"}, {"text": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"},
            {"text": "{\"b\": [1, 2], \"a\": null}"}, {"text": "1999-12-31"}]);
        let rows = call(&runtime, json!({"db": "db", "query": sql, "params": params})).await.unwrap();
        assert_eq!(
            rows["rows"],
            json!([[{"text": "-12345.678900"}, {"text": "2026-12-02 10:11:12.500000"}, {"text": "2026-12-02 08:11:12+00"},
                {"text": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}, {"text": "{\"a\": null, \"b\": [1, 2]}"},
                {"text": "1999-12-31"}]])
        );
        let types: Vec<&str> = rows["columns"].as_array().unwrap().iter().map(|c| c[1].as_str().unwrap()).collect();
        assert_eq!(types, ["NUMERIC", "TIMESTAMP", "TIMESTAMPTZ", "UUID", "JSONB", "DATE"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_on_sqlite() {
    values_round_trip(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_on_postgres() {
    values_round_trip(Dialect::Postgres).await;
}

/// A transaction the guest commits is there afterwards; one it rolls back,
/// or leaves open when the invocation ends, is not (rolled back by the
/// host when the invocation's state is dropped).
async fn transactions_end_with_the_invocation(dialect: Dialect) {
    let db = TestDb::start(dialect).await;
    let runtime = runtime(db.gateway(pool(4, 4)), &policy_section("db", "")).await;
    let p = |n| super::support::placeholder(dialect, n);
    let insert = format!("INSERT INTO products (id, name, price, stock) VALUES ({}, {}, 1, 1)", p(1), p(2));
    let step = |id: i64| json!({"execute": insert, "params": [{"int": id}, {"text": format!("p{id}")}]});
    for (id, end) in [(200, "commit"), (201, "rollback"), (202, "leave")] {
        let read = json!({"query": "SELECT count(*) FROM products WHERE id >= 200", "params": []});
        let answer = call(&runtime, json!({"db": "db", "transaction": [step(id), read], "end": end})).await.unwrap();
        // Inside the transaction its own write is seen.
        let seen = if id == 200 { 1 } else { 2 };
        assert_eq!(answer["results"][1]["rows"], json!([[{"int": seen}]]), "{end}");
    }
    // Let the closed connection's rollback land before looking.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(db.count("SELECT count(*) FROM products WHERE id >= 200").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM products WHERE id = 200").await, 1);
    // The connection of the left-open transaction did not come back dirty:
    // the pool still serves writes to the same rows.
    let answer = call(&runtime, json!({"db": "db", "transaction": [step(202)], "end": "commit"})).await;
    assert_eq!(answer.unwrap()["results"][0], json!({"changed": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_end_with_the_invocation_on_sqlite() {
    transactions_end_with_the_invocation(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_end_with_the_invocation_on_postgres() {
    transactions_end_with_the_invocation(Dialect::Postgres).await;
}

/// Attack (outside reviews 13 and 14): a plugin holds a transaction open
/// and idle while another plugin waits for the pool's only place. Once
/// the waiter has waited half its `acquire_timeout`, the idle
/// transaction's connection is taken back: rolled back, the waiter
/// served, and the holder's next statement `unavailable`, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_is_rolled_back_for_a_waiting_plugin() {
    use super::support::{query_as, until_held};
    let db = TestDb::start(Dialect::Sqlite).await;
    let settings =
        gatehouse::databases::PoolSettings { acquire_timeout: std::time::Duration::from_secs(1), ..pool(2, 2) };
    let gateway = db.gateway(settings);
    let runtime = runtime(Arc::clone(&gateway), &policy_section("db", "")).await;
    let insert = json!({"execute": "INSERT INTO products (id, name, price, stock) VALUES (300, 'p', 1, 1)"});
    let read = json!({"query": "SELECT count(*) FROM products", "after_ms": 2500});
    let holder = tokio::spawn(async move {
        call(&runtime, json!({"db": "db", "transaction": [insert, read], "end": "commit"})).await
    });
    until_held(&gateway, "demo", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let rows = query_as(&gateway, "other", "SELECT name FROM products WHERE id = 1").await.unwrap();
    assert_eq!(rows.rows.len(), 1);
    let error = holder.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("rolled back"), "{error}");
    assert_eq!(db.count("SELECT count(*) FROM products WHERE id = 300").await, 0);
}

/// `execute` reports the rows the statement itself changed: one that
/// writes nothing reports 0, never the count SQLite keeps on the pooled
/// connection from its previous statement (here the same plugin's, on the
/// pool's only connection; it could be another plugin's).
/// Attack: learn how many rows an earlier borrower of the connection wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_counts_only_what_the_statement_changed() {
    let db = TestDb::start(Dialect::Sqlite).await;
    let runtime = runtime(db.gateway(pool(1, 1)), &policy_section("db", "")).await;
    let update =
        json!({"db": "db", "execute": "UPDATE products SET stock = stock + 1 WHERE id > ?", "params": [{"int": 0}]});
    assert_eq!(call(&runtime, update).await.unwrap(), json!({"changed": 3}));
    let select = json!({"db": "db", "execute": "SELECT count(*) FROM products", "params": []});
    assert_eq!(call(&runtime, select).await.unwrap(), json!({"changed": 0}));
}

/// With `transaction_control` on, a `BEGIN` outside a transaction resource
/// is refused rather than run on a connection that goes back when the call
/// ends (an outside review got `{"changed": 0}` and a transaction ended
/// unseen), on both databases; inside a transaction, `COMMIT` ends it.
async fn begin_as_a_statement_needs_a_transaction(dialect: Dialect) {
    let db = TestDb::start(dialect).await;
    let runtime = runtime(db.gateway(pool(2, 2)), &policy_section("db", "transaction_control = true")).await;
    for call_as in ["execute", "query"] {
        let error = call(&runtime, json!({"db": "db", call_as: "BEGIN"})).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
        assert!(error.to_string().contains("begin one with the `begin` function"), "{error}");
    }
    let insert = json!({"execute": "INSERT INTO products (id, name, price, stock) VALUES (99, 'kept', 1, 1)"});
    let steps = json!([insert, {"execute": "COMMIT"}]);
    call(&runtime, json!({"db": "db", "transaction": steps, "end": "leave"})).await.unwrap();
    let count = json!({"db": "db", "query": "SELECT count(*) FROM products WHERE name = 'kept'"});
    assert_eq!(call(&runtime, count).await.unwrap()["rows"], json!([[{"int": 1}]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_as_a_statement_needs_a_transaction_on_sqlite() {
    begin_as_a_statement_needs_a_transaction(Dialect::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_as_a_statement_needs_a_transaction_on_postgres() {
    begin_as_a_statement_needs_a_transaction(Dialect::Postgres).await;
}

/// A plugin's first call on PostgreSQL warns of the database's functions
/// a row reaches as `t.f` (which no policy sees), naming each; a database
/// with none logs no such warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_warns_of_functions_a_row_reaches_on_postgres() {
    let warned = |logs: &crate::common::Captured| {
        logs.events()
            .iter()
            .filter(|e| e.fields.get("message").is_some_and(|m| m.contains("each taking a row")))
            .map(|e| e.fields.get("functions").cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let query = json!({"db": "db", "query": "SELECT name FROM products WHERE id = 1"});
    let db = TestDb::start(Dialect::Postgres).await;
    let (logs, _guard) = crate::common::capture_logs();
    let first = runtime(db.gateway(pool(2, 2)), &policy_section("db", "")).await;
    call(&first, query.clone()).await.unwrap();
    assert!(warned(&logs).is_empty(), "{:?}", warned(&logs));
    drop(first);
    db.admin("CREATE FUNCTION price_of(p products) RETURNS numeric LANGUAGE sql AS 'SELECT p.price'").await;
    let second = runtime(db.gateway(pool(2, 2)), &policy_section("db", "")).await;
    call(&second, query).await.unwrap();
    assert_eq!(warned(&logs), ["price_of(products)"]);
}

/// Host state a guest can cause: open transactions per invocation are
/// capped at `MAX_TRANSACTIONS` (each also holds a connection of the
/// plugin's share), and all are released when the invocation ends.
/// Attacks: begin transactions in a loop and never end them; begin more
/// than the share allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transactions_are_capped_per_invocation_and_released_at_its_end() {
    use gatehouse::services::sql::host::MAX_TRANSACTIONS;
    let db = TestDb::start(Dialect::Sqlite).await;
    let cap = MAX_TRANSACTIONS as u32;
    let runtime = runtime(db.gateway(pool(cap + 4, cap + 2)), &policy_section("db", "")).await;
    let held = call(&runtime, json!({"db": "db", "hold": cap})).await.unwrap();
    assert_eq!(held, json!({"held": cap}));
    assert_eq!(kind(call(&runtime, json!({"db": "db", "hold": cap + 1})).await), ErrorKind::InvalidInput);
    // The share is smaller than twice the cap: had the first invocations'
    // connections not been released, these would be rate-limited.
    for _ in 0..3 {
        assert_eq!(call(&runtime, json!({"db": "db", "hold": cap})).await.unwrap(), json!({"held": cap}));
    }
    // A share smaller than the cap: `rate-limited`, with a retry hint.
    let runtime = self::runtime(db.gateway(pool(4, 2)), &policy_section("db", "")).await;
    let error = call(&runtime, json!({"db": "db", "hold": 3})).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
}

/// Through the door: the policy refuses what it does not grant (`denied`,
/// naming the table), an alias not granted is `denied`, and a component
/// importing the interface without any `[sql.*]` is refused at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_refuses_what_the_policy_does_not_grant() {
    let db = TestDb::start(Dialect::Sqlite).await;
    let runtime = runtime(db.gateway(pool(4, 4)), &policy_section("db", "")).await;
    let error = call(&runtime, json!({"db": "db", "query": "SELECT value FROM secrets"})).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Denied);
    assert!(error.to_string().contains("secrets"), "{error}");
    let error = call(&runtime, json!({"db": "other\nline", "query": "SELECT 1"})).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Denied);
    assert!(!error.to_string().contains('\n'), "{error}");
    let error = call(&runtime, json!({"db": "db", "query": "SELECT 1; SELECT 2"})).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Denied);
    assert_eq!(kind(call(&runtime, json!({"db": "db", "query": "SELEC 1"})).await), ErrorKind::InvalidInput);

    let policies = Policies::new();
    let component = guest("sql_demo").display().to_string();
    policies.write("demo.toml", &format!("[plugin]\nname = \"demo\"\ncomponent = {component:?}\n"));
    let runtime = Runtime::new(settings(), crate::common::services()).unwrap();
    let report = runtime.load(&policies.load().set).await;
    let refused = format!("{:?}", report.refused);
    assert!(refused.contains("gatehouse:services/sql") && refused.contains("needs a [sql] section"), "{refused}");
}

/// A `[sql.<alias>]` the settings do not define, or whose grant the
/// alias's dialect cannot serve, refuses the plugin at load, naming the
/// alias.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_on_an_unknown_or_unsuitable_alias_refuses_the_plugin() {
    let db = TestDb::start(Dialect::Sqlite).await;
    for (sections, expected) in [
        (policy_section("nosuch", ""), "[sql.nosuch] grant, but the settings define no [databases.nosuch]"),
        (policy_section("db", "row_locking = true"), "[sql.db] grants row_locking, but [databases.db] is a SQLite"),
    ] {
        let policies = Policies::new();
        let component = guest("sql_demo").display().to_string();
        policies.write("demo.toml", &format!("[plugin]\nname = \"demo\"\ncomponent = {component:?}\n{sections}"));
        let services = Services::with_dns(Arc::new(gatehouse::services::http::resolve::SystemLookup)).unwrap();
        let services = Services { sql: db.gateway(pool(2, 2)), ..services };
        let runtime = Runtime::new(settings(), Arc::new(services)).unwrap();
        let load = policies.load();
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        let refused = format!("{:?}", runtime.load(&load.set).await.refused);
        assert!(refused.contains(expected), "{refused}");
    }
}

/// A plugin's PostgreSQL role goes once no policy in force grants it the
/// database, so its privileges do not outlive the grant. Attack (the
/// gap this closes): a plugin whose `[sql.<alias>]` section is removed
/// keeps a role with `SELECT` on the tables, which anyone holding the
/// sidecar's login could `SET ROLE` to. Checked for a section removed
/// (the plugin, whose component imports the door, is then refused) and
/// for a plugin removed altogether.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_grant_takes_the_plugins_role_away_on_postgres() {
    let db = TestDb::start(Dialect::Postgres).await;
    let gateway = db.gateway(pool(2, 2));
    let runtime = runtime(Arc::clone(&gateway), &policy_section("db", "")).await;
    let query = json!({"db": "db", "query": "SELECT name FROM products WHERE id = $1", "params": [{"int": 1}]});
    let role = "SELECT count(*) FROM pg_roles WHERE rolname = 'gatehouse_p_demo'";
    for remove in ["the section", "the plugin"] {
        runtime.load(&Policies::new().load().set).await;
        let policies = Policies::new();
        let component = guest("sql_demo").display().to_string();
        let plugin = format!("[plugin]\nname = \"demo\"\ncomponent = {component:?}\n");
        policies.write("demo.toml", &format!("{plugin}{}", policy_section("db", "")));
        assert!(runtime.load(&policies.load().set).await.refused.is_empty());
        call(&runtime, query.clone()).await.unwrap();
        assert_eq!(db.count(role).await, 1, "the first call makes the role");
        let policies = Policies::new();
        if remove == "the section" {
            policies.write("demo.toml", &plugin);
        }
        runtime.load(&policies.load().set).await;
        assert_eq!(db.count(role).await, 0, "the role stays after removing {remove}");
    }
}
