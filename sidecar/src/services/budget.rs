//! Token buckets: a plugin's request rate (outbound HTTP, key-value) and its refusal log lines.
//!
//! Why not `governor`: a request spends its token before the connector
//! resolves the host, and the address guard can still refuse it there. The
//! policy promises that a denied request does not spend the rate budget,
//! so the token must be given back, and governor has no way to return one.
//! This is the same algorithm (GCRA: one "theoretical arrival time" kept in
//! an atomic), with [`Budget::refund`] added.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::services::http::policy::{Per, Rate};

/// `burst` tokens, refilled one every `interval`.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Nanoseconds per token.
    interval: u64,
    /// Nanoseconds of credit a full bucket holds (`burst * interval`).
    capacity: u64,
    origin: Instant,
    /// When the bucket will be full again, in nanoseconds after `origin`.
    full_at: AtomicU64,
}

impl Budget {
    /// A policy's `rate` (`"20/s"`): a burst of its count, refilled evenly
    /// over its unit of time.
    pub(crate) fn for_rate(rate: &Rate) -> Self {
        let per = match rate.per {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
            Per::Hour => Duration::from_secs(3600),
        };
        let count = rate.count.get();
        Budget::new(count, per / count)
    }

    /// A full bucket of `burst` tokens (at least one).
    pub(crate) fn new(burst: u32, interval: Duration) -> Self {
        let interval = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX).max(1);
        Budget {
            interval,
            capacity: interval.saturating_mul(u64::from(burst.max(1))),
            origin: Instant::now(),
            full_at: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Takes a token, or says how long until one is available.
    pub(crate) fn take(&self) -> Result<(), Duration> {
        let now = self.now();
        let mut wait = 0;
        let taken = self.full_at.fetch_update(Ordering::AcqRel, Ordering::Acquire, |full_at| {
            let next = full_at.max(now).saturating_add(self.interval);
            if next - now <= self.capacity {
                Some(next)
            } else {
                wait = next - now - self.capacity;
                None
            }
        });
        taken.map(drop).map_err(|_| Duration::from_nanos(wait))
    }

    /// Gives back a token taken with [`Budget::take`] that paid for
    /// nothing. The bucket never holds more than `burst` tokens.
    pub(crate) fn refund(&self) {
        let _ = self
            .full_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |full_at| Some(full_at.saturating_sub(self.interval)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_refuses_with_the_wait() {
        let budget = Budget::new(3, Duration::from_secs(3600));
        for _ in 0..3 {
            budget.take().unwrap();
        }
        let wait = budget.take().unwrap_err();
        assert!(wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600), "{wait:?}");
    }

    #[test]
    fn a_refund_returns_exactly_one_token_and_never_overfills() {
        let budget = Budget::new(2, Duration::from_secs(3600));
        budget.refund();
        budget.refund();
        budget.take().unwrap();
        budget.take().unwrap();
        assert!(budget.take().is_err(), "refunds on a full bucket must not add tokens");
        budget.refund();
        budget.take().unwrap();
        assert!(budget.take().is_err());
    }

    #[test]
    fn tokens_refill_at_the_interval() {
        let budget = Budget::new(1, Duration::from_millis(1));
        budget.take().unwrap();
        let wait = budget.take().unwrap_err();
        std::thread::sleep(wait + Duration::from_millis(1));
        budget.take().unwrap();
    }
}
