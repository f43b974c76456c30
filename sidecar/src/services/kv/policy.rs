//! The `[kv]` grant: how much a plugin may store, how fast, and in which
//! buckets. Pure: no I/O, table-tested here; the TOML is read by
//! `policy::load`, which reports problems with file and line.
//!
//! Quotas count the plugin as a whole (every bucket together), so granting
//! a bucket never multiplies what a plugin may store. The operation rate
//! reuses the HTTP service's [`Rate`] type (public, unchanged); the token
//! bucket that enforces it belongs to the doors, which come later.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

pub use crate::services::http::policy::{Per, Rate};

/// The bucket every `[kv]` grant includes (`""` and `"default"` in the
/// wasi:keyvalue doors).
pub const DEFAULT_BUCKET: &str = "default";
/// Default `[kv] max_keys`.
pub const DEFAULT_MAX_KEYS: u64 = 10_000;
/// Default `[kv] max_bytes` (keys + values, all buckets).
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
/// Default `[kv] max_key`.
pub const DEFAULT_MAX_KEY: u64 = 256;
/// Default `[kv] max_value`.
pub const DEFAULT_MAX_VALUE: u64 = 64 << 10;
/// Default `[kv] rate` (operations, reads included).
pub const DEFAULT_RATE: Rate = Rate { count: NonZeroU32::new(500).unwrap(), per: Per::Second };

/// Largest `max_key` a policy may set, and the longest key any call may
/// name: longer is `invalid-input` before anything is copied.
pub const MAX_KEY_CEILING: u64 = 4 << 10;
/// Largest `max_value` a policy may set: bounds what one write carries
/// through the writer queue.
pub const MAX_VALUE_CEILING: u64 = 16 << 20;
/// Largest `max_keys` a policy may set.
pub const MAX_KEYS_CEILING: u64 = 1_000_000_000;
/// Largest `max_bytes` a policy may set.
pub const MAX_BYTES_CEILING: u64 = 1 << 40;
/// Most buckets one plugin may be granted besides the default one.
pub const MAX_BUCKETS: usize = 64;
/// Longest bucket name.
pub const MAX_BUCKET_NAME: usize = 64;

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the transaction holding it is on disk (fsync): a write that
    /// returned survives a crash. The default.
    #[default]
    Immediate,
    /// After the transaction is committed in memory, before the fsync. A
    /// crash (of the process or the machine) loses the writes acknowledged
    /// since the last durable commit: at most [`crate::services::kv::redb::RELAXED_FLUSH`]
    /// of them, as the writer commits durably at least that often while
    /// relaxed writes are pending. Opt-in per bucket, for caches.
    Relaxed,
}

/// The storage quotas of one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Quota {
    /// Keys, all buckets together.
    pub max_keys: u64,
    /// Bytes of keys plus values, all buckets together.
    pub max_bytes: u64,
    /// Longest key a write may create, in bytes.
    pub max_key: u64,
    /// Largest value a write may store, in bytes.
    pub max_value: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            max_keys: DEFAULT_MAX_KEYS,
            max_bytes: DEFAULT_MAX_BYTES,
            max_key: DEFAULT_MAX_KEY,
            max_value: DEFAULT_MAX_VALUE,
        }
    }
}

/// Everything `[kv]` grants a plugin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KvPolicy {
    /// Storage quotas.
    pub quota: Quota,
    /// Operations per unit of time, across all invocations and buckets.
    pub rate: Rate,
    /// Granted buckets (always including [`DEFAULT_BUCKET`]) and their
    /// durability.
    pub buckets: BTreeMap<String, Durability>,
}

impl Default for KvPolicy {
    fn default() -> Self {
        KvPolicy {
            quota: Quota::default(),
            rate: DEFAULT_RATE,
            buckets: BTreeMap::from([(DEFAULT_BUCKET.to_string(), Durability::Immediate)]),
        }
    }
}

/// A bucket name a guest asked for that the policy does not grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bucket `{0}` is not granted to this plugin")]
pub struct NotGranted(pub String);

impl KvPolicy {
    /// The durability of a granted bucket, by the name a guest uses
    /// (`""` is the default bucket). The name in the error is the guest's:
    /// escape it before printing.
    pub fn bucket(&self, name: &str) -> Result<(&str, Durability), NotGranted> {
        let name = if name.is_empty() { DEFAULT_BUCKET } else { name };
        self.buckets
            .get_key_value(name)
            .map(|(name, durability)| (name.as_str(), *durability))
            .ok_or_else(|| NotGranted(name.to_string()))
    }
}

/// Whether `name` is a valid bucket name: 1–64 of `a-z0-9_-`. Such names
/// never contain a separator or a byte that could be read as part of
/// another namespace.
pub fn check_bucket_name(name: &str) -> Result<(), String> {
    check_name("bucket", name)
}

/// The rule of bucket names, for any name used in a namespace (plugin
/// names follow it too); the message names `what`.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_BUCKET_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name `{}`: use 1 to {MAX_BUCKET_NAME} of `a-z`, `0-9`, `_` and `-`",
            crate::guest_text::escaped(name, crate::guest_text::SHORT)
        ))
    }
}

/// Checks one quota field against its range; the message names the field.
pub fn check_quota_field(field: &str, value: u64) -> Result<u64, String> {
    let (min, max) = match field {
        "max_keys" => (1, MAX_KEYS_CEILING),
        "max_bytes" => (1, MAX_BYTES_CEILING),
        "max_key" => (1, MAX_KEY_CEILING),
        "max_value" => (0, MAX_VALUE_CEILING),
        _ => return Err(format!("unknown quota `{field}`")),
    };
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("[kv] {field} {value} is out of range: it must be between {min} and {max}"))
    }
}

