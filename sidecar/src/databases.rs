//! Database aliases: `[databases.<alias>]` in `gatehouse.toml` names a
//! PostgreSQL database (`url`) or a SQLite file (`sqlite`, relative to the
//! data directory) by a short alias, with the sizes of its pool. Services
//! refer to databases by alias only (a policy's `[sql.<alias>]`, the
//! shared KV and audit backends), so connection details and passwords stay
//! in the sidecar's settings, never in policies.
//!
//! The sidecar checks the aliases for `/readyz` and `/metrics`; the
//! services build their pools from [`Databases::options`] (PostgreSQL) and
//! [`Databases::sqlite_options`].
//!
//! The check opens a connection of its own instead of borrowing one from a
//! service's pool: a busy pool is not an unreachable database, and a probe
//! must not queue behind real work. Results are kept for
//! [`CHECK_INTERVAL`] and one check runs at a time, so a flood of `/readyz`
//! requests costs the database one connection a second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::Mutex;

use crate::guest_text;
use crate::secrets::SecretSource;

/// How long a check result is reused.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long one check may take before the database counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where an alias's connection URL comes from. A URL with a password
/// belongs in an environment variable or a file, like any other secret.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlSource {
    /// Written in `gatehouse.toml` (fine without a password, or locally).
    Inline(String),
    /// An environment variable or a file.
    Secret(SecretSource),
}

impl std::fmt::Debug for UrlSource {
    // An inline URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlSource::Inline(_) => f.write_str("Inline(..)"),
            UrlSource::Secret(source) => f.debug_tuple("Secret").field(source).finish(),
        }
    }
}

/// What an alias names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A PostgreSQL server (`url`).
    Postgres(UrlSource),
    /// A SQLite file (`sqlite`), its path resolved against the data
    /// directory; created at first use.
    Sqlite(PathBuf),
}

/// Default `max_connections` of an alias's pool.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// Default `acquire_timeout`: how long a call waits for a connection.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `per_plugin_connections`: connections one plugin may hold at
/// once on one alias.
pub const DEFAULT_PER_PLUGIN: u32 = 4;
/// Default `max_value_bytes`: the largest string or blob a SQLite
/// connection builds (`SQLITE_LIMIT_LENGTH`; SQLite's own is 1 GB). Small,
/// because it also sets how long one row may run unchecked: SQLite checks
/// a statement's deadline only between rows, and each operator or call in
/// a row is linear in its operands (see the README's SQL deadlines).
pub const DEFAULT_MAX_VALUE_BYTES: u32 = 1 << 20;
/// Largest `max_value_bytes` the settings accept.
pub const MAX_VALUE_BYTES_CEILING: u32 = 1 << 30;
/// Smallest `max_database_bytes` the settings accept (room for the schema
/// and a few rows: a smaller bound would only refuse every write).
pub const MIN_DATABASE_BYTES: u64 = 1 << 20;
/// Largest `max_connections` an alias may set.
pub const MAX_CONNECTIONS_CEILING: u32 = 1000;
/// Default `plugin_write_rate`: the bytes per second one plugin's writes
/// may add to a SQLite alias's WAL, on average. Half of what 1 MiB writes
/// reach on the machines measured (~33 MiB/s), and a quarter of the WAL's
/// bound (64 MiB) a second, so that one plugin alone makes the WAL need a
/// drain at most every ~4 s however reads hold it.
pub const DEFAULT_PLUGIN_WRITE_RATE: u64 = 16 << 20;
/// Default `write_rate`: the bytes per second all plugins' writes together
/// may add to a SQLite alias's WAL, shared equally between those writing:
/// two plugins' worth at the default `plugin_write_rate`.
pub const DEFAULT_WRITE_RATE: u64 = 32 << 20;
/// Smallest `plugin_write_rate` (and `write_rate`) the settings accept.
pub const MIN_PLUGIN_WRITE_RATE: u64 = 64 << 10;

