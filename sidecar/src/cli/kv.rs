//! `gatehouse kv usage | get | list`: read-only views of the key-value
//! store the settings name (`<data_dir>/kv/store.redb`).
//!
//! redb lets one process open a file for writing, or several for reading,
//! never both. So the CLI opens the file read-only when no process has it
//! open, one page at a time (a sidecar starting meanwhile waits for it,
//! up to `services::kv::host::OPEN_WAIT`), and otherwise asks the running
//! sidecar's admin API (`--admin ADDR`, else the settings' `admin_listen`,
//! with the settings' `admin_token`), which reads through the sidecar's
//! own handle. Either way nothing is written and a running sidecar goes
//! on undisturbed. Cursors are the store's own, so a listing that starts
//! on the file and finds it taken continues through the admin API.
//!
//! With `[kv] database` (PostgreSQL), the CLI reads the database itself:
//! its reads take no lock a sidecar waits for.
//!
//! Output is guest data made safe: keys escaped and bounded, values as
//! escaped text when they are UTF-8 and as hex otherwise (`--raw` writes
//! a value's exact bytes).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use gatehouse::config::Config;
use gatehouse::services::kv::backend::{MAX_PAGE, Namespace};
use gatehouse::services::kv::operator::{PluginUsage, ShownValue, show_key, show_value};
use gatehouse::services::kv::policy::DEFAULT_BUCKET;
use gatehouse::services::kv::redb::OpenError;
use gatehouse::services::kv::{KvError, KvReader, RedbReader};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;

/// The most the CLI reads of one admin answer: a raw value of the largest
/// `max_value` (16 MiB), as hex in JSON, with room to spare.
const MAX_ANSWER: usize = 40 << 20;

