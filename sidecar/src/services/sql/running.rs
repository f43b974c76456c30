//! Long statements that give way to a plugin waiting for a connection.
//!
//! Outside reviews 16 and 17: with every pooled connection busy running
//! long statements, nothing is idle to take back ([`super::held`]), so
//! nine plugins each running one long statement after another left an
//! honest reader 8 reads and 3 refusals in 10 s, and greedy plugins at two
//! long statements each kept an honest plugin from its second connection.
//! So a plugin that has waited half its `acquire_timeout` ends one
//! statement that has run longer than it has waited, of the plugin holding
//! the most connections if it holds more than the waiter and at least two
//! ([`longest_of_the_most`]). A SQLite statement stops at its next
//! progress check ([`super::sqlite_pool::WalPlaces::end_for_waiter`]); a
//! PostgreSQL one is cancelled by the server ([`PgRunning`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

use super::error::{RETRY_UNAVAILABLE, SqlError};

/// How many connections a plugin holds at least for one of its
/// statements to be ended for a waiter: review 18 saw plugins holding
/// none, each waiting in turn, end an honest plugin's only report (a
/// plugin holding one uses no more than a newcomer will; the pool's kept
/// place serves newcomers, [`crate::services::fair_places`]).
const LEAST_HELD: usize = 2;

/// Of `running` (a statement, its plugin, since when it runs), the one
/// to end for `waiter`, waiting since `waiting_since`: of the statements
/// of other plugins running since before that, one of the plugin holding
/// the most connections (`held_by`), if it holds more than `waiter` and
/// at least [`LEAST_HELD`]; the longest running first. Returns it and
/// since when it ran.
pub fn longest_of_the_most<T>(
    running: impl IntoIterator<Item = (T, Arc<str>, Instant)>,
    waiter: &str,
    waiting_since: Instant,
    held_by: impl Fn(&str) -> usize,
) -> Option<(T, Instant)> {
    let waiter_holds = held_by(waiter);
    running
        .into_iter()
        .filter(|(_, plugin, since)| &**plugin != waiter && *since <= waiting_since)
        .filter_map(|(statement, plugin, since)| {
            let holds = held_by(&plugin);
            (holds > waiter_holds && holds >= LEAST_HELD).then_some((statement, holds, since))
        })
        .max_by_key(|(_, holds, since)| (*holds, std::cmp::Reverse(*since)))
        .map(|(statement, _, since)| (statement, since))
}

/// What the caller of a statement ended for a waiting plugin is told.
pub fn ended_for_waiter() -> SqlError {
    SqlError::Unavailable {
        message: "the statement was ended (and any transaction it was part of rolled back): it had run longer \
                  than another plugin, holding fewer of the pool's connections than this plugin, had waited for \
                  one; this connection serves no more statements"
            .into(),
        retry_after: Some(RETRY_UNAVAILABLE),
    }
}

/// The plugins' statements running on one PostgreSQL alias.
#[derive(Default)]
pub struct PgRunning {
    statements: Mutex<Vec<Weak<PgStatement>>>,
    /// A cancel is under way: one at a time per alias, so that waiters
    /// asking at once open one connection for it, not one each.
    cancelling: Arc<AtomicBool>,
}

/// A plugin's statement running on a PostgreSQL connection (its server
/// process `pid`), from its start to [`PgStatement::over`].
pub struct PgStatement {
    plugin: Arc<str>,
    pid: i32,
    since: Instant,
    /// Set once it is picked to end: its connection is closed after it,
    /// whatever the statement's outcome, since the server's cancel may
    /// reach whatever runs on it next.
    ended: AtomicBool,
    /// Set when its caller is done with it: no longer to be picked.
    over: AtomicBool,
}

impl PgStatement {
    /// The statement is over: whether it was picked to end (then its
    /// connection must be closed).
    pub fn over(&self) -> bool {
        self.over.store(true, Ordering::SeqCst);
        self.ended.load(Ordering::SeqCst)
    }
}

impl PgRunning {
    /// `plugin`'s statement begins on the connection of server process `pid`.
    pub fn begin(&self, plugin: &str, pid: i32) -> Arc<PgStatement> {
        let statement = Arc::new(PgStatement {
            plugin: Arc::from(plugin),
            pid,
            since: Instant::now(),
            ended: AtomicBool::new(false),
            over: AtomicBool::new(false),
        });
        let mut statements = self.statements.lock().unwrap_or_else(PoisonError::into_inner);
        statements.retain(|s| s.upgrade().is_some_and(|s| !s.over.load(Ordering::SeqCst)));
        statements.push(Arc::downgrade(&statement));
        statement
    }

