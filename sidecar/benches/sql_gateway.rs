//! The SQL gateway end to end (issue 19, performance (b)): the same
//! queries from a guest through `gatehouse:services/sql` against sqlx
//! called directly from Rust, same database, same pool size, same
//! concurrency, same run. Prints tables for BENCHMARKS.md.
//!
//! The guest is `sql-demo` (its `repeat` command): each invocation runs
//! the query `LOOP` times and times each call with the guest's clock, so
//! the invocation's own cost is amortised and p50/p99 are per query. The
//! direct side runs the same statement with sqlx's defaults (a prepared
//! statement, cached per connection), each call timed the same way, and
//! again with its pool's ping before each acquire turned off, the fairer
//! baseline (the gateway's pool pings only connections idle over a
//! second); both ratios are printed. The
//! gateway's path per query: the policy check (a lookup in the grant's
//! check cache after the first), a connection of the plugin's share, the
//! database's own check (SQLite: the authorizer's grant entered and left,
//! the statement unprepared; PostgreSQL: the plugin's session, set only
//! when the connection carries another, and its statement kept prepared
//! in that session, through the row-bounding relay), the result
//! decoded under the caps, and the copy into the guest.
//!
//! Queries: a point select by primary key, and 50 rows of a 1,000-row
//! table. SQLite is a file in the system's temporary directory;
//! PostgreSQL a throwaway cluster from the system's server binaries
//! (skipped with a message when there are none). Rows alternate over
//! three rounds; the median round's throughput is kept, and the
//! latencies of all rounds are pooled. Run with `./dev bench` or `cargo
//! bench -p gatehouse --bench sql_gateway`; `SQL_BENCH_ONLY=sqlite` or
//! `=postgres` runs one database's half; `SQL_BENCH_QUERY=<part of a
//! query's label>` and `SQL_BENCH_CALLERS=<n>` run one row, for a
//! profiler (`perf record`) to look at one path.
#![allow(missing_docs)]

#[allow(dead_code)]
#[path = "../tests/all/postgres.rs"]
mod postgres;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use gatehouse::databases::{DatabaseSettings, PoolSettings, UrlSource};
use gatehouse::services::Services;
use gatehouse::services::http::resolve::SystemLookup;
use gatehouse::services::sql::SqlGateway;
use gatehouse::services::sql::relay::{Relay, Upgrade, Upstream};
use gatehouse::{Document, Runtime, RuntimeSettings};
use sqlx::{AssertSqlSafe, Connection, Executor};

/// Queries per invocation (and per direct task round).
const LOOP: usize = 500;
const ROUNDS: usize = 3;
const POOL: u32 = 8;

struct Query {
    label: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
    param: i64,
    rows: usize,
}

const QUERIES: &[Query] = &[
    Query {
        label: "point select by key",
        sqlite: "SELECT name, price FROM products WHERE id = ?",
        postgres: "SELECT name, price FROM products WHERE id = $1",
        param: 1,
        rows: 1,
    },
    Query {
        label: "50 rows of 1,000",
        sqlite: "SELECT id, payload FROM big WHERE id > ? ORDER BY id LIMIT 50",
        postgres: "SELECT id, payload FROM big WHERE id > $1 ORDER BY id LIMIT 50",
        param: 7,
        rows: 50,
    },
];

fn schema() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sql/schema.sql")).unwrap()
}

const BIG: &str = "CREATE TABLE big (id INTEGER PRIMARY KEY, payload TEXT NOT NULL);\n\
    INSERT INTO big (id, payload) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
    SELECT i, 'payload-payload-payload-payload-payload-payload' FROM n;";

/// One side's result over a round.
#[derive(Clone)]
struct Round {
    per_second: f64,
    nanos: Vec<u64>,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let only = std::env::var("SQL_BENCH_ONLY").ok();
    let runs = |database: &str| only.as_deref().is_none_or(|only| only == database);
    runtime.block_on(async {
        if runs("sqlite") {
            sqlite().await;
        }
        if runs("postgres") {
            postgres().await;
        }
    });
}

