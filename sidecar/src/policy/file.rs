//! The on-disk shape of a policy file, exactly as written by platform
//! teams. Unknown fields are refused so that a typo never silently turns a
//! restriction off. Values keep their source spans for error messages.

use serde::Deserialize;
use toml::Spanned;

use super::Stdio;
use super::units::{ByteSize, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    pub plugin: PluginSection,
    #[serde(default)]
    pub limits: LimitsSection,
    pub http: Option<HttpSection>,
    pub kv: Option<KvSection>,
    /// `[sql.<alias>]`, one per database alias.
    #[serde(default)]
    pub sql: std::collections::BTreeMap<Spanned<String>, crate::services::sql::SqlSection>,
}

/// A component's permission manifest (`<stem>.permissions.toml` beside
/// it): the grant sections of a policy, in the same syntax, saying what the
/// component asks for. See `super::manifest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ManifestFile {
    pub http: Option<HttpSection>,
    pub kv: Option<KvSection>,
    #[serde(default)]
    pub sql: std::collections::BTreeMap<Spanned<String>, crate::services::sql::SqlSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PluginSection {
    pub name: Spanned<String>,
    pub component: Spanned<String>,
    pub sha256: Option<Spanned<String>>,
    #[serde(default)]
    pub stdio: Stdio,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsSection {
    pub memory: Option<Spanned<ByteSize>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub concurrency: Option<Spanned<i64>>,
    pub max_output: Option<Spanned<ByteSize>>,
}

/// `[http]`: see `services::http::policy` for the meaning of each field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpSection {
    pub allow: Spanned<Vec<Spanned<String>>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub rate: Option<Spanned<String>>,
    pub max_request: Option<Spanned<ByteSize>>,
    pub max_response: Option<Spanned<ByteSize>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub max_redirects: Option<Spanned<i64>>,
    #[serde(default)]
    pub deny_headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_headers: Vec<Spanned<String>>,
    #[serde(default)]
    pub body_methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub inject: Vec<InjectSection>,
}

/// `[[http.inject]]`: a header the platform adds for one origin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InjectSection {
    pub origin: Spanned<String>,
    pub header: Spanned<String>,
    pub secret: Spanned<String>,
    #[serde(default)]
    pub prefix: String,
}

/// `[kv]`: see `services::kv::policy` for the meaning of each field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KvSection {
    pub max_keys: Option<Spanned<i64>>,
    pub max_bytes: Option<Spanned<ByteSize>>,
    pub max_key: Option<Spanned<ByteSize>>,
    pub max_value: Option<Spanned<ByteSize>>,
    pub rate: Option<Spanned<String>>,
    #[serde(default)]
    pub buckets: Vec<Spanned<String>>,
    #[serde(default)]
    pub relaxed: Vec<Spanned<String>>,
}
