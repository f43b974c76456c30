//! One sqlx pool per database alias, and each plugin's share of it.
//!
//! A pool is built at the first call that needs it (or at start, for the
//! embedded application database), so a database that is down makes calls
//! `unavailable` rather than stopping the sidecar, and a sidecar whose
//! plugins never query opens nothing.
//!
//! Fairness: before it may wait for one of the pool's connections, a call
//! takes a permit of its plugin's semaphore on that alias
//! (`per_plugin_connections`, below `max_connections` by default): a plugin
//! that holds all of its share (open transactions, slow queries) waits for
//! itself and is refused with `rate-limited` and a retry hint, while the
//! other plugins still find connections. The permit lives as long as the
//! connection is held and is released on drop. Between plugins, a freed
//! place of the pool goes to the waiting plugin holding the fewest
//! ([`crate::services::fair_places`]), and a plugin that has waited half its
//! `acquire_timeout` has a connection held between calls taken back from
//! the plugin holding the most ([`AliasPool::taking_back`],
//! [`super::held`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sqlx::Sqlite;
use sqlx::pool::PoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::{OnceCell, Semaphore};

use super::error::{RETRY_BUSY, RETRY_UNAVAILABLE, SqlError};
use super::held::Holdings;
use super::metrics::SqlMetrics;
use super::pg_pool::{PgPool, PooledPg, Session, pg_pool};
use super::relay::{Relay, Upgrade, Upstream};
use super::sqlite_pool::{PooledSqlite, SqlitePool, sqlite_pool};
use super::{Dialect, guard};
use crate::databases::{DatabaseError, DatabaseSettings, DatabaseTarget, Databases, PoolSettings, TlsFiles};

/// The migrations of the embedded application database
/// (`migrations/sqlite-app/`: version, description, SQL), applied to the
/// alias [`APP_ALIAS`] when it is a SQLite file. (Listed here rather than
/// with `sqlx::migrate!`, whose `macros` feature rebuilds most of the tree.)
pub const APP_MIGRATIONS: &[(i64, &str, &str)] = &[
    (20261202000001, "app schema", include_str!("../../../../migrations/sqlite-app/20261202000001_app_schema.sql")),
    (20261202000002, "app seed", include_str!("../../../../migrations/sqlite-app/20261202000002_app_seed.sql")),
];

fn app_migrator() -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        APP_MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    std::borrow::Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The alias of the embedded application database.
pub const APP_ALIAS: &str = "app";

/// Every alias's pool: the SQL service's shared state.
pub struct SqlGateway {
    aliases: BTreeMap<String, Arc<AliasPool>>,
    /// Query counters and latencies, by plugin, alias and outcome.
    pub metrics: Arc<SqlMetrics>,
}

impl SqlGateway {
    /// The aliases of the settings, none opened yet.
    pub fn new(settings: &BTreeMap<String, DatabaseSettings>) -> SqlGateway {
        let aliases = settings
            .iter()
            .map(|(name, settings)| (name.clone(), Arc::new(AliasPool::new(name, settings.clone()))))
            .collect();
        SqlGateway { aliases, metrics: Arc::default() }
    }

    /// The aliases of the settings, and the embedded application database
    /// [`APP_ALIAS`] (`<data_dir>/app.db`) unless they define that alias
    /// themselves: example plugins that query it work out of the box. The
    /// implicit one is created at its first use, and is not in the health
    /// checks until the settings name it.
    pub fn from_config(config: &crate::config::Config) -> SqlGateway {
        let mut settings = config.databases.clone();
        settings
            .entry(APP_ALIAS.to_string())
            .or_insert_with(|| DatabaseSettings::sqlite(config.data_dir.join("app.db")));
        SqlGateway::new(&settings)
    }

    /// An alias, if the settings define it.
    pub fn alias(&self, name: &str) -> Option<&Arc<AliasPool>> {
        self.aliases.get(name)
    }

    /// Every alias.
    pub fn aliases(&self) -> impl Iterator<Item = &Arc<AliasPool>> {
        self.aliases.values()
    }

    /// The places guaranteed to plugins that `grants` (plugin, alias) says
    /// no loaded policy grants that alias, as (alias, plugin, places):
    /// kept from the others for no one, most likely a misspelt name.
    pub fn unused_guarantees(&self, grants: impl Fn(&str, &str) -> bool) -> Vec<(&str, &str, u32)> {
        self.aliases
            .iter()
            .flat_map(|(alias, pool)| {
                pool.settings.guaranteed.iter().map(move |(plugin, &places)| (alias.as_str(), plugin.as_str(), places))
            })
            .filter(|&(alias, plugin, _)| !grants(plugin, alias))
            .collect()
    }