/// Builds the bucket table from the granted names and the relaxed ones.
/// Returns every problem, each with the index of the entry at fault
/// (`Granted(i)` in `buckets`, `Relaxed(i)` in `relaxed`).
pub fn bucket_table(buckets: &[&str], relaxed: &[&str]) -> Result<BTreeMap<String, Durability>, Vec<(Entry, String)>> {
    let mut table = BTreeMap::from([(DEFAULT_BUCKET.to_string(), Durability::Immediate)]);
    let mut problems = Vec::new();
    if buckets.len() > MAX_BUCKETS {
        problems.push((Entry::Granted(MAX_BUCKETS), format!("at most {MAX_BUCKETS} buckets may be granted")));
    }
    for (i, name) in buckets.iter().enumerate() {
        if let Err(reason) = check_bucket_name(name) {
            problems.push((Entry::Granted(i), reason));
        } else if *name == DEFAULT_BUCKET {
            problems.push((Entry::Granted(i), format!("`{DEFAULT_BUCKET}` is always granted: do not list it")));
        } else if table.insert(name.to_string(), Durability::Immediate).is_some() {
            problems.push((Entry::Granted(i), format!("bucket `{name}` is listed twice")));
        }
    }
    for (i, name) in relaxed.iter().enumerate() {
        match table.get_mut(*name) {
            Some(durability @ Durability::Immediate) => *durability = Durability::Relaxed,
            Some(Durability::Relaxed) => problems.push((Entry::Relaxed(i), format!("bucket `{name}` is listed twice"))),
            None => problems.push((
                Entry::Relaxed(i),
                format!(
                    "relaxed bucket `{}` is not granted: list it in `buckets` (or use `{DEFAULT_BUCKET}`)",
                    crate::guest_text::escaped(name, crate::guest_text::SHORT)
                ),
            )),
        }
    }
    if problems.is_empty() { Ok(table) } else { Err(problems) }
}

/// Which list entry a problem of [`bucket_table`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// An entry of `buckets`.
    Granted(usize),
    /// An entry of `relaxed`.
    Relaxed(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_table() {
        let long = "a".repeat(64);
        for good in ["a", "cache", "user-sessions", "x_1", "0", long.as_str()] {
            assert!(check_bucket_name(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(65);
        for bad in ["", "Cache", "a/b", "a.b", "a b", "a\0", "é", "../x", too_long.as_str(), "a\n"] {
            assert!(check_bucket_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quota_ranges_table() {
        let cases: &[(&str, u64, bool)] = &[
            ("max_keys", 0, false),
            ("max_keys", 1, true),
            ("max_keys", MAX_KEYS_CEILING, true),
            ("max_keys", MAX_KEYS_CEILING + 1, false),
            ("max_bytes", 0, false),
            ("max_bytes", MAX_BYTES_CEILING, true),
            ("max_bytes", MAX_BYTES_CEILING + 1, false),
            ("max_key", 0, false),
            ("max_key", 1, true),
            ("max_key", 4096, true),
            ("max_key", 4097, false),
            ("max_value", 0, true),
            ("max_value", 16 << 20, true),
            ("max_value", (16 << 20) + 1, false),
            ("max_other", 1, false),
        ];
        for &(field, value, ok) in cases {
            let result = check_quota_field(field, value);
            assert_eq!(result.is_ok(), ok, "{field} = {value}: {result:?}");
            if let Err(reason) = result {
                assert!(reason.contains(field), "{reason}");
            }
        }
    }

    #[test]
    fn bucket_tables() {
        let table = bucket_table(&["cache", "sessions"], &["cache", "default"]).unwrap();
        assert_eq!(
            table.into_iter().collect::<Vec<_>>(),
            vec![
                ("cache".to_string(), Durability::Relaxed),
                ("default".to_string(), Durability::Relaxed),
                ("sessions".to_string(), Durability::Immediate),
            ]
        );
        let refused: &[(&[&str], &[&str], Entry, &str)] = &[
            (&["default"], &[], Entry::Granted(0), "always granted"),
            (&["a", "a"], &[], Entry::Granted(1), "twice"),
            (&["A"], &[], Entry::Granted(0), "invalid bucket name"),
            (&["a"], &["b"], Entry::Relaxed(0), "not granted"),
            (&["a"], &["a", "a"], Entry::Relaxed(1), "twice"),
        ];
        for (buckets, relaxed, entry, reason) in refused {
            let problems = bucket_table(buckets, relaxed).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].0, *entry);
            assert!(problems[0].1.contains(reason), "{problems:?}");
        }
        let many: Vec<String> = (0..=MAX_BUCKETS).map(|i| format!("b{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(bucket_table(&many[..MAX_BUCKETS], &[]).is_ok());
        assert!(bucket_table(&many, &[]).is_err());
    }

    #[test]
    fn defaults_and_lookup() {
        let policy = KvPolicy::default();
        assert_eq!(policy.quota, Quota { max_keys: 10_000, max_bytes: 10 << 20, max_key: 256, max_value: 64 << 10 });
        assert_eq!(policy.rate.to_string(), "500/s");
        assert_eq!(policy.bucket(""), Ok(("default", Durability::Immediate)));
        assert_eq!(policy.bucket("default"), Ok(("default", Durability::Immediate)));
        assert_eq!(policy.bucket("other"), Err(NotGranted("other".into())));
        let policy = KvPolicy { buckets: bucket_table(&["cache"], &["cache"]).unwrap(), ..KvPolicy::default() };
        assert_eq!(policy.bucket("cache"), Ok(("cache", Durability::Relaxed)));
    }
}
