//! The plugin's side of the key-value service, and its custom door.
//!
//! [`KvHost`] is the one enforcement path every door takes: a call of
//! `gatehouse:services/kv` or of either `wasi:keyvalue` draft first goes
//! through [`KvHost::admit`] (the `[kv]` grant, a token of its rate, the
//! store), and names its bucket through [`KvHost::bucket`] (granted in the
//! policy, or `denied`); the backend then enforces keys, sizes and quotas.
//! The doors only translate arguments and errors.
//!
//! Every backend call goes through [`Counted`], which counts it by
//! operation and outcome for `/metrics`; refusals before the backend (no
//! grant, rate, a bucket not granted) are counted by the call that met
//! them. [`KvStore`] is also the operator's way in: which plugins are
//! loaded with a grant, their counters, and a read-only view of the data.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use tokio::sync::OnceCell;
use wasmtime::component::HasData;

use super::backend::{Bucket, KvBackend, Page, UsageReport, not_granted};
use super::error::KvError;
use super::metrics::{KvMetrics, KvOp};
use super::operator::KvReader;
use super::policy::{DEFAULT_BUCKET, KvPolicy};
use super::postgres::PostgresBackend;
use super::redb::{OpenError, RedbBackend};
use crate::bindings::gatehouse::services::kv::{Host, KeyPage, UsageReport as Report};
use crate::databases::{DatabaseError, DatabaseSettings, Databases, UrlSource};
use crate::error::{ErrorKind, GuestError};
use crate::services::budget::Budget;
use crate::services::http::policy::Rate;

/// How long the sidecar's first open of the store waits while another
/// process has the file open (`gatehouse kv …` reading it holds a shared
/// lock for one page at a time).
pub const OPEN_WAIT: Duration = Duration::from_secs(2);

/// The sidecar's store, opened at the first call that needs it, so that a
/// sidecar (or a `policy check`) whose plugins never store anything
/// creates no file and opens no connection. A failed open (a database
/// that does not answer yet) is tried again at the next call.
pub struct KvStore {
    open: Open,
    backend: OnceCell<Arc<dyn KvBackend>>,
    /// The grants of loaded plugins, by name: each entry lives as long as
    /// a loaded version of the plugin (a weak reference to its
    /// [`PluginKv`]), newest last.
    grants: Mutex<BTreeMap<String, Vec<Weak<Grant>>>>,
    /// Each plugin's counters, by name: kept across reloads, so the
    /// exported counters only grow. Plugin names come from policy files.
    metrics: Mutex<HashMap<String, Arc<KvMetrics>>>,
    /// Each plugin's rate budget, by name, with the rate it was made for:
    /// a reload that keeps the rate keeps the budget (a reload must not
    /// hand out a fresh allowance); a changed rate starts a new one.
    rates: Mutex<HashMap<String, (Rate, Arc<Budget>)>>,
    /// The last failed open, and when a failure was last logged.
    open_failure: Mutex<OpenFailure>,
}

/// How often a store that cannot be opened is logged again.
const OPEN_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How long a failed open is answered from memory before the store is
/// tried again: every call (and `/readyz`) would otherwise open, and
/// perhaps repair, a damaged file again.
pub const OPEN_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// Why the store could not be opened last, so that calls in the next
/// [`OPEN_RETRY_INTERVAL`] answer without trying again, and the log says
/// it once a minute, not once a call.
#[derive(Default)]
struct OpenFailure {
    last: Option<(Instant, KvError)>,
    logged: Option<Instant>,
}

/// A loaded plugin's grant, as the operator view sees it.
struct Grant {
    policy: KvPolicy,
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
    fn opening(open: Open) -> KvStore {
        KvStore {
            open,
            backend: OnceCell::new(),
            grants: Default::default(),
            metrics: Default::default(),
            rates: Default::default(),
            open_failure: Default::default(),
        }
    }