/// The pool of one alias (`max_connections`, `acquire_timeout`,
/// `per_plugin_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections the pool opens at most.
    pub max_connections: u32,
    /// How long a call waits for a connection (its plugin's share, then the
    /// pool's) before it is refused with a retry hint.
    pub acquire_timeout: Duration,
    /// Connections one plugin may hold at once: below `max_connections`,
    /// so a greedy plugin leaves room for the others.
    pub per_plugin_connections: u32,
    /// SQLite: the largest string or blob a statement may build or bind;
    /// past it the statement fails (`quota-exceeded`). Bounds what one
    /// statement can make the sidecar's embedded database allocate.
    pub max_value_bytes: u32,
    /// SQLite: how large the database file may grow (`PRAGMA
    /// max_page_count`, in the file's pages); past it a write fails
    /// (`quota-exceeded`) and is rolled back, and reads and deletes go on.
    /// `None`: no bound but the disk's. What every plugin writes shares it.
    pub max_database_bytes: Option<u64>,
    /// SQLite: the bytes per second one plugin's writes may add to the
    /// WAL, on average (up to four seconds' worth at once); past it the
    /// plugin's next write waits, or is refused (`rate-limited`) if the
    /// wait would pass its deadline. Charges the WAL's drains to the
    /// plugins whose writes fill it.
    pub plugin_write_rate: u64,
    /// SQLite: the bytes per second all plugins together may add to the
    /// WAL: each plugin writing earns the lesser of `plugin_write_rate`
    /// and an equal share of this among the plugins that wrote in the
    /// last 4 s, so that plugins writing together cannot add up past it.
    pub write_rate: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            per_plugin_connections: DEFAULT_PER_PLUGIN,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_database_bytes: None,
            plugin_write_rate: DEFAULT_PLUGIN_WRITE_RATE,
            write_rate: DEFAULT_WRITE_RATE,
        }
    }
}

impl PoolSettings {
    /// The combinations that are never right.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_CONNECTIONS_CEILING).contains(&self.max_connections) {
            return Err(format!("max_connections must be between 1 and {MAX_CONNECTIONS_CEILING}"));
        }
        if self.per_plugin_connections == 0 || self.per_plugin_connections > self.max_connections {
            return Err("per_plugin_connections must be between 1 and max_connections".into());
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&self.acquire_timeout) {
            return Err("acquire_timeout must be between 1ms and 60s".into());
        }
        if !(1024..=MAX_VALUE_BYTES_CEILING).contains(&self.max_value_bytes) {
            return Err("max_value_bytes must be between 1 KiB and 1 GiB".into());
        }
        if self.max_database_bytes.is_some_and(|bytes| bytes < MIN_DATABASE_BYTES) {
            return Err("max_database_bytes must be at least 1 MiB".into());
        }
        if self.plugin_write_rate < MIN_PLUGIN_WRITE_RATE {
            return Err("plugin_write_rate must be at least 64 KiB (a second)".into());
        }
        if self.write_rate < MIN_PLUGIN_WRITE_RATE {
            return Err("write_rate must be at least 64 KiB (a second)".into());
        }
        Ok(())
    }
}

/// One `[databases.<alias>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    /// The database.
    pub target: DatabaseTarget,
    /// Its pool.
    pub pool: PoolSettings,
    /// PostgreSQL: whether the SQL gateway creates, grants and drops the
    /// plugins' roles (`manage_roles`, default on), or only checks that an
    /// operator provided them.
    pub manage_roles: bool,
    /// Connections guaranteed to plugins (`guaranteed_connections`, by
    /// plugin name): never taken by another plugin, whatever the others
    /// hold. Within `per_plugin_connections` each, and leaving at least
    /// one of the places plugins share unguaranteed.
    pub guaranteed: BTreeMap<String, u32>,
}

impl DatabaseSettings {
    /// The places of the pool that plugins share: `max_connections`, less
    /// the one a SQLite pool of two or more keeps for the write holding
    /// the turn to write.
    pub fn shared_places(&self) -> u32 {
        match self.target {
            DatabaseTarget::Sqlite(_) if self.pool.max_connections >= 2 => self.pool.max_connections - 1,
            _ => self.pool.max_connections,
        }
    }

    /// `guaranteed_connections`: plugin names, each within
    /// `per_plugin_connections`, all together leaving at least one shared
    /// place unguaranteed (for the plugins without a guarantee).
    pub fn check_guarantees(&self) -> Result<(), String> {
        for (plugin, &places) in &self.guaranteed {
            if !crate::policy::is_plugin_name(plugin) {
                return Err(format!(
                    "guaranteed_connections: `{}` is not a plugin name",
                    guest_text::escape(plugin, guest_text::SHORT)
                ));
            }
            if places == 0 || places > self.pool.per_plugin_connections {
                return Err(format!(
                    "guaranteed_connections: {plugin}'s {places} must be between 1 and per_plugin_connections ({})",
                    self.pool.per_plugin_connections
                ));
            }
        }
        let total: u64 = self.guaranteed.values().map(|&places| u64::from(places)).sum();
        let shared = self.shared_places();
        if total >= u64::from(shared) {
            return Err(format!(
                "guaranteed_connections: {total} in all, but the plugins share {} (max_connections{}) and \
                 at least one must be left to the plugins without a guarantee",
                match shared {
                    1 => "1 place".to_string(),
                    places => format!("{places} places"),
                },
                if shared < self.pool.max_connections {
                    ", less the one kept for the write holding the turn"
                } else {
                    ""
                }
            ));
        }
        Ok(())
    }

