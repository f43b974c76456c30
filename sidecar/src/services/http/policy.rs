//! The `[http]` grant: which origins a plugin may reach, with which methods
//! and headers, how often and how much. Pure: no I/O, table-tested here and
//! property-tested in `tests/all/http_props.rs`.

use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use super::url::{Target, TargetHost, normalize};
use crate::guest_text::{SHORT, escaped};

/// Default methods when `[http] methods` is absent.
pub const DEFAULT_METHODS: &[&str] = &["GET", "HEAD"];
/// Default `[http] rate`.
pub const DEFAULT_RATE: Rate = Rate { count: NonZeroU32::new(10).unwrap(), per: Per::Second };
/// Default `[http] max_request` (request body).
pub const DEFAULT_MAX_REQUEST: u64 = 1 << 20;
/// Default `[http] max_response` (response body).
pub const DEFAULT_MAX_RESPONSE: u64 = 4 << 20;
/// Default `[http] timeout` (whole request, all redirects included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `[http] max_redirects`.
pub const DEFAULT_MAX_REDIRECTS: u32 = 3;
/// Request headers a guest may set, at most.
pub const MAX_HEADERS: usize = 64;
/// Longest request header value a guest may set, in bytes.
pub const MAX_HEADER_VALUE: usize = 8 * 1024;

/// Headers no guest may set, whatever the policy: hop-by-hop and framing
/// headers (the client owns the connection) and `host` (the URL decides).
/// Every name starting with [`ALWAYS_DENIED_PREFIX`] is refused too (the
/// `proxy-*` names listed here are also what policy loading refuses to
/// inject).
pub const ALWAYS_DENIED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "http2-settings",
];

/// `proxy-authorization`, `proxy-connection` and every other `proxy-*`
/// header are for proxies, and the sidecar uses none: an upstream that is
/// one must never see them from a guest.
pub const ALWAYS_DENIED_PREFIX: &str = "proxy-";

/// Headers that make an upstream (or a proxy or framework in front of it)
/// read the request as another method, host, path or client: method
/// overrides (`methods = ["GET"]` must not deliver a `DELETE`), forwarding
/// headers (a forged `Host` or client address) and URL rewrites. Refused
/// unless the policy lists the name in `allow_headers`; every name starting
/// with one of [`GRANTED_ONLY_PREFIXES`] is in the family too. Compared
/// like every header name ([`same_header`]).
pub const GRANTED_ONLY_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "forwarded",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-host",
    "x-original-host",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "x-override-url",
    "x-http-destinationurl",
    "via",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-originating-ip",
];

/// `x-forwarded`, `x-forwarded-for`, `-host`, `-proto`, `-prefix`, ...;
/// `x-original-url`, `-path`, `-forwarded-for`, ...; Envoy's own
/// `x-envoy-*` (`x-envoy-original-path`), which it trusts from its peers.
pub const GRANTED_ONLY_PREFIXES: &[&str] = &["x-forwarded", "x-original-", "x-envoy-"];

/// Methods whose requests carry no body unless the policy lists the method
/// in `body_methods`: servers that do not expect one (Python's
/// `http.server` for `GET`) leave it unread on the connection, where it is
/// read as the next request (request smuggling).
pub const BODYLESS_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "TRACE"];

/// Whether `name` is in the method-override and forwarding family
/// ([`GRANTED_ONLY_HEADERS`]), in any spelling [`same_header`] accepts.
pub fn is_granted_only(name: &str) -> bool {
    let prefix =
        GRANTED_ONLY_PREFIXES.iter().any(|prefix| name.get(..prefix.len()).is_some_and(|p| same_header(p, prefix)));
    prefix || GRANTED_ONLY_HEADERS.iter().any(|family| same_header(family, name))
}

