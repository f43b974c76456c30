//! The gateway's connection pool, for both databases, rather than sqlx's:
//! a connection here is kept with what the gateway knows about it, which
//! sqlx's pool has no room for (the SQLite authorizer's raw handle; the
//! PostgreSQL session settings it carries, its [`Pooled::session`]), and a
//! connection being closed keeps its place until it has closed.
//!
//! What it keeps of sqlx's pool: at most `max_connections` open, a call
//! that finds none free within `acquire_timeout` refused
//! (`PoolTimedOut`), connections opened lazily and again after an error,
//! an idle connection closed after [`IDLE_TIMEOUT`] (checked whenever one
//! is taken), one idle for longer than [`Connector::CHECK_AFTER`] checked
//! before it is lent (a server restarted meanwhile), a connection marked
//! [`Pooled::close_on_drop`] closed instead of reused.
//!
//! A connection being closed still counts, and keeps its place in the pool
//! (and the permits its holder attached: a plugin's share), until it has
//! closed: a statement abandoned on it may still be running (a SQLite
//! write waiting for a lock, say), and a place freed at once let an
//! outside review open hundreds of connections past `max_connections`.
//! A new connection is opened in a task of its own holding its place, so a
//! caller that leaves mid-connect leaves it to the pool.
//!
//! Places are not first come, first served: a freed one goes to the
//! waiting holder (plugin) that holds the fewest ([`crate::services::fair_places`]).
//!
//! A SQLite pool keeps one place for the write that holds the alias's turn
//! to write ([`ConnPool::with_reserve`]): writes outside a transaction take
//! the turn before their connection, and transactions waiting in line for
//! the turn keep theirs, so with the pool full of those the holder waited
//! for a connection only they could free, holding everyone back (a twelfth
//! outside review: three plugins' eleven waiting transactions left an
//! honest one-row writer 0 writes in 15 s).

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::services::fair_places::Places;

/// How long a connection may sit idle before it is closed: the pool
/// shrinks back after a burst (each open connection is a server process,
/// or a thread and a file handle).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How one database's connections are opened, checked and closed.
pub trait Connector: Send + Sync + 'static {
    /// A connection.
    type Conn: Send + 'static;

    /// How long a connection may sit idle and still be lent unchecked.
    const CHECK_AFTER: Duration = Duration::MAX;

    /// Opens a connection.
    fn open(&self) -> impl Future<Output = Result<Self::Conn, sqlx::Error>> + Send;

    /// Whether a connection idle for longer than [`Self::CHECK_AFTER`] still
    /// works.
    fn check(conn: &mut Self::Conn) -> impl Future<Output = bool> + Send {
        let _ = conn;
        async { true }
    }

    /// Closes a connection once whatever runs on it is done.
    fn close(conn: Self::Conn) -> impl Future<Output = ()> + Send;
}

/// A pool of connections made by `C`.
pub struct ConnPool<C: Connector> {
    inner: Arc<Inner<C>>,
}

impl<C: Connector> Clone for ConnPool<C> {
    fn clone(&self) -> Self {
        ConnPool { inner: Arc::clone(&self.inner) }
    }
}

struct Inner<C: Connector> {
    connector: C,
    acquire_timeout: Duration,
    /// One per connection that may be held, given to the waiting plugin
    /// holding the fewest.
    places: Arc<Places>,
    /// The permit kept for [`ConnPool::acquire_for`] with `reserved`, if any.
    reserve: Option<Arc<Semaphore>>,
    /// Connections not held, most recently returned last.
    idle: Mutex<Vec<Idle<C::Conn>>>,
    /// Connections open (held, idle, or closing).
    open: AtomicU32,
}

struct Idle<T> {
    conn: T,
    session: Option<Arc<str>>,
    since: Instant,
}

impl<C: Connector> ConnPool<C> {
    /// A pool of at most `max_connections` made by `connector`, opening
    /// nothing yet.
    pub fn new(connector: C, max_connections: u32, acquire_timeout: Duration) -> ConnPool<C> {
        Self::with_places(connector, max_connections as usize, None, acquire_timeout)
    }

    /// [`Self::new`], with one of the `max_connections` (if there are two
    /// or more) kept for [`Self::acquire_for`] with `reserved`.
    pub fn with_reserve(connector: C, max_connections: u32, acquire_timeout: Duration) -> ConnPool<C> {
        let max = max_connections as usize;
        match max {
            0 | 1 => Self::with_places(connector, max, None, acquire_timeout),
            _ => Self::with_places(connector, max - 1, Some(Arc::new(Semaphore::new(1))), acquire_timeout),
        }
    }