    /// A PostgreSQL alias with the default pool.
    pub fn postgres(url: UrlSource) -> DatabaseSettings {
        DatabaseSettings {
            target: DatabaseTarget::Postgres(url),
            pool: PoolSettings::default(),
            manage_roles: true,
            guaranteed: BTreeMap::new(),
        }
    }

    /// A SQLite alias with the default pool.
    pub fn sqlite(path: PathBuf) -> DatabaseSettings {
        DatabaseSettings {
            target: DatabaseTarget::Sqlite(path),
            pool: PoolSettings::default(),
            manage_roles: true,
            guaranteed: BTreeMap::new(),
        }
    }

    /// The SQL dialect of the database.
    pub fn dialect(&self) -> crate::services::sql::Dialect {
        match self.target {
            DatabaseTarget::Postgres(_) => crate::services::sql::Dialect::Postgres,
            DatabaseTarget::Sqlite(_) => crate::services::sql::Dialect::Sqlite,
        }
    }
}

/// A database alias that cannot be used. Messages name the alias and the
/// URL's source, never the URL itself (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL's environment variable or file cannot be read.
    #[error("[databases.{alias}] url: cannot read {reason}")]
    Unreadable {
        /// The alias.
        alias: String,
        /// Which variable or file, and why.
        reason: String,
    },
    /// The URL is not a PostgreSQL URL sqlx accepts.
    #[error("[databases.{alias}] url: {reason}")]
    BadUrl {
        /// The alias.
        alias: String,
        /// What is wrong, without the URL.
        reason: String,
    },
}

/// What the last check found about one alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The alias.
    pub alias: String,
    /// `user@host:port/database`, without the password.
    pub target: String,
    /// `None` when the database answered; otherwise why not (escaped,
    /// bounded: the text comes from the network).
    pub problem: Option<String>,
}

impl Health {
    /// Whether the database answered.
    pub fn is_up(&self) -> bool {
        self.problem.is_none()
    }
}

struct Alias {
    name: String,
    options: Options,
    target: String,
}

/// How to connect to one alias.
#[derive(Clone)]
enum Options {
    Postgres(Box<PgConnectOptions>, Arc<TlsFiles>),
    Sqlite(Box<SqliteConnectOptions>),
}

struct Checked {
    at: Instant,
    health: Arc<[Health]>,
}

/// Every configured alias, with its connection options.
pub struct Databases {
    aliases: Vec<Alias>,
    last: Mutex<Option<Checked>>,
}

impl std::fmt::Debug for Databases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.aliases.iter().map(|a| format!("{}: {}", a.name, a.target))).finish()
    }
}

impl Databases {
    /// Reads each alias's URL and parses it. Connects to nothing: a
    /// database that is down at start makes the sidecar unready, not dead.
    pub fn open(settings: &BTreeMap<String, DatabaseSettings>) -> Result<Self, DatabaseError> {
        let aliases = settings
            .iter()
            .map(|(name, settings)| {
                let (options, target) = match &settings.target {
                    DatabaseTarget::Postgres(source) => {
                        let url = match source {
                            UrlSource::Inline(url) => url.clone(),
                            UrlSource::Secret(secret) => secret
                                .read()
                                .map_err(|reason| DatabaseError::Unreadable { alias: name.clone(), reason })?,
                        };
                        let (options, tls) =
                            parse(&url).map_err(|reason| DatabaseError::BadUrl { alias: name.clone(), reason })?;
                        let target = describe(&options);
                        (Options::Postgres(Box::new(options), Arc::new(tls)), target)
                    }
                    DatabaseTarget::Sqlite(path) => {
                        let target =
                            format!("sqlite:{}", guest_text::escape(&path.display().to_string(), guest_text::LINE));
                        (Options::Sqlite(Box::new(sqlite_options(path))), target)
                    }
                };
                Ok(Alias { name: name.clone(), target, options })
            })
            .collect::<Result<_, DatabaseError>>()?;
        Ok(Databases { aliases, last: Mutex::new(None) })
    }

    /// The connection options of `alias` if it is a PostgreSQL database,
    /// for a service to build its pool.
    pub fn options(&self, alias: &str) -> Option<&PgConnectOptions> {
        match &self.aliases.iter().find(|a| a.name == alias)?.options {
            Options::Postgres(options, _) => Some(options),
            Options::Sqlite(_) => None,
        }
    }

    /// The certificates and key `alias`'s URL names, if it is a PostgreSQL
    /// database: what a connection made outside sqlx (the SQL gateway's
    /// relay) needs for TLS, since sqlx keeps its own copy private.
    pub fn tls_files(&self, alias: &str) -> Option<Arc<TlsFiles>> {
        match &self.aliases.iter().find(|a| a.name == alias)?.options {
            Options::Postgres(_, tls) => Some(Arc::clone(tls)),
            Options::Sqlite(_) => None,
        }
    }

