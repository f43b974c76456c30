//! Per-plugin counters of key-value operations, by operation and outcome,
//! kept at the one place every door passes ([`super::KvHost`]), so that
//! the custom door and the `wasi:keyvalue` doors are counted alike.
//!
//! Both labels come from fixed sets (the operations of the service, the
//! error kinds), and plugins are named by the operator's policy files, so
//! the number of series is bounded by the policies, never by a guest.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ErrorKind;

/// An operation of the service, whichever door it came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOp {
    /// Read one value.
    Get,
    /// Write one value.
    Set,
    /// Remove one key.
    Delete,
    /// Whether a key exists.
    Exists,
    /// One page of keys.
    ListKeys,
    /// Several values in one snapshot.
    GetMany,
    /// Several writes, all or none.
    SetMany,
    /// Several removals, all or none.
    DeleteMany,
    /// Add to a counter.
    Increment,
    /// Write if the value is the expected one.
    CompareAndSwap,
    /// The plugin's usage and quotas.
    Usage,
    /// Open a bucket (the `wasi:keyvalue` doors).
    Open,
}

impl KvOp {
    /// Every operation, in label order.
    pub const ALL: [KvOp; 12] = [
        KvOp::Get,
        KvOp::Set,
        KvOp::Delete,
        KvOp::Exists,
        KvOp::ListKeys,
        KvOp::GetMany,
        KvOp::SetMany,
        KvOp::DeleteMany,
        KvOp::Increment,
        KvOp::CompareAndSwap,
        KvOp::Usage,
        KvOp::Open,
    ];

    /// The `operation` label.
    pub fn as_str(self) -> &'static str {
        match self {
            KvOp::Get => "get",
            KvOp::Set => "set",
            KvOp::Delete => "delete",
            KvOp::Exists => "exists",
            KvOp::ListKeys => "list-keys",
            KvOp::GetMany => "get-many",
            KvOp::SetMany => "set-many",
            KvOp::DeleteMany => "delete-many",
            KvOp::Increment => "increment",
            KvOp::CompareAndSwap => "compare-and-swap",
            KvOp::Usage => "usage",
            KvOp::Open => "open",
        }
    }
}

/// The outcomes counted: `ok`, then every error kind.
const OUTCOMES: [Option<ErrorKind>; 10] = [
    None,
    Some(ErrorKind::Denied),
    Some(ErrorKind::InvalidInput),
    Some(ErrorKind::NotFound),
    Some(ErrorKind::Conflict),
    Some(ErrorKind::QuotaExceeded),
    Some(ErrorKind::RateLimited),
    Some(ErrorKind::Timeout),
    Some(ErrorKind::Unavailable),
    Some(ErrorKind::Internal),
];

/// Live counters of one plugin: one per (operation, outcome).
#[derive(Debug)]
pub struct KvMetrics {
    counts: [[AtomicU64; OUTCOMES.len()]; KvOp::ALL.len()],
}

impl Default for KvMetrics {
    fn default() -> Self {
        KvMetrics { counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))) }
    }
}

impl KvMetrics {
    /// Counts one operation and how it ended (`None`: ok).
    pub fn record(&self, op: KvOp, outcome: Option<ErrorKind>) {
        let op = KvOp::ALL.iter().position(|o| *o == op).expect("every operation is in ALL");
        let outcome = OUTCOMES.iter().position(|o| *o == outcome).expect("every kind is in OUTCOMES");
        self.counts[op][outcome].fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter that is not zero: (operation, outcome, count), where
    /// the outcome is `ok` or the error kind's name.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut list = Vec::new();
        for (op, row) in KvOp::ALL.iter().zip(&self.counts) {
            for (outcome, count) in OUTCOMES.iter().zip(row) {
                let n = count.load(Ordering::Relaxed);
                if n > 0 {
                    list.push((op.as_str(), outcome.map_or("ok", ErrorKind::as_str), n));
                }
            }
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_and_outcome_has_its_own_counter() {
        let metrics = KvMetrics::default();
        metrics.record(KvOp::Get, None);
        metrics.record(KvOp::Get, None);
        metrics.record(KvOp::Set, Some(ErrorKind::QuotaExceeded));
        metrics.record(KvOp::Usage, Some(ErrorKind::Internal));
        assert_eq!(metrics.snapshot(), vec![("get", "ok", 2), ("set", "quota-exceeded", 1), ("usage", "internal", 1)]);
    }
}
