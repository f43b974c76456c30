//! How the plugins writing to one SQLite alias share it: the bytes they
//! write to its WAL, and the time they hold its one turn to write while
//! others wait ([`super::sqlite_pool::WalPlaces`]). Both are per-plugin
//! buckets refilled at an equal share of the alias's rate between the
//! plugins that used it lately ([`Shares`]), so that plugins working
//! together get no more than one plugin alone; the turn has one bucket
//! for all plugins together besides ([`TurnUse`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::services::fair_places::Place;

/// Each plugin's bucket of something it spends (bytes, microseconds),
/// refilled at the lesser of its own rate and an equal share of the
/// alias's between the plugins charged in the last [`ACTIVE_FOR`].
/// Plugin names come from policy files, so the map is bounded by the
/// policies.
pub struct Shares {
    own: u64,
    total: u64,
    budgets: Mutex<HashMap<String, Bucket>>,
}

/// How recently a plugin must have been charged to count among those
/// sharing an alias's rate.
pub const ACTIVE_FOR: Duration = Duration::from_secs(4);

/// How many seconds of its rate a bucket holds.
const BURST_SECONDS: f64 = 4.0;

impl Shares {
    /// Each plugin may spend `own` a second, all together `total`.
    pub fn new(own: u64, total: u64) -> Shares {
        Shares { own: own.max(1), total: total.max(1), budgets: Mutex::default() }
    }

    /// The rate each plugin earns now. (The tenth outside review's four
    /// plugins, each within its own rate, left an honest writer 12 writes
    /// in 20 s before the alias's rate was shared.)
    fn rate_now(&self, budgets: &HashMap<String, Bucket>) -> u64 {
        let active = budgets.values().filter(|bucket| bucket.charged.elapsed() < ACTIVE_FOR).count().max(1);
        self.own.min(self.total / active as u64).max(1)
    }

    /// Takes `spent` from `plugin`'s bucket, overdrawing it if need be.
    pub fn charge(&self, plugin: &str, spent: u64) {
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        if !budgets.contains_key(plugin) {
            // Full: the first refill cuts it to its capacity at the rate
            // that counts it among the plugins charged.
            let now = Instant::now();
            budgets.insert(plugin.to_string(), Bucket { left: f64::INFINITY, at: now, charged: now });
        }
        let rate = self.rate_now(&budgets);
        budgets.get_mut(plugin).expect("inserted above").charge(rate, spent);
    }

    /// How long until `plugin`'s bucket is refilled past zero.
    pub fn owed(&self, plugin: &str) -> Duration {
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = self.rate_now(&budgets);
        let left = budgets.get_mut(plugin).map_or(0.0, |bucket| bucket.left(rate));
        if left >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-left / rate as f64) }
    }

    /// What `plugin` may spend now, at most (a full bucket if it has none
    /// yet).
    pub fn left(&self, plugin: &str) -> u64 {
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = self.rate_now(&budgets);
        let left = budgets.get_mut(plugin).map_or_else(|| Bucket::capacity(rate), |bucket| bucket.left(rate));
        left.max(0.0) as u64
    }
}

/// One plugin's bucket: [`BURST_SECONDS`] of its rate, refilled at the
/// rate, which spending may overdraw.
struct Bucket {
    /// Left; below zero, owed.
    left: f64,
    /// When `left` was last refilled.
    at: Instant,
    /// When it was last charged.
    charged: Instant,
}

impl Bucket {
    fn capacity(rate: u64) -> f64 {
        BURST_SECONDS * rate as f64
    }

    /// Refills it to now; what is left.
    fn left(&mut self, rate: u64) -> f64 {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * rate as f64;
        self.left = (self.left + earned).min(Self::capacity(rate));
        self.at = now;
        self.left
    }

    fn charge(&mut self, rate: u64, spent: u64) {
        self.left = self.left(rate) - spent as f64;
        self.charged = Instant::now();
    }
}

/// The share of the time the plugins may hold an alias's turn to write
/// while other writes wait, on average: half for all together (each of
/// `n` plugins doing so lately gets half over `n`), up to four seconds of
/// it (2 s) at once, for each plugin and for all together.
pub const TURN_SHARE: f64 = 0.5;

