//! The storage seam: [`KvBackend`], what every backend (redb now,
//! PostgreSQL later) implements, and the checks they share so that both
//! refuse exactly the same inputs.
//!
//! # Values and keys
//! Keys are UTF-8 strings of 1 to [`MAX_KEY_CEILING`] bytes (what both
//! wasi:keyvalue drafts use); values are bytes. [`KvBackend::increment`]
//! reads and writes **decimal ASCII** (`-?[0-9]+`, an `i64`), the encoding
//! wasi:keyvalue hosts (Spin, wasmCloud) store and components read back with
//! `get`; an absent key counts as 0.
//!
//! # Cursors
//! A cursor is the last key of a page, bound to its namespace: lowercase
//! hex of `0x01 || tag || key`, where `tag` is the first 12 bytes of
//! SHA-256 over the plugin and bucket names. The next page starts strictly
//! after that key, so a key that exists for the whole scan is returned
//! exactly once, whatever is written meanwhile. A cursor of another plugin
//! or bucket (or a malformed one) is `invalid-input`. The key inside a cursor
//! is the caller's own, so cursors need no secret: forging one only moves
//! the start of a scan that never leaves the namespace.

use std::future::Future;
use std::pin::Pin;

use sha2::{Digest, Sha256};

use super::error::KvError;
use super::policy::{Durability, KvPolicy, MAX_KEY_CEILING, Quota, check_name};
use crate::guest_text::{SHORT, escaped};

/// Most keys one `list_keys` page returns; larger limits are lowered to it.
pub const MAX_PAGE: u32 = 1000;
/// Most items one `get_many`, `set_many` or `delete_many` may name.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Most bytes (keys and values) one `set_many` may carry, or one
/// `get_many` may return.
pub const MAX_BATCH_BYTES: u64 = 32 << 20;

const CURSOR_VERSION: u8 = 1;
const CURSOR_TAG: usize = 12;

/// A future returned by a [`KvBackend`] method (boxed so the trait can be a
/// `dyn` object that the runtime holds without knowing the backend).
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// One namespace: a plugin's bucket. Both names are validated (1–64 of
/// `a-z0-9_-`), so neither can contain a separator or reach another
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    plugin: String,
    bucket: String,
}

impl Namespace {
    /// Checks both names.
    pub fn new(plugin: &str, bucket: &str) -> Result<Namespace, KvError> {
        check_name("plugin", plugin).map_err(KvError::InvalidInput)?;
        check_name("bucket", bucket).map_err(KvError::InvalidInput)?;
        Ok(Namespace { plugin: plugin.to_string(), bucket: bucket.to_string() })
    }

    /// The plugin.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The tag that binds a cursor to this namespace.
    fn tag(&self) -> [u8; CURSOR_TAG] {
        let mut hash = Sha256::new();
        hash.update(b"gatehouse kv cursor\0");
        hash.update(self.plugin.as_bytes());
        hash.update(b"\0");
        hash.update(self.bucket.as_bytes());
        let digest = hash.finalize();
        digest[..CURSOR_TAG].try_into().expect("SHA-256 is longer than the tag")
    }

    /// The cursor that resumes a scan after `key`.
    pub fn cursor_after(&self, key: &str) -> String {
        let mut raw = Vec::with_capacity(1 + CURSOR_TAG + key.len());
        raw.push(CURSOR_VERSION);
        raw.extend_from_slice(&self.tag());
        raw.extend_from_slice(key.as_bytes());
        hex::encode(raw)
    }

    /// The key a cursor of this namespace resumes after. The length is
    /// checked before anything is decoded.
    pub fn resume_after(&self, cursor: &str) -> Result<String, KvError> {
        let invalid = |why: &str| KvError::InvalidInput(format!("invalid cursor: {why}"));
        let max = 2 * (1 + CURSOR_TAG + MAX_KEY_CEILING as usize);
        if cursor.len() > max || cursor.len() < 2 * (1 + CURSOR_TAG + 1) {
            return Err(invalid("wrong length"));
        }
        let raw = hex::decode(cursor).map_err(|_| invalid("not a cursor this store returned"))?;
        if raw[0] != CURSOR_VERSION {
            return Err(invalid("unknown version"));
        }
        if raw[1..1 + CURSOR_TAG] != self.tag() {
            return Err(invalid("it belongs to another plugin or bucket"));
        }
        String::from_utf8(raw[1 + CURSOR_TAG..].to_vec()).map_err(|_| invalid("not a cursor this store returned"))
    }
}

