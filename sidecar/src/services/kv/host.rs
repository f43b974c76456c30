//! The plugin's side of the key-value service, and its custom door.
//!
//! [`KvHost`] is the one enforcement path every door takes: a call of
//! `gatehouse:services/kv` or of either `wasi:keyvalue` draft first goes
//! through [`KvHost::admit`] (the `[kv]` grant, a token of its rate, the
//! store), and names its bucket through [`KvHost::bucket`] (granted in the
//! policy, or `denied`); the backend then enforces keys, sizes and quotas.
//! The doors only translate arguments and errors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;
use wasmtime::component::HasData;

use super::backend::{Bucket, KvBackend};
use super::error::KvError;
use super::policy::KvPolicy;
use super::redb::RedbBackend;
use crate::bindings::gatehouse::services::kv::{Host, KeyPage, UsageReport};
use crate::error::{ErrorKind, GuestError};
use crate::services::budget::Budget;

/// The sidecar's store, opened at the first call that needs it, so that a
/// sidecar (or a `policy check`) whose plugins never store anything
/// creates no file. A failed open is tried again at the next call.
pub struct KvStore {
    dir: PathBuf,
    backend: OnceCell<Arc<dyn KvBackend>>,
}

impl KvStore {
    /// The redb store in `dir` (created with mode 0700 and checked like
    /// the code cache: a directory others may write is refused).
    pub fn redb(dir: PathBuf) -> KvStore {
        KvStore { dir, backend: OnceCell::new() }
    }

    /// A store over an open backend (tests, and a PostgreSQL backend).
    pub fn with_backend(backend: Arc<dyn KvBackend>) -> KvStore {
        KvStore { dir: PathBuf::new(), backend: OnceCell::new_with(Some(backend)) }
    }

    async fn backend(&self) -> Result<&Arc<dyn KvBackend>, KvError> {
        self.backend
            .get_or_try_init(|| async {
                crate::data_dir::secure(&self.dir)
                    .map_err(|e| KvError::Unavailable(format!("key-value store directory: {e}")))?;
                let backend = RedbBackend::open(&self.dir.join("store.redb"))?;
                Ok(Arc::new(backend) as Arc<dyn KvBackend>)
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

    /// What every call of every door does first: checks that the policy
    /// has `[kv]`, takes a token of its rate (`rate-limited` with the wait
    /// past it) and returns the store, opened if this is its first call.
    pub(super) async fn admit(&self) -> Result<&Arc<dyn KvBackend>, GuestError> {
        let plugin = self.grant()?;
        if let Err(wait) = plugin.rate.take() {
            let message = format!("key-value rate of {} exceeded", plugin.policy.rate);
            return Err(guest(ErrorKind::RateLimited, message, Some(wait)));
        }
        plugin.store.backend().await.map_err(to_guest)
    }

    /// The bucket `name` (`""` and `"default"`: the default one) if the
    /// policy grants it, `denied` otherwise. Spends no token: the call
    /// that names it has been admitted.
    pub(super) fn bucket(&self, name: &str) -> Result<Bucket, GuestError> {
        let plugin = self.grant()?;
        Bucket::open(&plugin.plugin, &plugin.policy, name).map_err(to_guest)
    }

    fn grant(&self) -> Result<&PluginKv, GuestError> {
        self.plugin.as_deref().ok_or_else(|| guest(ErrorKind::Denied, "the policy has no [kv] section".into(), None))
    }

    /// The custom door's calls: admitted, then the bucket they name.
    async fn open(&self, bucket: &str) -> Result<(Bucket, &Arc<dyn KvBackend>), GuestError> {
        let backend = self.admit().await?;
        Ok((self.bucket(bucket)?, backend))
    }
}

fn guest(kind: ErrorKind, message: String, retry: Option<Duration>) -> GuestError {
    let retry_after_ms = retry.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    GuestError { kind, message, retry_after_ms }
}

/// A backend error as every door first sees it: the typed record of the
/// custom door (the `wasi:keyvalue` doors translate it further).
pub(super) fn to_guest(error: KvError) -> GuestError {
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