/// Microseconds of holding a second.
const TURN_RATE: u64 = (TURN_SHARE * 1e6) as u64;

/// The least a write may hold the turn while others wait, even past its
/// plugin's share, before it is ended: a plugin that spent its share
/// still writes something each turn.
pub const LEAST_HOLD: Duration = Duration::from_millis(100);

/// How long the plugins held an alias's turn while other writes waited.
pub struct TurnUse {
    /// Writes waiting in line now.
    waiting: AtomicUsize,
    /// Writes that came to wait in line, ever.
    arrivals: AtomicU64,
    /// Each plugin's time, in microseconds, against [`TURN_SHARE`].
    held: Shares,
    /// Every plugin's time together, under the one name `""`: plugins
    /// that had not held the turn lately each came with a full bucket (a
    /// twelfth outside review: eight fresh plugins held it 4.7 s in a row).
    all: Shares,
}

impl Default for TurnUse {
    fn default() -> TurnUse {
        TurnUse {
            waiting: AtomicUsize::new(0),
            arrivals: AtomicU64::new(0),
            held: Shares::new(TURN_RATE, TURN_RATE),
            all: Shares::new(TURN_RATE, TURN_RATE),
        }
    }
}

impl TurnUse {
    /// How long `plugin` waits before it may take the turn again: until
    /// the time it held past its share is paid off.
    pub fn owed(&self, plugin: &str) -> Duration {
        self.held.owed(plugin)
    }

    /// Charges `held`, time `plugin` held the turn while others waited.
    pub fn charge(&self, plugin: &str, held: Duration) {
        let held = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.held.charge(plugin, held);
        self.all.charge("", held);
    }

    /// What is left of `plugin`'s share, in microseconds: the line to the
    /// turn serves the plugin with the most left first.
    pub fn left(&self, plugin: &str) -> u64 {
        self.held.left(plugin)
    }

    /// The turn, given to `plugin`'s write: held until dropped.
    pub fn take(self: &Arc<Self>, turn: Place, plugin: &str) -> HeldTurn {
        HeldTurn {
            _turn: turn,
            plugin: plugin.to_string(),
            since: Instant::now(),
            arrivals: self.arrivals.load(Ordering::SeqCst),
            turn_use: Arc::clone(self),
        }
    }

    /// Whether `held` has held the turn past its share while another
    /// write waited `waited`: past what is left of its plugin's share or
    /// of all plugins', and past [`LEAST_HOLD`].
    pub fn past_share(&self, held: &HeldTurn, waited: Duration) -> bool {
        let contended = waited.min(held.since.elapsed());
        let left = Duration::from_micros(self.held.left(&held.plugin).min(self.all.left("")));
        contended > left.max(LEAST_HOLD)
    }
}

/// A write waiting in line, counted while it waits.
pub struct Waiting<'a>(&'a TurnUse);

