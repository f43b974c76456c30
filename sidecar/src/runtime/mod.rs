//! Runs plugins: one engine per process, one `InstancePre` per plugin, a
//! fresh `Store` per invocation.
//!
//! Isolation is per invocation: every call gets a new instance whose memory
//! comes from the pooling allocator's copy-on-write image, so nothing a call
//! does survives it and one call's crash cannot touch another. Each call is
//! bounded three ways: the policy's memory limit (a `ResourceLimiter`), an
//! epoch deadline (stops a guest spinning in wasm), and a tokio timeout
//! around the whole call (stops a guest parked in a host call, which epochs
//! cannot interrupt).

mod cache;
mod engine;
mod error;
mod imports;
mod linker;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

pub use cache::CacheOutcome;
pub use error::{InvokeError, LoadError, RuntimeError};

use crate::bindings::{Plugin as PluginBindings, PluginPre};
use crate::policy::{PluginPolicy, PolicySet};
use crate::secrets::SecretSource;
use crate::services::http::resolve::{Lookup, SystemLookup};
use crate::services::http::{HttpGateway, HttpMetricsSnapshot, PluginHttp};
use crate::services::log::PluginTag;
use crate::{Document, PluginInfo};
use state::PluginState;

/// Extra time the tokio timeout allows beyond a plugin's deadline, so that
/// the epoch deadline (which reports a clean trap) normally fires first.
const TIMEOUT_GRACE: Duration = Duration::from_millis(100);

/// Engine sizing. Defaults suit a sidecar next to one application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Largest memory any one instance may have; no policy may ask for more.
    pub max_memory: u64,
    /// Instances alive at once across all plugins (the pool size).
    pub max_instances: u32,
    /// Epoch tick: deadlines are checked at this granularity.
    pub epoch_tick: Duration,
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

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            max_memory: 4 << 30,
            max_instances: 1000,
            epoch_tick: Duration::from_millis(10),
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
    pre: PluginPre<PluginState>,
    slots: Semaphore,
    http: Option<Arc<PluginHttp>>,
}

/// What [`Runtime::load`] did with each policy.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Plugins now invocable, with what they report about themselves.
    pub loaded: Vec<PluginInfo>,
    /// Plugins refused, each with the reason.
    pub refused: Vec<LoadError>,
}

/// The plugin runtime. `invoke` takes `&self` and may be called
/// concurrently (share the runtime behind an `Arc`).
pub struct Runtime {
    settings: RuntimeSettings,
    engine: Engine,
    linker: Linker<PluginState>,
    cache: cache::CodeCache,
    http: Arc<HttpGateway>,
    plugins: HashMap<String, Arc<LoadedPlugin>>,
    refused: HashMap<String, LoadError>,
}

/// What one instance is asked to do.
enum Call {
    Handle(Document),
    Info,
}

enum Reply {
    Handle(Result<Document, crate::GuestError>),
    Info(PluginInfo),
}

impl Runtime {
    /// Creates the engine (and its epoch ticker thread) and the linker.
    pub fn new(settings: RuntimeSettings) -> Result<Self, RuntimeError> {
        let engine = engine::new_engine(&settings).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let linker = linker::new_linker(&engine).map_err(|e| RuntimeError(format!("{e:#}")))?;
        let cache = cache::CodeCache::new(settings.cache_dir.clone());
        let http = Arc::new(HttpGateway::new(Arc::new(SystemLookup)).map_err(|e| RuntimeError(e.to_string()))?);
        Ok(Runtime { settings, engine, linker, cache, http, plugins: HashMap::new(), refused: HashMap::new() })
    }

    /// Replaces the DNS resolver of outbound HTTP (the system resolver by
    /// default), for plugins loaded from now on. Tests and benchmarks use
    /// it to point names at loopback servers without a DNS server.
    pub fn set_dns(&mut self, lookup: Arc<dyn Lookup>) -> Result<(), RuntimeError> {
        self.http = Arc::new(HttpGateway::new(lookup).map_err(|e| RuntimeError(e.to_string()))?);
        Ok(())
    }

    /// Outbound HTTP counters of `plugin`, if it is loaded with an
    /// `[http]` grant. They restart when policies are reloaded.
    pub fn http_metrics(&self, plugin: &str) -> Option<HttpMetricsSnapshot> {
        self.plugins.get(plugin)?.http.as_ref().map(|http| http.metrics())
    }

    /// Replaces the loaded plugins with those of `policies`. Each plugin is
    /// compiled (or taken from the cache), its imports checked against its
    /// policy, and its `info()` read once. A plugin that fails any step is
    /// refused alone; the others load.
    pub async fn load(&mut self, policies: &PolicySet) -> LoadReport {
        let mut report = LoadReport::default();
        let mut plugins = HashMap::new();
        self.refused.clear();
        for policy in policies.plugins.values() {
            match self.load_plugin(policy).await {
                Ok(plugin) => {
                    tracing::info!(plugin = %policy.name, version = %plugin.info.version, "plugin loaded");
                    report.loaded.push(plugin.info.clone());
                    plugins.insert(policy.name.clone(), Arc::new(plugin));
                }
                Err(reason) => {
                    let error =
                        LoadError { plugin: policy.name.clone(), file: policy.file.display().to_string(), reason };
                    tracing::error!(%error, "plugin refused");
                    self.refused.insert(policy.name.clone(), error.clone());
                    report.refused.push(error);
                }
            }
        }
        self.plugins = plugins;
        report
    }