    /// The redb store in `dir` (created with mode 0700 and checked like
    /// the code cache: a directory others may write is refused).
    pub fn redb(dir: PathBuf) -> KvStore {
        KvStore::opening(Open::Redb(dir))
    }

    /// The PostgreSQL store in the database `options` names (its schema
    /// applied when it is opened).
    pub fn postgres(options: PgConnectOptions) -> KvStore {
        KvStore::opening(Open::Postgres(Box::new(options)))
    }

    /// The PostgreSQL store in the database of `alias`, whose URL is read
    /// (from its secret) and parsed when the store opens: a URL that
    /// cannot be used makes calls `unavailable`, naming the alias (`gatehouse
    /// run` has already refused to start with one).
    pub fn postgres_alias(alias: &str, url: UrlSource) -> KvStore {
        KvStore::opening(Open::Alias(alias.to_string(), url))
    }

    /// A store over an open backend (tests and benchmarks).
    pub fn with_backend(backend: Arc<dyn KvBackend>) -> KvStore {
        KvStore { backend: OnceCell::new_with(Some(backend)), ..KvStore::opening(Open::Opened) }
    }

    /// The open backend, opened at the first call. Every call awaits this,
    /// so the opening is boxed: inline, its future (a PostgreSQL connect
    /// among them) would make every call's future larger and every call
    /// copy it around.
    async fn backend(&self) -> Result<&Arc<dyn KvBackend>, KvError> {
        match self.backend.get() {
            Some(backend) => Ok(backend),
            None => Box::pin(self.open_backend()).await,
        }
    }

    async fn open_backend(&self) -> Result<&Arc<dyn KvBackend>, KvError> {
        {
            // Let go of before the open's awaits.
            let failure = self.open_failure.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, error)) = &failure.last
                && at.elapsed() < OPEN_RETRY_INTERVAL
            {
                return Err(error.clone());
            }
        }
        self.backend
            .get_or_try_init(|| async {
                let backend: Arc<dyn KvBackend> = match &self.open {
                    Open::Redb(dir) => {
                        crate::data_dir::secure(dir)
                            .map_err(|e| KvError::Unavailable(format!("key-value store directory: {e}")))?;
                        open_redb(&dir.join("store.redb")).await?
                    }
                    Open::Postgres(options) => Arc::new(PostgresBackend::open((**options).clone()).await?),
                    Open::Alias(alias, url) => {
                        let unusable = |e: DatabaseError| KvError::Unavailable(e.to_string());
                        let databases = Databases::open(&BTreeMap::from([(
                            alias.clone(),
                            DatabaseSettings::postgres(url.clone()),
                        )]))
                        .map_err(unusable)?;
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
            .inspect_err(|e| self.log_open_failure(e))
    }

    /// Says why the store cannot be opened, at most once a minute: every
    /// call meanwhile answers `unavailable` with the same reason.
    fn log_open_failure(&self, error: &KvError) {
        let mut failure = self.open_failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.last = Some((Instant::now(), error.clone()));
        if failure.logged.is_none_or(|at| at.elapsed() >= OPEN_FAILURE_LOG_INTERVAL) {
            failure.logged = Some(Instant::now());
            tracing::error!(error = %error, "the key-value store cannot be opened; its calls answer unavailable");
        }
    }

    /// What keeps the store from serving the plugins granted `[kv]`, for
    /// `/readyz`: `None` when no loaded plugin has a grant, or the store is
    /// open (opening it if it was not; a failure is remembered for
    /// [`OPEN_RETRY_INTERVAL`], so probes cannot make it reopen faster).
    pub async fn readiness_problem(&self) -> Option<KvError> {
        if self.granted().is_empty() {
            return None;
        }
        self.backend().await.err()
    }

    /// The operator's read-only view of the open store (opening it if no
    /// call has yet).
    pub async fn reader(&self) -> Result<KvReader, KvError> {
        Ok(KvReader::Live(Arc::clone(self.backend().await?)))
    }

    /// The plugins loaded now with a `[kv]` grant, by name, with the grant
    /// of the newest loaded version.
    pub fn granted(&self) -> Vec<(String, KvPolicy)> {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        grants.retain(|_, versions| {
            versions.retain(|v| v.strong_count() > 0);
            !versions.is_empty()
        });
        grants
            .iter()
            .filter_map(|(name, versions)| {
                versions.iter().rev().find_map(Weak::upgrade).map(|g| (name.clone(), g.policy.clone()))
            })
            .collect()
    }

    /// The operation counters of `plugin`, if it was ever loaded with a
    /// `[kv]` grant.
    pub fn metrics(&self, plugin: &str) -> Option<Vec<(&'static str, &'static str, u64)>> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner()).get(plugin).map(|m| m.snapshot())
    }

    fn register(&self, plugin: &str, policy: &KvPolicy) -> (Arc<Grant>, Arc<KvMetrics>, Arc<Budget>) {
        let grant = Arc::new(Grant { policy: policy.clone() });
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let versions = grants.entry(plugin.to_string()).or_default();
        versions.retain(|v| v.strong_count() > 0);
        versions.push(Arc::downgrade(&grant));
        drop(grants);
        let metrics =
            self.metrics.lock().unwrap_or_else(|p| p.into_inner()).entry(plugin.to_string()).or_default().clone();
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let rate = match rates.get(plugin) {
            Some((rate, budget)) if *rate == policy.rate => Arc::clone(budget),
            _ => {
                let budget = Arc::new(Budget::for_rate(&policy.rate));
                rates.insert(plugin.to_string(), (policy.rate, Arc::clone(&budget)));
                budget
            }
        };
        (grant, metrics, rate)
    }
}

