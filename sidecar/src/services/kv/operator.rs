//! The operator's read-only view of the store: usage against quotas, keys
//! and values of any plugin, for the admin API (through the running
//! sidecar's backend) and `gatehouse kv …` (the same, or the redb file
//! opened read-only when no sidecar has it). Nothing here writes.
//!
//! Everything shown is guest data: keys are escaped and bounded
//! ([`show_key`]), values are shown as escaped text when they are UTF-8
//! and as hex otherwise, bounded ([`show_value`]); the exact bytes are
//! only ever written where the operator asked for them raw.

use std::sync::Arc;

use serde::Serialize;

use super::backend::{Bucket, KvBackend, Namespace, Page, Usage};
use super::error::KvError;
use super::policy::{DEFAULT_BUCKET, Durability, KvPolicy, Quota};
use super::redb::RedbReader;
use crate::guest_text;

/// Escaped bytes of a key shown in a listing or a message.
pub const SHOWN_KEY: usize = guest_text::LINE;
/// Bytes of a value shown (escaped text, or hex of half as many bytes).
pub const SHOWN_VALUE: usize = 64 << 10;

/// Where the operator reads from.
pub enum KvReader {
    /// The running sidecar's backend (any backend).
    Live(Arc<dyn KvBackend>),
    /// The redb file, opened read-only.
    File(RedbReader),
}

/// A bucket to read through the backend trait: reads check no quota, so
/// any quota does.
fn reading(namespace: &Namespace) -> Bucket {
    Bucket { namespace: namespace.clone(), quota: Quota::default(), durability: Durability::Immediate }
}

impl KvReader {
    /// The value of `key`.
    pub async fn get(&self, namespace: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            KvReader::Live(backend) => backend.get(&reading(namespace), key).await,
            KvReader::File(file) => file.get(namespace, key),
        }
    }

    /// One page of keys starting with `prefix`, after `cursor`.
    pub async fn list_keys(
        &self,
        namespace: &Namespace,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, KvError> {
        match self {
            KvReader::Live(backend) => backend.list_keys(&reading(namespace), prefix, cursor, limit).await,
            KvReader::File(file) => file.list_keys(namespace, prefix, cursor, limit),
        }
    }

    /// What the namespace stores, and what its plugin stores in all.
    pub async fn usage(&self, namespace: &Namespace) -> Result<(Usage, Usage), KvError> {
        match self {
            KvReader::Live(backend) => {
                let report = backend.usage(&reading(namespace)).await?;
                Ok((report.bucket, report.plugin))
            }
            KvReader::File(file) => file.usage(namespace),
        }
    }

    /// The buckets of `plugin` that hold a key.
    pub async fn buckets(&self, plugin: &str) -> Result<Vec<String>, KvError> {
        match self {
            KvReader::Live(backend) => backend.buckets(plugin).await,
            KvReader::File(file) => file.buckets(plugin),
        }
    }

    /// A plugin's usage against its quotas, per bucket: each its grant
    /// names (the default bucket without a grant), and each that still
    /// holds keys though no grant names it any more (`granted: false`:
    /// its keys count in the plugin's total and quota).
    pub async fn plugin_usage(&self, plugin: &str, grant: Option<&KvPolicy>) -> Result<PluginUsage, KvError> {
        let granted: Vec<&str> = match grant {
            Some(policy) => policy.buckets.keys().map(String::as_str).collect(),
            None => vec![DEFAULT_BUCKET],
        };
        let stored = self.buckets(plugin).await?;
        let mut names: Vec<(&str, bool)> = granted.iter().map(|name| (*name, grant.is_some())).collect();
        names.extend(stored.iter().filter(|name| !granted.contains(&name.as_str())).map(|name| (name.as_str(), false)));
        names.sort();
        let mut buckets = Vec::with_capacity(names.len());
        let mut total = Usage::default();
        for (name, granted) in names {
            let (bucket, plugin_total) = self.usage(&Namespace::new(plugin, name)?).await?;
            buckets.push(BucketUsage { bucket: name.to_string(), granted, keys: bucket.keys, bytes: bucket.bytes });
            total = plugin_total;
        }
        Ok(PluginUsage {
            plugin: plugin.to_string(),
            granted: grant.is_some(),
            keys: total.keys,
            bytes: total.bytes,
            quota: grant.map(|g| g.quota.into()),
            buckets,
        })
    }
}

/// A plugin's usage, as `/admin/kv/usage` and `gatehouse kv usage` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PluginUsage {
    /// The plugin (a name from a policy file or the operator).
    pub plugin: String,
    /// Whether the plugin is loaded with a `[kv]` grant (data stays when
    /// the grant is removed).
    pub granted: bool,
    /// Keys, all buckets (what `max_keys` counts).
    pub keys: u64,
    /// Bytes of keys and values, all buckets (what `max_bytes` counts).
    pub bytes: u64,
    /// The grant's quotas; `None` without a grant.
    pub quota: Option<QuotaView>,
    /// The granted buckets (the default one without a grant), and those
    /// that hold keys without a grant, in name order.
    pub buckets: Vec<BucketUsage>,
}