async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.db");
    {
        let options = gatehouse::databases::sqlite_options(&file);
        let mut c = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
        c.execute(sqlx::raw_sql(AssertSqlSafe(format!("{}\n{BIG}", schema())))).await.unwrap();
        c.close().await.unwrap();
    }
    let direct = sqlx::pool::PoolOptions::<sqlx::Sqlite>::new()
        .max_connections(POOL)
        .connect_with(gatehouse::databases::sqlite_options(&file));
    let direct = direct.await.unwrap();
    let unpinged = sqlx::pool::PoolOptions::<sqlx::Sqlite>::new()
        .max_connections(POOL)
        .test_before_acquire(false)
        .connect_with(gatehouse::databases::sqlite_options(&file));
    let unpinged = unpinged.await.unwrap();
    let others = vec![(NO_PING, Direct::Sqlite(unpinged.clone())), (VALUES_READ, Direct::SqliteRead(unpinged))];
    let settings = DatabaseSettings::sqlite(file.clone());
    compare("SQLite", settings, Direct::Sqlite(direct), others, |q| q.sqlite).await;
}

async fn postgres() {
    if !postgres::available() {
        println!("\nPostgreSQL: skipped (no server binaries in /usr/lib/postgresql/*/bin; set GATEHOUSE_PG_BIN)");
        return;
    }
    let server = postgres::TestPostgres::start("gateway", "bench-pw", "shop");
    server.psql("ALTER ROLE gateway CREATEROLE");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(POOL).connect(&server.url()).await.unwrap();
    let pg_schema =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sql/schema.postgres.sql"))
            .unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("{}\n{pg_schema}\n{BIG}", schema()))).execute(&pool).await.unwrap();
    let settings = DatabaseSettings::postgres(UrlSource::Inline(server.url()));
    // The relay's own cost: sqlx directly, through a relay of its own.
    let options: sqlx::postgres::PgConnectOptions = server.url().parse().unwrap();
    let relay = Relay::start(Upstream::Tcp("127.0.0.1".into(), server.port), Upgrade::Never).unwrap();
    let relayed =
        sqlx::postgres::PgPoolOptions::new().max_connections(POOL).connect_with(relay.options(&options)).await;
    let unpinged = sqlx::postgres::PgPoolOptions::new().max_connections(POOL).test_before_acquire(false);
    let unpinged = unpinged.connect_with(options.clone()).await.unwrap();
    let others = vec![
        (NO_PING, Direct::Postgres(unpinged.clone())),
        (VALUES_READ, Direct::PostgresRead(unpinged)),
        ("sqlx through the relay", Direct::Postgres(relayed.unwrap())),
    ];
    compare("PostgreSQL", settings, Direct::Postgres(pool), others, |q| q.postgres).await;
}

/// sqlx's pool without its ping before each acquire
/// (`test_before_acquire(false)`): the fastest sqlx gets, and the fairer
/// baseline for the gateway, whose pool checks only connections idle
/// over a second.
const NO_PING: &str = "sqlx, no ping before acquire";

/// [`NO_PING`], and each value of each row read into an owned Rust value
/// of its type, as a caller does with a result (the other baselines only
/// count the rows sqlx returns, decoding nothing, while the gateway hands
/// the guest every value).
const VALUES_READ: &str = "sqlx, no ping, values read";

enum Direct {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    /// [`VALUES_READ`].
    SqliteRead(sqlx::SqlitePool),
    /// [`VALUES_READ`].
    PostgresRead(sqlx::PgPool),
}

impl Direct {
    async fn query(&self, sql: &'static str, id: i64, rows: usize) {
        let got = match self {
            Direct::Sqlite(pool) => sqlx::query(sql).bind(id).fetch_all(pool).await.unwrap().len(),
            Direct::Postgres(pool) => sqlx::query(sql).bind(id).fetch_all(pool).await.unwrap().len(),
            Direct::SqliteRead(pool) => {
                let rows = sqlx::query(sql).bind(id).fetch_all(pool).await.unwrap();
                rows.iter().map(read_sqlite).count()
            }
            Direct::PostgresRead(pool) => {
                let rows = sqlx::query(sql).bind(id).fetch_all(pool).await.unwrap();
                rows.iter().map(read_postgres).count()
            }
        };
        assert_eq!(got, rows);
    }
}