    fn with_places(
        connector: C,
        places: usize,
        reserve: Option<Arc<Semaphore>>,
        acquire_timeout: Duration,
    ) -> ConnPool<C> {
        ConnPool {
            inner: Arc::new(Inner {
                connector,
                acquire_timeout,
                // A pool of three or more keeps its last place for a
                // plugin holding none ([`Places::new`]).
                places: Places::new(places, usize::from(places >= 3)),
                reserve,
                idle: Mutex::default(),
                open: AtomicU32::new(0),
            }),
        }
    }

    /// A connection for the sidecar itself ([`Self::acquire_for`] the
    /// holder `""`).
    pub async fn acquire(&self, session: Option<&str>) -> Result<Pooled<C>, sqlx::Error> {
        self.acquire_for("", session, false).await
    }

    /// A connection for `holder` (a plugin): an idle one (preferably one
    /// whose session is `session`, so that it need not be set again), or a
    /// new one if none is idle, within `acquire_timeout` of waiting for a
    /// place ([`Places`]: a freed place goes to the waiting holder that
    /// holds the fewest). With `reserved`, in the reserved place if the
    /// others are taken: for the one caller at a time that the reserve is
    /// kept for.
    pub async fn acquire_for(
        &self,
        holder: &str,
        session: Option<&str>,
        reserved: bool,
    ) -> Result<Pooled<C>, sqlx::Error> {
        let inner = &self.inner;
        let waited = Instant::now();
        loop {
            let left = inner.acquire_timeout.saturating_sub(waited.elapsed());
            let permit = tokio::time::timeout(left, inner.permit(holder, reserved))
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)?
                .map_err(|_| sqlx::Error::PoolClosed)?;
            let Some(idle) = inner.take_idle(session) else {
                return tokio::spawn(Inner::open(Arc::clone(inner), permit))
                    .await
                    .map_err(|_| sqlx::Error::WorkerCrashed)?;
            };
            let stale = idle.since.elapsed() > C::CHECK_AFTER;
            let mut conn = Arc::clone(inner).lend(idle.conn, idle.session, permit);
            if !stale {
                return Ok(conn);
            }
            // Closed if the caller leaves mid-check.
            conn.close = true;
            if C::check(&mut conn).await {
                conn.close = false;
                return Ok(conn);
            }
            // Dead (the server restarted, say): closed, and another taken.
        }
    }

    /// What makes the pool's connections.
    pub fn connector(&self) -> &C {
        &self.inner.connector
    }

    /// Places `holder` holds now (the reserved one not counted).
    pub fn held_by(&self, holder: &str) -> usize {
        self.inner.places.held_by(holder)
    }

    /// Places `holder` holds now beyond those guaranteed to it
    /// ([`Self::guarantee`]).
    pub fn held_beyond_guarantee(&self, holder: &str) -> usize {
        self.inner.places.held_beyond_guarantee(holder)
    }

    /// Places guaranteed to `holder`.
    pub fn guaranteed_to(&self, holder: &str) -> usize {
        self.inner.places.guaranteed_to(holder)
    }

    /// Guarantees `holder` `places` of the pool ([`Places::guarantee`]).
    pub fn guarantee(&self, holder: &str, places: usize) {
        self.inner.places.guarantee(holder, places);
    }

    /// Connections open now, and of them idle.
    pub fn usage(&self) -> (u32, usize) {
        (self.inner.open.load(Ordering::Relaxed), self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner).len())
    }

    /// Makes the `index`th idle connection (oldest first) look idle since
    /// `since`, for tests of the idle rules.
    #[cfg(test)]
    pub(super) fn idle_since(&self, index: usize, since: Instant) {
        self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner)[index].since = since;
    }

    /// Closes the idle connections and refuses every later acquire
    /// (held ones close when they are given back).
    pub fn close(&self) {
        self.inner.places.close();
        if let Some(reserve) = &self.inner.reserve {
            reserve.close();
        }
        let idle = std::mem::take(&mut *self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for idle in idle {
            Inner::<C>::closing(Arc::clone(&self.inner), idle.conn, Vec::new());
        }
    }
}

impl<C: Connector> Inner<C> {
    /// A place in the pool for `holder`; with `reserved`, the reserved one
    /// too.
    async fn permit(&self, holder: &str, reserved: bool) -> Result<Permit, PoolClosed> {
        match (&self.reserve, reserved) {
            (Some(reserve), true) => tokio::select! {
                biased;
                place = self.places.take(holder) => Ok(Box::new(place.map_err(|_| PoolClosed)?)),
                permit = Arc::clone(reserve).acquire_owned() => Ok(Box::new(permit.map_err(|_| PoolClosed)?)),
            },
            _ => Ok(Box::new(self.places.take(holder).await.map_err(|_| PoolClosed)?)),
        }
    }

