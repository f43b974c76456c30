//! Sidecar settings, read from `gatehouse.toml`.
//!
//! Everything has a default, so the file is optional. Relative paths are
//! resolved against the directory that holds the file, so the sidecar
//! behaves the same whatever directory it is started from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::databases::{DatabaseSettings, DatabaseTarget, PoolSettings, UrlSource};
use crate::policy::units::{ByteSize, HumanDuration};
use crate::runtime::RuntimeSettings;
use crate::secrets::SecretSource;

/// The sidecar's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Directory of `*.toml` policy files, one per plugin.
    pub policy_dir: PathBuf,
    /// Directory that policy `component` paths are relative to.
    pub plugin_dir: PathBuf,
    /// What chose `plugin_dir` (a setting and its file, or a flag), for
    /// messages about a component that cannot be read.
    pub plugin_dir_origin: String,
    /// The sidecar's own state: compiled-code cache (and, later, embedded
    /// databases). Must be writable only by the sidecar.
    pub data_dir: PathBuf,
    /// Engine sizing.
    pub runtime: RuntimeSettings,
    /// `gatehouse run`: listeners and request limits.
    pub server: ServerSettings,
    /// `[databases.<alias>]`: PostgreSQL databases and SQLite files
    /// services refer to by alias, with their pool sizes.
    pub databases: BTreeMap<String, DatabaseSettings>,
    /// `[kv]`: where the key-value store keeps its data.
    pub kv: KvSettings,
    /// `[audit]`: the audit log of grant changes.
    pub audit: AuditSettings,
}

/// `[audit]` in `gatehouse.toml`: the log every grant change is written
/// to before it takes effect (see `crate::audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// `enabled` (default true). Off, grant changes take effect unrecorded.
    pub enabled: bool,
    /// `key`: the Ed25519 signing key (default `<data_dir>/audit/key`),
    /// created on first run, mode 0600.
    pub key: PathBuf,
    /// `origin`: the log's name in its checkpoints and the key's name.
    /// `None`: the name of the existing key, or `gatehouse/<hostname>`
    /// for a new one.
    pub origin: Option<String>,
    /// `require_approval` (default false): grants that would grow beyond
    /// what a person approved wait for `gatehouse grants approve` (see
    /// `crate::audit::approval`). Needs the log.
    pub require_approval: bool,
    /// `database = "<alias>"`: the log in PostgreSQL, through a
    /// `[databases.<alias>]` of the same file, shared by every sidecar
    /// pointed at it. `None`: the embedded redb file in the data directory.
    pub database: Option<String>,
}

/// `[kv]` in `gatehouse.toml` (the store; each plugin's grant is the
/// `[kv]` of its policy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvSettings {
    /// `database = "<alias>"`: PostgreSQL, through a `[databases.<alias>]`
    /// of the same file, shared by every sidecar pointed at it. `None`:
    /// the embedded redb file in the data directory.
    pub database: Option<String>,
}

/// `[server]`: where `gatehouse run` listens and what one request may cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// The invoke API (plugins, health, metrics).
    pub listen: SocketAddr,
    /// The admin API; `None` turns it off.
    pub admin_listen: Option<SocketAddr>,
    /// Where the admin bearer token comes from. Required unless the admin
    /// listener is on a loopback address. Its name is `admin`.
    pub admin_token: Option<SecretSource>,
    /// `[server.admin_tokens.<name>]`: more tokens, each named, so that
    /// the audit log says whose token changed the grants.
    pub admin_tokens: BTreeMap<String, SecretSource>,
    /// Largest request body.
    pub max_body: u64,
    /// Time a client has to send a request's head, and then its body.
    pub request_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// When `/readyz` says ready.
    pub ready_when: ReadyWhen,
}

