//! Secrets the platform holds for plugins (API tokens, passwords), named in
//! `gatehouse.toml` under `[secrets.<name>]` and referenced by name from
//! policies. Plugins never see them: the sidecar adds them to requests
//! itself. Values are read when plugins are loaded, so reloading picks up a
//! rotated secret.

use std::path::PathBuf;

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the sidecar process.
    Env(String),
    /// A file (for example a mounted Kubernetes or Docker secret). One
    /// trailing newline is ignored.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the current value. The error names the source, never the value.
    pub fn read(&self) -> Result<String, String> {
        match self {
            SecretSource::Env(var) => std::env::var(var).map_err(|e| format!("environment variable `{var}`: {e}")),
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|text| {
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    text.strip_suffix('\r').unwrap_or(text).to_string()
                })
                .map_err(|e| format!("file `{}`: {e}", path.display())),
        }
    }
}