impl<'a> Waiting<'a> {
    /// Counts a write that comes to wait, until dropped.
    pub fn new(turn_use: &'a TurnUse) -> Waiting<'a> {
        turn_use.arrivals.fetch_add(1, Ordering::SeqCst);
        turn_use.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(turn_use)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The alias's turn to write, held by a plugin's write; when given back,
/// the time it was held is charged to the plugin if another write came to
/// wait meanwhile or waits now.
pub struct HeldTurn {
    _turn: Place,
    plugin: String,
    since: Instant,
    /// [`TurnUse::arrivals`] when it was taken.
    arrivals: u64,
    turn_use: Arc<TurnUse>,
}

impl Drop for HeldTurn {
    fn drop(&mut self) {
        let waited = self.turn_use.waiting.load(Ordering::SeqCst) > 0
            || self.turn_use.arrivals.load(Ordering::SeqCst) != self.arrivals;
        if waited {
            self.turn_use.charge(&self.plugin, self.since.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin alone earns its own rate; plugins charged together share
    /// the alias's equally, so what one owes grows with their number.
    #[test]
    fn plugins_charged_together_share_the_total_rate() {
        let shares = Shares::new(100, 100);
        shares.charge("a", 800);
        let alone = shares.owed("a");
        assert!(alone > Duration::from_millis(3_900) && alone <= Duration::from_secs(4), "{alone:?}");
        assert_eq!(shares.left("b"), 400, "a plugin not charged yet has a full bucket of its share");
        shares.charge("b", 0);
        let shared = shares.owed("a");
        assert!(shared > Duration::from_millis(7_900), "{shared:?}");
        assert_eq!(shares.left("a"), 0);
        assert_eq!(shares.left("b"), 200, "a bucket holds four seconds of the share");
    }

    /// The turn is charged to its plugin when given back if another write
    /// came to wait while it was held, and not otherwise.
    #[tokio::test]
    async fn the_turn_is_charged_only_when_another_write_waited() {
        let turn_use = Arc::new(TurnUse::default());
        let line = crate::services::fair_places::Places::new(1, 0);
        let full = Duration::from_micros(turn_use.held.left("p"));
        let held = turn_use.take(line.take("p").await.unwrap(), "p");
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
        assert_eq!(turn_use.owed("p"), Duration::ZERO);
        assert!(Duration::from_micros(turn_use.held.left("p")) >= full, "charged with no one waiting");

        let held = turn_use.take(line.take("p").await.unwrap(), "p");
        drop(Waiting::new(&turn_use));
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
        let left = Duration::from_micros(turn_use.held.left("p"));
        assert!(left <= full - Duration::from_millis(250), "{left:?} left of {full:?}");

        // A write that was already waiting when the turn was taken counts
        // too (no new arrival while it was held).
        let turn_use = Arc::new(TurnUse::default());
        let waiter = Waiting::new(&turn_use);
        let held = turn_use.take(line.take("p").await.unwrap(), "p");
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
        drop(waiter);
        let left = Duration::from_micros(turn_use.held.left("p"));
        assert!(left <= full - Duration::from_millis(250), "{left:?} left of {full:?} with a write waiting throughout");
    }

    /// A plugin that held the turn past its share owes the time it
    /// overdrew: it waits that long before it takes the turn again
    /// (`SqlitePool::write_turn`); a plugin within its share owes nothing.
    #[test]
    fn a_plugin_past_its_share_owes_what_it_overdrew() {
        let turn_use = TurnUse::default();
        let share = Duration::from_micros(turn_use.left("p"));
        turn_use.charge("p", share / 2);
        assert_eq!(turn_use.owed("p"), Duration::ZERO, "within its share");
        turn_use.charge("p", share);
        assert!(turn_use.owed("p") > Duration::ZERO, "past its share by half of it, it owed nothing");
        assert_eq!(turn_use.owed("q"), Duration::ZERO, "another plugin owes nothing");
    }

    /// A plugin that has not held the turn lately has a full share of its
    /// own, but not past what is left of all plugins' together.
    #[tokio::test]
    async fn a_fresh_plugin_holds_the_turn_no_longer_than_all_plugins_have_left() {
        let turn_use = Arc::new(TurnUse::default());
        let line = crate::services::fair_places::Places::new(1, 0);
        let fresh = turn_use.take(line.take("p").await.unwrap(), "fresh");
        std::thread::sleep(LEAST_HOLD + Duration::from_millis(50));
        assert!(!turn_use.past_share(&fresh, Duration::from_secs(1)), "ended within its share");
        turn_use.charge("first", Duration::from_secs(2));
        assert!(turn_use.past_share(&fresh, Duration::from_secs(1)), "held past what all plugins had left");
        assert!(!turn_use.past_share(&fresh, LEAST_HOLD), "ended within the least hold");
    }

    /// Ordinary rates: own below the total, a bucket refilled over time.
    #[test]
    fn a_bucket_refills_at_the_rate_up_to_four_seconds_of_it() {
        let shares = Shares::new(1_000, 10_000);
        shares.charge("a", 4_100);
        let owed = shares.owed("a");
        assert!(owed > Duration::from_millis(50) && owed <= Duration::from_millis(100), "{owed:?}");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(shares.owed("a"), Duration::ZERO);
        assert!(shares.left("a") < 4_000);
    }
}