    /// The connection options of `alias` if it is a SQLite file.
    pub fn sqlite_options(&self, alias: &str) -> Option<&SqliteConnectOptions> {
        match &self.aliases.iter().find(|a| a.name == alias)?.options {
            Options::Sqlite(options) => Some(options),
            Options::Postgres(..) => None,
        }
    }

    /// Whether each database answers, checked at most once per
    /// [`CHECK_INTERVAL`]. A change of state is logged once, with the
    /// reason.
    pub async fn check(&self) -> Arc<[Health]> {
        let mut last = self.last.lock().await;
        if let Some(checked) = last.as_ref().filter(|c| c.at.elapsed() < CHECK_INTERVAL) {
            return checked.health.clone();
        }
        let health: Arc<[Health]> = futures::future::join_all(self.aliases.iter().map(|alias| async move {
            Health {
                alias: alias.name.clone(),
                target: alias.target.clone(),
                problem: probe(&alias.options).await.err(),
            }
        }))
        .await
        .into();
        for now in health.iter() {
            let before = last.as_ref().and_then(|c| c.health.iter().find(|h| h.alias == now.alias));
            if before.map(Health::is_up) == Some(now.is_up()) {
                continue;
            }
            match &now.problem {
                None => tracing::info!(database = %now.alias, target = %now.target, "database reachable"),
                Some(problem) => tracing::warn!(
                    database = %now.alias, target = %now.target, %problem,
                    "database unreachable: /readyz reports not ready until it answers"
                ),
            }
        }
        *last = Some(Checked { at: Instant::now(), health: health.clone() });
        health
    }
}

/// How long a SQLite statement waits for another connection's lock
/// before it fails with `SQLITE_BUSY` (the gateway's connections wait in
/// a handler of their own that also stops once the caller is gone:
/// `services::sql::guard::sqlite`).
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// How large a SQLite WAL file stays once a checkpoint has copied it all:
/// the first commit after that cuts it back to this (`journal_size_limit`).
/// Without it the file keeps its largest size until the sidecar restarts
/// (an outside review left 1.6 GB behind).
pub const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// How the SQL gateway opens a SQLite file: created if missing, WAL (readers
/// never wait for the writer), foreign keys on, a busy timeout so that
/// writers queue instead of failing at once. Temporary files (sorts,
/// `DISTINCT`, materialised sub-queries) in memory, from SQLite's heap and
/// under its limit, through the gateway's VFS
/// ([`crate::services::sql::guard::sqlite_temp_files`]): SQLite then sorts
/// in runs of 2 MiB, each between deadline checks, and nothing reaches
/// `/tmp` (on disk, four `ORDER BY`s over a large recursive query from one
/// plugin wrote 4.4 GiB there in 4 s, an outside review). Should that VFS
/// be missing, SQLite's in-memory temporary storage (one sort step,
/// unbounded in time) is the fallback. No extension can be loaded (sqlx is
/// built without `load-extension`).
pub fn sqlite_options(path: &Path) -> SqliteConnectOptions {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string());
    match crate::services::sql::guard::sqlite_temp_files::register() {
        Some(vfs) => options.vfs(vfs).pragma("temp_store", "file"),
        None => options.pragma("temp_store", "memory"),
    }
}

