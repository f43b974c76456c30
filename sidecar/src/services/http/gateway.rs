//! The request pipeline both doors share: validate, rate-limit, check the
//! allowlist, pick the client for the address zone, send, follow redirects
//! (checking each hop again), read a bounded body.
//!
//! Connections are never shared between plugins: each plugin has pools of
//! its own. A connection is state an upstream and the previous request
//! left behind (an unread request body smuggled into it, a reply queued
//! on it), so a shared one would let one plugin answer, or read, another
//! plugin's request with its injected credential. Within one plugin the
//! pool must not let a request reuse a grant it does not have either: a
//! host granted exactly (which may be private) and the same name through a
//! wildcard (public only) must never share a connection. Each plugin
//! therefore keeps one pooled client per [`Zone`]: the public client's
//! resolver admits only public addresses, and the granted client is used
//! only for requests whose own policy grants that exact host and port.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, LOCATION, PROXY_AUTHORIZATION, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body as _;

use super::addr::classify;
use super::error::{HttpError, from_transport};
use super::metrics::{HttpMetrics, HttpMetricsSnapshot};
use super::policy::{AllowRule, HttpPolicy, MAX_HEADER_VALUE, MAX_HEADERS};
use super::resolve::{AddressRefused, Lookup, LookupSlots, Zone};
use super::transport::{self, Informational, MAX_RESPONSE_HEAD, Response, Transport, TransportError};
use super::url::{Target, TargetHost, normalize};
use crate::guest_text::{LINE, SHORT, escaped};
use crate::secrets::SecretSource;
use crate::services::budget::Budget;

/// Refusal log lines one plugin may write at once (the bucket's burst)...
pub const REFUSAL_LOG_BURST: u32 = 10;
/// ...and then one every this often: 2 lines a second, sustained. Lines
/// over the budget are counted and the count is reported as `suppressed`
/// on the next line written.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_millis(500);

/// Sent unless the guest sets its own `user-agent`.
const USER_AGENT_VALUE: HeaderValue = HeaderValue::from_static(concat!("gatehouse/", env!("CARGO_PKG_VERSION")));

/// The shared half: the resolver and the TLS settings every plugin's pools
/// are built from. Create one per process and share it between plugins.
/// There is no proxy support: a proxy would connect on the gateway's
/// behalf, out of reach of the address check.
pub struct HttpGateway {
    lookup: Arc<dyn Lookup>,
    tls: rustls::ClientConfig,
    /// Each plugin's counters, by name: kept across reloads, so that the
    /// exported counters only ever grow (as Prometheus expects). Plugin
    /// names come from policy files, so their number is the operator's.
    metrics: std::sync::Mutex<std::collections::HashMap<String, Arc<HttpMetrics>>>,
}

impl HttpGateway {
    /// Reads the platform's certificate verifier once. `lookup` resolves
    /// every name the pools connect to.
    pub fn new(lookup: Arc<dyn Lookup>) -> Result<Self, TransportError> {
        Ok(HttpGateway { lookup, tls: transport::tls_config()?, metrics: Default::default() })
    }

    /// Outbound HTTP counters of `plugin`, if it was ever loaded with an
    /// `[http]` grant.
    pub fn metrics(&self, plugin: &str) -> Option<HttpMetricsSnapshot> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner()).get(plugin).map(|m| m.snapshot())
    }

    fn plugin_metrics(&self, plugin: &str) -> Arc<HttpMetrics> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner()).entry(plugin.to_string()).or_default().clone()
    }

    /// A new pair of pools, for one plugin only.
    fn pools(&self) -> Pools {
        Pools {
            public: transport::transport(self.lookup.clone(), Zone::Public, self.tls.clone()),
            granted: transport::transport(self.lookup.clone(), Zone::Granted, self.tls.clone()),
        }
    }
}

/// One plugin's connection pools, one per address zone.
struct Pools {
    public: Transport,
    granted: Transport,
}

impl Pools {
    fn zone(&self, zone: Zone) -> &Transport {
        match zone {
            Zone::Public => &self.public,
            Zone::Granted => &self.granted,
        }
    }
}