    /// Compiles a plugin's component into the code cache (for `gatehouse
    /// compile`), returning where the artifact is.
    pub fn precompile(&self, policy: &PluginPolicy) -> Result<(PathBuf, CacheOutcome), String> {
        let path = self
            .cache
            .artifact_path(&self.engine, &policy.component)
            .ok_or("no cache directory is configured (set data_dir in gatehouse.toml)")?;
        let (_, outcome) = self.cache.load(&self.engine, &policy.component)?;
        Ok((path, outcome))
    }

    /// Names and self-descriptions of the loaded plugins, sorted by name.
    pub fn plugins(&self) -> Vec<(&str, &PluginInfo)> {
        let mut list: Vec<_> = self.plugins.iter().map(|(name, p)| (name.as_str(), &p.info)).collect();
        list.sort_by_key(|(name, _)| *name);
        list
    }

    /// Invocations of `plugin` running right now (at most its policy's
    /// `concurrency`); `None` if no such plugin is loaded.
    pub fn in_flight(&self, plugin: &str) -> Option<u32> {
        let loaded = self.plugins.get(plugin)?;
        Some(loaded.policy.limits.concurrency - loaded.slots.available_permits() as u32)
    }

    /// Runs `plugin`'s `handle` on `input` in a fresh instance, under the
    /// plugin's limits. Waits for a free concurrency slot for at most the
    /// plugin's timeout.
    pub async fn invoke(&self, plugin: &str, input: Document) -> Result<Document, InvokeError> {
        let Some(loaded) = self.plugins.get(plugin) else {
            return Err(match self.refused.get(plugin) {
                Some(error) => InvokeError::Refused(error.clone()),
                None => InvokeError::UnknownPlugin(plugin.to_string()),
            });
        };
        let limits = loaded.policy.limits;
        let _slot = match tokio::time::timeout(limits.timeout, loaded.slots.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_closed)) => unreachable!("plugin semaphores are never closed"),
            Err(_) => return Err(InvokeError::Busy { plugin: plugin.to_string(), limit: limits.concurrency }),
        };
        match self.run(&loaded.pre, &loaded.policy, &loaded.tag, &loaded.http, Call::Handle(input)).await? {
            Reply::Handle(Ok(output)) => Ok(output),
            Reply::Handle(Err(error)) => Err(InvokeError::Plugin { plugin: plugin.to_string(), error }),
            Reply::Info(_) => unreachable!("asked for handle"),
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
        let (component, outcome) =
            self.cache.load(&self.engine, &policy.component).map_err(|e| format!("not a valid component: {e}"))?;
        tracing::debug!(plugin = %policy.name, ?outcome, "component ready");
        imports::check(&self.engine, &component, policy).map_err(|refused| refused.join("; "))?;
        let pre = self.instance_pre(&component)?;
        let http = match &policy.http {
            Some(grant) => {
                Some(Arc::new(PluginHttp::new(&policy.name, grant.clone(), self.http.clone(), &self.settings.secrets)?))
            }
            None => None,
        };

        let mut tag = Arc::new(PluginTag { name: policy.name.clone(), version: "unknown".into() });
        let info = match self.run(&pre, policy, &tag, &http, Call::Info).await {
            Ok(Reply::Info(info)) => info,
            Ok(Reply::Handle(_)) => unreachable!("asked for info"),
            Err(e) => return Err(format!("info() failed: {e}")),
        };
        if info.name != policy.name {
            tracing::warn!(plugin = %policy.name, reported = %info.name, "plugin reports a different name than its policy; the policy's name is used");
        }
        tag = Arc::new(PluginTag { name: policy.name.clone(), version: info.version.clone() });
        let slots = Semaphore::new(limits.concurrency as usize);
        Ok(LoadedPlugin { policy: policy.clone(), tag, info, pre, slots, http })
    }

    fn instance_pre(&self, component: &Component) -> Result<PluginPre<PluginState>, String> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| format!("{e:#}"))?;
        PluginPre::new(pre).map_err(|e| format!("does not export the gatehouse:services/plugin world: {e:#}"))
    }

    /// One fresh instance, one call, under the policy's limits.
    async fn run(
        &self,
        pre: &PluginPre<PluginState>,
        policy: &PluginPolicy,
        tag: &Arc<PluginTag>,
        http: &Option<Arc<PluginHttp>>,
        call: Call,
    ) -> Result<Reply, InvokeError> {
        let timeout = policy.limits.timeout;
        let mut store = Store::new(&self.engine, PluginState::new(policy, tag, http.clone()));
        store.limiter(|state| &mut state.limiter);
        // Check the deadline on every epoch tick, yielding to the executor
        // in between so a spinning guest never monopolises a worker thread.
        let deadline = Instant::now() + timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });

        let outcome = tokio::time::timeout(
            timeout + TIMEOUT_GRACE,
            Box::pin(async {
                let instance: PluginBindings = pre.instantiate_async(&mut store).await.map_err(|e| (true, e))?;
                let reply = match call {
                    Call::Handle(input) => instance.call_handle(&mut store, &input).await.map(Reply::Handle),
                    Call::Info => instance.call_info(&mut store).await.map(Reply::Info),
                };
                reply.map_err(|e| (false, e))
            }),
        )
        .await;

        let plugin = policy.name.clone();
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Err(_elapsed) => Err(InvokeError::Timeout { plugin, timeout }),
            Ok(Err(_)) if store.data().limiter.exceeded() => {
                Err(InvokeError::MemoryLimit { plugin, limit: policy.limits.memory })
            }
            Ok(Err((instantiating, error))) => Err(match error.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => InvokeError::Timeout { plugin, timeout },
                Some(_) => InvokeError::Trap { plugin, message: format!("{error:?}") },
                None if instantiating => InvokeError::Unavailable { plugin, message: format!("{error:#}") },
                None => InvokeError::Trap { plugin, message: format!("{error:#}") },
            }),
        }
    }
}