/// `[server] ready_when`: what `/readyz` waits for, beside the databases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadyWhen {
    /// Every policy in the directory is served: not ready while the
    /// directory cannot be read, or while a policy file or plugin is
    /// refused with no earlier version in force. An orchestrator then
    /// sends no traffic to a sidecar that would answer 503.
    #[default]
    AllLoaded,
    /// Ready once the first load has finished, whatever it loaded.
    Started,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            admin_token: None,
            admin_tokens: BTreeMap::new(),
            max_body: 1 << 20,
            request_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_connections: 1024,
            ready_when: ReadyWhen::AllLoaded,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_file(FileConfig::default(), Path::new(".")).expect("built-in defaults are valid")
    }
}

/// A settings file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct ConfigError {
    /// The settings file.
    pub file: String,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    policy_dir: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    engine: EngineSection,
    #[serde(default)]
    secrets: BTreeMap<String, SecretSection>,
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    databases: BTreeMap<String, DatabaseSection>,
    #[serde(default)]
    kv: KvSection,
    #[serde(default)]
    audit: AuditSection,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    enabled: Option<bool>,
    key: Option<PathBuf>,
    origin: Option<String>,
    require_approval: Option<bool>,
    database: Option<String>,
}

/// `[kv]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KvSection {
    database: Option<String>,
}

/// `[databases.<alias>]`: exactly one of `url` or `sqlite`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    url: Option<UrlField>,
    sqlite: Option<PathBuf>,
    max_connections: Option<u32>,
    acquire_timeout: Option<HumanDuration>,
    per_plugin_connections: Option<u32>,
    max_value_bytes: Option<ByteSize>,
    max_database_bytes: Option<ByteSize>,
    plugin_write_rate: Option<ByteSize>,
    write_rate: Option<ByteSize>,
    manage_roles: Option<bool>,
    guaranteed_connections: Option<BTreeMap<String, u32>>,
}

/// A URL written out, or `{ env = … }` / `{ file = … }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a URL string, or { env = \"VARIABLE\" }, or { file = \"path\" }")]
enum UrlField {
    Inline(String),
    Secret(SecretSection),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    listen: Option<SocketAddr>,
    /// `"off"` or an address.
    admin_listen: Option<String>,
    admin_token: Option<SecretSection>,
    #[serde(default)]
    admin_tokens: BTreeMap<String, SecretSection>,
    max_body: Option<ByteSize>,
    request_timeout: Option<HumanDuration>,
    drain_timeout: Option<HumanDuration>,
    max_connections: Option<usize>,
    ready_when: Option<ReadyWhen>,
}

/// `[secrets.<name>]`: exactly one of `env` or `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretSection {
    env: Option<String>,
    file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineSection {
    max_memory: Option<ByteSize>,
    max_instances: Option<u32>,
    epoch_tick: Option<HumanDuration>,
    compile_timeout: Option<HumanDuration>,
    compile_memory: Option<ByteSize>,
    keep_resident: Option<ByteSize>,
}

