//! Errors of the key-value service, one variant per guest-visible kind.
//!
//! Messages may quote guest keys and bucket names: they are escaped and
//! bounded where they are built, so every message is safe to log as is.

use std::fmt;

use crate::ErrorKind;

/// Which quota a write would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaKind {
    /// `max_keys`: keys of the plugin, all buckets.
    Keys,
    /// `max_bytes`: bytes of keys and values of the plugin, all buckets.
    Bytes,
    /// `max_key`: the length of a key a write creates.
    KeySize,
    /// `max_value`: the length of one value.
    ValueSize,
    /// A fixed bound on one call (items or bytes of a batch, page size),
    /// the same for every plugin.
    Call,
}

impl fmt::Display for QuotaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaKind::Keys => "max_keys",
            QuotaKind::Bytes => "max_bytes",
            QuotaKind::KeySize => "max_key",
            QuotaKind::ValueSize => "max_value",
            QuotaKind::Call => "the per-call bound",
        })
    }
}

/// Why a key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The caller's fault: empty or oversized key, malformed cursor, a
    /// cursor of another namespace, a zero page size.
    #[error("{0}")]
    InvalidInput(String),
    /// The bucket is not granted.
    #[error("{0}")]
    Denied(String),
    /// The write was refused whole: nothing was written.
    #[error("{quota} would be exceeded: {needed} > {limit} (in use: {usage})")]
    QuotaExceeded {
        /// Which quota.
        quota: QuotaKind,
        /// What is in use before the write (for sizes: 0).
        usage: u64,
        /// What the write would need (usage after it, or the item's size).
        needed: u64,
        /// The limit.
        limit: u64,
    },
    /// The stored state does not allow the operation (an increment of a
    /// value that is not a decimal integer, or one that would overflow).
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be reached or read: retry later.
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    /// A bug.
    #[error("key-value store internal error: {0}")]
    Internal(String),
}

impl KvError {
    /// The kind a guest sees.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KvError::InvalidInput(_) => ErrorKind::InvalidInput,
            KvError::Denied(_) => ErrorKind::Denied,
            KvError::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
            KvError::Conflict(_) => ErrorKind::Conflict,
            KvError::Unavailable(_) => ErrorKind::Unavailable,
            KvError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// A fixed per-call bound was exceeded (`needed` > `limit`).
    pub(super) fn call_bound(needed: u64, limit: u64) -> KvError {
        KvError::QuotaExceeded { quota: QuotaKind::Call, usage: 0, needed, limit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let quota = KvError::QuotaExceeded { quota: QuotaKind::Bytes, usage: 90, needed: 101, limit: 100 };
        assert_eq!(quota.kind(), ErrorKind::QuotaExceeded);
        assert_eq!(quota.to_string(), "max_bytes would be exceeded: 101 > 100 (in use: 90)");
        assert_eq!(KvError::InvalidInput("x".into()).kind(), ErrorKind::InvalidInput);
        assert_eq!(KvError::Denied("x".into()).kind(), ErrorKind::Denied);
        assert_eq!(KvError::Conflict("x".into()).kind(), ErrorKind::Conflict);
        assert_eq!(KvError::Unavailable("x".into()).kind(), ErrorKind::Unavailable);
        assert!(KvError::Unavailable("x".into()).kind().is_transient());
        assert_eq!(KvError::Internal("x".into()).kind(), ErrorKind::Internal);
    }
}