/// Opens the redb file, waiting up to [`OPEN_WAIT`] while `gatehouse kv …`
/// reads it (the CLI lets go after one page).
async fn open_redb(path: &std::path::Path) -> Result<Arc<dyn KvBackend>, KvError> {
    let started = Instant::now();
    loop {
        match RedbBackend::try_open(path) {
            Ok(backend) => return Ok(Arc::new(backend)),
            Err(OpenError::Locked(_)) if started.elapsed() < OPEN_WAIT => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(OpenError::Other(e)) => return Err(e),
            Err(e) => return Err(KvError::Unavailable(e.to_string())),
        }
    }
}

/// One plugin's `[kv]` grant, shared by all its invocations: the policy,
/// the store, the rate budget and the counters.
pub struct PluginKv {
    policy: KvPolicy,
    /// Each granted bucket, opened once for the grant's life rather than
    /// at each call (or why it cannot be: a plugin name the store refuses).
    buckets: BTreeMap<String, Result<Bucket, KvError>>,
    store: Arc<KvStore>,
    rate: Arc<Budget>,
    metrics: Arc<KvMetrics>,
    /// Keeps this version listed in [`KvStore::granted`] while it lives.
    _grant: Arc<Grant>,
}

impl PluginKv {
    /// `plugin`'s grant on `store`.
    pub fn new(plugin: &str, policy: KvPolicy, store: Arc<KvStore>) -> PluginKv {
        let (grant, metrics, rate) = store.register(plugin, &policy);
        let buckets = policy.buckets.keys().map(|name| (name.clone(), Bucket::open(plugin, &policy, name))).collect();
        PluginKv { policy, buckets, store, rate, metrics, _grant: grant }
    }

