//! Runs plugins: one engine per process, one `InstancePre` per plugin, a
//! fresh `Store` per invocation.
//!
//! Isolation is per invocation: every call gets a new instance whose memory
//! comes from the pooling allocator's copy-on-write image, so nothing a call
//! does survives it and one call's crash cannot touch another. Each call is
//! bounded: the policy's memory limit across every memory of the instance
//! (`limits`), the data one host call may pass in (hostcall fuel), the
//! output size, its log volume (`services::log`), an epoch deadline (stops
//! a guest spinning in wasm) and a tokio timeout around the whole call
//! (stops a guest parked in a host call, which epochs cannot interrupt).
//!
//! Fairness: a spinning guest yields to the executor on every epoch tick
//! through `tokio::task::yield_now`, which lets the worker poll its timers
//! and sockets before running the guest again, so other plugins' timers,
//! I/O and deadlines keep working under hostile load. No plugin can empty
//! the shared instance pool: each invocation is one instance of capped
//! shape, and the concurrency of all loaded plugins together must fit in
//! the pool (see [`Runtime::load`]).

mod cache;
mod cancel;
pub mod compile_worker;
mod engine;
mod error;
pub mod host_budget;
mod imports;
mod limits;
mod linker;
mod plugin_info;
mod slots;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

pub use cache::CacheOutcome;
pub use error::{InvokeError, LoadError, RuntimeError};
pub use limits::{
    MAX_CORE_INSTANCES_PER_COMPONENT, MAX_MEMORIES_PER_COMPONENT, MAX_TABLE_ELEMENTS, MAX_TABLES_PER_COMPONENT,
};
pub use slots::{QUEUE_PER_SLOT, SlotHold};
pub use state::MAX_RANDOM_BYTES;

use crate::bindings::{Plugin as PluginBindings, PluginPre};
use crate::policy::{PluginPolicy, PolicyError, PolicySet};
use crate::secrets::SecretSource;
use crate::services::Services;
use crate::services::http::PluginHttp;
use crate::services::kv::PluginKv;
use crate::services::log::PluginTag;
use crate::services::sql::PluginSql;
use crate::stop::Stop;
use crate::{Document, PluginInfo};
use slots::{Admission, Admitted, Pool, Queued, SlotTable, Slots};
use state::{Granted, PluginState};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode as HttpErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::{HyperIncomingBody, HyperOutgoingBody};

/// Extra time the tokio timeout allows beyond a plugin's deadline, so that
/// the epoch deadline (which reports a clean trap) normally fires first.
/// A guest parked in a host call is stopped at deadline + grace.
pub const TIMEOUT_GRACE: Duration = Duration::from_millis(50);
/// Deadline of the `info()` call made once at load time (or the policy's
/// timeout, if shorter): a plugin whose `info()` spins must not hold up
/// loading.
pub const INFO_DEADLINE: Duration = Duration::from_secs(1);
/// Instances kept in the pool beyond `max_instances` for the `info()`
/// calls of plugins being loaded, so a reload under full load never fails
/// for want of an instance; also the number of plugins loaded at once.
const LOAD_INSTANCES: u32 = 4;
/// The shortest epoch tick: the ticker thread wakes once per tick whether
/// or not a guest runs, so a tick of zero would burn a core while idle.
pub const MIN_EPOCH_TICK: Duration = Duration::from_millis(1);
/// Data one host call may pass to the host beyond what the policy's
/// grants need (log messages, headers, small records).
pub const HOSTCALL_BASE: u64 = 1 << 20;

/// Engine sizing. Defaults suit a sidecar next to one application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Largest memory any one instance may have; no policy may ask for more.
    pub max_memory: u64,
    /// Instances alive at once across all plugins (the pool size).
    pub max_instances: u32,
    /// Epoch tick: deadlines are checked at this granularity, and a guest
    /// running in wasm yields to the executor this often.
    pub epoch_tick: Duration,
    /// Longest time compiling one component may take at load (cache
    /// misses only; `gatehouse compile` has no budget).
    pub compile_timeout: Duration,
    /// Memory the compiler may use for one component, when it runs in a
    /// worker process (`compile_worker`).
    pub compile_memory: u64,
    /// The `gatehouse` binary, to compile in a child process capped at
    /// `compile_memory`; `None` compiles in this process (no memory cap).
    pub compile_worker: Option<PathBuf>,
    /// Bytes of each reused memory slot reset with memset instead of
    /// being returned to the kernel.
    pub keep_resident: u64,
    /// Use the pooling allocator (turn off only to measure it).
    pub pooling: bool,
    /// Directory of the compiled-code cache; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Secrets policies may inject into requests, by name.
    pub secrets: BTreeMap<String, SecretSource>,
}

impl RuntimeSettings {
    /// Component instances in the pool: invocations, plus the load reserve.
    pub(crate) fn pool_instances(&self) -> u32 {
        self.max_instances.saturating_add(LOAD_INSTANCES)
    }
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            max_memory: 4 << 30,
            max_instances: 1000,
            epoch_tick: Duration::from_millis(1),
            compile_timeout: Duration::from_secs(10),
            compile_memory: 1 << 30,
            compile_worker: None,
            keep_resident: 2 << 20,
            pooling: true,
            cache_dir: None,
            secrets: BTreeMap::new(),
        }
    }
}

/// A loaded, invocable plugin.
struct LoadedPlugin {
    policy: PluginPolicy,
    tag: Arc<PluginTag>,
    info: PluginInfo,
    entry: Entry,
    /// Shared by every loaded version of the plugin (see [`Slots`]).
    slots: Arc<Slots>,
    /// The services its policy grants, shared by its invocations.
    granted: Granted,
    /// Bytes one host call (or the output) may lift from guest memory.
    hostcall_fuel: usize,
}