/// A request as a guest makes it, through either door. Nothing in it is
/// trusted yet.
#[derive(Debug, Clone, Default)]
pub struct OutboundRequest {
    /// Method, any case.
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Header names and raw values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body, if any.
    pub body: Option<Bytes>,
    /// Shortens the policy's timeout.
    pub timeout: Option<Duration>,
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct InboundResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers, as received.
    pub headers: HeaderMap,
    /// The whole body (within the policy's `max_response`).
    pub body: Bytes,
}

/// A header the platform adds to requests for matching origins.
struct ResolvedInjection {
    to: AllowRule,
    name: HeaderName,
    value: HeaderValue,
}

/// One plugin's view of the gateway: its policy, rate limiter, injected
/// credentials and counters. Lives as long as the loaded plugin, shared by
/// all its invocations.
pub struct PluginHttp {
    plugin: String,
    policy: HttpPolicy,
    pools: Pools,
    rate: Budget,
    lookups: LookupSlots,
    refusal_log: RefusalLog,
    injections: Vec<ResolvedInjection>,
    metrics: Arc<HttpMetrics>,
}

/// The budget of one plugin's refusal log lines. A guest decides how often
/// its requests fail, so without a budget it decides how much the sidecar
/// logs.
struct RefusalLog {
    budget: Budget,
    suppressed: AtomicU64,
}

