//! Which queued writes the redb writer commits next.
//!
//! redb has one writer, so first come, first served let one plugin's large
//! writes stand before every other plugin's small ones. Instead each
//! plugin has a lane, and a batch takes one write from each lane in turn,
//! the lane served least recently first (one never served, or not for a
//! while, goes before one served in the last batch); a write that would
//! take the batch past its bytes is left for the next batch, where its
//! lane, not served in this one, goes first. So a plugin's write waits for
//! the batch being committed and at most one write of each other plugin,
//! however much they have queued.

use std::collections::{HashMap, VecDeque};

/// How many batches back a plugin's last service is remembered: older
/// than that it counts as never served, which orders it the same way.
const REMEMBERED_BATCHES: u64 = 1024;

/// Queued items of type `T` by plugin, with the cost of each.
#[derive(Debug)]
pub struct FairBatches<T> {
    lanes: HashMap<String, VecDeque<(u64, u64, T)>>,
    /// The batch each plugin was last served in (batches count from 1).
    served: HashMap<String, u64>,
    batches: u64,
    arrivals: u64,
}

impl<T> Default for FairBatches<T> {
    fn default() -> FairBatches<T> {
        FairBatches { lanes: HashMap::new(), served: HashMap::new(), batches: 0, arrivals: 0 }
    }
}

