//! Concurrency: each plugin's slots and queue, the shared pool's
//! instances, and the admission rule that keeps the plugins' concurrency
//! within the pool across reloads.
//!
//! A plugin's [`Slots`] belong to its *name* and outlive its versions:
//! invocations still running on the previous version hold slots of the
//! same semaphore as the new version's, so a reload never lets a plugin run
//! more than its `concurrency` at once. Slots are resized only for a
//! version that has been admitted ([`Pool::admit`]), so a refused reload
//! changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// Callers that may wait per concurrency slot before more are refused.
pub const QUEUE_PER_SLOT: u32 = 4;

/// A plugin's concurrency slots and queue.
pub(super) struct Slots {
    pub(super) semaphore: Arc<Semaphore>,
    /// The concurrency the permits currently add up to.
    capacity: AtomicU32,
    /// Callers waiting for a slot.
    pub(super) waiting: AtomicU32,
    /// Invocations holding a slot (counted directly: while a shrink waits
    /// for permits to come back, capacity minus free permits is not it).
    running: AtomicU32,
}

impl Slots {
    fn new(capacity: u32) -> Self {
        Slots {
            semaphore: Arc::new(Semaphore::new(capacity as usize)),
            capacity: capacity.into(),
            waiting: Default::default(),
            running: Default::default(),
        }
    }

    /// Changes the number of slots to `capacity`. Growing adds permits at
    /// once; shrinking takes permits away as they are returned, so running
    /// invocations are not disturbed and never more than the new number
    /// start.
    pub(super) fn resize(&self, capacity: u32) {
        let old = self.capacity.swap(capacity, Ordering::AcqRel);
        if capacity > old {
            self.semaphore.add_permits((capacity - old) as usize);
        } else if capacity < old {
            let semaphore = self.semaphore.clone();
            let excess = old - capacity;
            tokio::spawn(async move {
                if let Ok(permits) = semaphore.acquire_many_owned(excess).await {
                    permits.forget();
                }
            });
        }
    }

    /// Invocations holding a slot.
    pub(super) fn in_use(&self) -> u32 {
        self.running.load(Ordering::Acquire)
    }

    /// Counts an invocation that holds `slot` and `instance` until the
    /// returned admission is dropped.
    pub(super) fn hold<'a>(
        self: &Arc<Self>,
        slot: OwnedSemaphorePermit,
        instance: SemaphorePermit<'a>,
    ) -> Admission<'a> {
        self.running.fetch_add(1, Ordering::AcqRel);
        Admission { slot: SlotHold { _permit: slot, slots: self.clone() }, _instance: instance }
    }
}

/// A running invocation's slot, pool instance and place in the count.
pub(super) struct Admission<'a> {
    slot: SlotHold,
    _instance: SemaphorePermit<'a>,
}

impl Admission<'_> {
    /// Gives the pool instance back and keeps the slot: for an answer the
    /// invocation has produced but its caller has not yet taken.
    pub(super) fn into_slot(self) -> SlotHold {
        self.slot
    }
}

/// One of a plugin's concurrency slots, and its place in the count of
/// invocations holding one, until dropped. An invocation's answer keeps it
/// while it is delivered (see [`super::Runtime::invoke_with_version`]), so
/// answers a slow client has not read yet count against the plugin's
/// `concurrency`, not against no one.
pub struct SlotHold {
    _permit: OwnedSemaphorePermit,
    slots: Arc<Slots>,
}

impl Drop for SlotHold {
    fn drop(&mut self) {
        self.slots.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for SlotHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotHold")
    }
}

/// A place in a plugin's queue, given back on drop.
pub(super) struct Queued<'a>(&'a AtomicU32);

impl<'a> Queued<'a> {
    /// Joins the queue `waiting` unless `limit` callers already wait.
    pub(super) fn join(waiting: &'a AtomicU32, limit: u32) -> Option<Self> {
        if waiting.fetch_add(1, Ordering::AcqRel) >= limit {
            waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Queued(waiting))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every plugin name's slots, kept across reloads.
#[derive(Default)]
pub(super) struct SlotTable(Mutex<HashMap<String, Arc<Slots>>>);

impl SlotTable {
    /// The slots of plugin `name`: the ones its loaded versions use, or
    /// new ones of `concurrency` if it never had any. Never resizes: a
    /// version not yet admitted must not change what the loaded one runs.
    pub(super) fn of(&self, name: &str, concurrency: u32) -> Arc<Slots> {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(name.to_string()).or_insert_with(|| Arc::new(Slots::new(concurrency))).clone()
    }
}

/// The pool's share each plugin of a new generation takes, decided before
/// any slot changes. Shares already in force are reserved first: plugins
/// kept on their loaded version (their policy file or new component was
/// refused), then, as a fallback, the loaded version of every plugin that
/// has a new one. New versions are then admitted in name order while the
/// total fits in `max_instances`; one that does not fit falls back to its
/// reserved loaded version, if it has one, or is refused.
pub(super) struct Pool {
    max_instances: u32,
    reserved: u32,
}

/// What [`Pool::admit`] decided for a new version.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admitted {
    /// Admitted at its concurrency.
    New,
    /// Did not fit; the loaded version (reserved) stays.
    KeepLoaded(String),
    /// Did not fit, and there is no loaded version to keep.
    Refused(String),
}

impl Pool {
    pub(super) fn new(max_instances: u32) -> Self {
        Pool { max_instances, reserved: 0 }
    }

    /// Reserves the share of a version kept in force.
    pub(super) fn reserve(&mut self, concurrency: u32) {
        self.reserved = self.reserved.saturating_add(concurrency);
    }

    /// Admits a new version of `concurrency` whose loaded version (if
    /// any, of `loaded` concurrency) was reserved with [`Pool::reserve`].
    pub(super) fn admit(&mut self, concurrency: u32, loaded: Option<u32>) -> Admitted {
        let others = self.reserved.saturating_sub(loaded.unwrap_or(0));
        let total = others.saturating_add(concurrency);
        if total <= self.max_instances {
            self.reserved = total;
            return Admitted::New;
        }
        let reason = format!(
            "its concurrency of {concurrency} would bring the loaded plugins' total to {total}, over the engine's \
             max_instances of {} (gatehouse.toml [engine]); lower some concurrency or raise max_instances",
            self.max_instances
        );
        match loaded {
            Some(_) => Admitted::KeepLoaded(reason),
            None => Admitted::Refused(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_versions_are_reserved_before_new_plugins_are_admitted() {
        let mut pool = Pool::new(10);
        pool.reserve(5); // a, kept
        pool.reserve(5); // b, loaded, with a new version
        assert_eq!(pool.admit(5, Some(5)), Admitted::New, "b's new version replaces its own share");
        assert!(matches!(pool.admit(5, None), Admitted::Refused(r) if r.contains("total to 15")));
    }

    #[test]
    fn a_raise_that_does_not_fit_keeps_the_loaded_share() {
        let mut pool = Pool::new(10);
        pool.reserve(5);
        pool.reserve(5);
        assert!(matches!(pool.admit(8, Some(5)), Admitted::KeepLoaded(r) if r.contains("total to 13")));
        assert_eq!(pool.admit(5, Some(5)), Admitted::New);
        assert_eq!(pool.reserved, 10);
        // A lowered plugin frees room for a new one.
        let mut pool = Pool::new(10);
        pool.reserve(8);
        assert_eq!(pool.admit(2, Some(8)), Admitted::New);
        assert_eq!(pool.admit(8, None), Admitted::New);
    }
}