/// An owned value of a row, as a caller would keep it.
#[allow(dead_code)]
enum Owned {
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

fn read_sqlite(row: &sqlx::sqlite::SqliteRow) -> Vec<Owned> {
    use sqlx::{Row as _, TypeInfo as _, ValueRef as _};
    (0..row.len())
        .map(|i| {
            let raw = row.try_get_raw(i).unwrap();
            let info = raw.type_info();
            match info.name() {
                "INTEGER" => Owned::Int(row.get_unchecked(i)),
                "REAL" => Owned::Real(row.get_unchecked(i)),
                "TEXT" => Owned::Text(row.get_unchecked(i)),
                _ => Owned::Bytes(row.get_unchecked(i)),
            }
        })
        .map(std::hint::black_box)
        .collect()
}

fn read_postgres(row: &sqlx::postgres::PgRow) -> Vec<Owned> {
    use sqlx::{Row as _, TypeInfo as _, ValueRef as _};
    (0..row.len())
        .map(|i| {
            let raw = row.try_get_raw(i).unwrap();
            let info = raw.type_info();
            match info.name() {
                "INT4" => Owned::Int(i64::from(row.get_unchecked::<i32, _>(i))),
                "INT8" => Owned::Int(row.get_unchecked(i)),
                "TEXT" => Owned::Text(row.get_unchecked(i)),
                // `numeric` needs a decimal crate sqlx is not built with
                // here: its bytes, as a caller without one would keep them.
                _ => Owned::Bytes(raw.as_bytes().unwrap().to_vec()),
            }
        })
        .map(std::hint::black_box)
        .collect()
}

async fn compare(
    name: &str,
    mut settings: DatabaseSettings,
    direct: Direct,
    others: Vec<(&str, Direct)>,
    sql_of: fn(&Query) -> &'static str,
) {
    settings.pool = PoolSettings { max_connections: POOL, per_plugin_connections: POOL, ..PoolSettings::default() };
    let gateway = SqlGateway::new(&BTreeMap::from([("db".to_string(), settings)]));
    let services = Services::with_dns(Arc::new(SystemLookup)).unwrap().with_sql(gateway);
    let runtime = Arc::new(Runtime::new(RuntimeSettings::default(), Arc::new(services)).unwrap());
    let guests = std::env::var_os("GATEHOUSE_GUEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"));
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("sqlbench.toml"),
        format!(
            "[plugin]\nname = \"sqlbench\"\ncomponent = {:?}\n[limits]\ntimeout = \"60s\"\nconcurrency = 64\n\
             [sql.db]\nstatements = [\"select\"]\nmax_rows = 100\n[sql.db.tables]\nproducts = \"select\"\nbig = \"select\"\n",
            guests.join("sql_demo.wasm").display().to_string()
        ),
    )
    .unwrap();
    let load = gatehouse::policy::load_dir(policies.path(), policies.path()).unwrap();
    assert!(load.errors.is_empty(), "{:?} (run ./dev guests first)", load.errors);
    let report = runtime.load(&load.set).await;
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let direct = Arc::new(direct);
    let others: Vec<_> = others.into_iter().map(|(label, direct)| (label, Arc::new(direct))).collect();

    println!("\n{name}: {LOOP} queries per invocation (gateway) or task (direct), pool of {POOL}\n");
    println!("| query | callers | path | queries/s | p50 µs | p99 µs | vs direct | vs {NO_PING} | vs {VALUES_READ} |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let only_query = std::env::var("SQL_BENCH_QUERY").ok();
    let only_callers: Option<usize> = std::env::var("SQL_BENCH_CALLERS").ok().map(|n| n.parse().unwrap());
    for query in QUERIES.iter().filter(|q| only_query.as_deref().is_none_or(|part| q.label.contains(part))) {
        let sql = sql_of(query);
        for callers in [1, 8].into_iter().filter(|n| only_callers.is_none_or(|only| only == *n)) {
            // Warm: compiled, pooled, connections open.
            guest_round(&runtime, sql, query.param, 1).await;
            direct_round(&direct, sql, query.param, query.rows, 1).await;
            for (_, other) in &others {
                direct_round(other, sql, query.param, query.rows, 1).await;
            }
            let (mut guest, mut plain) = (Vec::new(), Vec::new());
            let mut other_rounds: Vec<Vec<Round>> = others.iter().map(|_| Vec::new()).collect();
            for _ in 0..ROUNDS {
                guest.push(guest_round(&runtime, sql, query.param, callers).await);
                plain.push(direct_round(&direct, sql, query.param, query.rows, callers).await);
                for ((_, other), rounds) in others.iter().zip(&mut other_rounds) {
                    rounds.push(direct_round(other, sql, query.param, query.rows, callers).await);
                }
            }
            let (guest, plain) = (summarize(guest), summarize(plain));
            let mut paths = vec![("sqlx directly", plain)];
            paths.extend(others.iter().zip(other_rounds).map(|((label, _), rounds)| (*label, summarize(rounds))));
            let rate_of = |label| paths.iter().find(|(l, _)| *l == label).map_or(plain.0, |(_, s)| s.0);
            let (unpinged, read) = (rate_of(NO_PING), rate_of(VALUES_READ));
            paths.push(("guest through the gateway", guest));
            for (path, (rate, p50, p99)) in paths {
                println!(
                    "| {} | {callers} | {path} | {rate:.0} | {p50:.1} | {p99:.1} | {:.2}x | {:.2}x | {:.2}x |",
                    query.label,
                    rate / plain.0,
                    rate / unpinged,
                    rate / read
                );
            }
        }
    }
}