impl RefusalLog {
    /// `Some(lines suppressed since the last one written)` if a line may be
    /// written now.
    fn admit(&self) -> Option<u64> {
        match self.budget.take() {
            Ok(()) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl PluginHttp {
    /// Prepares `plugin`'s HTTP grant, reading the secrets its injections
    /// name. Fails if a secret is undefined or unreadable.
    pub fn new(
        plugin: &str,
        policy: HttpPolicy,
        gateway: Arc<HttpGateway>,
        secrets: &BTreeMap<String, SecretSource>,
    ) -> Result<Self, String> {
        let rate = Budget::for_rate(&policy.rate);
        let mut injections = Vec::new();
        for injection in &policy.inject {
            let source = secrets.get(&injection.secret).ok_or_else(|| {
                format!(
                    "[[http.inject]] uses secret `{}`, which gatehouse.toml does not define (add [secrets.{}])",
                    injection.secret, injection.secret
                )
            })?;
            let secret = source.read().map_err(|e| format!("cannot read secret `{}` from {e}", injection.secret))?;
            let mut value = HeaderValue::try_from(format!("{}{secret}", injection.prefix))
                .map_err(|_| format!("secret `{}` is not a valid header value", injection.secret))?;
            value.set_sensitive(true);
            let name = HeaderName::try_from(injection.header.as_str())
                .map_err(|_| format!("invalid injected header name `{}`", injection.header))?;
            injections.push(ResolvedInjection { to: injection.to.clone(), name, value });
        }
        Ok(PluginHttp {
            plugin: plugin.to_string(),
            rate,
            lookups: LookupSlots::default(),
            refusal_log: RefusalLog {
                budget: Budget::new(REFUSAL_LOG_BURST, REFUSAL_LOG_INTERVAL),
                suppressed: AtomicU64::new(0),
            },
            policy,
            pools: gateway.pools(),
            injections,
            metrics: gateway.plugin_metrics(plugin),
        })
    }

    /// The policy this plugin runs under.
    pub fn policy(&self) -> &HttpPolicy {
        &self.policy
    }

    /// The plugin's counters (the same as [`HttpGateway::metrics`] gives
    /// for its name).
    pub fn metrics(&self) -> HttpMetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Sends `request` if the policy allows it, following redirects, and
    /// reads the whole response. Every outcome is counted and logged.
    pub async fn send(&self, request: OutboundRequest) -> Result<InboundResponse, HttpError> {
        self.send_paid(request, false).await
    }

    /// Takes a rate token for a request a door has been handed, before it
    /// reads the request's body, so a guest over its rate makes the host
    /// buffer nothing. Pass the request to [`PluginHttp::send_prepaid`].
    pub fn take_door_token(&self) -> Result<(), HttpError> {
        self.take_token()
    }

    /// [`PluginHttp::send`] for a request whose first token was taken by
    /// [`PluginHttp::take_door_token`]; the token is given back if the
    /// request is refused before it is sent.
    pub async fn send_prepaid(&self, request: OutboundRequest) -> Result<InboundResponse, HttpError> {
        self.send_paid(request, true).await
    }

    async fn send_paid(&self, request: OutboundRequest, prepaid: bool) -> Result<InboundResponse, HttpError> {
        let started = Instant::now();
        let deadline = request.timeout.map_or(self.policy.timeout, |t| t.min(self.policy.timeout));
        let mut unspent = prepaid;
        let outcome = match tokio::time::timeout(deadline, self.send_within(&request, &mut unspent)).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(HttpError::Timeout(deadline)),
        };
        if unspent {
            self.rate.refund();
        }
        self.log(&request.method, &request.url, &outcome, started);
        self.record(&outcome);
        outcome
    }

    /// Counts and logs a request that failed before reaching
    /// [`PluginHttp::send`] (a door could not even read it).
    pub fn refused_at_door(&self, method: &str, url: &str, error: HttpError, started: Instant) {
        let outcome = Err(error);
        self.log(method, url, &outcome, started);
        self.record(&outcome);
    }

    fn record(&self, outcome: &Result<InboundResponse, HttpError>) {
        let received = outcome.as_ref().map_or(0, |r| r.body.len() as u64);
        self.metrics.finished(outcome, received);
    }

    /// Every guest-supplied string is escaped, bounded and quoted (the
    /// `Debug` form), so it can neither start a line nor pass for a field
    /// of its own; refusals draw on the plugin's log budget. Field
    /// expressions run only when the event is enabled.
    fn log(&self, method: &str, url: &str, outcome: &Result<InboundResponse, HttpError>, started: Instant) {
        let (method, url) = (escaped(method, SHORT), escaped(url, LINE));
        // Whole microseconds, so the field reads `21.522`, not `21.522000000000003`.
        let elapsed_ms = || started.elapsed().as_micros() as f64 / 1e3;
        match outcome {
            Ok(response) => tracing::debug!(
                target: "gatehouse::http", plugin = %self.plugin, ?method, ?url,
                status = response.status.as_u16(), bytes = response.body.len(),
                elapsed_ms = elapsed_ms(), "outbound request"
            ),
            Err(error) => {
                let Some(suppressed) = self.refusal_log.admit() else { return };
                let text = error.to_string();
                let (kind, error_text) = (error.kind(), escaped(&text, LINE));
                if matches!(error, HttpError::AddressRefused(_)) {
                    tracing::warn!(
                        target: "gatehouse::http", plugin = %self.plugin, ?method, ?url, %kind, error = ?error_text,
                        suppressed, elapsed_ms = elapsed_ms(), "SSRF guard refused every address"
                    );
                } else {
                    tracing::info!(
                        target: "gatehouse::http", plugin = %self.plugin, ?method, ?url, %kind, error = ?error_text,
                        suppressed, elapsed_ms = elapsed_ms(), "outbound request failed"
                    );
                }
            }
        }
    }

    /// `unspent`: a token taken at the door that no request has used yet.
    async fn send_within(&self, request: &OutboundRequest, unspent: &mut bool) -> Result<InboundResponse, HttpError> {
        let mut method = parse_method(&request.method)?;
        self.policy.check_method(method.as_str()).map_err(|d| HttpError::Denied(d.0))?;
        let mut body = request.body.clone();
        let size = body.as_ref().map_or(0, |b| b.len() as u64);
        if size > 0 {
            self.policy.check_body(method.as_str()).map_err(|d| HttpError::Denied(d.0))?;
        }
        if size > self.policy.max_request {
            return Err(HttpError::RequestTooLarge { size, limit: self.policy.max_request });
        }
        let mut headers = self.guest_headers(&request.headers)?;
        let mut target = normalize(&request.url)?;

        let mut hops = 0;
        loop {
            let zone = self.zone_for(&target).map_err(|e| match e {
                HttpError::Denied(reason) if hops > 0 => {
                    HttpError::Denied(format!("redirect to {}: {reason}", escaped(target.url.as_str(), LINE)))
                }
                e => e,
            })?;
            let uri = transport::uri(&target).ok_or_else(|| {
                let url = escaped(target.url.as_str(), LINE);
                HttpError::BadRequest(format!("`{url}` cannot be sent as an HTTP request target"))
            })?;
            // Every request sent spends a token, each redirect hop
            // included, and only once the policy allows it (a door's token
            // pays for the first).
            if !std::mem::take(unspent) {
                self.take_token()?;
            }
            let mut outgoing = http::Request::new(Full::new(body.clone().unwrap_or_default()));
            *outgoing.method_mut() = method.clone();
            *outgoing.uri_mut() = uri;
            *outgoing.headers_mut() = headers.clone();
            outgoing.headers_mut().entry(USER_AGENT).or_insert(USER_AGENT_VALUE);
            // Chosen for each hop's own origin.
            for injection in self.injections.iter().filter(|i| i.to.matches(&target)) {
                outgoing.headers_mut().append(injection.name.clone(), injection.value.clone());
            }
            let informational = Informational::watch(&mut outgoing);
            let sending = self.lookups.scope(self.pools.zone(zone).request(outgoing));
            // The count first: a head that arrives with one 1xx too many
            // before it is refused, whatever came after it.
            let sent = tokio::select! {
                biased;
                () = informational.exceeded() => {
                    return Err(HttpError::TooManyInformational { limit: transport::MAX_INFORMATIONAL });
                }
                sent = sending => sent,
            };
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    let error = from_transport(&e);
                    if matches!(error, HttpError::AddressRefused(_)) {
                        // Refused by the address guard: a denied request,
                        // which does not spend the rate budget.
                        self.rate.refund();
                    }
                    return Err(error);
                }
            };
            self.metrics.sent(body.as_ref().map_or(0, |b| b.len() as u64));
            // hyper hands a `101` to its caller for an upgrade; none is
            // asked here (the header is refused), so it is the upstream's
            // error, not an answer for the plugin.
            if response.status().is_informational() {
                return Err(HttpError::InformationalAnswer { status: response.status().as_u16() });
            }

            // With `max_redirects = 0` the plugin follows redirects itself,
            // if at all: every 3xx is its answer, whatever its Location.
            if self.policy.max_redirects == 0 {
                return self.read_body(response).await;
            }
            let Some(next) = redirect_target(&target, &response)? else {
                return self.read_body(response).await;
            };
            if hops == self.policy.max_redirects {
                return Err(HttpError::TooManyRedirects { limit: self.policy.max_redirects });
            }
            hops += 1;
            self.metrics.redirect();
            // What browsers and curl do: 303 always becomes GET (bar HEAD),
            // and so does a POST answered with 301 or 302. The new method
            // must be one the policy allows, like the first.
            let status = response.status();
            if (status == StatusCode::SEE_OTHER && method != Method::HEAD)
                || (method == Method::POST && matches!(status.as_u16(), 301 | 302))
            {
                self.policy.check_method(Method::GET.as_str()).map_err(|d| {
                    HttpError::Denied(format!(
                        "redirect ({status}) from {} turns the {method} into a GET: {}",
                        escaped(target.url.as_str(), LINE),
                        d.0
                    ))
                })?;
                method = Method::GET;
                body = None;
                headers.remove(http::header::CONTENT_TYPE);
            }
            // Credentials the guest set are for the origin it named.
            if next.origin() != target.origin() {
                for name in [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION] {
                    headers.remove(name);
                }
            }
            target = next;
        }
    }