/// Whether two header names are the same once case is ignored and `_` is
/// read as `-`. CGI-style servers (WSGI, Rack, PHP, Puma: CVE-2024-45614)
/// turn both `x-api-key` and `x_api_key` into `HTTP_X_API_KEY`, so a deny
/// list or an injected header that compared names exactly would be
/// bypassed by spelling the name with underscores. Folding (rather than
/// refusing `_` outright) keeps the odd API that uses underscore names
/// reachable, while every name that folds onto a denied one is refused.
pub fn same_header(a: &str, b: &str) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// Whether `name` is a header the sidecar manages itself (hop-by-hop,
/// framing, `host`, every `proxy-*`), in any spelling [`same_header`]
/// accepts: neither a guest nor an injection may set it.
pub fn is_sidecar_managed(name: &str) -> bool {
    let proxy = name.get(..ALWAYS_DENIED_PREFIX.len()).is_some_and(|p| same_header(p, ALWAYS_DENIED_PREFIX));
    proxy || ALWAYS_DENIED_HEADERS.iter().any(|denied| same_header(denied, name))
}

/// One `allow` entry: scheme, host (exact or `*.` subdomains) and port.
/// Serialized in its normal form (`https://*.example.com:443`), so two
/// spellings of one origin are one grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// The entry as written, for messages.
    pub text: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Which hosts.
    pub host: HostPattern,
    /// Explicit port, or the scheme's default.
    pub port: u16,
}

/// The host part of an [`AllowRule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this host.
    Exact(TargetHost),
    /// `*.suffix`: any subdomain of `suffix`, not `suffix` itself.
    Subdomains(String),
}

impl AllowRule {
    /// Parses `scheme://host[:port]` or `scheme://*.domain[:port]`, with no
    /// path, query or credentials.
    pub fn parse(text: &str) -> Result<AllowRule, String> {
        let (wildcard, spelled) = match text.split_once("://*.") {
            Some((scheme, rest)) => (true, format!("{scheme}://{rest}")),
            None => (false, text.to_string()),
        };
        if spelled.contains('*') {
            return Err(format!(
                "invalid allow entry `{text}`: `*` is only allowed as the first label, as in `https://*.example.com`"
            ));
        }
        if !spelled.contains("://") {
            // `localhost:8089` parses as scheme `localhost`: say what was meant.
            return Err(format!(
                "invalid allow entry `{text}`: give the scheme too, as in `https://{text}` or `http://{text}`"
            ));
        }
        let target = normalize(&spelled).map_err(|e| format!("invalid allow entry `{text}`: {e}"))?;
        if target.url.path() != "/" || target.url.query().is_some() {
            return Err(format!("invalid allow entry `{text}`: give scheme, host and port only, without a path"));
        }
        let host = match (wildcard, target.host) {
            (false, host) => HostPattern::Exact(host),
            (true, TargetHost::Domain(suffix)) if suffix.contains('.') => HostPattern::Subdomains(suffix),
            (true, _) => {
                return Err(format!(
                    "invalid allow entry `{text}`: a wildcard needs a domain of at least two labels after `*.`"
                ));
            }
        };
        Ok(AllowRule { text: text.to_string(), scheme: target.scheme, host, port: target.port })
    }

    /// Whether every request this entry matches is also matched by `self`.
    pub fn covers(&self, other: &AllowRule) -> bool {
        if self.scheme != other.scheme || self.port != other.port {
            return false;
        }
        match (&self.host, &other.host) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Subdomains(_), HostPattern::Exact(host)) => self.host.matches(host),
            (HostPattern::Subdomains(a), HostPattern::Subdomains(b)) => {
                a == b || self.host.matches(&TargetHost::Domain(b.clone()))
            }
            (HostPattern::Exact(_), HostPattern::Subdomains(_)) => false,
        }
    }

    /// Whether `target` is inside this entry.
    pub fn matches(&self, target: &Target) -> bool {
        self.scheme == target.scheme && self.port == target.port && self.host.matches(&target.host)
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Exact(host) => write!(f, "{}://{host}:{}", self.scheme, self.port),
            HostPattern::Subdomains(suffix) => write!(f, "{}://*.{suffix}:{}", self.scheme, self.port),
        }
    }
}

