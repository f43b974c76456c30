//! Connections plugins hold between their calls (a Spin connection
//! resource, a transaction of the custom door), which an alias takes back
//! when they sit idle while another plugin waits for a connection.
//!
//! Outside reviews 13 and 14: three or four plugins holding Spin
//! connections (or read transactions) idle to their invocation's timeout
//! held every place of the pool, and an honest reader got 47 reads and 6
//! refusals in 40 s. A place is only freed by its holder, and an idle
//! holder frees nothing, so no queue order helps: the pool must take some
//! back. [`Holdings::take_back`] takes one connection of the other plugin
//! holding the most places (if it holds at least as many as the waiter):
//! an idle one at once (in a transaction only if idle for the whole wait),
//! else one in use outside a transaction as soon as its statement ends (a
//! plugin that touches each of its connections every few milliseconds
//! keeps none of them that way). Outside a transaction the holder never
//! notices (Spin's door opens a fresh connection at its next statement);
//! a transaction is rolled back, and its next statement says why
//! ([`TakenBack`]). A transaction in use is never taken: review 15's nine
//! one-connection plugins made an honest plugin with three short
//! transactions open "hold the most", and had 17 of them rolled back in
//! 13 s; and a plugin's waiting call never takes back its own (review 15
//! saw honest plugins roll back their own transactions).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::exec::SqlConnection;

/// The connections held on one alias.
#[derive(Default)]
pub struct Holdings {
    held: Mutex<Vec<Weak<Holding>>>,
}

struct Holding {
    plugin: Arc<str>,
    slot: Mutex<Slot>,
}

enum Slot {
    /// Between calls.
    Idle { connection: Box<SqlConnection>, since: Instant },
    /// Lent to a call ([`Lent`]), outside a transaction when lent unless
    /// `in_transaction`; `wanted`: taken back as soon as the call gives it
    /// back, if still outside one.
    Out { wanted: bool, in_transaction: bool },
    /// None held (a transaction over, a Spin connection lost).
    Empty,
    /// Taken back by [`Holdings::take_back`], not yet told to the holder.
    TakenBack(TakenBack),
}

/// A connection taken back from its holder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TakenBack {
    /// A transaction was open on it (and was rolled back).
    pub in_transaction: bool,
    /// How long it had sat idle (zero: taken as its statement ended).
    pub idle_for: Duration,
}

/// A connection in its holder's hands between calls.
pub struct Held {
    holding: Arc<Holding>,
}

/// A [`Held`] connection lent to one call; back in its [`Held`] on drop.
pub struct Lent {
    holding: Arc<Holding>,
    /// The connection: `None` if none is held (the holder may put one in).
    pub connection: Option<SqlConnection>,
    /// Why the connection is gone, the first time a call finds it gone.
    pub taken_back: Option<TakenBack>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Held {
    /// `connection`, held by `plugin` on the alias of `holdings`.
    pub fn new(holdings: &Holdings, plugin: &str, connection: SqlConnection) -> Held {
        let slot = Slot::Idle { connection: Box::new(connection), since: Instant::now() };
        let holding = Arc::new(Holding { plugin: Arc::from(plugin), slot: Mutex::new(slot) });
        let mut held = locked(&holdings.held);
        held.retain(|h| h.strong_count() > 0);
        held.push(Arc::downgrade(&holding));
        Held { holding }
    }

    /// The connection, for one call: not taken back while it is lent.
    pub fn lend(&self) -> Lent {
        let mut slot = locked(&self.holding.slot);
        if let Slot::Out { .. } = *slot {
            // Lent already (to a call cut off mid-way).
            return Lent { holding: Arc::clone(&self.holding), connection: None, taken_back: None };
        }
        let in_transaction = matches!(&*slot, Slot::Idle { connection, .. } if connection.in_transaction());
        let (connection, taken_back) = match std::mem::replace(&mut *slot, Slot::Out { wanted: false, in_transaction })
        {
            Slot::Idle { connection, .. } => (Some(*connection), None),
            Slot::Out { .. } | Slot::Empty => (None, None),
            Slot::TakenBack(taken) => (None, Some(taken)),
        };
        Lent { holding: Arc::clone(&self.holding), connection, taken_back }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let mut slot = locked(&self.holding.slot);
        let Some(connection) = self.connection.take() else {
            if let Slot::Out { .. } = *slot {
                *slot = Slot::Empty;
            }
            return;
        };
        if let Slot::Out { wanted: true, .. } = *slot
            && !connection.in_transaction()
        {
            let taken = TakenBack { in_transaction: false, idle_for: Duration::ZERO };
            *slot = Slot::TakenBack(taken);
            drop(slot);
            // Closed (a transaction rolled back) or back in the pool.
            drop(connection);
            return;
        }
        *slot = Slot::Idle { connection: Box::new(connection), since: Instant::now() };
    }
}

impl Holdings {
    /// Takes back one connection for `waiter`, waiting since
    /// `waiting_since`: one of another plugin, the one holding the most
    /// places (`held_by`: beyond those guaranteed to it, so never one of
    /// those), if it holds at least as many as `waiter`. Of its
    /// connections, the longest idle is taken at once (closed, rolling
    /// back what it held, or given back to the pool, whose freed place goes
    /// to the waiting plugin holding the fewest): one in a transaction only
    /// if idle since before the wait began. Else one in use outside a
    /// transaction, taken when its call gives it back, if still outside
    /// one (and unless one in use is wanted already: one statement's end
    /// frees a place, and each more taken would cost its holder). A
    /// transaction in use is never taken. Returns whose it was, and what
    /// was taken at once.
    pub fn take_back(
        &self,
        waiter: &str,
        waiting_since: Instant,
        held_by: impl Fn(&str) -> usize,
    ) -> Option<(Arc<str>, Option<TakenBack>)> {
        let holdings: Vec<Arc<Holding>> = locked(&self.held).iter().filter_map(Weak::upgrade).collect();
        let one_wanted = holdings.iter().any(|h| matches!(*locked(&h.slot), Slot::Out { wanted: true, .. }));
        // Idle ones first, the longest idle first; then those in use not
        // yet wanted.
        let rank = |h: &Holding| match &*locked(&h.slot) {
            Slot::Idle { connection, since } if !connection.in_transaction() || *since <= waiting_since => {
                Some((1, std::cmp::Reverse(*since)))
            }
            Slot::Out { wanted: false, in_transaction: false } if !one_wanted => {
                Some((0, std::cmp::Reverse(Instant::now())))
            }
            _ => None,
        };
        let (victim, (victim_holds, _)) = holdings
            .iter()
            .filter(|h| &*h.plugin != waiter)
            .filter_map(|h| rank(h).map(|rank| (h, (held_by(&h.plugin), rank))))
            .filter(|(_, (holds, _))| *holds > 0)
            .max_by_key(|(_, rank)| *rank)?;
        if victim_holds < held_by(waiter) {
            return None;
        }
        let mut slot = locked(&victim.slot);
        let taken = match std::mem::replace(&mut *slot, Slot::Empty) {
            Slot::Idle { connection, since } => {
                let taken = TakenBack { in_transaction: connection.in_transaction(), idle_for: since.elapsed() };
                *slot = Slot::TakenBack(taken);
                drop(slot);
                drop(connection);
                Some(taken)
            }
            Slot::Out { in_transaction, .. } => {
                *slot = Slot::Out { wanted: true, in_transaction };
                None
            }
            other @ (Slot::TakenBack(_) | Slot::Empty) => {
                *slot = other;
                return None;
            }
        };
        Some((Arc::clone(&victim.plugin), taken))
    }
}
