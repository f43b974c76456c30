//! Sidecar settings, read from `gatehouse.toml`.
//!
//! Everything has a default, so the file is optional. Relative paths are
//! resolved against the directory that holds the file, so the sidecar
//! behaves the same whatever directory it is started from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// The sidecar's own state: compiled-code cache (and, later, embedded
    /// databases). Must be writable only by the sidecar.
    pub data_dir: PathBuf,
    /// Engine sizing.
    pub runtime: RuntimeSettings,
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
        Config::from_file(raw, base).map_err(fail)
    }

    fn from_file(raw: FileConfig, base: &Path) -> Result<Config, String> {
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let secrets = raw
            .secrets
            .into_iter()
            .map(|(name, secret)| match (secret.env, secret.file) {
                (Some(var), None) => Ok((name, SecretSource::Env(var))),
                (None, Some(file)) => Ok((name, SecretSource::File(resolve(file)))),
                _ => Err(format!("[secrets.{name}]: set exactly one of `env` or `file`")),
            })
            .collect::<Result<_, _>>()?;
        let policy_dir = resolve(raw.policy_dir.unwrap_or_else(|| "policies".into()));
        let plugin_dir = raw.plugin_dir.map(resolve).unwrap_or_else(|| policy_dir.clone());
        let data_dir = resolve(raw.data_dir.unwrap_or_else(|| ".gatehouse".into()));
        let defaults = RuntimeSettings::default();
        let engine = raw.engine;
        let runtime = RuntimeSettings {
            max_memory: engine.max_memory.map_or(defaults.max_memory, |s| s.0),
            max_instances: engine.max_instances.unwrap_or(defaults.max_instances),
            epoch_tick: engine.epoch_tick.map_or(defaults.epoch_tick, |d| d.0),
            compile_timeout: engine.compile_timeout.map_or(defaults.compile_timeout, |d| d.0),
            keep_resident: engine.keep_resident.map_or(defaults.keep_resident, |s| s.0),
            cache_dir: Some(data_dir.join("cache")),
            secrets,
            ..defaults
        };
        Ok(Config { policy_dir, plugin_dir, data_dir, runtime })
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
    fn a_secret_needs_exactly_one_source() {
        for text in ["[secrets.t]\nenv = \"T\"\nfile = \"t\"\n", "[secrets.t]\n"] {
            let error = load(text).unwrap_err().to_string();
            assert!(error.ends_with("[secrets.t]: set exactly one of `env` or `file`"), "{error}");
        }
    }
}