    /// Takes `plugin`'s role in the PostgreSQL database of `alias` away (its
    /// privileges revoked, the role dropped) once no loaded policy grants
    /// the plugin that alias: a plugin removed, or its `[sql.<alias>]`
    /// section. Nothing for SQLite, where the grant lives in the loaded
    /// policy only. A failure is logged and leaves the role as it was
    /// (NOLOGIN: usable by no one but the sidecar's login).
    pub async fn retire(&self, plugin: &str, alias: &str) {
        // An operator's roles (`manage_roles = false`) are theirs to drop.
        let Some(pool) = self.aliases.get(alias).filter(|a| a.dialect == Dialect::Postgres && a.manages_roles()) else {
            return;
        };
        let outcome = match pool.pool().await {
            Ok(Pool::Postgres(pg)) => guard::postgres::remove(pg, plugin).await.map_err(|e| e.to_string()),
            Ok(Pool::Sqlite(_)) => return,
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(dropped) => tracing::info!(plugin, database = alias, dropped, "plugin's database role retired"),
            Err(error) => tracing::warn!(plugin, database = alias, %error, "plugin's database role not retired"),
        }
    }

    /// Opens the embedded application database, if configured, so that its
    /// migrations are applied before the first plugin runs. A failure is
    /// logged; calls retry the open.
    pub async fn open_app(&self) {
        if let Some(app) = self.aliases.get(APP_ALIAS).filter(|a| a.dialect == Dialect::Sqlite)
            && let Err(e) = app.pool().await
        {
            tracing::error!(database = APP_ALIAS, error = %e, "the application database cannot be opened");
        }
    }
}

/// An open pool of either database.
#[derive(Clone)]
pub enum Pool {
    /// PostgreSQL: the gateway's own pool ([`super::pg_pool`]).
    Postgres(PgPool),
    /// SQLite: the gateway's own pool ([`super::sqlite_pool`]).
    Sqlite(SqlitePool),
}

impl Pool {
    /// Places `plugin` holds now.
    pub fn held_by(&self, plugin: &str) -> usize {
        match self {
            Pool::Postgres(pool) => pool.held_by(plugin),
            Pool::Sqlite(pool) => pool.held_by(plugin),
        }
    }

    /// Places `plugin` holds now beyond those guaranteed to it.
    pub fn held_beyond_guarantee(&self, plugin: &str) -> usize {
        match self {
            Pool::Postgres(pool) => pool.held_beyond_guarantee(plugin),
            Pool::Sqlite(pool) => pool.held_beyond_guarantee(plugin),
        }
    }

    /// Guarantees `plugin` `places` of the pool.
    fn guarantee(&self, plugin: &str, places: usize) {
        match self {
            Pool::Postgres(pool) => pool.guarantee(plugin, places),
            Pool::Sqlite(pool) => pool.guarantee(plugin, places),
        }
    }

    /// Connections open now, and of them idle.
    pub fn usage(&self) -> (u32, usize) {
        match self {
            Pool::Postgres(pool) => pool.usage(),
            Pool::Sqlite(pool) => pool.usage(),
        }
    }
}

/// A connection taken from a pool.
pub enum Conn {
    /// PostgreSQL.
    Postgres(PooledPg),
    /// SQLite.
    Sqlite(PooledSqlite),
}

impl Conn {
    /// Closes the connection when it is dropped instead of handing it back
    /// to the pool: for a connection whose state is unknown (a statement
    /// cut off mid-way, a transaction left open).
    pub fn close_on_drop(&mut self) {
        match self {
            Conn::Postgres(c) => c.close_on_drop(),
            Conn::Sqlite(c) => c.close_on_drop(),
        }
    }
}

/// One alias: its settings, its pool once opened, each plugin's share.
pub struct AliasPool {
    /// The alias.
    pub name: String,
    /// Its dialect.
    pub dialect: Dialect,
    settings: DatabaseSettings,
    pool: OnceCell<Pool>,
    /// The relay a PostgreSQL pool connects through, kept as long as it.
    relay: Mutex<Option<Relay>>,
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Connections plugins hold between calls, which a waiting plugin may
    /// have taken back.
    holdings: Holdings,
    /// The log lines of taking back (one a second at most: review 15's
    /// eighteen busy plugins caused 15–19 a second).
    taken_back_lines: LineEverySecond,
    /// The log lines of ending long statements for a waiting plugin.
    ended_for_waiter_lines: LineEverySecond,
}