    /// A new connection, in `permit`'s place.
    async fn open(self: Arc<Self>, permit: Permit) -> Result<Pooled<C>, sqlx::Error> {
        let conn = self.connector.open().await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(self.lend(conn, None, permit))
    }

    /// `conn`, held in `permit`'s place until it is given back or closed.
    fn lend(self: Arc<Self>, conn: C::Conn, session: Option<Arc<str>>, permit: Permit) -> Pooled<C> {
        Pooled { conn: Some(conn), session, pool: self, close: false, permits: vec![permit] }
    }

    /// An idle connection, closing those idle past [`IDLE_TIMEOUT`]: the
    /// most recently returned of those whose session is `session`, else
    /// the most recently returned.
    fn take_idle(self: &Arc<Self>, session: Option<&str>) -> Option<Idle<C::Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = idle.partition_point(|i| i.since.elapsed() >= IDLE_TIMEOUT);
        let stale: Vec<_> = idle.drain(..fresh).collect();
        let same = idle.iter().rposition(|i| i.session.as_deref() == session);
        let taken = match same {
            Some(at) => Some(idle.remove(at)),
            None => idle.pop(),
        };
        drop(idle);
        for stale in stale {
            Inner::closing(Arc::clone(self), stale.conn, Vec::new());
        }
        taken
    }

    /// Closes `conn`, keeping its place (and `permits`) until it has.
    fn closing(self: Arc<Self>, conn: C::Conn, permits: Vec<Box<dyn Send + Sync>>) {
        let closed = move || {
            self.open.fetch_sub(1, Ordering::Relaxed);
            drop(permits);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(async move {
                C::close(conn).await;
                closed();
            })),
            // No runtime to wait on (a drop at shutdown): dropped as it is.
            Err(_) => {
                drop(conn);
                closed();
            }
        }
    }
}

/// What holds a connection's place: a [`crate::services::fair_places::Place`], or
/// the reserved permit.
type Permit = Box<dyn Send + Sync>;

/// The pool was closed.
struct PoolClosed;

/// A connection taken from a [`ConnPool`]; back to it on drop, or closed
/// if marked so.
pub struct Pooled<C: Connector> {
    conn: Option<C::Conn>,
    session: Option<Arc<str>>,
    pool: Arc<Inner<C>>,
    close: bool,
    /// The pool's permit, and what the holder attached (a plugin's share,
    /// say): released when the connection is back in the pool, or has
    /// finished closing.
    permits: Vec<Box<dyn Send + Sync>>,
}

impl<C: Connector> Pooled<C> {
    /// Keeps `held` (a plugin's share's permit, say) as long as this
    /// connection's place in the pool: until it is given back, or has
    /// finished closing.
    pub fn hold(&mut self, held: impl Send + Sync + 'static) {
        self.permits.push(Box::new(held));
    }

    /// What made the connection.
    pub fn connector(&self) -> &C {
        &self.pool.connector
    }

    /// Closes the connection when it is dropped instead of giving it back:
    /// for a connection whose state is unknown. Closing rolls back a
    /// transaction left open.
    pub fn close_on_drop(&mut self) {
        self.close = true;
    }

    /// The session settings the connection carries, as their holder
    /// described them ([`Self::set_session`]); `None` for a new one.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Records the session settings the connection now carries (`None`
    /// while they are being changed, or unknown).
    pub fn set_session(&mut self, session: Option<Arc<str>>) {
        self.session = session;
    }
}

impl<C: Connector> Deref for Pooled<C> {
    type Target = C::Conn;
    fn deref(&self) -> &C::Conn {
        self.conn.as_ref().expect("a pooled connection until dropped")
    }
}

impl<C: Connector> DerefMut for Pooled<C> {
    fn deref_mut(&mut self) -> &mut C::Conn {
        self.conn.as_mut().expect("a pooled connection until dropped")
    }
}

impl<C: Connector> Drop for Pooled<C> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.close && !self.pool.places.is_closed() {
            let session = self.session.take();
            let idle = Idle { conn, session, since: Instant::now() };
            self.pool.idle.lock().unwrap_or_else(PoisonError::into_inner).push(idle);
            return;
        }
        Inner::closing(Arc::clone(&self.pool), conn, std::mem::take(&mut self.permits));
    }
}