impl serde::Serialize for AllowRule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl HostPattern {
    /// Whether `host` is covered, whatever the scheme and port.
    pub fn matches(&self, host: &TargetHost) -> bool {
        match (self, host) {
            (HostPattern::Exact(exact), host) => exact == host,
            // `a.example.org` but not `example.org` nor `aexample.org`
            // (`url::normalize` refuses empty labels, so whatever is before
            // the dot is a label).
            (HostPattern::Subdomains(suffix), TargetHost::Domain(name)) => {
                name.strip_suffix(suffix.as_str()).is_some_and(|rest| rest.ends_with('.'))
            }
            (HostPattern::Subdomains(_), TargetHost::Ip(_)) => false,
        }
    }
}

/// Requests per unit of time, written `"20/s"`, `"300/m"` or `"1000/h"`
/// (and serialized so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per `per`.
    pub count: NonZeroU32,
    /// The unit of time.
    pub per: Per,
}

/// The unit of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

impl Rate {
    /// Parses `"<n>/s"`, `"<n>/m"` or `"<n>/h"`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let invalid = || format!("invalid rate `{text}` (write it like \"20/s\", \"300/m\" or \"1000/h\")");
        let (count, per) = text.split_once('/').ok_or_else(invalid)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| invalid())?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Per::Second,
            "m" | "min" | "minute" => Per::Minute,
            "h" | "hour" => Per::Hour,
            _ => return Err(invalid()),
        };
        Ok(Rate { count, per })
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per {
            Per::Second => "s",
            Per::Minute => "m",
            Per::Hour => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A header the platform adds to requests for matching origins, with a
/// value the plugin never sees (`[[http.inject]]`). Serialized with the
/// secret's name, never its value (which is not here).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Injection {
    /// Which requests get the header (same syntax as `allow`).
    pub to: AllowRule,
    /// Header name, lowercase.
    pub header: String,
    /// Name of the secret in the sidecar settings (`[secrets.<name>]`).
    pub secret: String,
    /// Text put before the secret, for example `"Bearer "`.
    pub prefix: String,
}

/// Everything `[http]` grants a plugin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HttpPolicy {
    /// Allowed origins.
    pub allow: Vec<AllowRule>,
    /// Allowed methods, uppercase.
    pub methods: BTreeSet<String>,
    /// Requests per unit of time, across all invocations of the plugin.
    pub rate: Rate,
    /// Largest request body, in bytes.
    pub max_request: u64,
    /// Largest response body, in bytes.
    pub max_response: u64,
    /// Deadline for a whole request, redirects included.
    #[serde(serialize_with = "crate::policy::units::serialize_duration")]
    pub timeout: Duration,
    /// Redirects followed per request (each hop is checked again).
    pub max_redirects: u32,
    /// Lowercase header names the guest may not set, beyond
    /// [`ALWAYS_DENIED_HEADERS`] and injected headers.
    pub deny_headers: BTreeSet<String>,
    /// Platform-injected headers.
    pub inject: Vec<Injection>,
    /// Lowercase names from the [`GRANTED_ONLY_HEADERS`] family the guest
    /// may set.
    pub allow_headers: BTreeSet<String>,
    /// Methods from [`BODYLESS_METHODS`] that may carry a request body.
    pub body_methods: BTreeSet<String>,
}

/// Why a request was refused by the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denial(pub String);

impl HttpPolicy {
    /// A grant for `allow` with every other setting at its default.
    pub fn new(allow: Vec<AllowRule>) -> Self {
        HttpPolicy {
            allow,
            methods: DEFAULT_METHODS.iter().map(|m| m.to_string()).collect(),
            rate: DEFAULT_RATE,
            max_request: DEFAULT_MAX_REQUEST,
            max_response: DEFAULT_MAX_RESPONSE,
            timeout: DEFAULT_TIMEOUT,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            deny_headers: BTreeSet::new(),
            inject: Vec::new(),
            allow_headers: BTreeSet::new(),
            body_methods: BTreeSet::new(),
        }
    }

