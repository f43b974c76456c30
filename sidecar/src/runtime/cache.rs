//! On-disk cache of compiled components.
//!
//! Compiling with Cranelift costs milliseconds per component (far more in
//! large guests), so each component is compiled once per engine
//! configuration and stored as `<sha256>-<engine hash>.cwasm`. `gatehouse
//! compile` fills the same cache ahead of time.
//!
//! Loading a cached artifact runs native code that wasmtime produced
//! earlier, so the cache directory must be writable only by the sidecar
//! (it lives in the data directory, which has that requirement anyway).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::policy::ComponentSource;

/// Where a component came from on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Deserialized from a cached artifact.
    Hit,
    /// Compiled now, and written to the cache.
    Compiled,
    /// Compiled now; there is no cache directory.
    Uncached,
}

#[derive(Debug, Clone)]
pub(super) struct CodeCache {
    dir: Option<PathBuf>,
    /// One lock per component (by hash), held while it compiles: loads of
    /// the same bytes wait for one compilation instead of repeating it,
    /// including one that outlived its budget and still runs.
    compiling: Arc<Mutex<HashMap<[u8; 32], CompileLock>>>,
    /// The worker binary and the settings it rebuilds the engine from,
    /// when compilation runs in a memory-capped child process.
    worker: Option<(PathBuf, Arc<super::RuntimeSettings>)>,
    /// Compilations running at once ([`MAX_COMPILERS`]), including any
    /// that outlived their budget in this process (a thread cannot be
    /// stopped; a worker process is killed at the budget).
    compilers: Arc<tokio::sync::Semaphore>,
}

/// Compilations (threads, and worker processes) at once, per runtime.
pub const MAX_COMPILERS: usize = 4;

type CompileLock = Arc<tokio::sync::Mutex<()>>;

impl CodeCache {
    pub(super) fn new(settings: &super::RuntimeSettings) -> Self {
        let worker = settings.compile_worker.clone().map(|path| (path, Arc::new(settings.clone())));
        let compilers = Arc::new(tokio::sync::Semaphore::new(MAX_COMPILERS));
        CodeCache { dir: settings.cache_dir.clone(), compiling: Arc::default(), worker, compilers }
    }

    /// Compiles `bytes` to an artifact: in the worker process when one is
    /// configured (memory-capped), else here.
    fn precompile(&self, engine: &Engine, bytes: &[u8], deadline: Option<Instant>) -> Result<Vec<u8>, String> {
        match &self.worker {
            Some((path, settings)) => super::compile_worker::compile(path, settings, bytes, deadline),
            None => engine.precompile_component(bytes).map_err(|e| format!("{e:#}")),
        }
    }

    /// [`CodeCache::load`] on a thread of its own, given at most `budget`
    /// (waiting for a compiler counts). Past the budget the plugin is
    /// refused; a worker process is killed, while an in-process compilation
    /// (which cannot be interrupted) finishes in the background, holding
    /// one of the [`MAX_COMPILERS`], and lands in the cache. A plain thread,
    /// not tokio's blocking pool, so a runtime shutting down never waits
    /// for it.
    pub(super) async fn load_within(
        &self,
        engine: &Engine,
        source: &ComponentSource,
        budget: Duration,
    ) -> Result<(Component, CacheOutcome), String> {
        let lock = self.compiling.lock().unwrap_or_else(|p| p.into_inner()).entry(source.sha256).or_default().clone();
        let (cache, engine, source) = (self.clone(), engine.clone(), source.clone());
        let deadline = Instant::now() + budget;
        let compile = async move {
            let held = lock.lock_owned().await;
            let compiler = cache.compilers.clone().acquire_owned().await.expect("never closed");
            let (done, result) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("gatehouse-compile".into())
                .spawn(move || {
                    let _held = (held, compiler);
                    let result = cache.load(&engine, &source, Some(deadline));
                    // The bytes are not needed past here: let them go before
                    // the loader goes on (they are not kept resident).
                    drop(source);
                    let _ = done.send(result);
                })
                .map_err(|e| format!("cannot start a compiler thread: {e}"))?;
            result.await.map_err(|_| "the compiler thread panicked".to_string())?
        };
        match tokio::time::timeout(budget, compile).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "compiling it took longer than the compile budget of {budget:?} ([engine] compile_timeout); \
                 precompile it with `gatehouse compile`, which has no budget"
            )),
        }
    }

    /// Path of the cached artifact for `source` under `engine`'s settings.
    pub(super) fn artifact_path(&self, engine: &Engine, source: &ComponentSource) -> Option<PathBuf> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let name = format!("{}-{:016x}.cwasm", hex::encode(source.sha256), hasher.finish());
        self.dir.as_ref().map(|dir| dir.join(name))
    }

    /// Deserializes the cached artifact of `source`, or compiles it (a
    /// worker process is killed at `deadline`) and caches the result.
    pub(super) fn load(
        &self,
        engine: &Engine,
        source: &ComponentSource,
        deadline: Option<Instant>,
    ) -> Result<(Component, CacheOutcome), String> {
        let Some(path) = self.artifact_path(engine, source) else {
            let compiled = self.precompile(engine, &source.bytes, deadline)?;
            return Ok((deserialize_bytes(engine, &compiled)?, CacheOutcome::Uncached));
        };
        if path.exists()
            && let Err(e) = crate::data_dir::trusted_file(&path)
        {
            // Someone else's or a loosened file is never run; compiling
            // again replaces it (the directory is ours).
            tracing::warn!(path = %path.display(), error = %e, "refusing an untrusted cached artifact; recompiling");
            let _ = std::fs::remove_file(&path);
        }
        if path.is_file() {
            match deserialize(engine, &path) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached artifact"),
            }
        }
        let compiled = self.precompile(engine, &source.bytes, deadline)?;
        if let Err(e) = write_atomically(&path, &compiled) {
            tracing::warn!(path = %path.display(), error = %e, "could not write compiled component to the cache");
        }
        let component = deserialize_bytes(engine, &compiled)?;
        Ok((component, CacheOutcome::Compiled))
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> Result<Component, String> {
    // SAFETY: the file was written by `CodeCache::load` with this engine's
    // compatibility hash in its name, in a directory only the sidecar may
    // write; wasmtime additionally checks its header and version.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|e| format!("{e:#}"))
}

#[allow(unsafe_code)]
fn deserialize_bytes(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    // SAFETY: `bytes` was produced a moment ago by `precompile_component`,
    // on this engine or, in the compile worker, on an engine built from the
    // same settings by this same binary; wasmtime checks its header and
    // compatibility hash.
    unsafe { Component::deserialize(engine, bytes) }.map_err(|e| format!("{e:#}"))
}

/// Writes via a temporary file and rename, so a crash never leaves a
/// truncated artifact under the final name. The temporary name is unique
/// per call (process id and a counter), so concurrent writers of the same
/// artifact, in one process or several, never write into one file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
