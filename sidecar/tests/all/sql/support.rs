//! Databases for the gateway's tests: a SQLite file in a temporary
//! directory or a throwaway PostgreSQL cluster, each with the fixtures'
//! schema (`tests/fixtures/sql/schema.sql`) and seed rows loaded by an
//! administrator connection, and a gateway whose alias `db` names it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::databases::{DatabaseSettings, PoolSettings, UrlSource};
use gatehouse::services::sql::{Dialect, SqlGateway, SqlPolicy};
use sqlx::{Connection, Executor};

use crate::postgres::TestPostgres;

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(crate::common::repo_root().join("sidecar/tests/fixtures/sql").join(name)).unwrap()
}

/// The fixtures' policy, with `extra` keys added before `[tables]`.
pub fn policy(extra: &str) -> SqlPolicy {
    SqlPolicy::from_toml(&format!("{extra}\n{}", fixture("policy.toml"))).unwrap()
}

/// `sql` run for `plugin` under the fixtures' policy on the alias `db`, as
/// the custom door runs a one-shot query.
pub async fn query_as(
    gateway: &gatehouse::services::sql::SqlGateway,
    plugin: &str,
    sql: &str,
) -> Result<gatehouse::services::sql::Rows, gatehouse::services::sql::SqlError> {
    use gatehouse::services::sql::exec::{Guard, Limits, OpenFor, checked};
    use gatehouse::services::sql::{Door, SqlConnection};
    let alias = gateway.alias("db").unwrap();
    let policy = policy("");
    let checked = checked(Door::Gatehouse, alias.dialect, &policy, sql, &[])?;
    let guard = Guard::new(alias.dialect, &policy, Door::Gatehouse);
    let open = OpenFor::statement(checked.kind);
    let stop = gatehouse::stop::Stop::new();
    let (mut connection, limits) =
        SqlConnection::open_for(alias, plugin, &guard, &stop, open, Limits::from(&policy)).await?;
    connection.query(&checked, sql, &[], limits).await
}

/// Waits until `plugin` holds `places` of the pool of the alias `db`.
pub async fn until_held(gateway: &gatehouse::services::sql::SqlGateway, plugin: &str, places: usize) {
    let alias = gateway.alias("db").unwrap();
    // Held over five checks in a row: on PostgreSQL a plugin's call first
    // makes its role in a place of its own, given back before its
    // statement takes one.
    let mut steady = 0;
    for _ in 0..1000 {
        steady = if alias.opened().is_some_and(|pool| pool.held_by(plugin) == places) { steady + 1 } else { 0 };
        if steady == 5 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{plugin} never held {places} places");
}

/// The fixtures' policy text as a `[sql.<alias>]` section body.
pub fn policy_section(alias: &str, extra: &str) -> String {
    let body = fixture("policy.toml").replace("[tables]", &format!("[sql.{alias}.tables]"));
    format!("[sql.{alias}]\n{extra}\n{body}")
}

/// A database with the fixtures loaded.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(TestPostgres),
}

impl TestDb {
    pub async fn start(dialect: Dialect) -> TestDb {
        let db = match dialect {
            Dialect::Sqlite => TestDb::Sqlite(tempfile::tempdir().unwrap()),
            Dialect::Postgres => {
                let server = TestPostgres::start("gateway", "gateway-pw", "shop");
                // What the README asks of the gateway's login: it manages
                // one role per plugin (the database's own check).
                server.psql("ALTER ROLE gateway CREATEROLE");
                TestDb::Postgres(server)
            }
        };
        db.admin(&fixture("schema.sql")).await;
        if dialect == Dialect::Postgres {
            db.admin(&fixture("schema.postgres.sql")).await;
        }
        db
    }

    #[allow(dead_code)]
    pub fn dialect(&self) -> Dialect {
        match self {
            TestDb::Sqlite(_) => Dialect::Sqlite,
            TestDb::Postgres(_) => Dialect::Postgres,
        }
    }

    pub fn settings(&self, pool: PoolSettings) -> DatabaseSettings {
        let mut settings = match self {
            TestDb::Sqlite(dir) => DatabaseSettings::sqlite(dir.path().join("shop.db")),
            TestDb::Postgres(pg) => DatabaseSettings::postgres(UrlSource::Inline(pg.url())),
        };
        settings.pool = pool;
        settings
    }

    /// A gateway whose alias `db` is this database.
    pub fn gateway(&self, pool: PoolSettings) -> Arc<SqlGateway> {
        self.gateway_guaranteeing(pool, &[])
    }

    /// [`Self::gateway`], with places guaranteed to plugins
    /// (`guaranteed_connections`).
    pub fn gateway_guaranteeing(&self, pool: PoolSettings, guaranteed: &[(&str, u32)]) -> Arc<SqlGateway> {
        let mut settings = self.settings(pool);
        settings.guaranteed = guaranteed.iter().map(|&(plugin, places)| (plugin.to_string(), places)).collect();
        Arc::new(SqlGateway::new(&BTreeMap::from([("db".to_string(), settings)])))
    }

    /// Runs `sql` (several statements) as the database's owner, outside the
    /// gateway.
    pub async fn admin(&self, sql: &str) {
        match self {
            TestDb::Sqlite(dir) => {
                let options = gatehouse::databases::sqlite_options(&dir.path().join("shop.db"));
                let mut c = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
                c.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))).await.unwrap();
                c.close().await.unwrap();
            }
            TestDb::Postgres(pg) => {
                let mut c = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
                c.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))).await.unwrap();
                c.close().await.unwrap();
            }
        }
    }

    /// One number from `sql`, read as the owner.
    pub async fn count(&self, sql: &str) -> i64 {
        match self {
            TestDb::Sqlite(dir) => {
                let options = gatehouse::databases::sqlite_options(&dir.path().join("shop.db"));
                let mut c = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&mut c).await.unwrap()
            }
            TestDb::Postgres(pg) => {
                let mut c = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&mut c).await.unwrap()
            }
        }
    }

    /// `big (id, payload)` with `rows` rows, ids from 1.
    pub async fn big_table(&self, rows: u32) {
        self.admin(&format!(
            "CREATE TABLE big (id INTEGER PRIMARY KEY, payload TEXT NOT NULL);\n\
             INSERT INTO big (id, payload) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
             SELECT i, 'payload-payload-payload-payload-payload-payload' FROM n"
        ))
        .await;
    }
}

/// A pool of `max` connections, `per_plugin` per plugin, a short wait.
pub fn pool(max: u32, per_plugin: u32) -> PoolSettings {
    PoolSettings {
        max_connections: max,
        acquire_timeout: Duration::from_millis(300),
        per_plugin_connections: per_plugin,
        ..PoolSettings::default()
    }
}

/// The placeholder of parameter `n` (from 1) in `dialect`.
pub fn placeholder(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => format!("?{n}"),
        Dialect::Postgres => format!("${n}"),
    }
}

/// The sidecar's peak memory now (`VmHWM`), after resetting it to the
/// current use: nextest runs each test in a process of its own.
pub fn peak_rss_bytes(reset: bool) -> u64 {
    if reset {
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
    }
    status_bytes("VmHWM:")
}

/// The process's resident memory now.
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A size line of `/proc/self/status` (given in KiB), in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}
