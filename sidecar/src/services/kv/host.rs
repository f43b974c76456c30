//! The `gatehouse:services/kv` door: each call opens the bucket the
//! plugin's `[kv]` grant names, takes a token of its rate, and goes to the
//! one backend. (The `wasi:keyvalue` doors, next, go the same way.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use tokio::sync::OnceCell;
use wasmtime::component::HasData;

use super::backend::{Bucket, KvBackend};
use super::error::KvError;
use super::policy::KvPolicy;
use super::postgres::PostgresBackend;
use super::redb::RedbBackend;
use crate::bindings::gatehouse::services::kv::{Host, KeyPage, UsageReport};
use crate::databases::{DatabaseError, Databases, UrlSource};
use crate::error::{ErrorKind, GuestError};
use crate::services::budget::Budget;

/// The sidecar's store, opened at the first call that needs it, so that a
/// sidecar (or a `policy check`) whose plugins never store anything
/// creates no file and opens no connection. A failed open (a database
/// that does not answer yet) is tried again at the next call.
pub struct KvStore {
    open: Open,
    backend: OnceCell<Arc<dyn KvBackend>>,
}

/// Where the store is, until it is opened.
enum Open {
    Redb(PathBuf),
    Postgres(Box<PgConnectOptions>),
    /// A `[databases.<alias>]`, its URL not read yet.
    Alias(String, UrlSource),
    Opened,
}

impl KvStore {
    /// The redb store in `dir` (created with mode 0700 and checked like
    /// the code cache: a directory others may write is refused).
    pub fn redb(dir: PathBuf) -> KvStore {
        KvStore { open: Open::Redb(dir), backend: OnceCell::new() }
    }

    /// The PostgreSQL store in the database `options` names (its schema
    /// applied when it is opened).
    pub fn postgres(options: PgConnectOptions) -> KvStore {
        KvStore { open: Open::Postgres(Box::new(options)), backend: OnceCell::new() }
    }

    /// The PostgreSQL store in the database of `alias`, whose URL is read
    /// (from its secret) and parsed when the store opens: a URL that
    /// cannot be used makes calls `unavailable`, naming the alias (`gatehouse
    /// run` has already refused to start with one).
    pub fn postgres_alias(alias: &str, url: UrlSource) -> KvStore {
        KvStore { open: Open::Alias(alias.to_string(), url), backend: OnceCell::new() }
    }

    /// A store over an open backend (tests and benchmarks).
    pub fn with_backend(backend: Arc<dyn KvBackend>) -> KvStore {
        KvStore { open: Open::Opened, backend: OnceCell::new_with(Some(backend)) }
    }

    async fn backend(&self) -> Result<&Arc<dyn KvBackend>, KvError> {
        self.backend
            .get_or_try_init(|| async {
                let backend: Arc<dyn KvBackend> = match &self.open {
                    Open::Redb(dir) => {
                        crate::data_dir::secure(dir)
                            .map_err(|e| KvError::Unavailable(format!("key-value store directory: {e}")))?;
                        Arc::new(RedbBackend::open(&dir.join("store.redb"))?)
                    }
                    Open::Postgres(options) => Arc::new(PostgresBackend::open((**options).clone()).await?),
                    Open::Alias(alias, url) => {
                        let unusable = |e: DatabaseError| KvError::Unavailable(e.to_string());
                        let databases =
                            Databases::open(&BTreeMap::from([(alias.clone(), url.clone())])).map_err(unusable)?;
                        let options = databases.options(alias).cloned().ok_or_else(|| {
                            KvError::Internal(format!("[databases.{alias}] was opened without its options"))
                        })?;
                        Arc::new(PostgresBackend::open(options).await?)
                    }
                    Open::Opened => return Err(KvError::Internal("the store was never opened".into())),
                };
                Ok(backend)
            })
            .await
    }
}

/// One plugin's `[kv]` grant, shared by all its invocations: the policy,
/// the store, and the rate budget.
pub struct PluginKv {
    plugin: String,
    policy: KvPolicy,
    store: Arc<KvStore>,
    rate: Budget,
}

impl PluginKv {
    /// `plugin`'s grant on `store`.
    pub fn new(plugin: &str, policy: KvPolicy, store: Arc<KvStore>) -> PluginKv {
        let rate = Budget::for_rate(&policy.rate);
        PluginKv { plugin: plugin.to_string(), policy, store, rate }
    }
}