    /// Checks the allowlist and, for IP literals (which never reach the
    /// resolver), the address; returns the zone whose client may connect.
    fn zone_for(&self, target: &Target) -> Result<Zone, HttpError> {
        self.policy.check_target(target).map_err(|d| HttpError::Denied(d.0))?;
        let zone = if self.policy.grants_private(&target.host) { Zone::Granted } else { Zone::Public };
        if let TargetHost::Ip(ip) = target.host {
            let class = classify(ip);
            if !zone.admits(class) {
                return Err(HttpError::AddressRefused(AddressRefused {
                    host: target.host.to_string(),
                    addrs: vec![(ip, class)],
                }));
            }
        }
        Ok(zone)
    }

    fn guest_headers(&self, raw: &[(String, Vec<u8>)]) -> Result<HeaderMap, HttpError> {
        if raw.len() > MAX_HEADERS {
            return Err(HttpError::BadRequest(format!("{} headers is more than the {MAX_HEADERS} allowed", raw.len())));
        }
        let mut headers = HeaderMap::with_capacity(raw.len());
        for (name, value) in raw {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::BadRequest(format!("invalid header name `{}`", escaped(name, SHORT))))?;
            self.policy.check_header(name.as_str()).map_err(|d| HttpError::Denied(d.0))?;
            let quoted = || escaped(name.as_str(), SHORT);
            if value.len() > MAX_HEADER_VALUE {
                return Err(HttpError::BadRequest(format!(
                    "header `{}` is longer than {MAX_HEADER_VALUE} bytes",
                    quoted()
                )));
            }
            let value = HeaderValue::from_bytes(value)
                .map_err(|_| HttpError::BadRequest(format!("header `{}` has an invalid value", quoted())))?;
            headers.append(name, value);
        }
        Ok(headers)
    }

    fn take_token(&self) -> Result<(), HttpError> {
        self.rate
            .take()
            .map_err(|retry_after| HttpError::RateLimited { rate: self.policy.rate.to_string(), retry_after })
    }

    /// Reads the body within `max_response`, which the header bytes count
    /// against too (each field as `name: value\r\n`).
    async fn read_body(&self, response: Response) -> Result<InboundResponse, HttpError> {
        let limit = self.policy.max_response;
        let head: u64 = response.headers().iter().map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64).sum();
        // hyper stops reading a head at its buffer size, but a head that
        // arrived in one read may be longer: check the fixed bound here too.
        let head_limit = limit.min(MAX_RESPONSE_HEAD as u64);
        if head > head_limit {
            return Err(HttpError::ResponseHeadersTooLarge { limit: head_limit });
        }
        let body_limit = limit - head;
        // A declared length over the limit is refused before reading.
        if response.body().size_hint().lower() > body_limit {
            return Err(HttpError::ResponseTooLarge { limit });
        }
        let (parts, body) = response.into_parts();
        let body =
            Limited::new(body, usize::try_from(body_limit).unwrap_or(usize::MAX)).collect().await.map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    HttpError::ResponseTooLarge { limit }
                } else {
                    HttpError::Unavailable(format!("reading the response body: {e}"))
                }
            })?;
        Ok(InboundResponse { status: parts.status, headers: parts.headers, body: body.to_bytes() })
    }
}

