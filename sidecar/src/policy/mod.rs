//! Policies as code: one TOML file per plugin in the policy directory,
//! validated into typed grants. Deny by default: what a file does not grant,
//! the plugin does not get.
//!
//! A file with any problem (unknown field, unparsable value, impossible
//! combination, missing component, hash mismatch, duplicate plugin name) is
//! refused as a whole, and every problem is reported with file and line.
//! The format is documented in `policies/README.md`.

mod error;
mod file;
pub mod grant_diff;
pub mod kept;
mod load;
pub mod manifest;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::services::http::HttpPolicy;
use crate::services::kv::KvPolicy;
use crate::services::sql::SqlPolicy;

pub use error::{PolicyError, shown};
pub use load::{ComponentDir, MAX_COMPONENT_SIZE, MAX_POLICY_FILE, PolicyLoad, is_plugin_name, load_dir, load_dir_in};

/// Default per-invocation memory limit when `[limits] memory` is absent.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// Default per-invocation deadline when `[limits] timeout` is absent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of concurrent invocations per plugin.
pub const DEFAULT_CONCURRENCY: u32 = 16;
/// Default largest output document.
pub const DEFAULT_MAX_OUTPUT: u64 = 16 << 20;

/// The validated policies of a directory, by plugin name.
#[derive(Debug, Default, Clone)]
pub struct PolicySet {
    /// Plugin name -> its policy.
    pub plugins: BTreeMap<String, PluginPolicy>,
}

/// Everything the sidecar grants one plugin. Two are equal when they grant
/// the same to the same component bytes (a reload that changes neither is
/// no change). Serialized, it is what [`grant_diff`] compares.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginPolicy {
    /// Unique plugin name: lowercase ASCII letters, digits, `-` and `_`.
    pub name: String,
    /// The policy file this came from. Not a grant (and its name need not
    /// be UTF-8, which JSON cannot carry): the audit log names it apart.
    #[serde(skip)]
    pub file: PathBuf,
    /// SHA-256 of the file's bytes as read: the audit log names the file
    /// and this hash as the actor of the changes a load from disk makes.
    #[serde(skip)]
    pub file_sha256: [u8; 32],
    /// The component's bytes, read once and checked against the pin.
    pub component: ComponentSource,
    /// Where the guest's stdout/stderr go.
    pub stdio: Stdio,
    /// Per-invocation resource limits.
    pub limits: Limits,
    /// Outbound HTTP (`[http]`); `None` grants no network access at all.
    pub http: Option<HttpPolicy>,
    /// Key-value storage (`[kv]`); `None` grants no storage. Removing the
    /// section keeps the plugin's data (it is only no longer reachable).
    pub kv: Option<KvPolicy>,
    /// SQL (`[sql.<alias>]`), by database alias; empty grants no database.
    /// Whether each alias exists (and is of a dialect the grant suits) is
    /// checked when the plugin loads, against the settings.
    pub sql: BTreeMap<String, SqlPolicy>,
    /// What the component's permission manifest asks for, when it ships
    /// one ([`manifest`]); compared by approvals, never enforced.
    pub requested: Option<manifest::Requested>,
    /// The bytes this was read from, for the copy approvals keep
    /// ([`kept`]): taken at the load, never read again (the files may
    /// have changed since).
    #[serde(skip)]
    pub source: PolicySource,
}

/// The policy file's and the manifest's bytes as the loader read them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicySource {
    /// The policy file.
    pub policy: Arc<[u8]>,
    /// The permission manifest, if the component ships one.
    pub manifest: Option<Arc<[u8]>>,
}

impl PluginPolicy {
    /// Whether the policy has the named service section (`"http"`, ...).
    pub fn grants(&self, section: &str) -> bool {
        match section {
            "http" => self.http.is_some(),
            "kv" => self.kv.is_some(),
            "sql" => !self.sql.is_empty(),
            _ => false,
        }
    }
}

/// A component's bytes and where they came from. Serialized as its digest
/// alone: the bytes are the grant, not where they were read from.
#[derive(Clone, Serialize)]
pub struct ComponentSource {
    /// Path the bytes were read from.
    #[serde(skip)]
    pub path: PathBuf,
    /// SHA-256 of `bytes`; the key of the compiled-code cache.
    #[serde(serialize_with = "serialize_hex")]
    pub sha256: [u8; 32],
    /// The component itself. Kept so that what was hashed is what runs.
    #[serde(skip)]
    pub bytes: Arc<[u8]>,
}

/// The same file with the same digest: the bytes are compared by hash.
impl PartialEq for ComponentSource {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.sha256 == other.sha256
    }
}

impl fmt::Debug for ComponentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentSource")
            .field("path", &self.path)
            .field("sha256", &hex::encode(self.sha256))
            .field("len", &self.bytes.len())
            .finish()
    }
}

fn serialize_hex<S: serde::Serializer>(digest: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(digest))
}

/// Per-invocation limits (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Maximum linear memory of one invocation, in bytes.
    pub memory: u64,
    /// Wall-clock deadline of one invocation.
    #[serde(serialize_with = "units::serialize_duration")]
    pub timeout: Duration,
    /// Invocations of this plugin that may run at once.
    pub concurrency: u32,
    /// Largest output document, in bytes (body and content type).
    pub max_output: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: DEFAULT_MEMORY,
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }
}

/// What happens to a guest's stdout and stderr (`[plugin] stdio`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stdio {
    /// Each line becomes a log event tagged with the plugin (the default).
    #[default]
    Log,
    /// Written raw to the sidecar's own stdout/stderr. Grant sparingly:
    /// the guest can then forge output that looks like the sidecar's.
    Inherit,
    /// Dropped.
    Discard,
}