impl<T> FairBatches<T> {
    /// Queues `item` costing `cost` bytes on `plugin`'s lane.
    pub fn push(&mut self, plugin: impl Into<String>, cost: u64, item: T) {
        self.arrivals += 1;
        let lane = self.lanes.entry(plugin.into()).or_default();
        lane.push_back((self.arrivals, cost, item));
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// The next batch: at least one item when any is queued, then more in
    /// turn while the batch stays within `max_items` and `max_bytes`.
    pub fn next_batch(&mut self, max_items: usize, max_bytes: u64) -> Vec<T> {
        self.batches += 1;
        if self.batches.is_multiple_of(REMEMBERED_BATCHES) {
            let oldest = self.batches - REMEMBERED_BATCHES;
            self.served.retain(|_, batch| *batch > oldest);
        }
        // Least recently served first; among equals, the earliest waiting.
        let mut order: Vec<(u64, u64, String)> = self
            .lanes
            .iter()
            .filter_map(|(plugin, lane)| {
                let (arrival, _, _) = lane.front()?;
                Some((self.served.get(plugin).copied().unwrap_or(0), *arrival, plugin.clone()))
            })
            .collect();
        order.sort_unstable();
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        let mut took = true;
        while took {
            took = false;
            for (_, _, plugin) in &order {
                let Some(lane) = self.lanes.get_mut(plugin) else { continue };
                let Some(&(_, cost, _)) = lane.front() else { continue };
                if batch.len() >= max_items || (!batch.is_empty() && bytes.saturating_add(cost) > max_bytes) {
                    continue;
                }
                let (_, cost, item) = lane.pop_front().expect("a front was seen");
                bytes = bytes.saturating_add(cost);
                batch.push(item);
                self.served.insert(plugin.clone(), self.batches);
                took = true;
            }
        }
        self.lanes.retain(|_, lane| !lane.is_empty());
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn queue(items: &[(&str, u64, &'static str)]) -> FairBatches<&'static str> {
        let mut batches = FairBatches::default();
        for &(plugin, cost, name) in items {
            batches.push(plugin, cost, name);
        }
        batches
    }

    /// The review's case: a plugin queues large writes, another one small
    /// write behind them. First come, first served would commit all the
    /// large ones first; the small one goes into the first batch.
    #[test]
    fn a_small_write_behind_anothers_large_ones_goes_in_the_next_batch() {
        let mut batches =
            queue(&[("big", 10 * MIB, "b1"), ("big", 10 * MIB, "b2"), ("big", 10 * MIB, "b3"), ("small", 100, "s1")]);
        assert_eq!(batches.next_batch(1024, 16 * MIB), ["b1", "s1"]);
        assert_eq!(batches.next_batch(1024, 16 * MIB), ["b2"]);
        assert_eq!(batches.next_batch(1024, 16 * MIB), ["b3"]);
        assert!(batches.next_batch(1024, 16 * MIB).is_empty());
        assert!(batches.is_empty());
    }

    /// A plugin served in the last batch goes after one that was not,
    /// whichever came first.
    #[test]
    fn the_lane_served_least_recently_goes_first() {
        let mut batches = queue(&[("a", 10 * MIB, "a1")]);
        assert_eq!(batches.next_batch(1024, 16 * MIB), ["a1"]);
        batches.push("a", 10 * MIB, "a2");
        batches.push("b", 10 * MIB, "b1");
        assert_eq!(batches.next_batch(1024, 16 * MIB), ["b1"], "a was served last time");
        batches.push("b", 10 * MIB, "b2");
        assert_eq!(batches.next_batch(1024, 16 * MIB), ["a2"], "b was served last time");
        assert_eq!(batches.next_batch(1024, 16 * MIB), ["b2"]);
    }

    /// Lanes take turns one item at a time, and within a lane items keep
    /// their order.
    #[test]
    fn lanes_take_turns_and_keep_their_order() {
        let mut batches = queue(&[("a", 1, "a1"), ("a", 1, "a2"), ("a", 1, "a3"), ("b", 1, "b1"), ("b", 1, "b2")]);
        assert_eq!(batches.next_batch(4, 16 * MIB), ["a1", "b1", "a2", "b2"]);
        assert_eq!(batches.next_batch(4, 16 * MIB), ["a3"]);
    }

    /// A write that does not fit is left for the next batch, where it goes
    /// first; one larger than the batch bound is a batch of its own.
    #[test]
    fn what_does_not_fit_goes_first_next_time_and_an_oversized_write_alone() {
        let mut batches = queue(&[("a", 6, "a1"), ("b", 5, "b1"), ("a", 1, "a2"), ("c", 5, "c1")]);
        assert_eq!(batches.next_batch(1024, 10), ["a1", "a2"], "b1 and c1 would pass 10 bytes");
        assert_eq!(batches.next_batch(1024, 10), ["b1", "c1"]);
        let mut batches = queue(&[("a", 11, "a1"), ("b", 1, "b1")]);
        assert_eq!(batches.next_batch(1024, 10), ["a1"]);
        assert_eq!(batches.next_batch(1024, 10), ["b1"]);
        let mut batches = queue(&[("a", 4, "a1"), ("b", 6, "b1")]);
        assert_eq!(batches.next_batch(1024, 10), ["a1", "b1"], "exactly the bound fits");
    }

    #[test]
    fn a_batch_holds_at_most_max_items() {
        let mut batches = FairBatches::default();
        for i in 0..10 {
            batches.push(["a", "b", "c"][i % 3], 1, i);
        }
        assert_eq!(batches.next_batch(4, 16 * MIB).len(), 4);
        assert_eq!(batches.next_batch(4, 16 * MIB).len(), 4);
        assert_eq!(batches.next_batch(4, 16 * MIB).len(), 2);
        assert!(batches.is_empty());
    }

    /// Old services are forgotten (the map stays as small as the plugins
    /// served lately), which orders their lanes as never served; those
    /// served within the last [`REMEMBERED_BATCHES`] are kept.
    #[test]
    fn old_services_are_forgotten_and_recent_ones_kept() {
        let mut batches = FairBatches::default();
        let mut serve = |plugin: &str| {
            batches.push(plugin, 1, ());
            assert_eq!(batches.next_batch(1024, 16 * MIB).len(), 1);
        };
        for n in 1..=2 * REMEMBERED_BATCHES {
            serve(match n {
                1 => "a",
                5 => "d",
                REMEMBERED_BATCHES => "e",
                n if n == REMEMBERED_BATCHES + 1 => "c",
                _ => "b",
            });
        }
        let remembered = |plugin| batches.served.contains_key(plugin);
        for old in ["a", "d", "e"] {
            assert!(!remembered(old), "{old} was remembered past {REMEMBERED_BATCHES} batches");
        }
        assert!(remembered("c") && remembered("b"), "a plugin served lately was forgotten");
    }

    /// Among plugins served equally long ago, the one waiting longest goes
    /// first, whatever their names.
    #[test]
    fn among_equals_the_earliest_waiting_goes_first() {
        let mut batches = queue(&[("zeta", 10 * MIB, "z1"), ("alpha", 10 * MIB, "a1")]);
        assert_eq!(batches.next_batch(1024, 16 * MIB), ["z1"]);
        assert!(!batches.is_empty(), "alpha's write is still queued");
        assert_eq!(batches.next_batch(1024, 16 * MIB), ["a1"]);
        assert!(batches.is_empty());
    }
}