impl AliasPool {
    fn new(name: &str, settings: DatabaseSettings) -> AliasPool {
        AliasPool {
            name: name.to_string(),
            dialect: settings.dialect(),
            settings,
            pool: OnceCell::new(),
            relay: Mutex::default(),
            shares: Mutex::default(),
            holdings: Holdings::default(),
            taken_back_lines: LineEverySecond::default(),
            ended_for_waiter_lines: LineEverySecond::default(),
        }
    }

    /// Its pool settings.
    pub fn settings(&self) -> PoolSettings {
        self.settings.pool
    }

    /// Whether the gateway keeps the plugins' PostgreSQL roles itself
    /// (`manage_roles`).
    pub fn manages_roles(&self) -> bool {
        self.settings.manage_roles
    }

    /// The pool if it has been opened (for `/metrics`: a scrape opens none).
    pub fn opened(&self) -> Option<&Pool> {
        self.pool.get()
    }

    /// The pool, built at the first call. A failure (an unreadable URL, a
    /// migration that fails) is tried again at the next call.
    pub async fn pool(&self) -> Result<&Pool, SqlError> {
        self.pool.get_or_try_init(|| self.build()).await
    }

    async fn build(&self) -> Result<Pool, SqlError> {
        let settings = self.settings.pool;
        let unusable = |e: DatabaseError| SqlError::Unavailable { message: e.to_string(), retry_after: None };
        let databases =
            Databases::open(&BTreeMap::from([(self.name.clone(), self.settings.clone())])).map_err(unusable)?;
        match &self.settings.target {
            DatabaseTarget::Postgres(_) => {
                let options: PgConnectOptions = databases
                    .options(&self.name)
                    .cloned()
                    .ok_or_else(|| SqlError::Internal(format!("[databases.{}] opened without options", self.name)))?;
                let tls = databases.tls_files(&self.name).unwrap_or_default();
                let options = self.relayed(options, &tls)?;
                Ok(self.guaranteeing(Pool::Postgres(pg_pool(
                    options,
                    settings.max_connections,
                    settings.acquire_timeout,
                ))))
            }
            DatabaseTarget::Sqlite(path) => {
                let options: SqliteConnectOptions = databases
                    .sqlite_options(&self.name)
                    .cloned()
                    .ok_or_else(|| SqlError::Internal(format!("[databases.{}] opened without options", self.name)))?;
                create_parent(path)?;
                if self.name == APP_ALIAS {
                    // On a pool of its own: the gateway's connections
                    // refuse every statement the authorizer is not given.
                    let migrations = PoolOptions::<Sqlite>::new().max_connections(1).connect_lazy_with(options.clone());
                    let migrated = app_migrator().run(&migrations).await;
                    migrations.close().await;
                    migrated.map_err(|e| SqlError::Unavailable {
                        message: format!(
                            "[databases.{APP_ALIAS}] migrations: {}",
                            crate::guest_text::escape(&e.to_string(), crate::guest_text::LINE)
                        ),
                        retry_after: Some(RETRY_UNAVAILABLE),
                    })?;
                }
                // Every connection gets the authorizer (services::sql::guard)
                // before the pool hands it out, closed until a plugin's grant
                // is entered for a statement.
                guard::sqlite::limit_heap();
                Ok(self.guaranteeing(Pool::Sqlite(sqlite_pool(options, &settings))))
            }
        }
    }

    /// `pool` with the places guaranteed to plugins (`guaranteed_connections`).
    fn guaranteeing(&self, pool: Pool) -> Pool {
        for (plugin, &places) in &self.settings.guaranteed {
            pool.guarantee(plugin, places as usize);
        }
        pool
    }