/// One set of loaded plugins and the refusals that came with it.
#[derive(Default)]
struct Generation {
    plugins: HashMap<String, Arc<LoadedPlugin>>,
    /// Plugins refused with no version to serve.
    refused: HashMap<String, LoadError>,
    /// Plugins whose new version was refused, serving the one they had.
    kept: HashMap<String, LoadError>,
}

/// A plugin the last (re)load refused, as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    /// Plugin name from its policy.
    pub plugin: String,
    /// The policy file.
    pub policy_file: String,
    /// Why (escaped: it may quote names from the component).
    pub reason: String,
    /// The version still served, when the plugin had one before.
    pub serving: Option<String>,
}

/// One loaded plugin, as the API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginSummary {
    /// Plugin name from its policy.
    pub name: String,
    /// Version it reports.
    pub version: String,
    /// What it says it does.
    pub description: String,
    /// SHA-256 of its component, hex.
    pub sha256: String,
    /// The policy file it was loaded from.
    pub policy_file: String,
    /// The policy's concurrency.
    pub concurrency: u32,
    /// The `[http]` allowlist, if granted.
    pub http: Option<Vec<String>>,
    /// `plugin` (the gatehouse plugin world, called through invoke) or
    /// `wasi-http` (a `wasi:http/proxy` component, served under `/p/`).
    pub kind: &'static str,
}

/// What [`Runtime::load`] did with each policy.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Plugins now invocable, with what they report about themselves.
    pub loaded: Vec<PluginInfo>,
    /// Plugins refused, each with the reason.
    pub refused: Vec<LoadError>,
}

/// The plugins a gated reload holds for approval ([`Runtime::reload_gated`]).
#[derive(Debug, Default)]
pub struct Holds {
    /// Those refused without keeping their loaded version (one no longer
    /// approved must stop serving).
    pub unkept: Vec<String>,
    /// Plugins with nothing loaded (the sidecar restarted since they took
    /// effect) whose file is held or refused, and the version kept on disk
    /// to serve instead ([`crate::policy::kept`]): the one in force before,
    /// judged within the approvals.
    pub restored: BTreeMap<String, PluginPolicy>,
}

/// The plugin runtime. `invoke` takes `&self` and may be called
/// concurrently (share the runtime behind an `Arc`).
pub struct Runtime {
    settings: RuntimeSettings,
    engine: Engine,
    linker: Linker<PluginState>,
    cache: cache::CodeCache,
    /// Every service's shared state, wired into each plugin at load.
    services: Arc<Services>,
    /// The plugins in force. Replaced whole by a (re)load, so each
    /// invocation runs on the version it started with while the next
    /// generation takes over.
    current: RwLock<Arc<Generation>>,
    /// Serialises loads: two reloads at once would each build a
    /// generation from the same starting point.
    loading: tokio::sync::Mutex<()>,
    /// Each plugin name's slots, kept across reloads.
    slots: SlotTable,
    /// One permit per pool instance available to invocations. Loaded
    /// plugins' concurrency never adds up to more, so in steady state no
    /// one waits here; during a reload, invocations of the old and the new
    /// plugins together still never overfill the pool.
    instances: Arc<Semaphore>,
    /// Raised when the sidecar stops: every invocation's stop obeys it.
    shutdown: Stop,
}

/// What a component exports: the plugin world, or the standard
/// `wasi:http/incoming-handler` (a `wasi:http/proxy` component).
enum Entry {
    Plugin(PluginPre<PluginState>),
    Proxy(ProxyPre<PluginState>),
}

/// What one instance is asked to do.
enum Call {
    Handle(Document),
    Info,
    /// Instantiate only: a proxy component has no `info()`, but its start
    /// functions and memory still get tried once at load.
    Probe,
    /// Serve one HTTP request; the guest answers through `respond`.
    Http(http::Request<HyperIncomingBody>, ResponseSender),
}

enum Reply {
    Handle(Result<Document, crate::GuestError>),
    Info(PluginInfo),
    Done,
}

/// Where a proxy component's response head goes.
type ResponseSender = tokio::sync::oneshot::Sender<Result<http::Response<HyperOutgoingBody>, HttpErrorCode>>;

impl Runtime {
    /// Creates the engine (and its epoch ticker thread) and the linker.
    /// Refuses a code cache directory that someone else could write to (see
    /// [`crate::data_dir`]): its artifacts are loaded as native code.
    pub fn new(settings: RuntimeSettings, services: Arc<Services>) -> Result<Self, RuntimeError> {
        if settings.epoch_tick < MIN_EPOCH_TICK {
            return Err(RuntimeError(format!(
                "epoch_tick of {:?} is under the minimum of {MIN_EPOCH_TICK:?}",
                settings.epoch_tick
            )));
        }
        if let Some(dir) = &settings.cache_dir {
            crate::data_dir::secure(dir).map_err(|e| RuntimeError(format!("code cache: {e}")))?;
        }
        let engine = engine::new_engine(&settings).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let linker = linker::new_linker(&engine).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let cache = cache::CodeCache::new(&settings);
        let instances = Arc::new(Semaphore::new(settings.max_instances as usize));
        Ok(Runtime {
            settings,
            engine,
            linker,
            cache,
            services,
            current: RwLock::default(),
            loading: tokio::sync::Mutex::new(()),
            slots: Default::default(),
            instances,
            shutdown: Stop::new(),
        })
    }

