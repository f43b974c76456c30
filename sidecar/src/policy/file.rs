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
}
