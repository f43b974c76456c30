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

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

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
}

impl CodeCache {
    pub(super) fn new(dir: Option<PathBuf>) -> Self {
        CodeCache { dir }
    }

    /// Path of the cached artifact for `source` under `engine`'s settings.
    pub(super) fn artifact_path(&self, engine: &Engine, source: &ComponentSource) -> Option<PathBuf> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let name = format!("{}-{:016x}.cwasm", hex::encode(source.sha256), hasher.finish());
        self.dir.as_ref().map(|dir| dir.join(name))
    }

    pub(super) fn load(&self, engine: &Engine, source: &ComponentSource) -> Result<(Component, CacheOutcome), String> {
        let Some(path) = self.artifact_path(engine, source) else {
            let component = Component::new(engine, &*source.bytes).map_err(|e| format!("{e:#}"))?;
            return Ok((component, CacheOutcome::Uncached));
        };
        if path.is_file() {
            match deserialize(engine, &path) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached artifact"),
            }
        }
        let compiled = engine.precompile_component(&source.bytes).map_err(|e| format!("{e:#}"))?;
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
    // SAFETY: `bytes` was produced by `Engine::precompile_component` on this
    // very engine a moment ago.
    unsafe { Component::deserialize(engine, bytes) }.map_err(|e| format!("{e:#}"))
}

/// Writes via a temporary file and rename, so a crash never leaves a
/// truncated artifact under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp =
        dir.join(format!(".{}.tmp-{}", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