/// The method in canonical (uppercase) form; guests may send any case.
fn parse_method(raw: &str) -> Result<Method, HttpError> {
    let invalid = || HttpError::BadRequest(format!("invalid method `{}`", escaped(raw, SHORT)));
    if raw.bytes().any(|b| b.is_ascii_lowercase()) {
        Method::from_bytes(raw.to_ascii_uppercase().as_bytes()).map_err(|_| invalid())
    } else {
        Method::from_bytes(raw.as_bytes()).map_err(|_| invalid())
    }
}

/// Where a redirect response points, normalised; `None` if `response` is
/// not a redirect to follow.
fn redirect_target(from: &Target, response: &Response) -> Result<Option<Target>, HttpError> {
    if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return Ok(None);
    }
    let Some(location) = response.headers().get(LOCATION) else {
        return Ok(None);
    };
    let invalid = |why: String| {
        let from = escaped(from.url.as_str(), LINE);
        HttpError::Denied(format!("redirect from {from} to an invalid location: {}", escaped(&why, LINE)))
    };
    let location = location.to_str().map_err(|_| invalid("not ASCII".into()))?;
    let next = from.url.join(location).map_err(|e| invalid(e.to_string()))?;
    normalize(next.as_str()).map(Some).map_err(|e| invalid(e.to_string()))
}