    /// `options` through a [`Relay`] of this alias's own, which makes the
    /// TLS session with the server that sqlx would have made.
    fn relayed(&self, options: PgConnectOptions, tls: &TlsFiles) -> Result<PgConnectOptions, SqlError> {
        let unusable = |message: String| SqlError::Unavailable {
            message: format!("[databases.{}]: {message}", self.name),
            retry_after: Some(RETRY_UNAVAILABLE),
        };
        let upgrade = Upgrade::of(&options, tls).map_err(unusable)?;
        let relay = Relay::start(Upstream::of(&options), upgrade).map_err(|e| unusable(e.to_string()))?;
        let relayed = relay.options(&options);
        *self.relay.lock().unwrap_or_else(|p| p.into_inner()) = Some(relay);
        Ok(relayed)
    }

    /// The semaphore of `plugin`'s share of this alias. Plugin names come
    /// from policy files, so the map is bounded by the policies.
    pub fn share(&self, plugin: &str) -> Arc<Semaphore> {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        let permits = self.settings.pool.per_plugin_connections as usize;
        Arc::clone(shares.entry(plugin.to_string()).or_insert_with(|| Arc::new(Semaphore::new(permits))))
    }

    /// A connection for `plugin`: first a permit of its share, then one of
    /// the pool's connections (on PostgreSQL preferably one already in
    /// `session`), each within `acquire_timeout`. The permit is the
    /// connection's until it is given back, or has finished closing. With
    /// `holds_turn` (its write holds the SQLite alias's turn to write), it
    /// may take the place the pool keeps for that.
    pub async fn acquire(&self, plugin: &str, session: Option<&Session>, holds_turn: bool) -> Result<Conn, SqlError> {
        let wait = self.settings.pool.acquire_timeout;
        let share = self.share(plugin);
        let permit = match tokio::time::timeout(wait, share.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(SqlError::Internal("a plugin's connection share was closed".into())),
            Err(_) => {
                return Err(SqlError::RateLimited {
                    message: format!(
                        "the plugin holds all {} connections of its share of `{}` (per_plugin_connections)",
                        self.settings.pool.per_plugin_connections, self.name
                    ),
                    retry_after: RETRY_BUSY,
                });
            }
        };
        Ok(match self.pool().await? {
            Pool::Postgres(pool) => {
                let acquiring = pool.acquire_for(plugin, session.map(Session::as_str), false);
                let mut conn = self.taking_back(plugin, acquiring).await.map_err(SqlError::from_database)?;
                conn.hold(permit);
                Conn::Postgres(conn)
            }
            Pool::Sqlite(pool) => {
                let acquiring = pool.acquire_for(plugin, None, holds_turn);
                let mut conn = self.taking_back(plugin, acquiring).await.map_err(SqlError::from_database)?;
                conn.hold(permit);
                Conn::Sqlite(conn)
            }
        })
    }

    /// The connections plugins hold between calls on this alias.
    pub fn holdings(&self) -> &Holdings {
        &self.holdings
    }

    /// What `acquiring` (a wait for a place in the pool, for `plugin`)
    /// gives; from half the `acquire_timeout` on, and every eighth of it
    /// after, it takes back one held connection ([`Holdings::take_back`]),
    /// or else ends one long statement ([`super::running`]); the place goes
    /// to the waiting plugin holding the fewest.
    pub async fn taking_back<T>(&self, plugin: &str, acquiring: impl Future<Output = T>) -> T {
        // Places guaranteed to a plugin are never taken from it: freed,
        // they would be owed to it again.
        let held_by = |p: &str| self.opened().map_or(0, |pool| pool.held_beyond_guarantee(p));
        let wait = self.settings.pool.acquire_timeout;
        let since = tokio::time::Instant::now();
        let mut next = since + wait / 2;
        tokio::pin!(acquiring);
        loop {
            tokio::select! {
                acquired = &mut acquiring => return acquired,
                () = tokio::time::sleep_until(next) => {
                    next += (wait / 8).max(std::time::Duration::from_millis(1));
                    let since = since.into_std();
                    if let Some((holder, taken)) = self.holdings.take_back(plugin, since, held_by) {
                        self.taken_back_lines.note(|taken_before| {
                            tracing::info!(
                                database = %self.name,
                                holder = %holder,
                                for_plugin = plugin,
                                idle_ms = taken.map(|t| t.idle_for.as_millis() as u64),
                                rolled_back = taken.map(|t| t.in_transaction),
                                taken_before,
                                "a held connection is taken back for a waiting plugin (at once if idle, else when its \
                                 statement ends; taken_before: how many since the last such line)"
                            );
                        });
                    } else if let Some((holder, ran)) = self.end_for_waiter(plugin, since, held_by) {
                        self.ended_for_waiter_lines.note(|ended_before| {
                            tracing::info!(
                                database = %self.name,
                                holder = %holder,
                                for_plugin = plugin,
                                ran_ms = ran.as_millis() as u64,
                                ended_before,
                                "a long statement of the plugin holding the most connections is ended for a plugin \
                                 holding fewer that waited (ended_before: how many since the last such line)"
                            );
                        });
                    }
                }
            }
        }
    }