/// A connection of its own, `SELECT 1`, closed.
async fn probe(options: &Options) -> Result<(), String> {
    let attempt = async {
        match options {
            Options::Postgres(options, _) => {
                let mut connection = PgConnection::connect_with(options).await?;
                // Simple-query protocol: no statement is prepared or cached.
                connection.execute("SELECT 1").await?;
                connection.close().await
            }
            Options::Sqlite(options) => {
                // Never creates the file: a probe only looks (the gateway
                // creates it at its first use, or at start for `app`).
                let options = (**options).clone().create_if_missing(false);
                let mut connection = SqliteConnection::connect_with(&options).await?;
                connection.execute("SELECT 1").await?;
                connection.close().await
            }
        }
    };
    match tokio::time::timeout(CHECK_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(guest_text::escape(&e.to_string(), guest_text::LINE)),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

/// The PEM certificates and key a PostgreSQL URL (or the libpq
/// environment) names, read once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Root certificates (`sslrootcert`).
    pub root: Option<Vec<u8>>,
    /// The client certificate chain (`sslcert`).
    pub client: Option<Vec<u8>>,
    /// The client's private key (`sslkey`).
    pub key: Option<Vec<u8>>,
}

impl TlsFiles {
    fn set(&mut self, kind: CertificateKind, bytes: Vec<u8>) {
        match kind {
            CertificateKind::Root => self.root = Some(bytes),
            CertificateKind::Client => self.client = Some(bytes),
            CertificateKind::Key => self.key = Some(bytes),
        }
    }
}

/// Parses a `postgres://` URL. The reason never quotes the URL.
fn parse(text: &str) -> Result<(PgConnectOptions, TlsFiles), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        let scheme = guest_text::escape(url.scheme(), guest_text::SHORT);
        return Err(format!("scheme `{scheme}`: only PostgreSQL (`postgres://`) databases can be named here"));
    }
    // An `@` after the host means the authority ended early: a password
    // holding `/`, `?` or `#` that was not percent-encoded. Read as is, the
    // rest of the password would become the database name or a parameter,
    // shown in messages and sent to whatever host the user name names.
    let after_host = &url[url::Position::BeforePath..];
    if after_host.contains('@') {
        return Err("`@` after the host: percent-encode `/`, `?`, `#` and `@` in the user name and password \
                    (`/` is `%2F`)"
            .into());
    }
    check_password_files(&url, |name| std::env::var(name).ok())?;
    let options = PgConnectOptions::from_url(&url).map_err(|e| {
        let reason = e.to_string();
        // sqlx's messages quote parameter values, never the password; make
        // sure of it.
        match url.password() {
            Some(password) if !password.is_empty() => reason.replace(password, "***"),
            _ => reason,
        }
    })?;
    let name = options.get_application_name().unwrap_or("gatehouse").to_string();
    let mut options = options.application_name(&name);
    // sqlx would read these files on every connection (a FIFO there blocks
    // a thread for good): read each once here, bounded, and hand over the
    // bytes instead.
    let mut tls = TlsFiles::default();
    for file in certificate_files(&url, |name| std::env::var(name).ok()) {
        let bytes = crate::bounded_read::read_regular_file(Path::new(&file.path), MAX_CERTIFICATE_FILE)
            .map_err(|e| format!("{} `{}`: {e}", file.source, guest_text::escape(&file.path, guest_text::LINE)))?;
        options = match file.kind {
            CertificateKind::Root => options.ssl_root_cert_from_pem(bytes.clone()),
            CertificateKind::Client => options.ssl_client_cert_from_pem(bytes.clone()),
            CertificateKind::Key => options.ssl_client_key_from_pem(bytes.clone()),
        };
        tls.set(file.kind, bytes);
    }
    // sqlx takes these from the environment itself.
    for (kind, pem) in inline_certificates(&url, |name| std::env::var(name).ok()) {
        tls.set(kind, pem.into_bytes());
    }
    // sqlx hands `[::1]` to the resolver with its brackets.
    let options = match url.host() {
        Some(url::Host::Ipv6(ip)) => options.host(&ip.to_string()),
        _ => options,
    };
    Ok((options, tls))
}

/// Largest certificate or key file read.
pub const MAX_CERTIFICATE_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertificateKind {
    Root,
    Client,
    Key,
}

/// A certificate or key file sqlx would read, and which parameter or
/// environment variable named it.
#[derive(Debug, PartialEq, Eq)]
struct CertificateFile {
    kind: CertificateKind,
    source: String,
    path: String,
}

/// Every spelling sqlx honours for each file (`PgConnectOptions::from_url`:
/// URL parameters, the last one winning, else the libpq environment
/// variable), so none of them reaches sqlx as a path.
const CERTIFICATE_SPELLINGS: [(CertificateKind, &[&str], &str); 3] = [
    (CertificateKind::Root, &["sslrootcert", "ssl-root-cert", "ssl-ca"], "PGSSLROOTCERT"),
    (CertificateKind::Client, &["sslcert", "ssl-cert"], "PGSSLCERT"),
    (CertificateKind::Key, &["sslkey", "ssl-key"], "PGSSLKEY"),
];

/// Whether an environment value is a PEM text itself rather than a path
/// (sqlx's own test).
fn is_inline_pem(value: &str) -> bool {
    let trimmed = value.trim();
    trimmed.starts_with("-----BEGIN") && trimmed.ends_with("-----")
}

/// The certificates and keys the environment holds as PEM text, for the
/// kinds `url` names no file of.
fn inline_certificates(url: &url::Url, env: impl Fn(&str) -> Option<String>) -> Vec<(CertificateKind, String)> {
    CERTIFICATE_SPELLINGS
        .iter()
        .filter(|(_, keys, _)| !url.query_pairs().any(|(key, _)| keys.contains(&&*key)))
        .filter_map(|&(kind, _, variable)| env(variable).filter(|v| is_inline_pem(v)).map(|pem| (kind, pem)))
        .collect()
}