/// One bucket's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BucketUsage {
    /// The bucket's name (from the policy: `a-z0-9_-`).
    pub bucket: String,
    /// Whether the plugin's `[kv]` grant names it now.
    pub granted: bool,
    /// Keys in it.
    pub keys: u64,
    /// Bytes of its keys and values.
    pub bytes: u64,
}

/// The quotas, as JSON shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct QuotaView {
    /// `max_keys`.
    pub max_keys: u64,
    /// `max_bytes`.
    pub max_bytes: u64,
    /// `max_key`.
    pub max_key: u64,
    /// `max_value`.
    pub max_value: u64,
}

impl From<Quota> for QuotaView {
    fn from(q: Quota) -> Self {
        QuotaView { max_keys: q.max_keys, max_bytes: q.max_bytes, max_key: q.max_key, max_value: q.max_value }
    }
}

/// A key as it may be printed: escaped, at most [`SHOWN_KEY`] bytes.
pub fn show_key(key: &str) -> String {
    guest_text::escape(key, SHOWN_KEY)
}

/// A value as it may be printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ShownValue {
    /// Its length in bytes.
    pub size: u64,
    /// `text` (UTF-8, escaped) or `hex` (anything else).
    pub encoding: String,
    /// The value in that encoding, cut at [`SHOWN_VALUE`] bytes.
    pub shown: String,
    /// Whether `shown` is cut short.
    pub truncated: bool,
}

/// Shows `value` safely: escaped text when it is UTF-8 (control
/// characters, line breaks, ANSI and bidirectional controls made visible),
/// lowercase hex otherwise; either way at most [`SHOWN_VALUE`] bytes.
pub fn show_value(value: &[u8]) -> ShownValue {
    let size = value.len() as u64;
    // Checked on a prefix: a 16 MiB value is not decoded to show 64 KiB.
    // A cut through a character still counts as text.
    let head = &value[..value.len().min(SHOWN_VALUE + 4)];
    let text = match std::str::from_utf8(head) {
        Ok(text) => Some(text),
        Err(e) if e.error_len().is_none() && head.len() < value.len() => Some(
            // The prefix ends inside a character: the rest decides.
            std::str::from_utf8(&head[..e.valid_up_to()]).expect("valid up to here"),
        ),
        Err(_) => None,
    };
    match text {
        Some(text) => {
            // At most 10 escaped bytes per byte of a 64 KiB prefix.
            let whole = guest_text::escape(text, usize::MAX);
            let truncated = text.len() < value.len() || whole.len() > SHOWN_VALUE;
            // Cut, it ends with `…[N more bytes]`, N counting the whole value.
            let shown = if truncated { guest_text::escape_bytes(value, SHOWN_VALUE) } else { whole };
            ShownValue { size, encoding: "text".into(), shown, truncated }
        }
        None => {
            let head = &value[..value.len().min(SHOWN_VALUE / 2)];
            ShownValue { size, encoding: "hex".into(), shown: hex::encode(head), truncated: head.len() < value.len() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shown_escaped_or_in_hex_and_bounded() {
        let v = show_value(b"hello");
        assert_eq!((v.encoding.as_str(), v.shown.as_str(), v.size, v.truncated), ("text", "hello", 5, false));
        let v = show_value("a\nb\u{1b}[31m\u{202e}".as_bytes());
        assert_eq!(v.encoding, "text");
        assert!(!v.shown.contains('\n') && !v.shown.contains('\u{1b}') && !v.shown.contains('\u{202e}'), "{v:?}");
        let v = show_value(&[0xff, 0x00, 0x10]);
        assert_eq!((v.encoding.as_str(), v.shown.as_str()), ("hex", "ff0010"));
        let big = vec![b'x'; 1 << 20];
        let v = show_value(&big);
        assert!(v.truncated && v.shown.len() <= SHOWN_VALUE + 64, "{}", v.shown.len());
        let v = show_value(&vec![0xff; 1 << 20]);
        assert!(v.truncated && v.shown.len() == SHOWN_VALUE, "{}", v.shown.len());
        // Text whose bytes fit but whose escaped form does not is cut too.
        let controls = vec![0x01; SHOWN_VALUE / 2];
        let v = show_value(&controls);
        assert_eq!(v.encoding, "text");
        assert!(v.truncated && v.shown.len() <= SHOWN_VALUE + 64, "{}", v.shown.len());
        // A long UTF-8 value cut inside a character is still text.
        let mut long = vec![b'a'; SHOWN_VALUE + 3];
        long.extend_from_slice("é".repeat(10).as_bytes());
        assert_eq!(show_value(&long).encoding, "text");
    }

    #[test]
    fn keys_are_escaped_and_bounded() {
        assert_eq!(show_key("plain/key"), "plain/key");
        let forged = show_key("k\n2024 INFO forged\u{1b}[2J");
        assert!(!forged.contains('\n') && !forged.contains('\u{1b}'), "{forged}");
        assert!(show_key(&"\u{202e}".repeat(4096)).len() <= SHOWN_KEY + 64);
    }
}