    /// Ends one long statement for `waiter`, which has waited since
    /// `waiting_since` ([`super::running`]); whose it was and how long it
    /// had run.
    fn end_for_waiter(
        &self,
        waiter: &str,
        waiting_since: std::time::Instant,
        held_by: impl Fn(&str) -> usize,
    ) -> Option<(Arc<str>, std::time::Duration)> {
        match self.opened()? {
            Pool::Sqlite(pool) => pool.connector().wal_places().end_for_waiter(waiter, waiting_since, held_by),
            Pool::Postgres(pool) => pool.connector().end_for_waiter(waiter, waiting_since, held_by),
        }
    }
}

/// At most one log line a second, with how many were left out before it.
#[derive(Default)]
struct LineEverySecond {
    last: Mutex<Option<(std::time::Instant, u64)>>,
}

impl LineEverySecond {
    /// Calls `line` with the count left out since the last line, unless a
    /// line was written less than a second ago (then counts this one).
    fn note(&self, line: impl FnOnce(u64)) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *last {
            Some((at, left_out)) if at.elapsed() < std::time::Duration::from_secs(1) => *left_out += 1,
            _ => {
                let left_out = last.map_or(0, |(_, n)| n);
                *last = Some((std::time::Instant::now(), 0));
                drop(last);
                line(left_out);
            }
        }
    }
}

/// Creates the directory of a SQLite file (owner-only, like the data
/// directory) if it is missing.
fn create_parent(path: &std::path::Path) -> Result<(), SqlError> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else { return Ok(()) };
    if parent.is_dir() {
        return Ok(());
    }
    crate::data_dir::secure(&PathBuf::from(parent)).map_err(|e| SqlError::Unavailable {
        message: format!("the directory of a SQLite database: {e}"),
        retry_after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_app_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite-app");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = APP_MIGRATIONS
            .iter()
            .map(|(version, description, _)| format!("{version}_{}.sql", description.replace(' ', "_")))
            .collect();
        assert_eq!(embedded, files);
    }

    /// Review 22: a guarantee naming a plugin no policy grants the alias
    /// keeps its places from everyone, silently.
    #[test]
    fn guarantees_no_loaded_policy_uses_are_listed() {
        let mut settings = DatabaseSettings::sqlite("unused.db".into());
        settings.guaranteed = BTreeMap::from([("reports".to_string(), 1), ("reprots".to_string(), 2)]);
        let gateway = SqlGateway::new(&BTreeMap::from([("db".to_string(), settings)]));
        let granted = |plugin: &str, alias: &str| plugin == "reports" && alias == "db";
        assert_eq!(gateway.unused_guarantees(granted), [("db", "reprots", 2)]);
        assert!(gateway.unused_guarantees(|_, _| true).is_empty());
    }

    /// The application database is created and migrated at its first use,
    /// once: a second gateway over the same file finds it migrated.
    #[tokio::test]
    async fn the_app_database_is_created_and_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("app.db");
        let settings = BTreeMap::from([(APP_ALIAS.to_string(), DatabaseSettings::sqlite(path.clone()))]);
        for _ in 0..2 {
            let gateway = SqlGateway::new(&settings);
            gateway.open_app().await;
            let Some(Pool::Sqlite(pool)) = gateway.alias(APP_ALIAS).unwrap().opened() else { panic!("opened") };
            // The gateway's own connections refuse what no plugin's grant
            // allows (the authorizer): read the file on a connection of
            // the test's.
            let mut conn = pool.acquire(None).await.unwrap();
            let refused =
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM products").fetch_one(conn.connection()).await;
            assert!(refused.is_err(), "a pooled connection ran a statement without a grant");
            drop(conn);
            pool.close();
            let direct = sqlx::SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path)).await.unwrap();
            let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products").fetch_one(&direct).await.unwrap();
            assert_eq!(products, 4);
            direct.close().await;
        }
        assert!(path.is_file());
    }
}
