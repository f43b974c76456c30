//! The database's own check (`services::sql::guard`): what it adds to one
//! statement, against the same statement without it, same connection,
//! same run. Prints a table for BENCHMARKS.md.
//!
//! SQLite (a file with the SQL fixture schema, one connection):
//! - bare: a point select, `.persistent(false)` (prepared every time, as
//!   the gateway must), the authorizer not installed;
//! - guarded: `enter` (the plugin's grant) + the same select (now
//!   authorized while it is prepared) + `leave`, the authorizer
//!   installed.
//!
//! PostgreSQL (a throwaway cluster from the system's server binaries; the
//! login owns the tables and has CREATEROLE; skipped without binaries):
//! - bare: `BEGIN`, the point select, `COMMIT` (the gateway runs each
//!   call in a transaction either way);
//! - guarded: `BEGIN`, `enter` (`SET LOCAL ROLE`, `statement_timeout`,
//!   `search_path`: one round trip), the select, `COMMIT`.
//!
//! Each row runs for a fixed time; rows alternate over five rounds and the
//! median is kept. Run with `./dev bench` or `cargo bench -p gatehouse
//! --bench sql_guard`.
#![allow(missing_docs)]

#[path = "../tests/all/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::services::sql::guard::{postgres as pg_guard, sqlite};
use gatehouse::services::sql::{Door, SqlPolicy};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};

const ROUNDS: usize = 5;
const ROW_TIME: Duration = Duration::from_millis(700);

fn schema() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sql/schema.sql")).unwrap()
}

fn policy() -> SqlPolicy {
    SqlPolicy::from_toml(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sql/policy.toml")).unwrap(),
    )
    .unwrap()
}

/// Runs `body` (an expression that may `.await`) for `ROW_TIME` after a
/// warm-up; the mean time per run, in µs.
macro_rules! timed {
    ($body:expr) => {{
        for _ in 0..50 {
            $body;
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < ROW_TIME {
            $body;
            n += 1;
        }
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    }};
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn row(database: &str, bare: f64, guarded: f64) {
    println!("| {database} | {bare:.1} | {guarded:.1} | +{:.1} | {:.2}x |", guarded - bare, guarded / bare);
}

const SELECT_SQLITE: &str = "SELECT id, name, price FROM products WHERE id = ?";
const SELECT_PG: &str = "SELECT id, name, price FROM products WHERE id = $1";

async fn sqlite_rows() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new().filename(dir.path().join("app.db")).create_if_missing(true);
    let mut bare = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(schema())).execute(&mut bare).await.unwrap();
    let guarded = SqliteConnection::connect_with(&options.clone().serialized(true)).await.unwrap();
    let mut guarded = sqlite::install(guarded, gatehouse::databases::DEFAULT_MAX_VALUE_BYTES).await.unwrap();
    let grant = Arc::new(sqlite::SqliteGrant::new(&policy(), Door::Gatehouse));

    let (mut bares, mut guards) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bares.push(timed!({
            sqlx::query(SELECT_SQLITE).bind(1i64).persistent(false).fetch_one(&mut bare).await.unwrap();
        }));
        guards.push(timed!({
            sqlite::enter(&mut guarded, grant.clone()).await.unwrap();
            sqlx::query(SELECT_SQLITE).bind(1i64).persistent(false).fetch_one(guarded.connection()).await.unwrap();
            sqlite::leave(&mut guarded);
        }));
    }
    row("SQLite (file)", median(bares), median(guards));
}

/// Bounded built-ins over 10,000 rows (`LIKE`, `json_extract`, `strftime`):
/// SQLite's own against the functions every pooled connection gets
/// (`guard::sqlite_functions`: a bound, a deadline check and a statement
/// step on a private connection per call).
async fn sqlite_bounded_rows() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new().filename(dir.path().join("like.db")).create_if_missing(true);
    let mut bare = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE words (w TEXT NOT NULL, j TEXT NOT NULL, t TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
         INSERT INTO words SELECT 'word number ' || i || ' of the benchmark', '{\"n\":' || i || ',\"s\":\"x\"}',
             datetime(1700000000 + i * 3600, 'unixepoch') FROM n;",
    )
    .execute(&mut bare)
    .await
    .unwrap();
    let guarded = SqliteConnection::connect_with(&options.clone().serialized(true)).await.unwrap();
    let mut guarded = sqlite::install(guarded, gatehouse::databases::DEFAULT_MAX_VALUE_BYTES).await.unwrap();
    sqlite::enter_host(&mut guarded);
    for (label, sql, param) in [
        ("LIKE", "SELECT count(*) FROM words WHERE w LIKE ?", "%77%"),
        ("json_extract", "SELECT sum(json_extract(j, ?)) FROM words", "$.n"),
        ("strftime", "SELECT count(strftime(?, t)) FROM words", "%Y-%m-%d %H"),
    ] {
        let (mut bares, mut guards) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bares.push(timed!({
                sqlx::query(sql).bind(param).persistent(false).fetch_one(&mut bare).await.unwrap();
            }));
            guards.push(timed!({
                sqlx::query(sql).bind(param).persistent(false).fetch_one(guarded.connection()).await.unwrap();
            }));
        }
        row(&format!("SQLite, {label} over 10,000 rows (bounded)"), median(bares), median(guards));
    }
}

async fn pg_rows() {
    if !postgres::available() {
        println!("\nPostgreSQL: skipped (no server binaries in /usr/lib/postgresql/*/bin; set GATEHOUSE_PG_BIN)");
        return;
    }
    let server = postgres::TestPostgres::start("gatehouse", "bench-password", "app");
    server.psql("ALTER ROLE gatehouse CREATEROLE");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&server.url()).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(schema())).execute(&pool).await.unwrap();
    let roles = gatehouse::services::sql::pg_pool::pg_pool(server.url().parse().unwrap(), 1, Duration::from_secs(10));
    pg_guard::sync(&roles, "bench", &policy()).await.unwrap();
    let mut conn: PgConnection = PgConnection::connect(&server.url()).await.unwrap();

    let (mut bares, mut guards) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bares.push(timed!({
            let mut tx = conn.begin().await.unwrap();
            sqlx::query(SELECT_PG).bind(1i32).fetch_one(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }));
        guards.push(timed!({
            let mut tx = conn.begin().await.unwrap();
            pg_guard::enter(&mut tx, "bench", Duration::from_secs(5)).await.unwrap();
            sqlx::query(SELECT_PG).bind(1i32).fetch_one(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }));
    }
    row("PostgreSQL (loopback)", median(bares), median(guards));
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("\nThe database's own check per statement (median of {ROUNDS} rounds, mean µs per statement)\n");
    println!("| database | bare statement µs | enter + statement + leave µs | added µs | ratio |");
    println!("|---|---|---|---|---|");
    runtime.block_on(async {
        sqlite_rows().await;
        sqlite_bounded_rows().await;
        pg_rows().await;
    });
}
