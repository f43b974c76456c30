//! Permission manifests: what a component asks for, shipped beside it as
//! `<stem>.permissions.toml` (`fetcher.wasm` -> `fetcher.permissions.toml`)
//! in a policy's own syntax for the service sections (`[http]`, `[kv]`,
//! `[sql.<alias>]`), validated by the same rules.
//!
//! Why a file beside the component and not a custom section in it: a Rust
//! or Go toolchain puts custom sections in the core module nested inside
//! the component, and release builds often strip them; a file needs no
//! tool to write or to read, and its content is recorded (and so bound to
//! the component's hash) in the audit log whenever it changes.
//!
//! A manifest is never enforced: the policy file alone decides what a
//! plugin may do. It is what the approval gate and `gatehouse grants diff`
//! compare: an upgrade whose manifest asks for more than was approved
//! waits for a person, and the diff lists what is granted but not asked
//! for, and asked for but not granted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::services::http::HttpPolicy;
use crate::services::kv::KvPolicy;
use crate::services::sql::SqlPolicy;

/// How a manifest's file name ends. The policy directory skips such files,
/// so a component may sit in it with its manifest.
pub const SUFFIX: &str = ".permissions.toml";

/// What a manifest requests, in the form the grants serialize to, so that
/// the two compare item by item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Requested {
    /// `[http]`.
    pub http: Option<HttpPolicy>,
    /// `[kv]`.
    pub kv: Option<KvPolicy>,
    /// `[sql.<alias>]`.
    pub sql: BTreeMap<String, SqlPolicy>,
}

/// Where the manifest of the component at `component` is: beside it, its
/// extension replaced.
pub fn path_for(component: &Path) -> PathBuf {
    let stem = component.file_stem().unwrap_or_default().to_string_lossy();
    component.with_file_name(format!("{stem}{SUFFIX}"))
}

/// Whether `file` is a manifest (by its name), not a policy.
pub fn is_manifest(file: &Path) -> bool {
    file.file_name().is_some_and(|name| name.to_string_lossy().ends_with(SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_sits_beside_the_component() {
        assert_eq!(path_for(Path::new("/p/fetcher.wasm")), Path::new("/p/fetcher.permissions.toml"));
        assert_eq!(path_for(Path::new("plain")), Path::new("plain.permissions.toml"));
        assert!(is_manifest(Path::new("/p/fetcher.permissions.toml")));
        assert!(!is_manifest(Path::new("/p/fetcher.toml")));
    }
}
