//! DNS with the SSRF guard built in. The gateway's HTTP clients resolve
//! names only through `GuardedResolver`, which drops every address the
//! requesting plugin may not reach before the connector sees the list. The
//! check therefore applies to the address actually connected to: there is
//! no earlier lookup whose answer a rebinding DNS server could change.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

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

/// The resolver plugged into each gateway transport.
#[derive(Clone)]
pub(super) struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    zone: Zone,
}

impl GuardedResolver {
    pub(super) fn new(lookup: Arc<dyn Lookup>, zone: Zone) -> Self {
        GuardedResolver { lookup, zone }
    }
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
        Box::pin(async move {
            let host = name.as_str();
            let resolved = lookup.lookup(host).await?;
            if resolved.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, format!("`{host}` resolves to no address")).into());
            }
            let (admitted, refused) = admit(zone, &resolved);
            if admitted.is_empty() {
                let error = AddressRefused { host: host.to_string(), addrs: refused };
                tracing::warn!(target: "gatehouse::http", %error, "SSRF guard refused every address");
                return Err(error.into());
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