/// A namespace opened under a policy: what a backend needs to run a call
/// (the quotas it checks writes against, when to acknowledge them). Built
/// once per grant from its policy: a reload makes a new grant, which the
/// next invocation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Where the data lives.
    pub namespace: Namespace,
    /// The plugin's quotas (counted over all its buckets).
    pub quota: Quota,
    /// When writes to this bucket are acknowledged.
    pub durability: Durability,
}

impl Bucket {
    /// The bucket `name` (`""` = the default one) of `plugin`, if its
    /// policy grants it: `denied` otherwise.
    pub fn open(plugin: &str, policy: &KvPolicy, name: &str) -> Result<Bucket, KvError> {
        let (name, durability) = policy.bucket(name).map_err(|e| not_granted(&e.0))?;
        Ok(Bucket { namespace: Namespace::new(plugin, name)?, quota: policy.quota, durability })
    }
}

/// The refusal of a bucket the policy does not grant, naming it as the
/// guest did (escaped).
pub fn not_granted(name: &str) -> KvError {
    KvError::Denied(format!("bucket `{}` is not granted to this plugin", escaped(name, SHORT)))
}

/// What is stored: keys and bytes (keys + values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Number of keys.
    pub keys: u64,
    /// Bytes of keys plus values.
    pub bytes: u64,
}

/// The answer of [`KvBackend::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageReport {
    /// This bucket alone.
    pub bucket: Usage,
    /// The plugin, all buckets: what the quotas count.
    pub plugin: Usage,
    /// The quotas of the call's bucket.
    pub quota: Quota,
}

/// One page of `list_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Keys in byte order.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` when this is the last one.
    pub cursor: Option<String>,
}

/// A key-value store of many namespaces, with quotas enforced inside each
/// write's own transaction. Every write is atomic: it is applied whole or,
/// when refused (quota, invalid input, failure), not at all. A write that
/// returned `Ok` is durable unless its bucket opted into
/// [`Durability::Relaxed`].
///
/// Implementations must pass the behavioural suite in
/// `sidecar/tests/all/kv/suite.rs`.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), gatehouse::services::kv::KvError> {
/// use gatehouse::services::kv::{Bucket, KvBackend, KvPolicy, RedbBackend};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = RedbBackend::open(&dir.path().join("kv.redb"))?;
/// // What a door does for each call: the plugin's grant opens the bucket.
/// let bucket = Bucket::open("my-plugin", &KvPolicy::default(), "")?;
/// store.set(&bucket, "greeting".into(), b"hello".to_vec()).await?;
/// assert_eq!(store.get(&bucket, "greeting").await?, Some(b"hello".to_vec()));
/// assert_eq!(store.increment(&bucket, "visits".into(), 2).await?, 2);
/// assert_eq!(store.get(&bucket, "visits").await?, Some(b"2".to_vec()));
/// assert_eq!(store.usage(&bucket).await?.plugin.keys, 2);
/// # Ok(()) }
/// ```
pub trait KvBackend: Send + Sync {
    /// The value of `key`, if any.
    fn get<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;
    /// Whether `key` exists.
    fn exists<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, bool>;
    /// Stores `value` under `key`.
    fn set<'a>(&'a self, bucket: &'a Bucket, key: String, value: Vec<u8>) -> KvFuture<'a, ()>;
    /// Removes `key`; whether it existed.
    fn delete<'a>(&'a self, bucket: &'a Bucket, key: String) -> KvFuture<'a, bool>;
    /// Up to `limit` (at most [`MAX_PAGE`]) keys starting with `prefix`, in
    /// byte order, after `cursor`.
    fn list_keys<'a>(
        &'a self,
        bucket: &'a Bucket,
        prefix: &'a str,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> KvFuture<'a, Page>;
    /// The values of `keys`, in order, read in one snapshot.
    fn get_many<'a>(&'a self, bucket: &'a Bucket, keys: &'a [String]) -> KvFuture<'a, Vec<Option<Vec<u8>>>>;
    /// Stores every pair, or none (a repeated key: the last value wins).
    fn set_many<'a>(&'a self, bucket: &'a Bucket, items: Vec<(String, Vec<u8>)>) -> KvFuture<'a, ()>;
    /// Removes every key, or none; how many existed.
    fn delete_many<'a>(&'a self, bucket: &'a Bucket, keys: Vec<String>) -> KvFuture<'a, u64>;
    /// Adds `delta` to the decimal integer at `key` (absent = 0) and
    /// returns the new value. Not an integer, or an overflow: `conflict`.
    fn increment<'a>(&'a self, bucket: &'a Bucket, key: String, delta: i64) -> KvFuture<'a, i64>;
    /// Stores `new` if the current value is `expected` (`None`: the key is
    /// absent); whether it did. A refused quota is an error, a mismatch is
    /// `Ok(false)`.
    fn compare_and_swap<'a>(
        &'a self,
        bucket: &'a Bucket,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> KvFuture<'a, bool>;
    /// What the bucket and its plugin store.
    fn usage<'a>(&'a self, bucket: &'a Bucket) -> KvFuture<'a, UsageReport>;
    /// The buckets of `plugin` that hold at least one key, in name order,
    /// whether its policy grants them now or not (data outlives a grant).
    fn buckets<'a>(&'a self, plugin: &'a str) -> KvFuture<'a, Vec<String>>;
}