async fn guest_round(runtime: &Arc<Runtime>, sql: &'static str, param: i64, callers: usize) -> Round {
    let command =
        serde_json::json!({ "query": sql, "db": "db", "params": [{"int": param}], "repeat": LOOP }).to_string();
    round(callers, || {
        let (runtime, command) = (Arc::clone(runtime), command.clone());
        async move {
            let input = Document { content_type: "application/json".into(), body: command.into_bytes() };
            let output = runtime.invoke("sqlbench", input).await.unwrap();
            let answer: serde_json::Value = serde_json::from_slice(&output.body).unwrap();
            let nanos = answer["nanos"].as_array().unwrap_or_else(|| panic!("{answer}"));
            nanos.iter().map(|n| n.as_u64().unwrap()).collect()
        }
    })
    .await
}

async fn direct_round(direct: &Arc<Direct>, sql: &'static str, param: i64, rows: usize, callers: usize) -> Round {
    round(callers, || {
        let direct = Arc::clone(direct);
        async move {
            let mut nanos = Vec::with_capacity(LOOP);
            for _ in 0..LOOP {
                let started = Instant::now();
                direct.query(sql, param, rows).await;
                nanos.push(started.elapsed().as_nanos() as u64);
            }
            nanos
        }
    })
    .await
}

/// `callers` tasks made by `task` at once, each answering its queries'
/// times: their throughput together and every time.
async fn round<F>(callers: usize, task: impl Fn() -> F) -> Round
where
    F: std::future::Future<Output = Vec<u64>> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers).map(|_| tokio::spawn(task())).collect();
    let mut nanos = Vec::new();
    for task in tasks {
        nanos.extend(task.await.unwrap());
    }
    Round { per_second: nanos.len() as f64 / started.elapsed().as_secs_f64(), nanos }
}

/// The median round's throughput, and p50/p99 (µs) of all rounds.
fn summarize(mut rounds: Vec<Round>) -> (f64, f64, f64) {
    rounds.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    let rate = rounds[rounds.len() / 2].per_second;
    let mut all: Vec<u64> = rounds.into_iter().flat_map(|r| r.nanos).collect();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    (rate, at(0.5), at(0.99))
}