    /// The granted bucket a guest names (`""`: the default one).
    fn bucket(&self, name: &str) -> Result<&Bucket, KvError> {
        let granted = self.buckets.get(if name.is_empty() { DEFAULT_BUCKET } else { name });
        granted.ok_or_else(|| not_granted(name))?.as_ref().map_err(KvError::clone)
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
    /// past it) and returns the store, opened if this is its first call,
    /// counting the call under `op`. A refusal here is counted under `op`.
    pub(super) async fn admit(&self, op: KvOp) -> Result<Counted, GuestError> {
        let admitted = async {
            let plugin = self.grant()?;
            if let Err(wait) = plugin.rate.take() {
                let message = format!("key-value rate of {} exceeded", plugin.policy.rate);
                return Err(guest(ErrorKind::RateLimited, message, Some(wait)));
            }
            let backend = plugin.store.backend().await.map_err(to_guest)?;
            Ok(Counted { backend: Arc::clone(backend), metrics: Arc::clone(&plugin.metrics) })
        }
        .await;
        if let Err(refused) = &admitted {
            self.count(op, refused);
        }
        admitted
    }

    /// The bucket `name` (`""` and `"default"`: the default one) if the
    /// policy grants it, `denied` (counted under `op`) otherwise. Spends no
    /// token: the call that names it has been admitted.
    pub(super) fn bucket(&self, op: KvOp, name: &str) -> Result<&Bucket, GuestError> {
        let bucket = self.grant().and_then(|plugin| plugin.bucket(name).map_err(to_guest));
        if let Err(refused) = &bucket {
            self.count(op, refused);
        }
        bucket
    }

    fn grant(&self) -> Result<&PluginKv, GuestError> {
        self.plugin.as_deref().ok_or_else(|| guest(ErrorKind::Denied, "the policy has no [kv] section".into(), None))
    }

    fn count(&self, op: KvOp, refused: &GuestError) {
        if let Some(plugin) = &self.plugin {
            plugin.metrics.record(op, Some(refused.kind));
        }
    }

    /// One call of the custom door: admitted, the bucket it names, then
    /// `call` on the (counting) backend.
    async fn run<T>(
        &self,
        op: KvOp,
        bucket: &str,
        call: impl AsyncFnOnce(&Bucket, Counted) -> Result<T, KvError>,
    ) -> Result<T, GuestError> {
        let backend = self.admit(op).await?;
        let bucket = self.bucket(op, bucket)?;
        call(bucket, backend).await.map_err(to_guest)
    }
}

/// The store as one admitted call sees it: each operation is counted by
/// its kind and outcome in the plugin's metrics.
pub(super) struct Counted {
    backend: Arc<dyn KvBackend>,
    metrics: Arc<KvMetrics>,
}

impl Counted {
    async fn counted<T>(&self, op: KvOp, call: impl Future<Output = Result<T, KvError>>) -> Result<T, KvError> {
        let result = call.await;
        self.metrics.record(op, result.as_ref().err().map(KvError::kind));
        result
    }

    pub(super) async fn get(&self, bucket: &Bucket, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let value = self.counted(KvOp::Get, self.backend.get(bucket, key)).await;
        freeing(value.iter().flatten().map(Vec::len));
        value
    }

    pub(super) async fn exists(&self, bucket: &Bucket, key: &str) -> Result<bool, KvError> {
        self.counted(KvOp::Exists, self.backend.exists(bucket, key)).await
    }

    pub(super) async fn set(&self, bucket: &Bucket, key: String, value: Vec<u8>) -> Result<(), KvError> {
        freeing(std::iter::once(value.len()));
        self.counted(KvOp::Set, self.backend.set(bucket, key, value)).await
    }

    pub(super) async fn delete(&self, bucket: &Bucket, key: String) -> Result<bool, KvError> {
        self.counted(KvOp::Delete, self.backend.delete(bucket, key)).await
    }