/// A key any call may name: 1 to [`MAX_KEY_CEILING`] bytes. (A policy's
/// `max_key` applies to keys a write creates: see [`check_new_key`].)
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidInput("the key is empty".into()));
    }
    if key.len() as u64 > MAX_KEY_CEILING {
        return Err(KvError::InvalidInput(format!(
            "the key is {} bytes long, more than the {MAX_KEY_CEILING} any key may have",
            key.len()
        )));
    }
    Ok(())
}

/// A prefix any call may name: 0 to [`MAX_KEY_CEILING`] bytes.
pub fn check_prefix(prefix: &str) -> Result<(), KvError> {
    if prefix.len() as u64 > MAX_KEY_CEILING {
        return Err(KvError::InvalidInput(format!("the prefix is longer than {MAX_KEY_CEILING} bytes")));
    }
    Ok(())
}

/// A page size: 1 or more, lowered to [`MAX_PAGE`].
pub fn check_limit(limit: u32) -> Result<u32, KvError> {
    if limit == 0 {
        return Err(KvError::InvalidInput("the page size is 0".into()));
    }
    Ok(limit.min(MAX_PAGE))
}

/// The item count of a batch call.
pub fn check_batch_len(len: usize) -> Result<(), KvError> {
    if len > MAX_BATCH_ITEMS {
        return Err(KvError::call_bound(len as u64, MAX_BATCH_ITEMS as u64));
    }
    Ok(())
}

/// A compare-and-swap's expected value: it may be longer than `max_value`
/// (an old value stored under a higher limit can still match), but never
/// longer than any value a store can hold.
pub fn check_expected(expected: Option<&[u8]>) -> Result<(), KvError> {
    if expected.is_some_and(|e| e.len() as u64 > super::policy::MAX_VALUE_CEILING) {
        return Err(KvError::InvalidInput("the expected value is larger than any stored value".into()));
    }
    Ok(())
}

/// A value a write stores, against the policy's `max_value`.
pub fn check_value(quota: &Quota, value: &[u8]) -> Result<(), KvError> {
    if value.len() as u64 > quota.max_value {
        return Err(KvError::QuotaExceeded {
            quota: super::error::QuotaKind::ValueSize,
            usage: 0,
            needed: value.len() as u64,
            limit: quota.max_value,
        });
    }
    Ok(())
}

/// A key a write creates, against the policy's `max_key`. Existing keys
/// longer than a lowered `max_key` can still be read, overwritten and
/// deleted.
pub fn check_new_key(quota: &Quota, key: &[u8]) -> Result<(), KvError> {
    if key.len() as u64 > quota.max_key {
        return Err(KvError::QuotaExceeded {
            quota: super::error::QuotaKind::KeySize,
            usage: 0,
            needed: key.len() as u64,
            limit: quota.max_key,
        });
    }
    Ok(())
}