/// Per-invocation state of the door: the plugin's grant, or `None` when
/// its policy has no `[kv]` (such a plugin is refused at load if it
/// imports the interface, so `None` is a second line of defence).
#[derive(Clone, Default)]
pub struct KvHost {
    plugin: Option<Arc<PluginKv>>,
}

impl KvHost {
    /// The door for a plugin with (or without) a `[kv]` grant.
    pub fn new(plugin: Option<Arc<PluginKv>>) -> KvHost {
        KvHost { plugin }
    }

    /// The plugin's grant, the bucket it names, and the backend, once a
    /// rate token is taken.
    async fn open(&self, bucket: &str) -> Result<(Bucket, &Arc<dyn KvBackend>), GuestError> {
        let Some(plugin) = &self.plugin else {
            return Err(guest(ErrorKind::Denied, "the policy has no [kv] section".into(), None));
        };
        if let Err(wait) = plugin.rate.take() {
            let message = format!("key-value rate of {} exceeded", plugin.policy.rate);
            return Err(guest(ErrorKind::RateLimited, message, Some(wait)));
        }
        let bucket = Bucket::open(&plugin.plugin, &plugin.policy, bucket).map_err(to_guest)?;
        let backend = plugin.store.backend().await.map_err(to_guest)?;
        Ok((bucket, backend))
    }
}

fn guest(kind: ErrorKind, message: String, retry: Option<Duration>) -> GuestError {
    let retry_after_ms = retry.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    GuestError { kind, message, retry_after_ms }
}

fn to_guest(error: KvError) -> GuestError {
    guest(error.kind(), error.to_string(), None)
}

/// Links `gatehouse:services/kv` against [`KvHost`].
pub struct KvService;

impl HasData for KvService {
    type Data<'a> = &'a mut KvHost;
}

type Answer<T> = wasmtime::Result<Result<T, GuestError>>;

impl Host for KvHost {
    async fn get(&mut self, bucket: String, key: String) -> Answer<Option<Vec<u8>>> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            store.get(&bucket, &key).await.map_err(to_guest)
        }
        .await)
    }

    async fn set(&mut self, bucket: String, key: String, value: Vec<u8>) -> Answer<()> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            store.set(&bucket, key, value).await.map_err(to_guest)
        }
        .await)
    }

    async fn delete(&mut self, bucket: String, key: String) -> Answer<bool> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            store.delete(&bucket, key).await.map_err(to_guest)
        }
        .await)
    }

    async fn exists(&mut self, bucket: String, key: String) -> Answer<bool> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            store.exists(&bucket, &key).await.map_err(to_guest)
        }
        .await)
    }

    async fn list_keys(
        &mut self,
        bucket: String,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> Answer<KeyPage> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            let page = store.list_keys(&bucket, &prefix, cursor.as_deref(), limit).await.map_err(to_guest)?;
            Ok(KeyPage { keys: page.keys, cursor: page.cursor })
        }
        .await)
    }

    async fn get_many(&mut self, bucket: String, keys: Vec<String>) -> Answer<Vec<Option<Vec<u8>>>> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            store.get_many(&bucket, &keys).await.map_err(to_guest)
        }
        .await)
    }

    async fn set_many(&mut self, bucket: String, pairs: Vec<(String, Vec<u8>)>) -> Answer<()> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            store.set_many(&bucket, pairs).await.map_err(to_guest)
        }
        .await)
    }

    async fn delete_many(&mut self, bucket: String, keys: Vec<String>) -> Answer<u64> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            store.delete_many(&bucket, keys).await.map_err(to_guest)
        }
        .await)
    }

    async fn increment(&mut self, bucket: String, key: String, delta: i64) -> Answer<i64> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            store.increment(&bucket, key, delta).await.map_err(to_guest)
        }
        .await)
    }

    async fn compare_and_swap(
        &mut self,
        bucket: String,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Answer<bool> {
        Ok(async {
            let (bucket, store) = self.open(&bucket).await?;
            store.compare_and_swap(&bucket, key, expected, new).await.map_err(to_guest)
        }
        .await)
    }

    async fn usage(&mut self) -> Answer<UsageReport> {
        Ok(async {
            let (bucket, store) = self.open("").await?;
            let report = store.usage(&bucket).await.map_err(to_guest)?;
            Ok(UsageReport {
                keys: report.plugin.keys,
                bytes: report.plugin.bytes,
                max_keys: report.quota.max_keys,
                max_bytes: report.quota.max_bytes,
                max_key: report.quota.max_key,
                max_value: report.quota.max_value,
            })
        }
        .await)
    }
}
