//! The write queue's budget, shared by both backends: bytes a write holds
//! from before it is queued until it is answered.
//!
//! One budget for all plugins bounds the sidecar's memory, but alone it is
//! first come, first served: an outside review's plugin, within its own
//! policy, kept the whole budget full with 16 MiB writes and every other
//! plugin's increment waited behind them (0.5–1.4 s instead of 2 ms). So a
//! plugin also has a share of [`PLUGIN_QUEUE_BYTES`], taken before the
//! common budget: a plugin past its share waits on its own, and the
//! callers waiting for the common budget hold at most one share each.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use super::shares::PluginShares;

/// Bytes all queued writes may hold (keys, values and per-item overhead).
pub const QUEUE_BYTES: u64 = 64 << 20;
/// Bytes one plugin's queued writes may hold. A single write costing more
/// (a `set_many` of up to 32 MiB) takes the whole share.
pub const PLUGIN_QUEUE_BYTES: u64 = 16 << 20;
/// What each queued operation and each item of a batch call counts for,
/// on top of its keys and values.
pub const ENTRY_OVERHEAD: u64 = 256;

/// The common budget and each plugin's share.
#[derive(Debug)]
pub struct QueueBudget {
    total: Arc<Semaphore>,
    shares: PluginShares,
}

/// Held until the write is answered; dropping it gives both back.
#[derive(Debug)]
pub struct QueuePermit {
    _share: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

#[cfg(test)]
impl QueuePermit {
    /// A permit of nothing, for tests that make queued requests by hand.
    pub fn empty() -> QueuePermit {
        let none = Arc::new(Semaphore::new(0));
        let take = || Arc::clone(&none).try_acquire_many_owned(0).expect("zero permits are always there");
        QueuePermit { _share: take(), _total: take() }
    }
}

impl Default for QueueBudget {
    fn default() -> QueueBudget {
        QueueBudget {
            total: Arc::new(Semaphore::new(QUEUE_BYTES as usize)),
            shares: PluginShares::new(PLUGIN_QUEUE_BYTES as usize),
        }
    }
}

impl QueueBudget {
    /// What a write of `bytes` of keys and values naming `items` costs.
    pub fn cost(bytes: u64, items: u64) -> u64 {
        bytes.saturating_add(ENTRY_OVERHEAD.saturating_mul(items.max(1))).min(QUEUE_BYTES)
    }

    /// Waits for `cost` of `plugin`'s share, then of the common budget.
    pub async fn acquire(&self, plugin: &str, cost: u64) -> Result<QueuePermit, AcquireError> {
        let share = self.shares.of(plugin);
        let share = share.acquire_many_owned(cost.min(PLUGIN_QUEUE_BYTES) as u32).await?;
        let total = Arc::clone(&self.total).acquire_many_owned(cost.min(QUEUE_BYTES) as u32).await?;
        Ok(QueuePermit { _share: share, _total: total })
    }

    /// Bytes of the common budget left.
    pub fn available(&self) -> u64 {
        self.total.available_permits() as u64
    }

    /// The common budget itself, for tests that hold it.
    #[cfg(test)]
    pub fn total(&self) -> &Arc<Semaphore> {
        &self.total
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn settles<F: std::future::Future>(f: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(100), f).await.ok()
    }

    /// A plugin that filled its share waits; another plugin's write is
    /// queued at once, and the common budget counts both.
    #[tokio::test]
    async fn a_plugin_past_its_share_waits_and_others_do_not() {
        let budget = QueueBudget::default();
        let held = budget.acquire("alpha", PLUGIN_QUEUE_BYTES - 10).await.unwrap();
        assert!(settles(budget.acquire("alpha", 11)).await.is_none(), "alpha went past its share");
        let fits = settles(budget.acquire("alpha", 10)).await.expect("alpha's share had room for 10");
        let other = settles(budget.acquire("beta", 1 << 20)).await.expect("beta waited for alpha");
        assert_eq!(budget.available(), QUEUE_BYTES - PLUGIN_QUEUE_BYTES - (1 << 20));
        drop((held, fits, other));
        assert_eq!(budget.available(), QUEUE_BYTES);
        assert!(settles(budget.acquire("alpha", PLUGIN_QUEUE_BYTES)).await.is_some(), "the share came back");
    }

    /// A write larger than a share takes the whole share (and its full
    /// cost of the common budget), so it is never refused for its size.
    #[tokio::test]
    async fn a_write_larger_than_a_share_takes_the_whole_share() {
        let budget = QueueBudget::default();
        let big = budget.acquire("alpha", 2 * PLUGIN_QUEUE_BYTES).await.unwrap();
        assert_eq!(budget.available(), QUEUE_BYTES - 2 * PLUGIN_QUEUE_BYTES);
        assert!(settles(budget.acquire("alpha", 1)).await.is_none(), "alpha's share was not all taken");
        drop(big);
        assert!(settles(budget.acquire("alpha", 1)).await.is_some());
    }

    /// The common budget still bounds everyone: four plugins at their
    /// shares fill it, and a fifth waits for room.
    #[tokio::test]
    async fn the_common_budget_bounds_all_plugins_together() {
        let budget = QueueBudget::default();
        let mut held = Vec::new();
        for plugin in ["a", "b", "c", "d"] {
            held.push(budget.acquire(plugin, PLUGIN_QUEUE_BYTES).await.unwrap());
        }
        assert_eq!(budget.available(), 0);
        assert!(settles(budget.acquire("e", 1)).await.is_none(), "a write was queued past the common budget");
        held.pop();
        assert!(settles(budget.acquire("e", 1)).await.is_some());
    }

    #[test]
    fn a_write_costs_its_bytes_and_an_overhead_per_item_up_to_the_budget() {
        assert_eq!(QueueBudget::cost(10, 0), 10 + ENTRY_OVERHEAD);
        assert_eq!(QueueBudget::cost(10, 3), 10 + 3 * ENTRY_OVERHEAD);
        assert_eq!(QueueBudget::cost(u64::MAX, 3), QUEUE_BYTES);
    }
}