impl Config {
    /// Reads a settings file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |reason: String| ConfigError { file: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let raw: FileConfig = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            fail(format!("line {}: {}", line.unwrap_or(1), e.message().trim_end()))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let named = raw.plugin_dir.is_some();
        let mut config = Config::from_file(raw, base).map_err(fail)?;
        config.plugin_dir_origin = if named {
            format!("plugin_dir in {}", path.display())
        } else {
            format!("the policy directory (no plugin_dir in {})", path.display())
        };
        Ok(config)
    }

    fn from_file(raw: FileConfig, base: &Path) -> Result<Config, String> {
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let source = |what: &str, secret: SecretSection| match (secret.env, secret.file) {
            (Some(var), None) => Ok(SecretSource::Env(var)),
            (None, Some(file)) => Ok(SecretSource::File(resolve(file))),
            _ => Err(format!("{what}: set exactly one of `env` or `file`")),
        };
        let secrets = raw
            .secrets
            .into_iter()
            .map(|(name, secret)| Ok((name.clone(), source(&format!("[secrets.{name}]"), secret)?)))
            .collect::<Result<_, String>>()?;
        let server = server_settings(raw.server, |what, s| source(what, s))?;
        let data_dir = resolve(raw.data_dir.unwrap_or_else(|| ".gatehouse".into()));
        let databases: BTreeMap<String, DatabaseSettings> = raw
            .databases
            .into_iter()
            .map(|(alias, section)| {
                if !is_alias(&alias) {
                    return Err(format!(
                        "[databases.{}]: an alias is 1 to 64 lowercase letters, digits, `_` or `-`, starting with a letter",
                        crate::guest_text::escape(&alias, crate::guest_text::SHORT)
                    ));
                }
                let target = match (section.url, section.sqlite) {
                    (Some(UrlField::Inline(url)), None) => DatabaseTarget::Postgres(UrlSource::Inline(url)),
                    (Some(UrlField::Secret(secret)), None) => DatabaseTarget::Postgres(UrlSource::Secret(source(
                        &format!("[databases.{alias}] url"),
                        secret,
                    )?)),
                    (None, Some(file)) if file.as_os_str().is_empty() => {
                        return Err(format!("[databases.{alias}] sqlite: name a file"));
                    }
                    (None, Some(file)) => DatabaseTarget::Sqlite(if file.is_absolute() { file } else { data_dir.join(file) }),
                    _ => {
                        return Err(format!(
                            "[databases.{alias}]: set exactly one of `url` (PostgreSQL) or `sqlite` (a file in the data directory)"
                        ));
                    }
                };
                let defaults = PoolSettings::default();
                let max_connections = section.max_connections.unwrap_or(defaults.max_connections);
                let pool = PoolSettings {
                    max_connections,
                    acquire_timeout: section.acquire_timeout.map_or(defaults.acquire_timeout, |d| d.0),
                    per_plugin_connections: section
                        .per_plugin_connections
                        .unwrap_or(defaults.per_plugin_connections.min(max_connections)),
                    // Out of u32's range is out of the validated range too.
                    max_value_bytes: section
                        .max_value_bytes
                        .map_or(defaults.max_value_bytes, |b| u32::try_from(b.0).unwrap_or(u32::MAX)),
                    max_database_bytes: section.max_database_bytes.map(|b| b.0),
                    plugin_write_rate: section.plugin_write_rate.map_or(defaults.plugin_write_rate, |b| b.0),
                    write_rate: section.write_rate.map_or(defaults.write_rate, |b| b.0),
                };
                pool.validate().map_err(|reason| format!("[databases.{alias}] {reason}"))?;
                if section.max_database_bytes.is_some() && matches!(target, DatabaseTarget::Postgres(_)) {
                    return Err(format!(
                        "[databases.{alias}] max_database_bytes: only for SQLite (a PostgreSQL server's size is its own)"
                    ));
                }
                for (set, name) in [(section.plugin_write_rate, "plugin_write_rate"), (section.write_rate, "write_rate")] {
                    if set.is_some() && matches!(target, DatabaseTarget::Postgres(_)) {
                        return Err(format!(
                            "[databases.{alias}] {name}: only for SQLite (a PostgreSQL server's WAL is its own)"
                        ));
                    }
                }
                if section.manage_roles.is_some() && matches!(target, DatabaseTarget::Sqlite(_)) {
                    return Err(format!("[databases.{alias}] manage_roles: only for PostgreSQL (SQLite has no roles)"));
                }
                let manage_roles = section.manage_roles.unwrap_or(true);
                let guaranteed = section.guaranteed_connections.unwrap_or_default();
                let settings = DatabaseSettings { target, pool, manage_roles, guaranteed };
                settings.check_guarantees().map_err(|reason| format!("[databases.{alias}] {reason}"))?;
                Ok((alias, settings))
            })
            .collect::<Result<_, String>>()?;
        let kv = KvSettings { database: raw.kv.database };
        check_postgres_alias("[kv]", "the key-value store is redb", kv.database.as_deref(), &databases)?;
        check_postgres_alias("[audit]", "the audit log is redb", raw.audit.database.as_deref(), &databases)?;
        let policy_dir = resolve(raw.policy_dir.unwrap_or_else(|| "policies".into()));
        let plugin_dir = raw.plugin_dir.map(resolve).unwrap_or_else(|| policy_dir.clone());
        let defaults = RuntimeSettings::default();
        let engine = raw.engine;
        let runtime = RuntimeSettings {
            max_memory: engine.max_memory.map_or(defaults.max_memory, |s| s.0),
            max_instances: engine.max_instances.unwrap_or(defaults.max_instances),
            epoch_tick: engine.epoch_tick.map_or(defaults.epoch_tick, |d| d.0),
            compile_timeout: engine.compile_timeout.map_or(defaults.compile_timeout, |d| d.0),
            compile_memory: engine.compile_memory.map_or(defaults.compile_memory, |s| s.0),
            keep_resident: engine.keep_resident.map_or(defaults.keep_resident, |s| s.0),
            cache_dir: Some(data_dir.join("cache")),
            secrets,
            ..defaults
        };
        if runtime.epoch_tick < crate::runtime::MIN_EPOCH_TICK {
            return Err(format!(
                "[engine] epoch_tick must be at least {:?}: the ticker wakes once per tick even while idle",
                crate::runtime::MIN_EPOCH_TICK
            ));
        }
        let audit = AuditSettings {
            enabled: raw.audit.enabled.unwrap_or(true),
            key: raw.audit.key.map(resolve).unwrap_or_else(|| data_dir.join(crate::audit::KEY_FILE)),
            origin: raw.audit.origin,
            require_approval: raw.audit.require_approval.unwrap_or(false),
            database: raw.audit.database,
        };
        if audit.require_approval && !audit.enabled {
            return Err("[audit] require_approval needs the audit log: it keeps the approvals (enabled = true)".into());
        }
        if let Some(origin) = &audit.origin {
            crate::audit::note::check_name(origin).map_err(|_| {
                "[audit] origin: 1 to 128 characters, without spaces, control characters or `+` \
                 (it is also the signing key's name)"
                    .to_string()
            })?;
        }
        let plugin_dir_origin = "the policy directory".to_string();
        Ok(Config { policy_dir, plugin_dir, plugin_dir_origin, data_dir, runtime, server, databases, kv, audit })
    }
}