/// The certificate and key files `url` (with the environment `env`) makes
/// sqlx read. An environment value that is a PEM text itself (sqlx's own
/// test: it starts with `-----BEGIN` and ends with `-----`) names no file.
fn certificate_files(url: &url::Url, env: impl Fn(&str) -> Option<String>) -> Vec<CertificateFile> {
    CERTIFICATE_SPELLINGS
        .iter()
        .filter_map(|&(kind, keys, variable)| {
            let in_url = url.query_pairs().filter(|(key, _)| keys.contains(&&**key)).last();
            let (source, path) = match in_url {
                Some((key, path)) => (key.into_owned(), path.into_owned()),
                None => {
                    let value = env(variable)?;
                    if is_inline_pem(&value) {
                        return None;
                    }
                    (variable.to_string(), value)
                }
            };
            Some(CertificateFile { kind, source, path })
        })
        .collect()
}

/// Password files sqlx opens (synchronously, while parsing the URL) when
/// the URL carries no password: `PGPASSFILE`, then `~/.pgpass`. A FIFO there
/// would block the start for good, so anything but a regular file (or no
/// file) is refused.
fn check_password_files(url: &url::Url, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    if url.password().is_some() || url.query_pairs().any(|(key, _)| key == "password") {
        return Ok(());
    }
    let named = env("PGPASSFILE").map(|path| ("PGPASSFILE", std::path::PathBuf::from(path)));
    let home = env("HOME").map(|home| ("~/.pgpass", Path::new(&home).join(".pgpass")));
    for (source, path) in named.into_iter().chain(home) {
        if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            let path = guest_text::escape(&path.display().to_string(), guest_text::LINE);
            return Err(format!("{source} `{path}`: not a regular file"));
        }
    }
    Ok(())
}