/// What to read.
#[derive(Debug, clap::Subcommand)]
pub enum KvCommand {
    /// Keys and bytes stored per plugin and bucket, against the quotas.
    /// Without PLUGIN: every plugin with a `[kv]` grant.
    Usage {
        /// One plugin, granted or not (data outlives a removed grant).
        plugin: Option<String>,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// One value: escaped text if it is UTF-8, hex otherwise (the size and
    /// encoding go to stderr); exit 1 if the key does not exist.
    Get {
        /// The plugin whose namespace to read.
        plugin: String,
        /// The key.
        key: String,
        /// The bucket (default: the default bucket).
        #[arg(long, default_value = DEFAULT_BUCKET)]
        bucket: String,
        /// Write the value's exact bytes to stdout instead.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Keys in byte order, one a line (escaped), paging through all of
    /// them or the first `--limit`.
    List {
        /// The plugin whose namespace to read.
        plugin: String,
        /// The bucket (default: the default bucket).
        #[arg(long, default_value = DEFAULT_BUCKET)]
        bucket: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        admin: AdminArg,
    },
}

/// Where a running sidecar's admin API is, when it has the store open.
#[derive(Debug, clap::Args)]
pub struct AdminArg {
    /// The running sidecar's admin address (default: the settings'
    /// `admin_listen`).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
}

/// Reads through the file, the PostgreSQL store, or the running sidecar
/// that has the file open.
enum Source {
    File(PathBuf),
    Database(std::sync::Arc<gatehouse::services::kv::KvStore>),
    Admin(Admin),
}

pub async fn run(config: &Config, command: KvCommand) -> anyhow::Result<ExitCode> {
    let admin = match &command {
        KvCommand::Usage { admin, .. } | KvCommand::Get { admin, .. } | KvCommand::List { admin, .. } => admin.admin,
    };
    let file = config.data_dir.join("kv").join("store.redb");
    let mut source = match &config.kv.database {
        None => Source::File(file.clone()),
        Some(_) => {
            let services = gatehouse::services::Services::from_config(config)?;
            Source::Database(services.kv.context("the settings name no key-value store")?)
        }
    };
    let result = match command {
        KvCommand::Usage { plugin, .. } => usage(config, &mut source, admin, plugin.as_deref()).await,
        KvCommand::Get { plugin, key, bucket, raw, .. } => {
            let ns = namespace(&plugin, &bucket)?;
            get(config, &mut source, admin, &ns, &key, raw).await
        }
        KvCommand::List { plugin, bucket, prefix, limit, .. } => {
            let ns = namespace(&plugin, &bucket)?;
            list(config, &mut source, admin, &ns, &prefix, limit).await
        }
    };
    match result {
        Ok(code) => Ok(code),
        Err(Failure::Missing) => {
            eprintln!("no key-value store at {}: nothing is stored yet", gatehouse::policy::shown(&file));
            Ok(ExitCode::FAILURE)
        }
        Err(Failure::Kv(e)) => {
            eprintln!("error: {}: {e}", e.kind());
            Ok(ExitCode::FAILURE)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn namespace(plugin: &str, bucket: &str) -> anyhow::Result<Namespace> {
    Namespace::new(plugin, bucket).map_err(|e| anyhow::anyhow!("{e}"))
}

enum Failure {
    /// There is no store file (and so no sidecar has one open).
    Missing,
    Kv(KvError),
    Other(anyhow::Error),
}

impl From<KvError> for Failure {
    fn from(e: KvError) -> Self {
        Failure::Kv(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(e.into())
    }
}

/// Opens the store for one piece of work, or, when another process has
/// the file open, switches `source` to that sidecar's admin API for good.
async fn open(config: &Config, source: &mut Source, admin: Option<SocketAddr>) -> Result<Option<KvReader>, Failure> {
    let path = match source {
        Source::File(path) => path,
        Source::Database(store) => return Ok(Some(store.reader().await?)),
        Source::Admin(_) => return Ok(None),
    };
    match RedbReader::open(path) {
        Ok(reader) => Ok(Some(KvReader::File(reader))),
        Err(OpenError::Missing(_)) => Err(Failure::Missing),
        Err(OpenError::Locked(shown)) => {
            let admin = Admin::from_settings(config, admin).with_context(|| {
                format!("{shown} is open in another process (a running sidecar?), and it cannot be asked")
            })?;
            eprintln!("{shown} is open in another process: asking the sidecar at {}", admin.addr);
            *source = Source::Admin(admin);
            Ok(None)
        }
        Err(OpenError::NeedsRepair(shown)) => Err(Failure::Other(anyhow::anyhow!(
            "{shown} was not closed cleanly (its sidecar was killed); start the sidecar, which repairs it, \
             and ask again (through its admin API)"
        ))),
        Err(OpenError::Other(e)) => Err(e.into()),
        Err(e) => Err(Failure::Other(e.into())),
    }
}

async fn usage(
    config: &Config,
    source: &mut Source,
    admin: Option<SocketAddr>,
    plugin: Option<&str>,
) -> Result<ExitCode, Failure> {
    if let Some(plugin) = plugin {
        namespace(plugin, DEFAULT_BUCKET)?;
    }
    let list: Vec<PluginUsage> = match open(config, source, admin).await? {
        Some(reader) => {
            // The grants are the policies' (what `run` would load).
            let components =
                gatehouse::policy::ComponentDir { path: &config.plugin_dir, origin: &config.plugin_dir_origin };
            let load =
                gatehouse::policy::load_dir_in(&config.policy_dir, components).map_err(|e| anyhow::anyhow!("{e}"))?;
            let grants: Vec<_> = load
                .set
                .plugins
                .iter()
                .filter_map(|(name, p)| p.kv.clone().map(|kv| (name.clone(), kv)))
                .filter(|(name, _)| plugin.is_none_or(|p| p == name))
                .collect();
            let wanted: Vec<_> = match plugin {
                Some(p) if grants.is_empty() => vec![(p.to_string(), None)],
                _ => grants.into_iter().map(|(n, kv)| (n, Some(kv))).collect(),
            };
            let mut list = Vec::new();
            for (name, grant) in &wanted {
                list.push(reader.plugin_usage(name, grant.as_ref()).await?);
            }
            list
        }
        None => {
            let Source::Admin(admin) = source else { unreachable!("switched to the admin API") };
            let query = plugin.map(|p| format!("?plugin={p}")).unwrap_or_default();
            let answer: serde_json::Value = admin.json(&format!("/admin/kv/usage{query}")).await?;
            serde_json::from_value(answer["plugins"].clone()).context("the sidecar's answer")?
        }
    };
    let mut out = std::io::stdout().lock();
    if list.is_empty() {
        writeln!(out, "no plugin has a [kv] grant")?;
    }
    for usage in &list {
        let quota = match usage.quota {
            Some(q) => format!(
                "of {} keys and {} bytes (max_key {}, max_value {})",
                q.max_keys, q.max_bytes, q.max_key, q.max_value
            ),
            None => "(no [kv] grant: the data is kept)".into(),
        };
        writeln!(out, "{}: {} keys, {} bytes {quota}", usage.plugin, usage.keys, usage.bytes)?;
        for bucket in &usage.buckets {
            let ungranted =
                if bucket.granted || usage.quota.is_none() { "" } else { " (not granted: counts in the quota)" };
            writeln!(out, "  bucket {}: {} keys, {} bytes{ungranted}", bucket.bucket, bucket.keys, bucket.bytes)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(
    config: &Config,
    source: &mut Source,
    admin: Option<SocketAddr>,
    ns: &Namespace,
    key: &str,
    raw: bool,
) -> Result<ExitCode, Failure> {
    let value: Option<Result<Vec<u8>, ShownValue>> = match open(config, source, admin).await? {
        Some(reader) => reader.get(ns, key).await?.map(Ok),
        None => {
            let Source::Admin(admin) = source else { unreachable!("switched to the admin API") };
            let path = format!(
                "/admin/kv/{}/value?{}",
                ns.plugin(),
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("bucket", ns.bucket())
                    .append_pair("key", key)
                    .append_pair("raw", if raw { "1" } else { "0" })
                    .finish()
            );
            match admin.get(&path).await? {
                (404, _) => None,
                (200, body) if raw => Some(Ok(body.to_vec())),
                (200, body) => {
                    let answer: serde_json::Value = serde_json::from_slice(&body).context("the sidecar's answer")?;
                    Some(Err(serde_json::from_value(answer["value"].clone()).context("the sidecar's answer")?))
                }
                (status, body) => return Err(Admin::refusal(status, &body).into()),
            }
        }
    };
    let Some(value) = value else {
        eprintln!("no key `{}` in bucket `{}` of plugin `{}`", show_key(key), ns.bucket(), ns.plugin());
        return Ok(ExitCode::FAILURE);
    };
    let mut out = std::io::stdout().lock();
    match value {
        Ok(bytes) if raw => out.write_all(&bytes)?,
        Ok(bytes) => print_value(&mut out, &show_value(&bytes))?,
        Err(shown) => print_value(&mut out, &shown)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_value(out: &mut impl Write, value: &ShownValue) -> std::io::Result<()> {
    let cut = if value.truncated { ", cut short (--raw for all of it)" } else { "" };
    let what = if value.encoding == "hex" { "not UTF-8, shown in hex" } else { "UTF-8 text, escaped" };
    eprintln!("{} bytes, {what}{cut}", value.size);
    writeln!(out, "{}", value.shown)
}

async fn list(
    config: &Config,
    source: &mut Source,
    admin: Option<SocketAddr>,
    ns: &Namespace,
    prefix: &str,
    limit: Option<u64>,
) -> Result<ExitCode, Failure> {
    let mut left = limit.unwrap_or(u64::MAX);
    let mut cursor: Option<String> = None;
    let mut out = std::io::stdout().lock();
    while left > 0 {
        let page_size = u32::try_from(left.min(u64::from(MAX_PAGE))).unwrap_or(MAX_PAGE);
        // The file is held for one page, then let go.
        let (keys, next) = match open(config, source, admin).await? {
            Some(reader) => {
                let page = reader.list_keys(ns, prefix, cursor.as_deref(), page_size).await?;
                (page.keys.iter().map(|k| show_key(k)).collect::<Vec<_>>(), page.cursor)
            }
            None => {
                let Source::Admin(admin) = source else { unreachable!("switched to the admin API") };
                let mut query = url::form_urlencoded::Serializer::new(String::new());
                query.append_pair("bucket", ns.bucket()).append_pair("prefix", prefix);
                query.append_pair("limit", &page_size.to_string());
                if let Some(cursor) = &cursor {
                    query.append_pair("cursor", cursor);
                }
                let answer = admin.json(&format!("/admin/kv/{}/keys?{}", ns.plugin(), query.finish())).await?;
                let keys = answer["keys"]
                    .as_array()
                    .map(|keys| keys.iter().filter_map(exact_key).map(|k| show_key(&k)).collect())
                    .unwrap_or_default();
                (keys, answer["cursor"].as_str().map(str::to_string))
            }
        };
        left = left.saturating_sub(keys.len() as u64);
        for key in keys {
            writeln!(out, "{key}")?;
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A key of an admin listing, exactly: `key_hex` when the sidecar gave
/// one (the key needed escaping), else `key`.
fn exact_key(entry: &serde_json::Value) -> Option<String> {
    match entry["key_hex"].as_str() {
        Some(hex) => String::from_utf8(hex::decode(hex).ok()?).ok(),
        None => entry["key"].as_str().map(str::to_string),
    }
}

/// A running sidecar's admin API, with the settings' token.
pub(crate) struct Admin {
    addr: SocketAddr,
    token: Option<String>,
}

impl Admin {
    fn from_settings(config: &Config, addr: Option<SocketAddr>) -> anyhow::Result<Admin> {
        let addr = addr.or(config.server.admin_listen).context(
            "the settings have no admin listener (admin_listen = \"off\"); give the sidecar's with --admin ADDR",
        )?;
        let token = config
            .server
            .cli_token()
            .map(|(name, source)| source.read().map_err(|e| anyhow::anyhow!("admin token `{name}`: cannot read {e}")))
            .transpose()?;
        Ok(Admin { addr, token })
    }

    /// One GET: status and body (at most [`MAX_ANSWER`]).
    async fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let connect = tokio::net::TcpStream::connect(self.addr);
        let stream = tokio::time::timeout(std::time::Duration::from_secs(5), connect)
            .await
            .map_err(|_| anyhow::anyhow!("the sidecar's admin API at {} does not answer", self.addr))?
            .with_context(|| format!("cannot reach the sidecar's admin API at {}", self.addr))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::get(path).header(hyper::header::HOST, self.addr.to_string());
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the sidecar's answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// One GET whose answer must be 200 and JSON.
    async fn json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        match self.get(path).await? {
            (200, body) => serde_json::from_slice(&body).context("the sidecar's answer is not JSON"),
            (status, body) => Err(Admin::refusal(status, &body)),
        }
    }

    /// A refusal, with the message of the JSON error shape (already
    /// escaped by the sidecar; escaped again in case it is not one).
    fn refusal(status: u16, body: &[u8]) -> anyhow::Error {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        anyhow::anyhow!(
            "the sidecar's admin API answered {status}: {}",
            gatehouse::guest_text::escape(&message, gatehouse::guest_text::MESSAGE)
        )
    }
}