/// Aliases appear in policies (`[sql.<alias>]`) and metric labels.
pub(crate) fn is_alias(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn server_settings(
    raw: ServerSection,
    source: impl Fn(&str, SecretSection) -> Result<SecretSource, String>,
) -> Result<ServerSettings, String> {
    let defaults = ServerSettings::default();
    let admin_listen = match raw.admin_listen.as_deref() {
        None => defaults.admin_listen,
        Some(text) => parse_admin_listen(text).map_err(|e| format!("[server] admin_listen: {e}"))?,
    };
    let admin_token = raw.admin_token.map(|s| source("[server] admin_token", s)).transpose()?;
    let mut admin_tokens = BTreeMap::new();
    for (name, secret) in raw.admin_tokens {
        let shown = crate::guest_text::escape(&name, crate::guest_text::SHORT);
        if !is_token_name(&name) {
            return Err(format!(
                "[server.admin_tokens.{shown}]: a token name is 1 to 64 lowercase letters, digits, `_` or `-`, \
                 starting with a letter or digit"
            ));
        }
        if name == ADMIN_TOKEN_NAME && admin_token.is_some() {
            return Err(format!(
                "[server.admin_tokens.{ADMIN_TOKEN_NAME}] and [server] admin_token are the same name: keep one"
            ));
        }
        admin_tokens.insert(name, source(&format!("[server.admin_tokens.{shown}]"), secret)?);
    }
    let settings = ServerSettings {
        listen: raw.listen.unwrap_or(defaults.listen),
        admin_listen,
        admin_token,
        admin_tokens,
        max_body: raw.max_body.map_or(defaults.max_body, |s| s.0),
        request_timeout: raw.request_timeout.map_or(defaults.request_timeout, |d| d.0),
        drain_timeout: raw.drain_timeout.map_or(defaults.drain_timeout, |d| d.0),
        max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
        ready_when: raw.ready_when.unwrap_or(defaults.ready_when),
    };
    settings.validate()?;
    Ok(settings)
}

/// `<section> database = "<alias>"` must name a PostgreSQL alias of the
/// same file (`embedded`: what the service is without one).
fn check_postgres_alias(
    section: &str,
    embedded: &str,
    alias: Option<&str>,
    databases: &BTreeMap<String, DatabaseSettings>,
) -> Result<(), String> {
    let Some(alias) = alias else { return Ok(()) };
    let shown = crate::guest_text::escape(alias, crate::guest_text::SHORT);
    match databases.get(alias).map(|d| &d.target) {
        Some(DatabaseTarget::Postgres(_)) => Ok(()),
        Some(DatabaseTarget::Sqlite(_)) => {
            Err(format!("{section} database = `{shown}`: a SQLite alias; {embedded} by default or PostgreSQL"))
        }
        None => Err(format!(
            "{section} database = `{shown}`: no [databases.{shown}] in this file (name one of its [databases.<alias>] sections)"
        )),
    }
}

/// The name `[server] admin_token` goes by in the audit log.
pub const ADMIN_TOKEN_NAME: &str = "admin";

/// Token names appear in audit entries (`admin:<name>`).
fn is_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// An admin address, or `off`.
pub fn parse_admin_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    match text {
        "off" => Ok(None),
        _ => text.parse().map(Some).map_err(|_| format!("`{text}` is not an address or \"off\"")),
    }
}