    /// The first allow entry that `target` is inside of, or why none is.
    pub fn check_target(&self, target: &Target) -> Result<&AllowRule, Denial> {
        if let Some(rule) = self.allow.iter().find(|rule| rule.matches(target)) {
            return Ok(rule);
        }
        let same_host = self.allow.iter().filter(|rule| rule.host.matches(&target.host));
        let hint = match same_host.map(|rule| rule.text.as_str()).collect::<Vec<_>>() {
            granted if granted.is_empty() => "the host is not in the allowlist".to_string(),
            granted => format!("the host is allowed only as {}", granted.join(", ")),
        };
        Err(Denial(format!("{} is not allowed: {hint}", target.origin())))
    }

    /// Whether `host` may resolve to a non-public address: only when every
    /// entry that matches it names it exactly (no wildcard), so that a
    /// wildcard can never reach into a private network.
    pub fn grants_private(&self, host: &TargetHost) -> bool {
        let mut matching = self.allow.iter().filter(|rule| rule.host.matches(host)).peekable();
        matching.peek().is_some() && matching.all(|rule| matches!(rule.host, HostPattern::Exact(_)))
    }

    /// Whether the guest may use `method` (any case).
    pub fn check_method(&self, method: &str) -> Result<(), Denial> {
        if self.methods.contains(&method.to_ascii_uppercase()) {
            return Ok(());
        }
        let allowed = self.methods.iter().cloned().collect::<Vec<_>>().join(", ");
        Err(Denial(format!("method {method} is not allowed (allowed: {allowed})")))
    }

    /// Whether the guest may send header `name`: any case, and `_` counts
    /// as `-` (see [`same_header`]).
    pub fn check_header(&self, name: &str) -> Result<(), Denial> {
        self.check_field(name)?;
        if is_granted_only(name) && !self.allow_headers.iter().any(|granted| same_header(granted, name)) {
            return Err(Denial(format!(
                "header `{}` overrides the method or forwards a host, client or URL: it needs `allow_headers` in [http]",
                escaped(name, SHORT)
            )));
        }
        Ok(())
    }

    /// The part of [`HttpPolicy::check_header`] that holds for every
    /// `wasi:http` field, in whichever direction: headers the sidecar
    /// manages, denied and injected ones. (The method-override and
    /// forwarding family is legitimate in what a proxy component receives,
    /// `x-forwarded-prefix` among it, so it is checked when a request is
    /// sent, not when fields are built.)
    pub fn check_field(&self, name: &str) -> Result<(), Denial> {
        let quoted = || escaped(name, SHORT);
        if is_sidecar_managed(name) {
            return Err(Denial(format!("header `{}` is managed by the sidecar and may not be set", quoted())));
        }
        if self.deny_headers.iter().any(|denied| same_header(denied, name))
            || self.inject.iter().any(|i| same_header(&i.header, name))
        {
            return Err(Denial(format!("header `{}` may not be set by this plugin", quoted())));
        }
        Ok(())
    }