/// Reads a stored counter: decimal ASCII digits, optional leading `-`
/// (Rust's parser alone would also take a leading `+`).
pub fn parse_counter(value: &[u8]) -> Option<i64> {
    let digits = value.strip_prefix(b"-").unwrap_or(value);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_bound_to_their_namespace() {
        let a = Namespace::new("alpha", "default").unwrap();
        let b = Namespace::new("beta", "default").unwrap();
        let a2 = Namespace::new("alpha", "cache").unwrap();
        // The names are not ambiguous when joined: "a" + "b-c" vs "a-b" + "c".
        let x = Namespace::new("a", "b-c").unwrap();
        let y = Namespace::new("a-b", "c").unwrap();
        let cursor = a.cursor_after("k/é");
        assert_eq!(a.resume_after(&cursor).unwrap(), "k/é");
        for other in [&b, &a2] {
            let err = other.resume_after(&cursor).unwrap_err();
            assert!(err.to_string().contains("another plugin or bucket"), "{err}");
        }
        assert!(y.resume_after(&x.cursor_after("k")).is_err());
        for bad in ["", "zz", "01", &"0".repeat(20000), &cursor[..cursor.len() - 1], &cursor.replacen("01", "02", 1)] {
            assert!(matches!(a.resume_after(bad), Err(KvError::InvalidInput(_))), "{bad:?}");
        }
    }

    /// The length check admits exactly the cursors of 1- to
    /// MAX_KEY_CEILING-byte keys: a shorter or longer one (well-formed
    /// otherwise) is refused before it is decoded.
    #[test]
    fn cursor_lengths_are_checked_at_both_ends() {
        let a = Namespace::new("alpha", "default").unwrap();
        for key in ["k".to_string(), "k".repeat(MAX_KEY_CEILING as usize)] {
            assert_eq!(a.resume_after(&a.cursor_after(&key)).unwrap(), key);
        }
        for key in [String::new(), "k".repeat(MAX_KEY_CEILING as usize + 1)] {
            let err = a.resume_after(&a.cursor_after(&key)).unwrap_err().to_string();
            assert!(err.contains("wrong length"), "{} bytes: {err}", key.len());
        }
    }

    #[test]
    fn counters_table() {
        for (text, value) in [
            ("0", Some(0)),
            ("-5", Some(-5)),
            ("007", Some(7)),
            ("9223372036854775807", Some(i64::MAX)),
            ("000000000000000000000042", Some(42)),
        ] {
            assert_eq!(parse_counter(text.as_bytes()), value, "{text}");
        }
        for bad in ["", "-", "+1", " 1", "1 ", "1.0", "0x1", "9223372036854775808", "abc", "١"] {
            assert_eq!(parse_counter(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn keys_prefixes_and_limits() {
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(4096)).is_ok());
        assert!(check_key(&"k".repeat(4097)).is_err());
        assert!(check_prefix("").is_ok());
        assert!(check_prefix(&"k".repeat(4096)).is_ok());
        assert!(check_prefix(&"k".repeat(4097)).is_err());
        assert!(check_batch_len(MAX_BATCH_ITEMS).is_ok());
        assert!(check_batch_len(MAX_BATCH_ITEMS + 1).is_err());
        let ceiling = vec![0u8; super::super::policy::MAX_VALUE_CEILING as usize];
        assert!(check_expected(None).is_ok());
        assert!(check_expected(Some(&ceiling)).is_ok());
        let over = vec![0u8; ceiling.len() + 1];
        assert!(matches!(check_expected(Some(&over)), Err(KvError::InvalidInput(_))));
        assert!(check_limit(0).is_err());
        assert_eq!(check_limit(5000).unwrap(), MAX_PAGE);
        let plugin = Namespace::new("Alpha", "default").unwrap_err().to_string();
        assert!(plugin.starts_with("invalid plugin name `Alpha`"), "{plugin}");
        assert!(Namespace::new("alpha", "a/b").is_err());
    }
}