impl ServerSettings {
    /// Every admin token by name: `admin_token` as `admin`, then the
    /// `[server.admin_tokens.<name>]`.
    pub fn admin_token_sources(&self) -> Vec<(&str, &SecretSource)> {
        let single = self.admin_token.iter().map(|s| (ADMIN_TOKEN_NAME, s));
        single.chain(self.admin_tokens.iter().map(|(n, s)| (n.as_str(), s))).collect()
    }

    /// The token the CLI uses to ask a running sidecar: `admin`, else the
    /// first named one.
    pub fn cli_token(&self) -> Option<(&str, &SecretSource)> {
        self.admin_token_sources().into_iter().next()
    }

    /// The combinations that are never right; checked again after the
    /// command line changes a listener.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(addr) = self.admin_listen
            && !addr.ip().is_loopback()
            && self.admin_token.is_none()
            && self.admin_tokens.is_empty()
        {
            return Err(format!(
                "[server] admin_listen {addr} is not a loopback address: set [server] admin_token (env or file), \
                 or the admin API would be open to the network"
            ));
        }
        if self.max_connections == 0 {
            return Err("[server] max_connections must be at least 1".into());
        }
        if self.admin_listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(
                "[server] admin_listen must differ from listen: the invoke listener serves no admin route".into()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn secrets_come_from_env_or_a_file_relative_to_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, "[secrets.a]\nenv = \"A_TOKEN\"\n[secrets.b]\nfile = \"b.txt\"\n").unwrap();
        let secrets = Config::load(&path).unwrap().runtime.secrets;
        assert_eq!(secrets["a"], SecretSource::Env("A_TOKEN".into()));
        assert_eq!(secrets["b"], SecretSource::File(dir.path().join("b.txt")));
    }

    #[test]
    fn the_admin_api_needs_a_token_off_loopback() {
        let error = load("[server]\nadmin_listen = \"0.0.0.0:8081\"\n").unwrap_err().to_string();
        assert!(error.contains("not a loopback address: set [server] admin_token"), "{error}");
        let config = load("[server]\nadmin_listen = \"0.0.0.0:8081\"\nadmin_token = { env = \"T\" }\n").unwrap();
        assert_eq!(config.server.admin_token, Some(SecretSource::Env("T".into())));
        assert_eq!(load("[server]\nadmin_listen = \"off\"\n").unwrap().server.admin_listen, None);
        assert_eq!(load("").unwrap().server, ServerSettings::default());
        let error = load("[server]\nmax_connections = 0\n").unwrap_err().to_string();
        assert!(error.ends_with("[server] max_connections must be at least 1"), "{error}");
    }

    #[test]
    fn the_kv_store_is_redb_unless_it_names_a_database_alias_of_the_file() {
        assert_eq!(load("").unwrap().kv.database, None);
        let config = load("[databases.shared]\nurl = \"postgres://db/app\"\n[kv]\ndatabase = \"shared\"\n").unwrap();
        assert_eq!(config.kv.database.as_deref(), Some("shared"));
        let error = load("[databases.shared]\nurl = \"postgres://db/app\"\n[kv]\ndatabase = \"main\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.ends_with("[kv] database = `main`: no [databases.main] in this file (name one of its [databases.<alias>] sections)"), "{error}");
        let error = load("[kv]\ndatabase = \"a\\nforged\"\n").unwrap_err().to_string();
        assert!(!error.contains('\n'), "{error}");
        assert!(load("[kv]\npool = 3\n").unwrap_err().to_string().contains("unknown field `pool`"));
    }

    #[test]
    fn databases_are_named_by_alias_with_a_url_inline_or_from_a_secret() {
        let config = load(
            "[databases.main]\nurl = \"postgres://localhost/app\"\n[databases.shared]\nurl = { env = \"DB_URL\" }\n",
        )
        .unwrap();
        assert_eq!(
            config.databases["main"],
            DatabaseSettings::postgres(UrlSource::Inline("postgres://localhost/app".into()))
        );
        assert_eq!(
            config.databases["shared"],
            DatabaseSettings::postgres(UrlSource::Secret(SecretSource::Env("DB_URL".into())))
        );
        assert!(config.databases["main"].manage_roles, "on by default");
        let operated = load("[databases.main]\nurl = \"postgres://x\"\nmanage_roles = false\n").unwrap();
        assert!(!operated.databases["main"].manage_roles);
        for (text, expected) in [
            ("[databases.Main]\nurl = \"postgres://x\"\n", "[databases.Main]: an alias is"),
            ("[databases.main]\n", "set exactly one of `url` (PostgreSQL) or `sqlite`"),
            ("[databases.main]\nurl = \"postgres://x\"\nsqlite = \"a.db\"\n", "set exactly one of `url`"),
            ("[databases.main]\nsqlite = \"\"\n", "sqlite: name a file"),
            ("[databases.main]\nsqlite = \"a.db\"\nmax_connections = 0\n", "max_connections must be between 1"),
            (
                "[databases.main]\nsqlite = \"a.db\"\nmax_connections = 2\nper_plugin_connections = 3\n",
                "per_plugin_connections must be",
            ),
            ("[databases.main]\nsqlite = \"a.db\"\nacquire_timeout = \"0s\"\n", "acquire_timeout must be"),
            ("[databases.app]\nsqlite = \"a.db\"\n[kv]\ndatabase = \"app\"\n", "a SQLite alias"),
            ("[databases.main]\nurl = { envv = \"A\" }\n", "a URL string, or { env = \"VARIABLE\" }"),
            ("[databases.main]\nurl = { env = \"A\", file = \"b\" }\n", "set exactly one of `env` or `file`"),
            ("[databases.main]\nurl = \"postgres://x\"\npool = 3\n", "unknown field `pool`"),
            ("[databases.main]\nsqlite = \"a.db\"\nmanage_roles = false\n", "manage_roles: only for PostgreSQL"),
            (
                "[databases.main]\nurl = \"postgres://x\"\nmax_database_bytes = \"1 GiB\"\n",
                "max_database_bytes: only for SQLite",
            ),
            (
                "[databases.main]\nsqlite = \"a.db\"\nmax_database_bytes = \"1 KiB\"\n",
                "max_database_bytes must be at least 1 MiB",
            ),
            (
                "[databases.main]\nurl = \"postgres://x\"\nplugin_write_rate = \"1 MiB\"\n",
                "plugin_write_rate: only for SQLite",
            ),
            (
                "[databases.main]\nsqlite = \"a.db\"\nplugin_write_rate = \"1 KiB\"\n",
                "plugin_write_rate must be at least 64 KiB",
            ),
            ("[databases.main]\nurl = \"postgres://x\"\nwrite_rate = \"1 MiB\"\n", "write_rate: only for SQLite"),
            ("[databases.main]\nsqlite = \"a.db\"\nwrite_rate = \"1 KiB\"\n", "write_rate must be at least 64 KiB"),
            // Nine shared places (one kept for the write turn): eight at most.
            (
                "[databases.main]\nsqlite = \"a.db\"\nguaranteed_connections = { a = 4, b = 4, c = 1 }\n",
                "guaranteed_connections: 9 in all, but the plugins share 9 places",
            ),
            (
                "[databases.main]\nurl = \"postgres://x\"\nmax_connections = 3\nguaranteed_connections = { a = 2, b = 1 }\n",
                "guaranteed_connections: 3 in all, but the plugins share 3 places (max_connections)",
            ),
            (
                "[databases.main]\nsqlite = \"a.db\"\nguaranteed_connections = { a = 5 }\n",
                "a's 5 must be between 1 and per_plugin_connections (4)",
            ),
            ("[databases.main]\nsqlite = \"a.db\"\nguaranteed_connections = { a = 0 }\n", "a's 0 must be between 1"),
            (
                "[databases.main]\nsqlite = \"a.db\"\nguaranteed_connections = { \"Bad\\u001b\" = 1 }\n",
                "`Bad\\u{1b}` is not a plugin name",
            ),
        ] {
            let error = load(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn a_sqlite_alias_is_a_file_in_the_data_directory_with_its_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(
            &path,
            "data_dir = \"state\"\n[databases.app]\nsqlite = \"app.db\"\nmax_connections = 3\nacquire_timeout = \"250ms\"\n\
             max_database_bytes = \"64 MiB\"\nplugin_write_rate = \"4 MiB\"\nwrite_rate = \"8 MiB\"\n[databases.abs]\nsqlite = \"/var/x.db\"\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let app = &config.databases["app"];
        assert_eq!(app.target, DatabaseTarget::Sqlite(dir.path().join("state").join("app.db")));
        assert_eq!(
            app.pool,
            PoolSettings {
                max_connections: 3,
                acquire_timeout: Duration::from_millis(250),
                per_plugin_connections: 3,
                max_value_bytes: crate::databases::DEFAULT_MAX_VALUE_BYTES,
                max_database_bytes: Some(64 << 20),
                plugin_write_rate: 4 << 20,
                write_rate: 8 << 20,
            }
        );
        assert_eq!(config.databases["abs"].target, DatabaseTarget::Sqlite("/var/x.db".into()));
        assert_eq!(config.databases["abs"].pool, PoolSettings::default());
        assert!(app.guaranteed.is_empty());
    }

    #[test]
    fn connections_are_guaranteed_to_named_plugins_within_the_shared_places() {
        let config = load(
            "[databases.main]\nsqlite = \"a.db\"\nguaranteed_connections = { reports = 4, billing = 4 }\n\
             [databases.pg]\nurl = \"postgres://x\"\nmax_connections = 3\nper_plugin_connections = 2\n\
             guaranteed_connections = { reports = 2 }\n",
        )
        .unwrap();
        let guaranteed = |alias: &str| config.databases[alias].guaranteed.clone().into_iter().collect::<Vec<_>>();
        assert_eq!(guaranteed("main"), [("billing".to_string(), 4), ("reports".to_string(), 4)]);
        assert_eq!(guaranteed("pg"), [("reports".to_string(), 2)]);
        assert_eq!((config.databases["main"].shared_places(), config.databases["pg"].shared_places()), (9, 3));
    }

    #[test]
    fn the_epoch_tick_has_a_floor() {
        // Attack: `0s` (or a few nanoseconds) makes the ticker thread spin.
        for tick in ["0s", "1ns", "999us"] {
            let error = load(&format!("[engine]\nepoch_tick = \"{tick}\"\n")).unwrap_err().to_string();
            assert!(
                error.ends_with(
                    "[engine] epoch_tick must be at least 1ms: the ticker wakes once per tick even while idle"
                ),
                "{tick}: {error}"
            );
        }
        assert_eq!(load("[engine]\nepoch_tick = \"1ms\"\n").unwrap().runtime.epoch_tick, Duration::from_millis(1));
        let tight = RuntimeSettings { epoch_tick: Duration::ZERO, ..RuntimeSettings::default() };
        assert!(
            crate::Runtime::new(
                tight,
                std::sync::Arc::new(
                    crate::services::Services::with_dns(std::sync::Arc::new(
                        crate::services::http::resolve::SystemLookup
                    ))
                    .unwrap(),
                ),
            )
            .is_err_and(|e| e.to_string().contains("under the minimum"))
        );
    }

    #[test]
    fn admin_tokens_are_named_and_the_single_token_is_admin() {
        let config =
            load("[server]\nadmin_token = { env = \"A\" }\n[server.admin_tokens.ci]\nfile = \"ci.txt\"\n").unwrap();
        let names: Vec<&str> = config.server.admin_token_sources().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["admin", "ci"]);
        // A named token alone is enough off loopback.
        let config =
            load("[server]\nadmin_listen = \"0.0.0.0:8081\"\n[server.admin_tokens.ops]\nenv = \"T\"\n").unwrap();
        assert_eq!(config.server.cli_token().map(|(n, _)| n), Some("ops"));
        for (text, expected) in [
            ("[server.admin_tokens.\"Bad Name\"]\nenv = \"T\"\n", "a token name is 1 to 64"),
            ("[server]\nadmin_token = { env = \"A\" }\n[server.admin_tokens.admin]\nenv = \"B\"\n", "the same name"),
            ("[server.admin_tokens.ci]\nenv = \"A\"\nfile = \"b\"\n", "set exactly one of `env` or `file`"),
        ] {
            let error = load(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn the_audit_log_is_on_with_its_key_in_the_data_directory_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, "data_dir = \"state\"\n").unwrap();
        let audit = Config::load(&path).unwrap().audit;
        assert_eq!(
            audit,
            AuditSettings {
                enabled: true,
                key: dir.path().join("state/audit/key"),
                origin: None,
                require_approval: false,
                database: None
            }
        );
        std::fs::write(&path, "[audit]\nenabled = false\nkey = \"k\"\norigin = \"example.com/log\"\n").unwrap();
        let audit = Config::load(&path).unwrap().audit;
        assert_eq!(
            audit,
            AuditSettings {
                enabled: false,
                key: dir.path().join("k"),
                origin: Some("example.com/log".into()),
                require_approval: false,
                database: None
            }
        );
        let shared = "[databases.shared]\nurl = \"postgres://db/app\"\n[databases.app]\nsqlite = \"app.db\"\n";
        let audit = load(&format!("{shared}[audit]\ndatabase = \"shared\"\n")).unwrap().audit;
        assert_eq!(audit.database.as_deref(), Some("shared"));
        let error = load(&format!("{shared}[audit]\ndatabase = \"app\"\n")).unwrap_err().to_string();
        assert!(error.contains("[audit] database = `app`: a SQLite alias"), "{error}");
        let error = load(&format!("{shared}[audit]\ndatabase = \"main\"\n")).unwrap_err().to_string();
        assert!(error.contains("[audit] database = `main`: no [databases.main]"), "{error}");
        for origin in ["a b", "a+b", ""] {
            let error = load(&format!("[audit]\norigin = {origin:?}\n")).unwrap_err().to_string();
            assert!(error.contains("[audit] origin"), "{origin}: {error}");
        }
    }

    #[test]
    fn a_secret_needs_exactly_one_source() {
        for text in ["[secrets.t]\nenv = \"T\"\nfile = \"t\"\n", "[secrets.t]\n"] {
            let error = load(text).unwrap_err().to_string();
            assert!(error.ends_with("[secrets.t]: set exactly one of `env` or `file`"), "{error}");
        }
    }
}