    /// Whether a request with `method` (uppercase) may carry a body.
    pub fn check_body(&self, method: &str) -> Result<(), Denial> {
        if BODYLESS_METHODS.contains(&method) && !self.body_methods.contains(method) {
            return Err(Denial(format!(
                "a {method} request may not carry a body unless `body_methods` in [http] lists {method}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> HttpPolicy {
        HttpPolicy {
            deny_headers: ["x-internal".to_string()].into(),
            inject: vec![Injection {
                to: AllowRule::parse("https://api.example.com").unwrap(),
                header: "authorization".into(),
                secret: "token".into(),
                prefix: "Bearer ".into(),
            }],
            ..HttpPolicy::new(allow.iter().map(|text| AllowRule::parse(text).unwrap()).collect())
        }
    }

    #[test]
    fn allowlist_table() {
        let p =
            policy(&["https://api.example.com", "https://*.example.org:8443", "http://[::1]:8080", "http://10.0.0.5"]);
        let allowed = [
            "https://api.example.com/v1?q=1",
            "https://API.EXAMPLE.COM./v1",
            "https://api.example.com:443/",
            "https://a.example.org:8443/",
            "https://deep.a.example.org:8443/x",
            "http://[::1]:8080/",
            "http://10.0.0.5/",
            "http://0x0a.0.0.5/",
        ];
        let denied = [
            "http://api.example.com/",           // scheme
            "https://api.example.com:8443/",     // port
            "https://example.com/",              // parent of an exact entry
            "https://evil-api.example.com/",     // different host
            "https://api.example.com.evil.net/", // suffix trick
            "https://example.org:8443/",         // wildcard excludes the apex
            "https://a.example.org/",            // wildcard port
            "https://aexample.org:8443/",        // not a subdomain
            "http://[::1]/",                     // port
            "http://10.0.0.6/",                  // neighbour address
        ];
        for url in allowed {
            let target = normalize(url).unwrap();
            assert!(p.check_target(&target).is_ok(), "{url} should be allowed");
        }
        for url in denied {
            let target = normalize(url).unwrap();
            let denial = p.check_target(&target).unwrap_err();
            assert!(denial.0.contains(&target.origin()), "{url}: {denial}");
        }
    }

    #[test]
    fn denial_says_which_ports_would_have_matched() {
        let p = policy(&["https://api.example.com"]);
        let denial = p.check_target(&normalize("https://api.example.com:444/").unwrap()).unwrap_err();
        assert_eq!(
            denial.0,
            "https://api.example.com:444 is not allowed: the host is allowed only as https://api.example.com"
        );
    }

    #[test]
    fn allow_entries_are_validated() {
        for bad in [
            "api.example.com",
            "https://api.example.com/path",
            "https://*.com",
            "https://a.*.example.com",
            "https://*example.com",
            "https://user@api.example.com",
            "ftp://files.example.com",
            "https://*.10.0.0.1",
            // `0.1..` is `0.1` once its dots are stripped: an IPv4 literal.
            "http://*.0.1..",
        ] {
            assert!(AllowRule::parse(bad).is_err(), "{bad} should be refused");
        }
        // Without a scheme, the message shows the entry as it was meant.
        let error = AllowRule::parse("localhost:8089").unwrap_err();
        assert!(
            error.contains("give the scheme too, as in `https://localhost:8089` or `http://localhost:8089`"),
            "{error}"
        );
        assert_eq!(
            AllowRule::parse("https://*.Example.ORG.:8443").unwrap().host,
            HostPattern::Subdomains("example.org".into())
        );
    }

    #[test]
    fn private_addresses_need_an_exact_grant() {
        let p = policy(&["http://db.internal:8080", "https://*.corp.example", "https://exact.corp.example"]);
        let host = |h: &str| TargetHost::Domain(h.into());
        assert!(p.grants_private(&host("db.internal")));
        assert!(!p.grants_private(&host("other.corp.example")), "wildcard grants never reach private addresses");
        assert!(!p.grants_private(&host("exact.corp.example")), "a wildcard also matches it, so it stays public-only");
        assert!(!p.grants_private(&host("unknown.example")));
    }

    #[test]
    fn methods_and_headers() {
        let p = policy(&["https://api.example.com"]);
        assert!(p.check_method("get").is_ok());
        assert!(p.check_method("DELETE").unwrap_err().0.contains("allowed: GET, HEAD"));
        assert!(p.check_header("Accept").is_ok());
        for name in ["Host", "transfer-encoding", "Connection", "content-length"] {
            assert!(p.check_header(name).unwrap_err().0.contains("managed by the sidecar"), "{name}");
        }
        assert!(p.check_header("X-Internal").is_err());
        assert!(p.check_header("Authorization").is_err(), "injected headers cannot be overridden");
        // `_` reads as `-`, as CGI-style upstreams read it.
        for name in ["x_internal", "X_Internal", "transfer_encoding", "content_length", "proxy_authorization"] {
            assert!(p.check_header(name).is_err(), "{name}");
        }
        for name in ["proxy-foo", "Proxy-Authorization", "proxy_foo", "PROXY-x"] {
            assert!(p.check_header(name).unwrap_err().0.contains("managed by the sidecar"), "{name}");
        }
        for name in ["proxy", "x-proxy-foo", "x_trace", "hosts"] {
            assert!(p.check_header(name).is_ok(), "{name}");
        }
    }

    /// Attacks tried: a method override turning a granted GET into a
    /// DELETE, forged forwarding and rewrite headers in several spellings.
    #[test]
    fn method_override_and_forwarding_headers_need_a_grant() {
        let mut p = policy(&["https://api.example.com"]);
        for name in [
            "X-HTTP-Method-Override",
            "x_http_method_override",
            "X-HTTP-Method",
            "X-Method-Override",
            "X-Forwarded-Host",
            "X-Forwarded-For",
            "x_forwarded_proto",
            "X-Forwarded-Anything",
            "Forwarded",
            "X-Original-URL",
            "X-Rewrite-URL",
            "X-Host",
            "X-Real-IP",
            "True-Client-IP",
            // An outside review got these through before the family grew.
            "X-Forwarded",
            "X-Original-Forwarded-For",
            "X-Original-Path",
            "X-Envoy-Original-Path",
            "X-Override-URL",
            "X-HTTP-DestinationURL",
            "Via",
            "CF-Connecting-IP",
            "Fastly-Client-IP",
            "X-Remote-IP",
            "X-Remote-Addr",
            "X-Originating-IP",
        ] {
            assert!(p.check_header(name).unwrap_err().0.contains("allow_headers"), "{name}");
        }
        // wasi:http fields a component receives (a proxy component's request
        // carries `x-forwarded-prefix`) may hold them: only sending needs the
        // grant, so the field check lets them through and keeps the rest.
        assert!(p.check_field("X-Forwarded-Prefix").is_ok());
        assert!(p.check_field("X-HTTP-Method-Override").is_ok());
        assert!(p.check_field("Authorization").is_err() && p.check_field("x_internal").is_err());
        p.allow_headers.insert("x-forwarded-for".into());
        assert!(p.check_header("X_Forwarded_For").is_ok());
        assert!(p.check_header("X-Forwarded-Host").is_err(), "a grant names one header, not the family");
        for name in ["x-forwardee", "x-hostname", "forwarded-x", "x-request-id", "x-originals"] {
            assert!(p.check_header(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn bodies_on_get_head_options_need_a_grant() {
        let mut p = policy(&["https://api.example.com"]);
        for method in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(p.check_body(method).unwrap_err().0.contains("body_methods"), "{method}");
        }
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            assert!(p.check_body(method).is_ok(), "{method}");
        }
        p.body_methods.insert("GET".into());
        assert!(p.check_body("GET").is_ok());
        assert!(p.check_body("HEAD").is_err());
    }

    #[test]
    fn coverage_of_one_entry_by_another() {
        let rule = |text: &str| AllowRule::parse(text).unwrap();
        assert!(rule("https://*.example.com").covers(&rule("https://api.example.com")));
        assert!(rule("https://*.example.com").covers(&rule("https://*.eu.example.com")));
        assert!(rule("https://api.example.com").covers(&rule("https://API.example.com:443")));
        assert!(!rule("https://*.example.com").covers(&rule("https://example.com")));
        assert!(!rule("https://api.example.com").covers(&rule("https://*.example.com")));
        assert!(!rule("https://*.example.com").covers(&rule("http://api.example.com")));
        assert!(!rule("https://*.example.com").covers(&rule("https://api.example.com:8443")));
        assert!(rule("https://*.example.com").covers(&rule("https://*.EXAMPLE.com")));
        assert!(!rule("https://*.example.com").covers(&rule("https://*.example.org")));
        assert!(!rule("https://*.eu.example.com").covers(&rule("https://*.example.com")));
    }

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("20/s").unwrap().to_string(), "20/s");
        assert_eq!(Rate::parse("300 / m").unwrap().per, Per::Minute);
        for bad in ["20", "0/s", "-1/s", "5/d", "x/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}