    /// Stops every invocation's host calls that read their stop (a SQLite
    /// statement stepped on the invocation's own thread, which nothing can
    /// drop), and waits up to `limit` for the invocations to end: called
    /// when the sidecar stops, after its drain, so that the process does
    /// not wait for statements to reach their own deadlines.
    pub async fn stop_all(&self, limit: Duration) {
        self.shutdown.raise();
        let pool = self.settings.max_instances as usize;
        let started = tokio::time::Instant::now();
        while self.instances.available_permits() < pool && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn generation(&self) -> Arc<Generation> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the loaded plugins with those of `policies`. Each plugin is
    /// compiled (or taken from the cache) within the compile budget, its
    /// imports checked against its policy, and its `info()` read once
    /// under [`INFO_DEADLINE`]. Plugins load concurrently, so one that is
    /// slow or failing delays no other; a plugin that fails any step is
    /// refused alone. Plugins are admitted in name order while their
    /// concurrency fits in the pool (`max_instances`); the rest are
    /// refused, so every loaded plugin can always run at its concurrency.
    pub async fn load(&self, policies: &PolicySet) -> LoadReport {
        self.install(policies, &[], &Holds::default(), false, |_| async { Ok(()) })
            .await
            .unwrap_or_else(|(report, _)| report)
    }

    /// Like [`Runtime::load`], for a running sidecar: a plugin whose
    /// policy file is among `broken_files` (it failed to parse or
    /// validate), or whose new version is refused, keeps the version it
    /// had, and the refusal is reported. Invocations already running
    /// finish on the version they started with.
    pub async fn reload(&self, policies: &PolicySet, broken_files: &[PolicyError]) -> LoadReport {
        self.install(policies, broken_files, &Holds::default(), true, |_| async { Ok(()) })
            .await
            .unwrap_or_else(|(report, _)| report)
    }

    /// [`Runtime::reload`], with a gate between building the next set of
    /// plugins and putting it in force: `gate` gets the policies that
    /// would be in force (kept versions included) and must succeed first.
    /// The audit log is the gate: the changes are recorded before they
    /// take effect. If it fails, nothing changes (the plugins in force,
    /// their concurrency slots and their refusals stay as they were) and
    /// its reason is returned with the report of what would have loaded.
    /// `holds`: the plugins held for approval whose loaded version goes,
    /// and those that serve a version restored from disk.
    pub async fn reload_gated<G, F>(
        &self,
        policies: &PolicySet,
        broken_files: &[PolicyError],
        holds: &Holds,
        gate: G,
    ) -> Result<LoadReport, (LoadReport, String)>
    where
        G: FnOnce(Vec<PluginPolicy>) -> F,
        F: std::future::Future<Output = Result<(), String>>,
    {
        self.install(policies, broken_files, holds, true, gate).await
    }

    /// The policy of the loaded version of each plugin in force.
    pub fn loaded_policies(&self) -> Vec<PluginPolicy> {
        self.generation().plugins.values().map(|p| p.policy.clone()).collect()
    }

    async fn install<G, F>(
        &self,
        policies: &PolicySet,
        broken: &[PolicyError],
        holds: &Holds,
        keep_on_refusal: bool,
        gate: G,
    ) -> Result<LoadReport, (LoadReport, String)>
    where
        G: FnOnce(Vec<PluginPolicy>) -> F,
        F: std::future::Future<Output = Result<(), String>>,
    {
        let _one_at_a_time = self.loading.lock().await;
        let previous = self.generation();
        let keeps = |name: &String| keep_on_refusal && !holds.unkept.contains(name);
        let mut report = LoadReport::default();
        let mut next = Generation::default();
        let loads = Semaphore::new(LOAD_INSTANCES as usize);
        let outcomes = futures::future::join_all(policies.plugins.values().map(|policy| {
            let loads = &loads;
            async move {
                let _turn = loads.acquire().await.expect("never closed");
                (policy, self.load_plugin(policy).await)
            }
        }))
        .await;
        // Shares in force are reserved first: plugins whose file is broken
        // or whose new version is refused keep their version and its share,
        // and every loaded plugin with a new version keeps its share as a
        // fallback until the new one is admitted.
        let mut pool = Pool::new(self.settings.max_instances);
        let kept = |name: &String| previous.plugins.get(name).filter(|_| keeps(name));
        for (name, plugin) in previous.plugins.iter().filter(|(name, _)| keeps(name)) {
            // Kept also when another file now claims the name: a file that
            // stops parsing must not let a new one take its plugin over.
            let refusal = broken.iter().find(|e| e.file == plugin.policy.file);
            let claimed_elsewhere = policies.plugins.get(name).is_none_or(|p| p.file != plugin.policy.file);
            if let Some(error) = refusal.filter(|_| claimed_elsewhere) {
                let file = crate::policy::shown(&plugin.policy.file);
                tracing::warn!(plugin = %name, %file, "policy file refused; keeping the loaded version");
                pool.reserve(plugin.policy.limits.concurrency);
                next.plugins.insert(name.clone(), plugin.clone());
                next.kept.insert(name.clone(), LoadError { plugin: name.clone(), file, reason: error.to_string() });
            }
        }
        // A held plugin with nothing loaded serves the version restored for
        // it, as a loaded version would keep serving.
        for (name, policy) in &holds.restored {
            let Some(error) = broken.iter().find(|e| e.plugin.as_ref() == Some(name)) else { continue };
            if next.plugins.contains_key(name) || !keeps(name) {
                continue;
            }
            let outcome =
                self.load_plugin(policy).await.and_then(|plugin| match pool.admit(policy.limits.concurrency, None) {
                    Admitted::New => Ok(plugin),
                    Admitted::KeepLoaded(reason) | Admitted::Refused(reason) => Err(reason),
                });
            match outcome {
                Ok(plugin) => {
                    let file = crate::policy::shown(&error.file);
                    tracing::warn!(plugin = %name, version = %plugin.info.version, %file, "policy held; serving the version kept from before the restart");
                    next.plugins.insert(name.clone(), Arc::new(plugin));
                    next.kept.insert(name.clone(), LoadError { plugin: name.clone(), file, reason: error.to_string() });
                }
                Err(reason) => {
                    let reason = crate::guest_text::escape(&reason, crate::guest_text::MESSAGE);
                    tracing::error!(plugin = %name, %reason, "the version kept from before the restart cannot be loaded");
                }
            }
        }
        // A refused file that names a plugin with nothing to serve makes
        // that plugin refused (`unavailable`), not unknown.
        for error in broken {
            if let Some(name) = error.plugin.as_ref().filter(|n| !next.plugins.contains_key(*n)) {
                let file = crate::policy::shown(&error.file);
                next.refused.entry(name.clone()).or_insert(LoadError {
                    plugin: name.clone(),
                    file,
                    reason: error.to_string(),
                });
            }
        }
        for (policy, _) in &outcomes {
            if let Some(old) = kept(&policy.name).filter(|_| !next.plugins.contains_key(&policy.name)) {
                pool.reserve(old.policy.limits.concurrency);
            }
        }
        for (policy, outcome) in outcomes {
            if let Some(served) = next.plugins.get(&policy.name) {
                let reason = format!(
                    "plugin `{}` is served from {}, which is refused: fix or remove that file before another defines it",
                    policy.name,
                    crate::policy::shown(&served.policy.file)
                );
                let error = LoadError { plugin: policy.name.clone(), file: crate::policy::shown(&policy.file), reason };
                tracing::error!(%error, "plugin refused");
                report.refused.push(error);
                continue;
            }
            let old = kept(&policy.name);
            let outcome = outcome.and_then(|plugin| {
                match pool.admit(policy.limits.concurrency, old.map(|old| old.policy.limits.concurrency)) {
                    Admitted::New => Ok(plugin),
                    Admitted::KeepLoaded(reason) | Admitted::Refused(reason) => Err(reason),
                }
            });
            match outcome {
                Ok(plugin) => {
                    report.loaded.push(plugin.info.clone());
                    next.plugins.insert(policy.name.clone(), Arc::new(plugin));
                }
                Err(reason) => {
                    // Reasons quote wasmtime's errors, which quote names
                    // from the component (import names, function names).
                    let reason = crate::guest_text::escape(&reason, crate::guest_text::MESSAGE);
                    let error =
                        LoadError { plugin: policy.name.clone(), file: crate::policy::shown(&policy.file), reason };
                    tracing::error!(%error, "plugin refused");
                    match old {
                        Some(old) => {
                            tracing::warn!(plugin = %policy.name, version = %old.info.version, "keeping the loaded version");
                            next.plugins.insert(policy.name.clone(), old.clone());
                            next.kept.insert(policy.name.clone(), error.clone());
                        }
                        None => {
                            next.refused.insert(policy.name.clone(), error.clone());
                        }
                    }
                    report.refused.push(error);
                }
            }
        }
        let mut in_force: Vec<PluginPolicy> = next.plugins.values().map(|p| p.policy.clone()).collect();
        in_force.sort_by(|a, b| a.name.cmp(&b.name));
        if let Err(reason) = gate(in_force).await {
            return Err((report, reason));
        }
        for (name, plugin) in &next.plugins {
            match previous.plugins.get(name) {
                Some(old) if Arc::ptr_eq(old, plugin) => continue,
                None => tracing::info!(plugin = %name, version = %plugin.info.version, "plugin loaded"),
                Some(old) if old.policy == plugin.policy => {
                    tracing::debug!(plugin = %name, version = %plugin.info.version, "plugin unchanged")
                }
                Some(old) => tracing::info!(
                    plugin = %name,
                    version = %plugin.info.version,
                    previous = %old.info.version,
                    "plugin reloaded with a new policy or component"
                ),
            }
            // Only now, admitted and past the gate, may it change its
            // plugin's slots.
            plugin.slots.resize(plugin.policy.limits.concurrency);
        }
        for (name, old) in &previous.plugins {
            if !next.plugins.contains_key(name) && !next.refused.contains_key(name) {
                let file = crate::policy::shown(&old.policy.file);
                tracing::info!(plugin = %name, version = %old.info.version, %file, "plugin unloaded: its policy is gone");
            }
            // A database grant no plugin in force holds any more (its
            // plugin or section removed, or the plugin now refused): the
            // database's own copy of it goes too.
            let still = next.plugins.get(name).map(|p| &p.policy.sql);
            for alias in old.policy.sql.keys().filter(|a| still.is_none_or(|sql| !sql.contains_key(*a))) {
                self.services.sql.retire(name, alias).await;
            }
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(report)
    }

    /// Compiles a plugin's component into the code cache (for `gatehouse
    /// compile`), returning where the artifact is. A component whose
    /// imports its policy does not grant is compiled (the artifact stays
    /// valid for a later policy) but reported as an error, since a load
    /// would refuse it.
    pub fn precompile(&self, policy: &PluginPolicy) -> Result<(PathBuf, CacheOutcome), String> {
        let path = self
            .cache
            .artifact_path(&self.engine, &policy.component)
            .ok_or("no cache directory is configured (set data_dir in gatehouse.toml)")?;
        let (component, outcome) = self.cache.load(&self.engine, &policy.component, None)?;
        imports::check(&self.engine, &component, policy)
            .map_err(|refused| format!("compiled, but a load would refuse it: {}", refused.join("; ")))?;
        self.entry(&component).map_err(|why| format!("compiled, but a load would refuse it: {why}"))?;
        Ok((path, outcome))
    }

    /// What is loaded, for the API: name, self-description, component
    /// digest and policy file, sorted by name.
    pub fn summaries(&self) -> Vec<PluginSummary> {
        let generation = self.generation();
        let mut list: Vec<_> = generation
            .plugins
            .iter()
            .map(|(name, p)| PluginSummary {
                name: name.clone(),
                version: p.info.version.clone(),
                description: p.info.description.clone(),
                sha256: hex::encode(p.policy.component.sha256),
                policy_file: crate::policy::shown(&p.policy.file),
                concurrency: p.policy.limits.concurrency,
                http: p.policy.http.as_ref().map(|h| h.allow.iter().map(|r| r.text.clone()).collect()),
                kind: match p.entry {
                    Entry::Plugin(_) => "plugin",
                    Entry::Proxy(_) => "wasi-http",
                },
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The plugins the last (re)load refused, sorted by name: those with
    /// nothing to serve (`serving` is `None`) and those that kept their
    /// previous version.
    pub fn refusals(&self) -> Vec<Refusal> {
        let generation = self.generation();
        let mut list: Vec<Refusal> = generation
            .refused
            .values()
            .map(|e| (e, None))
            .chain(
                generation
                    .kept
                    .iter()
                    .map(|(name, e)| (e, generation.plugins.get(name).map(|p| p.info.version.clone()))),
            )
            .map(|(e, serving)| Refusal {
                plugin: e.plugin.clone(),
                policy_file: e.file.clone(),
                reason: e.reason.clone(),
                serving,
            })
            .collect();
        list.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        list
    }

    /// Whether a loaded plugin came from `file` (a policy file that no
    /// longer parses may still have its previous version in force).
    pub fn serves_policy_file(&self, file: &std::path::Path) -> bool {
        self.generation().plugins.values().any(|p| p.policy.file == file)
    }

    /// Invocations of `plugin` running right now (at most its policy's
    /// `concurrency`); `None` if no such plugin is loaded.
    pub fn in_flight(&self, plugin: &str) -> Option<u32> {
        let generation = self.generation();
        let loaded = generation.plugins.get(plugin)?;
        Some(loaded.slots.in_use())
    }

    /// Runs `plugin`'s `handle` on `input` in a fresh instance, under the
    /// plugin's limits. Waits for a free concurrency slot for at most the
    /// plugin's timeout plus twice [`TIMEOUT_GRACE`]: longer than a holder
    /// can keep one (timeout + grace), so a caller behind a stuck
    /// invocation gets the slot it frees rather than `rate-limited`.
    pub async fn invoke(&self, plugin: &str, input: Document) -> Result<Document, InvokeError> {
        self.invoke_with_version(plugin, input).await.1.map(|(output, _slot)| output)
    }

    /// [`Runtime::invoke`], also saying which version ran (`None`: no such
    /// plugin is loaded), read in the same lookup, so that a reload in
    /// between cannot pair a result with the wrong version. The output
    /// comes with the invocation's concurrency slot (its instance is back
    /// in the pool): keep it until the output is delivered, so that
    /// answers waiting for slow callers are charged to the plugin.
    pub async fn invoke_with_version(
        &self,
        plugin: &str,
        input: Document,
    ) -> (Option<String>, Result<(Document, SlotHold), InvokeError>) {
        self.invoke_until(plugin, input, &Stop::new()).await
    }

    /// [`Runtime::invoke_with_version`], on a task of its own, so that
    /// dropping this future stops the invocation even while its thread is
    /// busy in a host call that does not yield (a SQLite statement): the
    /// drop aborts the task and raises the invocation's [`Stop`], which such
    /// calls read. The server's invoke route calls it; dropping the future
    /// of [`Runtime::invoke`] itself stops such a call only at the
    /// invocation's deadline.
    pub async fn invoke_on_own_task(
        self: &Arc<Self>,
        plugin: &str,
        input: Document,
    ) -> (Option<String>, Result<(Document, SlotHold), InvokeError>) {
        let stop = Stop::new();
        let (runtime, name, task_stop) = (Arc::clone(self), plugin.to_string(), stop.clone());
        let task = tokio::spawn(async move { runtime.invoke_until(&name, input, &task_stop).await }.in_current_span());
        let cancel = cancel::Cancel::new(task.abort_handle(), &stop);
        let done = task.await;
        cancel.disarm();
        done.unwrap_or_else(|e| {
            (
                None,
                Err(InvokeError::Unavailable { plugin: plugin.to_string(), message: format!("the invocation: {e}") }),
            )
        })
    }

    /// [`Runtime::invoke_with_version`], stopping host calls that read
    /// `stop` (see [`crate::stop`]) once it is raised.
    async fn invoke_until(
        &self,
        plugin: &str,
        input: Document,
        stop: &Stop,
    ) -> (Option<String>, Result<(Document, SlotHold), InvokeError>) {
        match self.lookup(plugin) {
            Ok(loaded) => (Some(loaded.info.version.clone()), self.invoke_loaded(&loaded, plugin, input, stop).await),
            Err(error) => (None, Err(error)),
        }
    }

    async fn invoke_loaded(
        &self,
        loaded: &LoadedPlugin,
        plugin: &str,
        input: Document,
        stop: &Stop,
    ) -> Result<(Document, SlotHold), InvokeError> {
        if let Entry::Proxy(_) = loaded.entry {
            return Err(InvokeError::WrongInterface {
                plugin: plugin.to_string(),
                exports: "wasi:http/incoming-handler",
            });
        }
        let limits = loaded.policy.limits;
        let admission = self.admit(loaded, plugin).await?;
        let reply = self.run(
            &loaded.entry,
            &loaded.policy,
            &loaded.tag,
            &loaded.granted,
            loaded.hostcall_fuel,
            Call::Handle(input),
            stop,
        );
        match reply.await? {
            Reply::Handle(Ok(output)) => {
                let size = (output.body.len() + output.content_type.len()) as u64;
                if size > limits.max_output {
                    return Err(InvokeError::OutputTooLarge {
                        plugin: plugin.to_string(),
                        size,
                        limit: limits.max_output,
                    });
                }
                Ok((output, admission.into_slot()))
            }
            Reply::Handle(Err(error)) => Err(InvokeError::Plugin { plugin: plugin.to_string(), error }),
            Reply::Info(_) | Reply::Done => unreachable!("asked for handle"),
        }
    }

    /// The loaded version of `plugin`, or why there is none.
    fn lookup(&self, plugin: &str) -> Result<Arc<LoadedPlugin>, InvokeError> {
        let generation = self.generation();
        generation.plugins.get(plugin).cloned().ok_or_else(|| match generation.refused.get(plugin) {
            Some(error) => InvokeError::Refused(error.clone()),
            None => InvokeError::UnknownPlugin(plugin.to_string()),
        })
    }

    /// Takes one of the plugin's concurrency slots and one pool instance.
    /// A bounded queue: past [`QUEUE_PER_SLOT`] callers per slot waiting,
    /// more are turned away at once instead of piling up in memory.
    /// Waiting lasts at most the plugin's timeout plus twice
    /// [`TIMEOUT_GRACE`]: longer than a holder can keep a slot.
    async fn admit<'a>(&'a self, loaded: &'a LoadedPlugin, plugin: &str) -> Result<Admission<'a>, InvokeError> {
        let limits = loaded.policy.limits;
        let busy = || InvokeError::Busy { plugin: plugin.to_string(), limit: limits.concurrency };
        let queued =
            Queued::join(&loaded.slots.waiting, limits.concurrency.saturating_mul(QUEUE_PER_SLOT)).ok_or_else(busy)?;
        let deadline = tokio::time::Instant::now() + limits.timeout + 2 * TIMEOUT_GRACE;
        let slot = tokio::time::timeout_at(deadline, loaded.slots.semaphore.clone().acquire_owned())
            .await
            .map_err(|_| busy())?;
        // The admission check keeps the sum of all concurrencies within the
        // pool, so this waits only after a reload: invocations that started
        // under the old grants keep their instances until they finish.
        let instance = tokio::time::timeout_at(deadline, self.instances.acquire()).await.map_err(|_| {
            InvokeError::Unavailable {
                plugin: plugin.to_string(),
                message: "every instance of the pool ([engine] max_instances) is in use; invocations that \
                          started before the last reload keep theirs until they finish"
                    .into(),
            }
        })?;
        let (Ok(slot), Ok(instance)) = (slot, instance) else {
            unreachable!("the runtime's semaphores are never closed")
        };
        drop(queued);
        Ok(loaded.slots.hold(slot, instance))
    }

    /// Serves one HTTP request with a `wasi:http/proxy` plugin, under the
    /// same limits, queue and policies as [`Runtime::invoke`]. Returns once
    /// the guest has set its response head; the body streams while the
    /// guest writes it, and the guest keeps its concurrency slot (and its
    /// deadline) until it has finished.
    ///
    /// Also says which version served it (`None`: no such plugin is
    /// loaded), as [`Runtime::invoke_with_version`] does.
    pub async fn handle_http(
        self: &Arc<Self>,
        plugin: &str,
        request: http::Request<HyperIncomingBody>,
    ) -> (Option<String>, Result<http::Response<HyperOutgoingBody>, InvokeError>) {
        match self.lookup(plugin) {
            Ok(loaded) => (Some(loaded.info.version.clone()), self.handle_loaded(loaded, plugin, request).await),
            Err(error) => (None, Err(error)),
        }
    }

    async fn handle_loaded(
        self: &Arc<Self>,
        loaded: Arc<LoadedPlugin>,
        plugin: &str,
        request: http::Request<HyperIncomingBody>,
    ) -> Result<http::Response<HyperOutgoingBody>, InvokeError> {
        if let Entry::Plugin(_) = loaded.entry {
            return Err(InvokeError::WrongInterface {
                plugin: plugin.to_string(),
                exports: "gatehouse:services/plugin",
            });
        }
        let (respond, response) = tokio::sync::oneshot::channel();
        let runtime = self.clone();
        let name = plugin.to_string();
        let stop = Stop::new();
        let task_stop = stop.clone();
        // In the caller's span, so the component's log lines (and its
        // outbound refusals) carry the request id.
        let mut task = tokio::spawn(
            async move {
                let _slots = runtime.admit(&loaded, &name).await?;
                let call = Call::Http(request, respond);
                runtime
                    .run(
                        &loaded.entry,
                        &loaded.policy,
                        &loaded.tag,
                        &loaded.granted,
                        loaded.hostcall_fuel,
                        call,
                        &task_stop,
                    )
                    .await
            }
            .in_current_span(),
        );
        // If the caller goes away (the client hung up) before the head, the
        // task is aborted: it stops waiting for a slot, or stops running.
        let cancel = cancel::Cancel::new(task.abort_handle(), &stop);
        let deliver = |response: http::Response<HyperOutgoingBody>| {
            use http_body_util::BodyExt;
            response.map(|body| cancel::CancelOnDropBody::new(body, cancel).boxed_unsync())
        };
        // Why there is no response head, from how the task ended.
        let no_response = |finished: Result<Result<_, InvokeError>, tokio::task::JoinError>| match finished {
            Ok(Err(error)) => error,
            Ok(Ok(_)) => InvokeError::NoResponse { plugin: plugin.to_string() },
            Err(e) => InvokeError::Unavailable { plugin: plugin.to_string(), message: e.to_string() },
        };
        let mut response = std::pin::pin!(response);
        tokio::select! {
            answered = &mut response => match answered {
                Ok(Ok(response)) => Ok(deliver(response)),
                Ok(Err(code)) => Err(InvokeError::Plugin {
                    plugin: plugin.to_string(),
                    error: crate::GuestError {
                        kind: crate::ErrorKind::Internal,
                        message: format!("the component answered with the error {code:?}"),
                        retry_after_ms: None,
                    },
                }),
                // The guest dropped its outparam: the task says why.
                Err(_) => Err(no_response(task.await)),
            },
            finished = &mut task => {
                // Finished before we saw the head: it may still be there.
                if let Ok(Ok(response)) = response.try_recv() {
                    return Ok(deliver(response));
                }
                Err(no_response(finished))
            }
        }
    }

    async fn load_plugin(&self, policy: &PluginPolicy) -> Result<LoadedPlugin, String> {
        let limits = policy.limits;
        if limits.memory > self.settings.max_memory {
            return Err(format!(
                "its memory limit of {} bytes exceeds the engine's max_memory of {} bytes (gatehouse.toml [engine])",
                limits.memory, self.settings.max_memory
            ));
        }
        if limits.concurrency > self.settings.max_instances {
            return Err(format!(
                "its concurrency of {} exceeds the engine's max_instances of {} (gatehouse.toml [engine])",
                limits.concurrency, self.settings.max_instances
            ));
        }
        kind_of_binary(&policy.component.bytes).map_err(|e| format!("not a valid component: {e}"))?;
        let (component, outcome) = self
            .cache
            .load_within(&self.engine, &policy.component, self.settings.compile_timeout)
            .await
            .map_err(|e| format!("not a valid component: {e}"))?;
        tracing::debug!(plugin = %policy.name, ?outcome, "component ready");
        imports::check(&self.engine, &component, policy).map_err(|refused| refused.join("; "))?;
        let entry = self.entry(&component)?;
        let http = match &policy.http {
            Some(grant) => Some(Arc::new(PluginHttp::new(
                &policy.name,
                grant.clone(),
                self.services.http.clone(),
                &self.settings.secrets,
            )?)),
            None => None,
        };
        let kv = match &policy.kv {
            Some(grant) => {
                let store =
                    self.services.kv.clone().ok_or("it has a [kv] grant, but no key-value store is configured")?;
                Some(Arc::new(PluginKv::new(&policy.name, grant.clone(), store)))
            }
            None => None,
        };
        let sql = if policy.sql.is_empty() {
            None
        } else {
            Some(Arc::new(PluginSql::new(&policy.name, &policy.sql, &self.services.sql)?))
        };
        let granted = Granted { http, kv, sql };

        let hostcall_fuel = usize::try_from(hostcall_fuel(policy)).unwrap_or(usize::MAX);

        let mut tag = Arc::new(PluginTag::new(&policy.name, "unknown"));
        let mut info_policy = policy.clone();
        info_policy.limits.timeout = limits.timeout.min(INFO_DEADLINE);
        let info = match &entry {
            Entry::Plugin(_) => {
                match self.run(&entry, &info_policy, &tag, &granted, hostcall_fuel, Call::Info, &Stop::new()).await {
                    Ok(Reply::Info(info)) => info,
                    Ok(_) => unreachable!("asked for info"),
                    Err(e) => return Err(format!("info() failed: {e}")),
                }
            }
            Entry::Proxy(_) => {
                if let Err(e) =
                    self.run(&entry, &info_policy, &tag, &granted, hostcall_fuel, Call::Probe, &Stop::new()).await
                {
                    return Err(format!("instantiating it failed: {e}"));
                }
                // A standard component says nothing about itself: its
                // version is its digest.
                let digest = hex::encode(&policy.component.sha256[..6]);
                PluginInfo {
                    name: policy.name.clone(),
                    version: format!("sha256-{digest}"),
                    description: "a wasi:http/proxy component".into(),
                }
            }
        };
        plugin_info::validate(&info)?;
        if info.name != policy.name {
            tracing::warn!(plugin = %policy.name, reported = %info.name, "plugin reports a different name than its policy; the policy's name is used");
        }
        tag = Arc::new(tag.at_version(&info.version));
        let slots = self.slots.of(&policy.name, limits.concurrency);
        // From here on the compiled component is what runs: the bytes are
        // not kept resident (50 policies naming one 20 MiB component once
        // kept a gigabyte for the server's life).
        let mut policy = policy.clone();
        policy.component.bytes = Arc::from(Vec::new());
        Ok(LoadedPlugin { policy, tag, info, entry, slots, granted, hostcall_fuel })
    }

    fn entry(&self, component: &Component) -> Result<Entry, String> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| format!("{e:#}"))?;
        let plugin = match PluginPre::new(pre.clone()) {
            Ok(plugin) => return Ok(Entry::Plugin(plugin)),
            Err(e) => e,
        };
        ProxyPre::new(pre).map(Entry::Proxy).map_err(|_| {
            format!("exports neither the gatehouse:services/plugin world nor wasi:http/incoming-handler: {plugin:#}")
        })
    }

    /// One fresh instance, one call, under the policy's limits, until its
    /// deadline or `stop`.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        entry: &Entry,
        policy: &PluginPolicy,
        tag: &Arc<PluginTag>,
        granted: &Granted,
        hostcall_fuel: usize,
        call: Call,
        stop: &Stop,
    ) -> Result<Reply, InvokeError> {
        let timeout = policy.limits.timeout;
        let deadline = Instant::now() + timeout;
        let mut store = Store::new(
            &self.engine,
            PluginState::new(policy, tag, granted, stop.until(deadline).joined(&self.shutdown)),
        );
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(hostcall_fuel);
        // Check the deadline on every epoch tick. In between, yield to the
        // executor through `yield_now`, which tokio defers until the worker
        // has polled its timers and sockets: other tasks' wake-ups are never
        // starved by guests that spin.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });

        let outcome = tokio::time::timeout(
            timeout + TIMEOUT_GRACE,
            Box::pin(async {
                let reply = match (entry, call) {
                    (Entry::Plugin(pre), call) => {
                        let instance: PluginBindings =
                            pre.instantiate_async(&mut store).await.map_err(|e| (true, e))?;
                        match call {
                            Call::Handle(input) => instance.call_handle(&mut store, &input).await.map(Reply::Handle),
                            Call::Info => instance.call_info(&mut store).await.map(Reply::Info),
                            Call::Probe | Call::Http(..) => unreachable!("asked a plugin-world component for HTTP"),
                        }
                    }
                    (Entry::Proxy(pre), Call::Probe) => {
                        pre.instantiate_async(&mut store).await.map_err(|e| (true, e))?;
                        Ok(Reply::Done)
                    }
                    (Entry::Proxy(pre), Call::Http(request, respond)) => {
                        let proxy = pre.instantiate_async(&mut store).await.map_err(|e| (true, e))?;
                        let mut http = store.data_mut().http();
                        let request = http.new_incoming_request(Scheme::Http, request).map_err(|e| (true, e))?;
                        let out = http.new_response_outparam(respond).map_err(|e| (true, e))?;
                        proxy
                            .wasi_http_incoming_handler()
                            .call_handle(&mut store, request, out)
                            .await
                            .map(|()| Reply::Done)
                    }
                    (Entry::Proxy(_), _) => unreachable!("asked a proxy component for the plugin world"),
                };
                reply.map_err(|e| (false, e))
            }),
        )
        .await;

        let plugin = policy.name.clone();
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Err(_elapsed) => Err(InvokeError::Timeout { plugin, timeout, in_host_call: true }),
            Ok(Err(_)) if store.data().limiter.exceeded() => {
                Err(InvokeError::MemoryLimit { plugin, limit: policy.limits.memory })
            }
            Ok(Err((_, error))) if table_full(&error) => {
                Err(InvokeError::TooManyHandles { plugin, limit: store.data().table.max_capacity() })
            }
            Ok(Err((instantiating, error))) => {
                Err(classify_failure(plugin, timeout, hostcall_fuel, instantiating, &error))
            }
        }
    }
}

/// Says in one line what is wrong with bytes that are not a component,
/// before the compiler's longer account of it.
fn kind_of_binary(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0x00, 0x01, 0x00]) => Ok(()),
        Some([0, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00]) => {
            Err("it is a core WebAssembly module, not a component: build it for the wasm32-wasip2 target \
             (or wrap it with `wasm-tools component new`)"
                .into())
        }
        _ if bytes.starts_with(b"\0asm") => Err("it is WebAssembly of an unknown version or layer".into()),
        _ => Err("it is not WebAssembly (it does not start with the WebAssembly magic number)".into()),
    }
}