    pub(super) async fn list_keys(
        &self,
        bucket: &Bucket,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, KvError> {
        self.counted(KvOp::ListKeys, self.backend.list_keys(bucket, prefix, cursor, limit)).await
    }

    pub(super) async fn get_many(&self, bucket: &Bucket, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let values = self.counted(KvOp::GetMany, self.backend.get_many(bucket, keys)).await;
        freeing(values.iter().flatten().flatten().map(Vec::len));
        values
    }

    pub(super) async fn set_many(&self, bucket: &Bucket, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        freeing(pairs.iter().map(|(_, value)| value.len()));
        self.counted(KvOp::SetMany, self.backend.set_many(bucket, pairs)).await
    }

    pub(super) async fn delete_many(&self, bucket: &Bucket, keys: Vec<String>) -> Result<u64, KvError> {
        self.counted(KvOp::DeleteMany, self.backend.delete_many(bucket, keys)).await
    }

    pub(super) async fn increment(&self, bucket: &Bucket, key: String, delta: i64) -> Result<i64, KvError> {
        self.counted(KvOp::Increment, self.backend.increment(bucket, key, delta)).await
    }

    pub(super) async fn compare_and_swap(
        &self,
        bucket: &Bucket,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        freeing(expected.iter().chain([&new]).map(Vec::len));
        self.counted(KvOp::CompareAndSwap, self.backend.compare_and_swap(bucket, key, expected, new)).await
    }

    pub(super) async fn usage(&self, bucket: &Bucket) -> Result<UsageReport, KvError> {
        self.counted(KvOp::Usage, self.backend.usage(bucket)).await
    }
}

/// Counts values a call hands over or gets, freed once it is over, so that
/// the C allocator gives them back after floods of large ones (see
/// [`crate::give_back`]).
fn freeing(values: impl Iterator<Item = usize>) {
    crate::give_back::freeing(values.map(|len| len as u64).sum());
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
        Ok(self.run(KvOp::Get, &bucket, async move |b, store| store.get(b, &key).await).await)
    }

    async fn set(&mut self, bucket: String, key: String, value: Vec<u8>) -> Answer<()> {
        Ok(self.run(KvOp::Set, &bucket, async move |b, store| store.set(b, key, value).await).await)
    }

    async fn delete(&mut self, bucket: String, key: String) -> Answer<bool> {
        Ok(self.run(KvOp::Delete, &bucket, async move |b, store| store.delete(b, key).await).await)
    }

    async fn exists(&mut self, bucket: String, key: String) -> Answer<bool> {
        Ok(self.run(KvOp::Exists, &bucket, async move |b, store| store.exists(b, &key).await).await)
    }

