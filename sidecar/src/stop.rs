//! An invocation's stop signal, for host work that runs on the
//! invocation's own thread.
//!
//! An invocation is normally stopped by dropping its future: its deadline's
//! timer, a client that hung up, the caller's own `select!`. That cannot
//! happen while the thread polling it is busy in a blocking call (a SQLite
//! statement stepped under `block_in_place`): the future is only dropped
//! once the call returns. Such work reads a [`Stop`] instead, which is due
//! once the invocation's deadline has passed or whoever watches the
//! invocation from another task has [`Stop::raise`]d it (see
//! [`RaiseOnDrop`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// When an invocation's work must stop: a deadline, and a flag others raise.
/// Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    raised: Arc<AtomicBool>,
    /// The flag of a wider stop it also obeys ([`Stop::joined`]).
    also: Option<Arc<AtomicBool>>,
    deadline: Option<Instant>,
}

impl Stop {
    /// A signal raised only by [`Stop::raise`].
    pub fn new() -> Stop {
        Stop::default()
    }

    /// The same flag, also due at `deadline` (the earlier one if it had one).
    pub fn until(&self, deadline: Instant) -> Stop {
        let deadline = self.deadline.map_or(deadline, |earlier| earlier.min(deadline));
        Stop { raised: Arc::clone(&self.raised), also: self.also.clone(), deadline: Some(deadline) }
    }

    /// The same flag and deadline, also due once `wider` is raised (the
    /// sidecar stopping): one wider stop, replacing any joined before.
    /// Raising the result does not raise `wider`.
    pub fn joined(&self, wider: &Stop) -> Stop {
        Stop { raised: Arc::clone(&self.raised), also: Some(Arc::clone(&wider.raised)), deadline: self.deadline }
    }

    /// Stops the work: every clone is due from now on.
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Relaxed);
    }

    /// Whether the work must stop now.
    pub fn is_due(&self) -> bool {
        self.raised.load(Ordering::Relaxed)
            || self.also.as_ref().is_some_and(|wider| wider.load(Ordering::Relaxed))
            || self.deadline.is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// A guard that raises the signal when dropped, unless disarmed.
    pub fn raise_on_drop(&self) -> RaiseOnDrop {
        RaiseOnDrop(Some(self.clone()))
    }
}

/// Raises its [`Stop`] when dropped: held by whoever would otherwise stop
/// the invocation by dropping it (its caller, a hang-up watch), in a task
/// that keeps running while the invocation's thread is busy.
#[derive(Debug)]
pub struct RaiseOnDrop(Option<Stop>);

impl RaiseOnDrop {
    /// The invocation ended on its own: nothing to stop.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            stop.raise();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_stop_is_due_once_raised_through_any_clone() {
        let stop = Stop::new();
        let clone = stop.until(Instant::now() + Duration::from_secs(60));
        assert!(!stop.is_due() && !clone.is_due());
        clone.raise();
        assert!(stop.is_due() && clone.is_due());
    }

    #[test]
    fn a_stop_is_due_at_its_earliest_deadline() {
        let stop = Stop::new();
        assert!(!stop.is_due(), "no deadline: never due by time");
        let past = stop.until(Instant::now() - Duration::from_millis(1));
        assert!(past.is_due());
        assert!(!stop.is_due(), "the deadline is the clone's own");
        let later = past.until(Instant::now() + Duration::from_secs(60));
        assert!(later.is_due(), "an earlier deadline is kept");
        let far = stop.until(Instant::now() + Duration::from_secs(60));
        assert!(!far.is_due());
    }

    #[test]
    fn a_joined_stop_is_due_with_the_wider_one_but_does_not_raise_it() {
        let wider = Stop::new();
        let invocation = Stop::new().until(Instant::now() + Duration::from_secs(60)).joined(&wider);
        assert!(!invocation.is_due());
        wider.raise();
        assert!(invocation.is_due());
        let other = Stop::new();
        let joined = other.joined(&Stop::new());
        joined.raise();
        assert!(other.is_due(), "the own flag is shared");
        let (wider, invocation) = (Stop::new(), Stop::new());
        invocation.joined(&wider).raise();
        assert!(!wider.is_due(), "raising the joined stop leaves the wider one alone");
    }

    #[test]
    fn a_guard_raises_unless_disarmed() {
        let stop = Stop::new();
        stop.raise_on_drop().disarm();
        assert!(!stop.is_due());
        drop(stop.raise_on_drop());
        assert!(stop.is_due());
    }
}