/// What one host call may lift from guest memory: enough for the output
/// document or the largest request the plugin's grants allow, plus
/// [`HOSTCALL_BASE`] for the rest of a call, and no more, so a guest cannot
/// make the host allocate far past its limits.
pub fn hostcall_fuel(policy: &PluginPolicy) -> u64 {
    let http = policy.http.as_ref().map_or(0, |http| http.max_request);
    policy.limits.max_output.max(http) + HOSTCALL_BASE
}

/// Whether the guest failed because its resource table was full (a host
/// call that would have created one more resource past `host_budget`).
fn table_full(error: &wasmtime::Error) -> bool {
    matches!(error.downcast_ref(), Some(wasmtime::component::ResourceTableError::Full))
}

/// Turns what wasmtime reported into the invocation's typed error.
fn classify_failure(
    plugin: String,
    timeout: Duration,
    hostcall_fuel: usize,
    instantiating: bool,
    error: &wasmtime::Error,
) -> InvokeError {
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return InvokeError::Exited { plugin, status: exit.0 };
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => InvokeError::Timeout { plugin, timeout, in_host_call: false },
            _ => InvokeError::Trap {
                plugin,
                message: crate::guest_text::escape(&format!("{error:?}"), crate::guest_text::MESSAGE),
            },
        };
    }
    let text = format!("{error:#}");
    // wasmtime's error for a host call (or output) past the hostcall fuel
    // has no public type; its message is stable within the pinned version.
    if text.contains("fuel allocated for hostcalls has been exhausted") {
        return InvokeError::TooMuchData { plugin, limit: hostcall_fuel as u64 };
    }
    let message = crate::guest_text::escape(&text, crate::guest_text::MESSAGE);
    if instantiating { InvokeError::Unavailable { plugin, message } } else { InvokeError::Trap { plugin, message } }
}