/// `user@host:port/database`, escaped: a database or user name may hold
/// line breaks or control characters (`%0A` in the URL).
fn describe(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None if options.get_host().contains(':') => format!("[{}]:{}", options.get_host(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let target =
        format!("{}@{place}/{}", options.get_username(), options.get_database().unwrap_or(options.get_username()));
    guest_text::escape(&target, guest_text::LINE)
}

/// The sidecar's own PostgreSQL schema, `migrations/postgres/*.sql`, in
/// version order (`version`, `description`, SQL): the key-value store's
/// tables and the audit log's, applied by whichever opens first.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (20261202000001, "kv store", include_str!("../../migrations/postgres/20261202000001_kv_store.sql")),
    (20261203000001, "audit log", include_str!("../../migrations/postgres/20261203000001_audit_log.sql")),
];

/// sqlx's migrator over [`MIGRATIONS`] (it takes an advisory lock, so
/// sidecars starting together apply each migration once). Not
/// `sqlx::migrate!`: that macro needs sqlx's `macros` feature, whose serde
/// features rebuild most of the dependency tree, wasmtime included.
pub fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, description.into(), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|(version, description, _)| format!("{version}_{}.sql", description.replace(' ', "_")))
            .collect();
        assert_eq!(embedded, files);
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    fn open(url: &str) -> Result<Databases, DatabaseError> {
        Databases::open(&BTreeMap::from([(
            "main".to_string(),
            DatabaseSettings::postgres(UrlSource::Inline(url.into())),
        )]))
    }

    #[test]
    fn urls_are_checked_at_open_and_errors_never_quote_them() {
        for (url, expected) in [
            ("mysql://app:hunter2@db/app", "scheme `mysql`: only PostgreSQL"),
            ("postgres://app:hunter2@db/app?sslmode=sometimes", "[databases.main] url: "),
            ("db.internal:5432", "[databases.main] url: "),
            ("not a url hunter2", "not a URL"),
            // Passwords with `/`, `?` or `#` left unencoded.
            ("postgres://app:/hunter2@db/app", "`@` after the host: percent-encode"),
            ("postgres://app:12?hunter2@db/app", "`@` after the host"),
            ("postgres://app:1?sslmode=hunter2@db/app", "`@` after the host"),
            ("postgres://app:x?sslmode=hunter2@db/app", "not a URL"),
            ("postgres://app:9#hunter2@db/app", "`@` after the host"),
            ("postgres://app:pw@db/app?sslmode=verify-full&sslrootcert=/dev/null", "sslrootcert `/dev/null`: not a"),
            ("postgres://app:pw@db/app?ssl-ca=/dev/null", "ssl-ca `/dev/null`: not a regular file"),
            ("postgres://app:pw@db/app?ssl-key=/dev/zero", "ssl-key `/dev/zero`: not a regular file"),
            ("postgres://app:pw@db/app?sslcert=/nonexistent", "sslcert `/nonexistent`: No such file"),
            // A password that is also a parameter's value sqlx quotes.
            ("postgres://app:hunter2@db/app?sslmode=hunter2", "[databases.main] url: "),
        ] {
            let error = open(url).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
    }

    #[test]
    fn a_url_is_described_without_its_password() {
        let databases = open("postgres://app:hunter2@db.internal:6432/orders").unwrap();
        assert_eq!(databases.aliases[0].target, "app@db.internal:6432/orders");
        assert_eq!(format!("{databases:?}"), r#"["main: app@db.internal:6432/orders"]"#);
        assert_eq!(format!("{:?}", UrlSource::Inline("postgres://app:hunter2@db".into())), "Inline(..)");
        assert_eq!(databases.options("main").unwrap().get_application_name(), Some("gatehouse"));
        assert!(databases.options("other").is_none());
        // Percent-encoded, a password may hold anything.
        assert!(open("postgres://app:%2Fhunter2%40x@db/app").is_ok());
        let v6 = open("postgres://app@[::1]:6432/orders").unwrap();
        assert_eq!(v6.options("main").unwrap().get_host(), "::1");
        assert_eq!(v6.aliases[0].target, "app@[::1]:6432/orders");
    }

    #[test]
    fn pool_settings_take_their_minimums_and_refuse_below_them() {
        let at_minimums = PoolSettings {
            max_database_bytes: Some(MIN_DATABASE_BYTES),
            plugin_write_rate: MIN_PLUGIN_WRITE_RATE,
            write_rate: MIN_PLUGIN_WRITE_RATE,
            ..PoolSettings::default()
        };
        assert_eq!(at_minimums.validate(), Ok(()));
        for below in [
            PoolSettings { max_database_bytes: Some(MIN_DATABASE_BYTES - 1), ..at_minimums },
            PoolSettings { plugin_write_rate: MIN_PLUGIN_WRITE_RATE - 1, ..at_minimums },
            PoolSettings { write_rate: MIN_PLUGIN_WRITE_RATE - 1, ..at_minimums },
        ] {
            assert!(below.validate().is_err(), "{below:?}");
        }
    }

    /// A SQLite pool of two or more keeps one place for the write holding
    /// the turn; a pool of one has nothing to keep it from.
    #[test]
    fn a_sqlite_pool_keeps_a_place_for_the_writer_when_it_has_two() {
        let places = |target: DatabaseTarget, max_connections: u32| {
            let pool = PoolSettings { max_connections, per_plugin_connections: 1, ..PoolSettings::default() };
            DatabaseSettings { target, pool, manage_roles: true, guaranteed: BTreeMap::new() }.shared_places()
        };
        let sqlite = || DatabaseTarget::Sqlite("db.sqlite".into());
        assert_eq!([places(sqlite(), 1), places(sqlite(), 2), places(sqlite(), 5)], [1, 1, 4]);
        let postgres = || DatabaseTarget::Postgres(UrlSource::Inline("postgres://db/app".into()));
        assert_eq!([places(postgres(), 1), places(postgres(), 5)], [1, 5]);
    }

    #[test]
    fn only_a_whole_pem_block_is_inline() {
        assert!(is_inline_pem(" -----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"));
        for path in ["-----BEGIN.pem", "/certs/ca-----", "/certs/ca.pem"] {
            assert!(!is_inline_pem(path), "{path}");
        }
    }

    #[test]
    fn every_spelling_of_a_certificate_file_is_found() {
        // Attacks: a FIFO or device named by an alias sqlx honours but an
        // older check did not (`ssl-ca`, the last of two spellings, an
        // environment variable).
        let url = |q: &str| url::Url::parse(&format!("postgres://db/app?{q}")).unwrap();
        let none = |_: &str| -> Option<String> { None };
        let found = |q: &str, env: &dyn Fn(&str) -> Option<String>| -> Vec<(CertificateKind, String, String)> {
            certificate_files(&url(q), env).into_iter().map(|f| (f.kind, f.source, f.path)).collect()
        };
        let root = |source: &str, path: &str| (CertificateKind::Root, source.to_string(), path.to_string());
        assert_eq!(found("ssl-ca=/a", &none), [root("ssl-ca", "/a")]);
        assert_eq!(found("sslrootcert=/a&ssl-root-cert=/b", &none), [root("ssl-root-cert", "/b")]);
        assert_eq!(
            found("ssl-cert=/c&ssl-key=/k", &none),
            [
                (CertificateKind::Client, "ssl-cert".to_string(), "/c".to_string()),
                (CertificateKind::Key, "ssl-key".to_string(), "/k".to_string())
            ]
        );
        let env = |name: &str| match name {
            "PGSSLROOTCERT" => Some("/fifo".to_string()),
            "PGSSLCERT" => Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string()),
            "PGSSLKEY" => Some("/key".to_string()),
            _ => None,
        };
        assert_eq!(
            found("", &env),
            [root("PGSSLROOTCERT", "/fifo"), (CertificateKind::Key, "PGSSLKEY".to_string(), "/key".to_string())]
        );
        // The URL wins over the environment, as in sqlx.
        assert_eq!(found("sslrootcert=/a", &env)[0], root("sslrootcert", "/a"));
        // A PEM text in the environment is kept as it is (for the relay).
        let inline = inline_certificates(&url(""), env);
        assert_eq!(inline.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(), [CertificateKind::Client]);
        assert!(inline_certificates(&url("ssl-cert=/c"), env).is_empty());
    }

    #[test]
    fn a_certificate_file_is_read_once_and_handed_over_as_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n").unwrap();
        let url = format!("postgres://app@db/app?sslmode=verify-full&ssl-ca={}", ca.display());
        let databases = open(&url).unwrap();
        // Read at open: the path is gone from the options.
        std::fs::remove_file(&ca).unwrap();
        let shown = format!("{:?}", databases.options("main").unwrap());
        assert!(!shown.contains("ca.pem"), "{shown}");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_CERTIFICATE_FILE as usize + 1]).unwrap();
        let error = open(&format!("postgres://db/app?sslkey={}", big.display())).unwrap_err().to_string();
        assert!(error.contains("larger than 1048576 bytes"), "{error}");
    }

    #[test]
    fn a_password_file_sqlx_would_open_must_be_a_regular_file() {
        // Attack: a FIFO as PGPASSFILE (or ~/.pgpass): sqlx opens it while
        // parsing a URL without a password, blocking the start for good.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pgpass");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let fifo = fifo.display().to_string();
        let url = |text: &str| url::Url::parse(text).unwrap();
        let named = |name: &str| (name == "PGPASSFILE").then(|| fifo.clone());
        let error = check_password_files(&url("postgres://app@db/app"), named).unwrap_err();
        assert_eq!(error, format!("PGPASSFILE `{fifo}`: not a regular file"));
        assert!(std::process::Command::new("mkfifo").arg(dir.path().join(".pgpass")).status().unwrap().success());
        let home = |name: &str| (name == "HOME").then(|| dir.path().display().to_string());
        let error = check_password_files(&url("postgres://app@db/app"), home).unwrap_err();
        assert!(error.starts_with("~/.pgpass `"), "{error}");
        // With a password, sqlx reads no password file.
        assert!(check_password_files(&url("postgres://app:pw@db/app"), named).is_ok());
        assert!(check_password_files(&url("postgres://app@db/app?password=pw"), named).is_ok());
        // A regular file, or none, is fine.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "db:5432:app:app:pw\n").unwrap();
        let plain = plain.display().to_string();
        assert!(
            check_password_files(&url("postgres://app@db/app"), |n: &str| (n == "PGPASSFILE").then(|| plain.clone()))
                .is_ok()
        );
        assert!(check_password_files(&url("postgres://app@db/app"), |_: &str| None).is_ok());
    }

    #[test]
    fn a_target_that_would_forge_a_line_is_escaped() {
        let databases = open("postgres://app%0Aadmin@db/x%0A2026-01-01T00:00:00Z%20INFO%20forged%1b[31m").unwrap();
        let target = &databases.aliases[0].target;
        assert!(!target.contains('\n') && !target.contains('\u{1b}'), "{target:?}");
        assert!(target.contains("\\n2026-01-01"), "{target}");
    }

    #[tokio::test]
    async fn a_sqlite_alias_is_probed_without_creating_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let databases =
            Databases::open(&BTreeMap::from([("app".to_string(), DatabaseSettings::sqlite(path.clone()))])).unwrap();
        assert!(databases.options("app").is_none() && databases.sqlite_options("app").is_some());
        let health = databases.check().await;
        assert!(!health[0].is_up(), "a missing file is not a database");
        assert!(!path.exists(), "the probe created the file");
        let mut connection = SqliteConnection::connect_with(databases.sqlite_options("app").unwrap()).await.unwrap();
        connection.execute("CREATE TABLE t (x)").await.unwrap();
        *databases.last.lock().await = None;
        assert!(databases.check().await[0].is_up());
    }

    #[test]
    fn a_url_from_a_missing_variable_is_refused_by_name() {
        let settings = BTreeMap::from([(
            "main".to_string(),
            DatabaseSettings::postgres(UrlSource::Secret(SecretSource::Env(
                "GATEHOUSE_TEST_UNSET_DATABASE_URL".into(),
            ))),
        )]);
        let error = Databases::open(&settings).unwrap_err().to_string();
        assert!(error.starts_with("[databases.main] url: cannot read environment variable `GATEHOUSE_TEST_UNSET"));
    }
}