    /// Picks the statement to end for `waiter` ([`longest_of_the_most`])
    /// and marks it ended, unless a cancel is under way. Returns its server
    /// process, its plugin, since when it ran, and the guard of the cancel
    /// (to drop once it is sent).
    pub fn pick_for_waiter(
        &self,
        waiter: &str,
        waiting_since: Instant,
        held_by: impl Fn(&str) -> usize,
    ) -> Option<(i32, Arc<str>, Instant, Cancelling)> {
        if self.cancelling.swap(true, Ordering::SeqCst) {
            return None;
        }
        let cancelling = Cancelling(Arc::clone(&self.cancelling));
        let running: Vec<_> = {
            let statements = self.statements.lock().unwrap_or_else(PoisonError::into_inner);
            statements
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|s| !s.over.load(Ordering::SeqCst) && !s.ended.load(Ordering::SeqCst))
                .map(|s| (Arc::clone(&s), Arc::clone(&s.plugin), s.since))
                .collect()
        };
        let (victim, since) = longest_of_the_most(running, waiter, waiting_since, held_by)?;
        victim.ended.store(true, Ordering::SeqCst);
        if victim.over.load(Ordering::SeqCst) {
            // Over meanwhile: its caller may not have seen the mark.
            return None;
        }
        Some((victim.pid, Arc::clone(&victim.plugin), since, cancelling))
    }
}

/// A cancel under way on an alias; the next may begin once it is dropped.
pub struct Cancelling(Arc<AtomicBool>);

impl Drop for Cancelling {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn held(counts: &'static [(&'static str, usize)]) -> impl Fn(&str) -> usize {
        |plugin| counts.iter().find(|(p, _)| *p == plugin).map_or(0, |(_, n)| *n)
    }

    /// The longest-running statement of the plugin holding the most, if
    /// it holds more than the waiter, begun before the wait; never the
    /// waiter's own.
    #[test]
    fn the_longest_statement_of_the_plugin_holding_the_most_is_picked() {
        let now = Instant::now();
        let ago = |ms| now - Duration::from_millis(ms);
        let running = || {
            vec![
                ("a-short", Arc::from("a"), ago(1_000)),
                ("a-long", Arc::from("a"), ago(3_000)),
                ("b-longest", Arc::from("b"), ago(9_000)),
                ("w-own", Arc::from("w"), ago(20_000)),
                ("a-new", Arc::from("a"), ago(10)),
            ]
        };
        let counts = held(&[("a", 3), ("b", 1), ("w", 1)]);
        let picked = longest_of_the_most(running(), "w", ago(500), &counts);
        assert_eq!(picked.map(|(s, _)| s), Some("a-long"));
        // Begun after the wait began: not picked.
        assert_eq!(longest_of_the_most(running(), "w", ago(5_000), &counts).map(|(s, _)| s), None);
        // The waiter holds as many as any other: nothing.
        let counts = held(&[("a", 3), ("b", 1), ("w", 3)]);
        assert_eq!(longest_of_the_most(running(), "w", ago(500), &counts).map(|(s, _)| s), None);
        // Holding more than the waiter, though not the most: still the
        // plugin holding the most.
        let counts = held(&[("a", 2), ("b", 1), ("w", 0)]);
        assert_eq!(longest_of_the_most(running(), "w", ago(500), &counts).map(|(s, _)| s), Some("a-long"));
        let counts = held(&[("a", 2), ("b", 3), ("w", 0)]);
        assert_eq!(longest_of_the_most(running(), "w", ago(500), &counts).map(|(s, _)| s), Some("b-longest"));
        // Holding one: never.
        let counts = held(&[("a", 1), ("b", 1), ("w", 0)]);
        assert_eq!(longest_of_the_most(running(), "w", ago(500), &counts).map(|(s, _)| s), None);
    }

    /// One cancel at a time per alias; a statement over is never picked,
    /// and one picked tells its caller so when it is over.
    #[test]
    fn one_cancel_at_a_time_and_never_a_statement_over() {
        let running = PgRunning::default();
        let a = running.begin("a", 10);
        let b = running.begin("b", 11);
        let later = Instant::now() + Duration::from_secs(1);
        let counts = held(&[("a", 3), ("b", 2)]);
        let (pid, plugin, _, cancelling) = running.pick_for_waiter("w", later, &counts).unwrap();
        assert_eq!((pid, &*plugin), (10, "a"));
        assert!(running.pick_for_waiter("w", later, &counts).is_none(), "two cancels at once");
        drop(cancelling);
        // `a` is ended already: `b` is next.
        let (pid, ..) = running.pick_for_waiter("w", later, &counts).unwrap();
        assert_eq!(pid, 11);
        assert!(a.over(), "the caller of a picked statement was not told");
        let c = running.begin("c", 12);
        assert!(!c.over(), "a statement not picked was said to be ended");
        assert!(running.pick_for_waiter("w", later, held(&[("c", 5)])).is_none(), "a statement over was picked");
        drop(b);
    }
}
