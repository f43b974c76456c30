//! DNS with the SSRF guard built in. The gateway's HTTP clients resolve
//! names only through `GuardedResolver`, which drops every address the
//! requesting plugin may not reach before the connector sees the list. The
//! check therefore applies to the address actually connected to: there is
//! no earlier lookup whose answer a rebinding DNS server could change.
//!
//! Lookups are also bounded per plugin ([`LookupSlots`]): the system
//! resolver blocks a thread of tokio's blocking pool for as long as
//! `getaddrinfo` takes, which a hostile DNS server (reachable through any
//! wildcard grant) can stretch far past the request's deadline. A plugin
//! can keep at most [`MAX_LOOKUPS`] lookups running, each abandoned after
//! [`LOOKUP_TIMEOUT`], so its slow names cannot take the threads other
//! plugins' lookups need.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name;
use tokio::sync::Semaphore;

use super::addr::{AddrClass, classify};

/// Boxed future returned by [`Lookup::lookup`].
pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Name resolution. The system resolver in production; tests and the
/// benchmark substitute [`StaticLookup`] to make any name resolve to any
/// address (including hostile answers) without a DNS server.
pub trait Lookup: Send + Sync + 'static {
    /// Every address `host` resolves to.
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a>;
}

/// The operating system's resolver (`getaddrinfo`, on a blocking thread).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

/// A fixed table of answers. Names not in the table do not resolve.
#[derive(Debug, Default, Clone)]
pub struct StaticLookup {
    answers: HashMap<String, Vec<IpAddr>>,
}

impl StaticLookup {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `host` (lowercase, no trailing dot) resolve to `addrs`.
    pub fn with(mut self, host: &str, addrs: &[IpAddr]) -> Self {
        self.answers.insert(host.to_string(), addrs.to_vec());
        self
    }
}

impl Lookup for StaticLookup {
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a> {
        let answer =
            self.answers.get(host).cloned().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("`{host}` is not in the static DNS table"))
            });
        Box::pin(std::future::ready(answer))
    }
}

/// Which addresses a client may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// Only public addresses: what every request gets by default.
    Public,
    /// Any single-destination address: only for requests whose plugin
    /// grants that exact host and port (see `HttpPolicy::grants_private`).
    Granted,
}

impl Zone {
    /// Whether an address of class `class` may be connected to.
    pub fn admits(self, class: AddrClass) -> bool {
        match self {
            Zone::Public => class.is_public(),
            Zone::Granted => class.is_grantable(),
        }
    }
}

/// Every address a name resolved to was refused. Travels through the
/// connector's error chain, where the gateway finds it to report `denied`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AddressRefused {
    /// The name that was resolved.
    pub host: String,
    /// Each address it resolved to, with its class.
    pub addrs: Vec<(IpAddr, AddrClass)>,
}

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resolves only to addresses that are not allowed:", self.host)?;
        for (i, (ip, class)) in self.addrs.iter().enumerate() {
            write!(f, "{} {ip} ({class})", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

/// Lookups one plugin may have running at once.
pub const MAX_LOOKUPS: usize = 4;
/// How long a lookup may run, whoever is still waiting for it.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// One plugin's share of the resolver: [`MAX_LOOKUPS`] slots. A slot is
/// held until the lookup itself ends (or [`LOOKUP_TIMEOUT`] passes), not
/// until the request that started it gives up: what is bounded is the work
/// in the resolver, which outlives an abandoned request.
#[derive(Debug, Clone)]
pub struct LookupSlots(Arc<Semaphore>);

impl Default for LookupSlots {
    fn default() -> Self {
        LookupSlots(Arc::new(Semaphore::new(MAX_LOOKUPS)))
    }
}

tokio::task_local! {
    /// The slots of the plugin whose request is being sent. The connector
    /// has only the URI to go on, and the pools are shared by all plugins,
    /// so the gateway sets this around each send; hyper-util starts a
    /// connection (and so its lookup) inside the future that sends.
    static SLOTS: LookupSlots;
}

impl LookupSlots {
    /// Runs `send` with lookups it starts counted against these slots.
    pub(super) async fn scope<F: Future>(&self, send: F) -> F::Output {
        SLOTS.scope(self.clone(), send).await
    }
}

/// The resolver plugged into each gateway transport.
#[derive(Clone)]
pub(super) struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    zone: Zone,
    /// For lookups started outside any plugin's scope (none are expected):
    /// bounded all the same.
    unattributed: LookupSlots,
}

impl GuardedResolver {
    pub(super) fn new(lookup: Arc<dyn Lookup>, zone: Zone) -> Self {
        GuardedResolver { lookup, zone, unattributed: LookupSlots::default() }
    }
}

/// Resolves `host` in a slot of `slots`, on a task of its own that keeps
/// the slot until the lookup ends or [`LOOKUP_TIMEOUT`] passes.
async fn bounded_lookup(lookup: Arc<dyn Lookup>, slots: LookupSlots, host: String) -> io::Result<Vec<IpAddr>> {
    let busy = || io::Error::new(io::ErrorKind::TimedOut, format!("resolving `{host}`: no lookup slot was free"));
    let slot =
        tokio::time::timeout(LOOKUP_TIMEOUT, slots.0.acquire_owned()).await.map_err(|_| busy())?.map_err(|_| busy())?;
    let resolving = tokio::spawn(async move {
        let _slot = slot;
        tokio::time::timeout(LOOKUP_TIMEOUT, lookup.lookup(&host)).await.unwrap_or_else(|_| {
            Err(io::Error::new(io::ErrorKind::TimedOut, format!("resolving `{host}` took over {LOOKUP_TIMEOUT:?}")))
        })
    });
    resolving.await.map_err(io::Error::other)?
}

/// What the connector gets: the admitted addresses (port filled in by it).
type Resolving = Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let (lookup, zone) = (self.lookup.clone(), self.zone);
        let slots = SLOTS.try_with(LookupSlots::clone).unwrap_or_else(|_| self.unattributed.clone());
        Box::pin(async move {
            let host = name.as_str();
            let resolved = bounded_lookup(lookup, slots, host.to_string()).await?;
            if resolved.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, format!("`{host}` resolves to no address")).into());
            }
            let (admitted, refused) = admit(zone, &resolved);
            if admitted.is_empty() {
                // Logged by the gateway, within the plugin's log budget.
                return Err(AddressRefused { host: host.to_string(), addrs: refused }.into());
            }
            if !refused.is_empty() {
                tracing::debug!(target: "gatehouse::http", host, ?refused, "SSRF guard dropped some addresses");
            }
            Ok(admitted.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect::<Vec<_>>().into_iter())
        })
    }
}

/// Splits `resolved` into the addresses `zone` admits and the refused ones
/// (with their classes).
pub(super) fn admit(zone: Zone, resolved: &[IpAddr]) -> (Vec<IpAddr>, Vec<(IpAddr, AddrClass)>) {
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for &ip in resolved {
        let class = classify(ip);
        if zone.admits(class) { admitted.push(ip) } else { refused.push((ip, class)) }
    }
    (admitted, refused)
}