    async fn list_keys(
        &mut self,
        bucket: String,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> Answer<KeyPage> {
        Ok(self
            .run(KvOp::ListKeys, &bucket, async move |b, store| {
                let page = store.list_keys(b, &prefix, cursor.as_deref(), limit).await?;
                Ok(KeyPage { keys: page.keys, cursor: page.cursor })
            })
            .await)
    }

    async fn get_many(&mut self, bucket: String, keys: Vec<String>) -> Answer<Vec<Option<Vec<u8>>>> {
        Ok(self.run(KvOp::GetMany, &bucket, async move |b, store| store.get_many(b, &keys).await).await)
    }

    async fn set_many(&mut self, bucket: String, pairs: Vec<(String, Vec<u8>)>) -> Answer<()> {
        Ok(self.run(KvOp::SetMany, &bucket, async move |b, store| store.set_many(b, pairs).await).await)
    }

    async fn delete_many(&mut self, bucket: String, keys: Vec<String>) -> Answer<u64> {
        Ok(self.run(KvOp::DeleteMany, &bucket, async move |b, store| store.delete_many(b, keys).await).await)
    }

    async fn increment(&mut self, bucket: String, key: String, delta: i64) -> Answer<i64> {
        Ok(self.run(KvOp::Increment, &bucket, async move |b, store| store.increment(b, key, delta).await).await)
    }

    async fn compare_and_swap(
        &mut self,
        bucket: String,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Answer<bool> {
        Ok(self
            .run(KvOp::CompareAndSwap, &bucket, async move |b, store| {
                store.compare_and_swap(b, key, expected, new).await
            })
            .await)
    }

    async fn usage(&mut self) -> Answer<Report> {
        Ok(self
            .run(KvOp::Usage, "", async move |b, store| {
                let report = store.usage(b).await?;
                Ok(Report {
                    keys: report.plugin.keys,
                    bytes: report.plugin.bytes,
                    max_keys: report.quota.max_keys,
                    max_bytes: report.quota.max_bytes,
                    max_key: report.quota.max_key,
                    max_value: report.quota.max_value,
                })
            })
            .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::kv::policy::Durability;

    fn with_rate(rate: &str) -> KvPolicy {
        KvPolicy { rate: Rate::parse(rate).unwrap(), ..KvPolicy::default() }
    }

    /// Buckets are opened once per grant: a guest's name finds the granted
    /// bucket with its own durability, `""` the default one, and anything
    /// else (another case, a name with a control character, a plugin name
    /// the store refuses) is refused as before, the guest's name escaped.
    #[test]
    fn a_guest_names_only_granted_buckets() {
        let store = Arc::new(KvStore::with_backend(Arc::new(
            RedbBackend::open(&tempfile::tempdir().unwrap().path().join("kv.redb")).unwrap(),
        )));
        let mut policy = KvPolicy::default();
        policy.buckets.insert("logs".into(), Durability::Relaxed);
        let host = KvHost::new(Some(Arc::new(PluginKv::new("p", policy.clone(), Arc::clone(&store)))));
        for (name, bucket, durability) in [
            ("", "default", Durability::Immediate),
            ("default", "default", Durability::Immediate),
            ("logs", "logs", Durability::Relaxed),
        ] {
            let opened = host.bucket(KvOp::Get, name).unwrap();
            assert_eq!((opened.namespace.plugin(), opened.namespace.bucket()), ("p", bucket));
            assert_eq!(opened.durability, durability, "{name}");
        }
        for name in ["Logs", "other", "logs\n"] {
            let refused = host.bucket(KvOp::Get, name).unwrap_err();
            assert_eq!(refused.kind, ErrorKind::Denied, "{name:?}");
            assert!(!refused.message.contains('\n'), "{:?}", refused.message);
            assert!(refused.message.contains(&crate::guest_text::escaped(name, crate::guest_text::SHORT).to_string()));
        }
        let misnamed = KvHost::new(Some(Arc::new(PluginKv::new("Bad Name", policy, store))));
        let refused = misnamed.bucket(KvOp::Get, "").unwrap_err();
        assert_eq!(refused.kind, ErrorKind::InvalidInput);
        assert!(refused.message.contains("invalid plugin name"), "{}", refused.message);
    }

    /// A store that cannot be opened is not opened again for every call:
    /// within [`OPEN_RETRY_INTERVAL`] of a failure the failure is the
    /// answer (even once the cause is gone), after it the store opens.
    #[tokio::test]
    async fn a_failed_open_is_retried_only_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let kv = dir.path().join("kv");
        std::fs::create_dir_all(&kv).unwrap();
        std::fs::set_permissions(&kv, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::write(kv.join("store.redb"), vec![0x5a; 64 << 10]).unwrap();
        let store = KvStore::redb(kv.clone());
        assert!(store.reader().await.is_err(), "a damaged file was opened");
        let failed = Instant::now();
        std::fs::remove_file(kv.join("store.redb")).unwrap();
        let again = store.reader().await;
        // Only meaningful when this machine did not stall past the interval.
        if failed.elapsed() < OPEN_RETRY_INTERVAL {
            assert!(again.is_err(), "the store was opened again within the retry interval");
        }
        tokio::time::sleep(OPEN_RETRY_INTERVAL).await;
        assert!(store.reader().await.is_ok(), "the store did not open once the cause was gone");
    }

    /// `gatehouse kv …` holds the store's file for a page at a time: a
    /// sidecar opening it meanwhile waits (up to [`OPEN_WAIT`]) instead of
    /// failing its plugins' first calls.
    #[tokio::test]
    async fn an_open_waits_while_a_cli_reader_holds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let kv = dir.path().join("kv");
        std::fs::create_dir_all(&kv).unwrap();
        std::fs::set_permissions(&kv, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let held = redb::Database::create(kv.join("store.redb")).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let store = KvStore::redb(kv);
        assert!(store.reader().await.is_ok(), "the open did not wait for the reader");
        release.join().unwrap();
    }

    /// An outside review reloaded the policies (no change) and got a fresh
    /// allowance each time: the budget is the plugin's, kept by name while
    /// its rate stays the same.
    #[tokio::test]
    async fn a_reload_keeps_the_rate_budget_and_a_new_rate_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn KvBackend> = Arc::new(RedbBackend::open(&dir.path().join("kv.redb")).unwrap());
        let store = Arc::new(KvStore::with_backend(backend));
        let door = |rate: &str| KvHost::new(Some(Arc::new(PluginKv::new("p", with_rate(rate), Arc::clone(&store)))));
        let spend = |host: KvHost| async move {
            let mut granted = 0;
            while host.admit(KvOp::Get).await.is_ok() {
                granted += 1;
                assert!(granted <= 3, "the rate is not enforced");
            }
            granted
        };
        assert_eq!(spend(door("3/m")).await, 3);
        assert_eq!(spend(door("3/m")).await, 0, "a reload with the same rate refilled the budget");
        assert_eq!(spend(door("2/m")).await, 2, "a new rate gets its own budget");
        let other = KvHost::new(Some(Arc::new(PluginKv::new("q", with_rate("3/m"), Arc::clone(&store)))));
        assert_eq!(spend(other).await, 3, "plugins do not share a budget");
    }

    /// Waits up to 10 s for a trim after `before` trims.
    async fn trimmed_after(before: u64, what: &str) {
        let asked = Instant::now();
        while crate::give_back::trims() == before {
            assert!(asked.elapsed() < Duration::from_secs(10), "{what} asked for no trim");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Review 28: an idle sidecar kept 382 MB (170 MB before) after floods
    /// of large `get_many` answers. Each call that hands over or gets
    /// values counts them, and every `TRIM_AFTER_BYTES` (64 MiB) asks for
    /// the C allocator's free memory to be given back; each kind of call
    /// here moves exactly 64 MiB.
    #[tokio::test]
    async fn large_values_in_and_out_ask_for_freed_memory_to_be_given_back() {
        const MIB: usize = 1 << 20;
        assert_eq!(crate::give_back::TRIM_AFTER_BYTES, 64 << 20);
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn KvBackend> = Arc::new(RedbBackend::open(&dir.path().join("kv.redb")).unwrap());
        let store = Arc::new(KvStore::with_backend(backend));
        let mut policy = with_rate("1000/s");
        policy.quota.max_value = 16 * MIB as u64;
        policy.quota.max_bytes = 65 * MIB as u64;
        let host = KvHost::new(Some(Arc::new(PluginKv::new("p", policy, store))));
        let kv = host.admit(KvOp::Get).await.unwrap();
        let bucket = host.bucket(KvOp::Get, "").unwrap();
        let keys: Vec<String> = (0..4).map(|n| format!("k{n}")).collect();
        let value = vec![7u8; 16 * MIB];

        let before = crate::give_back::trims();
        for key in &keys {
            kv.set(bucket, key.clone(), value.clone()).await.unwrap();
        }
        trimmed_after(before, "set").await;
        let before = crate::give_back::trims();
        for key in &keys {
            assert_eq!(kv.get(bucket, key).await.unwrap().map(|v| v.len()), Some(16 * MIB));
        }
        trimmed_after(before, "get").await;
        let before = crate::give_back::trims();
        for key in keys.chunks(1) {
            assert_eq!(kv.get_many(bucket, key).await.unwrap().len(), 1);
        }
        trimmed_after(before, "get_many").await;
        let before = crate::give_back::trims();
        for key in &keys {
            kv.set_many(bucket, vec![(key.clone(), value.clone())]).await.unwrap();
        }
        trimmed_after(before, "set_many").await;
        let before = crate::give_back::trims();
        for key in &keys[..2] {
            assert!(kv.compare_and_swap(bucket, key.clone(), Some(value.clone()), value.clone()).await.unwrap());
        }
        trimmed_after(before, "compare_and_swap").await;
    }
}
