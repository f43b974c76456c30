//! The outbound HTTP pipeline without wasm: real loopback servers, the real
//! pooled clients, a static DNS table in place of a DNS server. Every
//! denial path of `[http]` has a test here; the same pipeline serves both
//! guest-facing doors (see `http_doors.rs`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::ErrorKind;
use gatehouse::secrets::SecretSource;
use gatehouse::services::http::policy::{AllowRule, Injection, Rate};
use gatehouse::services::http::resolve::{Lookup, LookupFuture, StaticLookup};
use gatehouse::services::http::{HttpError, HttpGateway, HttpPolicy, OutboundRequest, PluginHttp};
use serde_json::Value;

use crate::upstream::Upstream;

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

pub fn rules(allow: &[String]) -> Vec<AllowRule> {
    allow.iter().map(|text| AllowRule::parse(text).unwrap()).collect()
}

/// `upstream.test` is granted exactly (so it may reach loopback);
/// `*.wild.test` is a wildcard grant (public addresses only).
pub fn dns() -> StaticLookup {
    StaticLookup::new().with("upstream.test", &[ip("127.0.0.1")]).with("other.test", &[ip("127.0.0.1")])
}

fn gateway(lookup: impl Lookup) -> Arc<HttpGateway> {
    Arc::new(HttpGateway::new(Arc::new(lookup)).expect("gateway"))
}

fn plugin(policy: HttpPolicy, lookup: impl Lookup) -> PluginHttp {
    PluginHttp::new("test", policy, gateway(lookup), &BTreeMap::new()).expect("plugin http")
}

fn exact(up: &Upstream) -> HttpPolicy {
    HttpPolicy {
        rate: Rate::parse("1000/s").unwrap(),
        ..HttpPolicy::new(rules(&[format!("http://upstream.test:{}", up.port())]))
    }
}

fn get(url: impl Into<String>) -> OutboundRequest {
    OutboundRequest { method: "GET".into(), url: url.into(), ..OutboundRequest::default() }
}

fn echo_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("echo JSON")
}

#[tokio::test]
async fn an_allowed_request_reaches_the_upstream_and_reads_the_response() {
    let up = Upstream::start().await;
    let http = plugin(exact(&up), dns());
    let response = http.send(get(format!("http://UPSTREAM.test.:{}/hello", up.port()))).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(&response.body[..], b"hello");
    assert_eq!(up.hits(), 1);
    let metrics = http.metrics();
    assert_eq!((metrics.requests, metrics.responses, metrics.bytes_received), (1, 1, 5));
}

#[tokio::test]
async fn post_bodies_and_guest_headers_arrive_unchanged() {
    let up = Upstream::start().await;
    let mut policy = exact(&up);
    policy.methods.insert("POST".into());
    let http = plugin(policy, dns());
    let request = OutboundRequest {
        method: "post".into(),
        url: format!("http://upstream.test:{}/echo", up.port()),
        headers: vec![("X-Trace".into(), b"abc".to_vec())],
        body: Some(Bytes::from_static(b"payload")),
        timeout: None,
    };
    let echo = echo_json(&http.send(request).await.unwrap().body);
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "payload");
    assert!(echo["headers"].as_array().unwrap().iter().any(|h| h[0] == "x-trace" && h[1] == "abc"), "{echo}");
    assert_eq!(http.metrics().bytes_sent, b"payload".len() as u64);
}

#[tokio::test]
async fn each_allowlist_denial_names_the_origin_and_never_connects() {
    let up = Upstream::start().await;
    let port = up.port();
    let http = plugin(exact(&up), dns());
    let cases = [
        (format!("http://other.test:{port}/hello"), "the host is not in the allowlist"),
        (format!("http://upstream.test:{}/hello", port + 1), "allowed only as http://upstream.test"),
        (format!("https://upstream.test:{port}/hello"), "allowed only as http://upstream.test"),
        (format!("http://127.0.0.1:{port}/hello"), "the host is not in the allowlist"),
    ];
    for (url, why) in cases {
        let error = http.send(get(url.clone())).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Denied, "{url}: {error}");
        assert!(error.to_string().contains(why), "{url}: {error}");
        assert!(!error.to_string().contains("redirect"), "no redirect was followed: {error}");
    }
    assert_eq!(up.hits(), 0);
    assert_eq!(http.metrics().denied, 4);
}

#[tokio::test]
async fn methods_outside_the_grant_are_denied() {
    let up = Upstream::start().await;
    let http = plugin(exact(&up), dns());
    let mut request = get(format!("http://upstream.test:{}/echo", up.port()));
    request.method = "DELETE".into();
    let error = http.send(request.clone()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Denied);
    assert!(error.to_string().contains("method DELETE is not allowed (allowed: GET, HEAD)"), "{error}");
    request.method = "GE T".into();
    assert_eq!(http.send(request).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn managed_denied_and_injected_headers_cannot_be_set_by_the_guest() {
    let up = Upstream::start().await;
    let mut policy = exact(&up);
    policy.deny_headers.insert("x-internal".into());
    let http = plugin(policy, dns());
    for name in ["Host", "Transfer-Encoding", "Connection", "X-Internal", "Proxy-Authorization"] {
        let mut request = get(format!("http://upstream.test:{}/echo", up.port()));
        request.headers.push((name.into(), b"x".to_vec()));
        let error = http.send(request).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Denied, "{name}: {error}");
    }
    let mut request = get(format!("http://upstream.test:{}/echo", up.port()));
    request.headers.push(("x-ok".into(), b"bad\nvalue".to_vec()));
    assert_eq!(http.send(request).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn injected_credentials_reach_only_their_origin_and_the_guest_cannot_override_them() {
    let up = Upstream::start().await;
    let port = up.port();
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), "s3cr3t\n").unwrap();
    let mut policy =
        HttpPolicy::new(rules(&[format!("http://upstream.test:{port}"), format!("http://other.test:{port}")]));
    policy.inject.push(Injection {
        to: AllowRule::parse(&format!("http://upstream.test:{port}")).unwrap(),
        header: "authorization".into(),
        secret: "api".into(),
        prefix: "Bearer ".into(),
    });
    let secrets = BTreeMap::from([("api".to_string(), SecretSource::File(secret_file.path().into()))]);
    let http = PluginHttp::new("test", policy, gateway(dns()), &secrets).unwrap();

    let echo = echo_json(&http.send(get(format!("http://upstream.test:{port}/echo"))).await.unwrap().body);
    let sent: Vec<&Value> = echo["headers"].as_array().unwrap().iter().filter(|h| h[0] == "authorization").collect();
    assert_eq!(sent.len(), 1, "{echo}");
    assert_eq!(sent[0][1], "Bearer s3cr3t");

    let echo = echo_json(&http.send(get(format!("http://other.test:{port}/echo"))).await.unwrap().body);
    assert!(!echo.to_string().contains("s3cr3t"), "the secret leaked to another origin: {echo}");

    let mut request = get(format!("http://upstream.test:{port}/echo"));
    request.headers.push(("Authorization".into(), b"Bearer forged".to_vec()));
    assert_eq!(http.send(request).await.unwrap_err().kind(), ErrorKind::Denied);
}

#[tokio::test]
async fn an_undefined_or_unreadable_secret_refuses_the_grant() {
    let mut policy = HttpPolicy::new(rules(&["https://api.example.com".into()]));
    policy.inject.push(Injection {
        to: AllowRule::parse("https://api.example.com").unwrap(),
        header: "authorization".into(),
        secret: "missing".into(),
        prefix: String::new(),
    });
    let error = PluginHttp::new("test", policy.clone(), gateway(dns()), &BTreeMap::new()).err().unwrap();
    assert!(error.contains("secret `missing`") && error.contains("[secrets.missing]"), "{error}");
    let secrets = BTreeMap::from([("missing".to_string(), SecretSource::Env("GATEHOUSE_TEST_UNSET_VAR".into()))]);
    let error = PluginHttp::new("test", policy, gateway(dns()), &secrets).err().unwrap();
    assert!(error.contains("GATEHOUSE_TEST_UNSET_VAR"), "{error}");
}

#[tokio::test]
async fn body_limits_refuse_oversized_requests_and_responses() {
    let up = Upstream::start().await;
    let port = up.port();
    let mut policy = exact(&up);
    policy.methods.insert("POST".into());
    policy.max_request = 16;
    // Headers count too: /big sends about 80 bytes of them.
    policy.max_response = 1200;
    let http = plugin(policy, dns());

    let mut request = get(format!("http://upstream.test:{port}/echo"));
    request.method = "POST".into();
    request.body = Some(Bytes::from(vec![b'a'; 17]));
    let error = http.send(request.clone()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    assert_eq!(up.hits(), 0);
    // `max_request` itself is allowed.
    request.body = Some(Bytes::from(vec![b'a'; 16]));
    assert_eq!(echo_json(&http.send(request).await.unwrap().body)["body"], "a".repeat(16));
    assert_eq!(up.hits(), 1);

    let ok = http.send(get(format!("http://upstream.test:{port}/big?n=1000"))).await.unwrap();
    assert_eq!(ok.body.len(), 1000);
    for url in
        [format!("http://upstream.test:{port}/big?n=1200"), format!("http://upstream.test:{port}/big?n=5000&chunked=1")]
    {
        let error = http.send(get(url.clone())).await.unwrap_err();
        assert!(matches!(error, HttpError::ResponseTooLarge { limit: 1200 }), "{url}: {error}");
        assert_eq!(error.kind(), ErrorKind::QuotaExceeded);
    }
}

/// `max_response` counts each header field as `name: value` plus 4 bytes,
/// and the body: a response of exactly the limit is read, one byte more is
/// refused, declared or streamed; a head of exactly the limit leaves room
/// for an empty body only.
#[tokio::test]
async fn max_response_counts_each_header_field_and_the_body_to_the_byte() {
    let up = Upstream::start().await;
    let port = up.port();
    let with_limit = |max_response: u64| plugin(HttpPolicy { max_response, ..exact(&up) }, dns());
    for chunked in ["", "&chunked=1"] {
        let url = |n: usize| format!("http://upstream.test:{port}/big?n={n}{chunked}");
        // The head as the policy counts it (its `content-length` differs with n).
        let head = async |n| -> u64 {
            let response = with_limit(1 << 20).send(get(url(n))).await.unwrap();
            response.headers.iter().map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64).sum()
        };
        let head_100 = head(100).await;
        assert_eq!(with_limit(head_100 + 100).send(get(url(100))).await.unwrap().body.len(), 100, "{chunked}");
        let error = with_limit(head_100 + 99).send(get(url(100))).await.unwrap_err();
        assert_eq!(error, HttpError::ResponseTooLarge { limit: head_100 + 99 }, "{chunked}");
        let head_0 = head(0).await;
        assert!(with_limit(head_0).send(get(url(0))).await.unwrap().body.is_empty(), "{chunked}");
        let error = with_limit(head_0 - 1).send(get(url(0))).await.unwrap_err();
        assert_eq!(error, HttpError::ResponseHeadersTooLarge { limit: head_0 - 1 }, "{chunked}");
    }
}

/// A response declaring a body over `max_response` is refused from its
/// head: the upstream here never sends the body, so a client that waited
/// for it would fail only at its deadline.
#[tokio::test]
async fn a_declared_length_over_max_response_is_refused_before_reading() {
    use crate::raw_upstream::{Behaviour, RawUpstream};
    let up = RawUpstream::start(Behaviour::DeclaresAndStalls(10 << 30)).await;
    let policy = HttpPolicy {
        timeout: Duration::from_secs(5),
        ..HttpPolicy::new(rules(&[format!("http://upstream.test:{}", up.port())]))
    };
    let error = plugin(policy, dns()).send(get(format!("http://upstream.test:{}/", up.port()))).await.unwrap_err();
    assert!(matches!(error, HttpError::ResponseTooLarge { .. }), "{error}");
}

#[tokio::test]
async fn the_rate_limit_refuses_with_a_retry_hint() {
    let up = Upstream::start().await;
    let mut policy = exact(&up);
    policy.rate = Rate::parse("2/m").unwrap();
    let http = plugin(policy, dns());
    let url = format!("http://upstream.test:{}/hello", up.port());
    http.send(get(url.clone())).await.unwrap();
    http.send(get(url.clone())).await.unwrap();
    let error = http.send(get(url)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited);
    let retry = error.to_guest().retry_after_ms.expect("a retry hint");
    assert!((1..=30_000).contains(&retry), "2/m refills one request every 30 s, hint was {retry} ms");
    assert_eq!(up.hits(), 2);
    assert_eq!(http.metrics().rate_limited, 1);
}

#[tokio::test]
async fn slow_upstreams_time_out_at_the_policy_or_request_deadline() {
    let up = Upstream::start().await;
    let mut policy = exact(&up);
    policy.timeout = Duration::from_millis(300);
    let http = plugin(policy, dns());
    let error = http.send(get(format!("http://upstream.test:{}/slow?ms=3000", up.port()))).await.unwrap_err();
    assert_eq!(error, HttpError::Timeout(Duration::from_millis(300)));
    let mut request = get(format!("http://upstream.test:{}/slow?ms=3000", up.port()));
    request.timeout = Some(Duration::from_millis(50));
    assert_eq!(http.send(request.clone()).await.unwrap_err(), HttpError::Timeout(Duration::from_millis(50)));
    // A request may shorten the deadline, never lengthen it.
    request.timeout = Some(Duration::from_secs(60));
    assert_eq!(http.send(request).await.unwrap_err(), HttpError::Timeout(Duration::from_millis(300)));
}

#[tokio::test]
async fn a_connection_failure_is_unavailable() {
    // A listener that closes every connection it accepts, unanswered (kept
    // bound for the whole test, so no other process can take the port).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            drop(connection);
        }
    });
    let policy = HttpPolicy::new(rules(&[format!("http://upstream.test:{port}")]));
    let error = plugin(policy, dns()).send(get(format!("http://upstream.test:{port}/"))).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    let unresolvable = HttpPolicy::new(rules(&["http://nowhere.test".into()]));
    let error = plugin(unresolvable, dns()).send(get("http://nowhere.test/")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
}

#[tokio::test]
async fn redirects_are_followed_only_where_each_hop_is_allowed() {
    let up = Upstream::start().await;
    let port = up.port();
    let mut policy = exact(&up);
    policy.allow.push(AllowRule::parse(&format!("http://*.wild.test:{port}")).unwrap());
    policy.max_redirects = 2;
    let lookup = dns().with("evil.wild.test", &[ip("127.0.0.1")]);
    let http = plugin(policy, lookup);
    let redirect = |to: &str| get(format!("http://upstream.test:{port}/redirect?to={to}"));

    // Allowed hop: followed, and counted.
    let response = http.send(redirect("/hello")).await.unwrap();
    assert_eq!((response.status.as_u16(), &response.body[..]), (200, &b"hello"[..]));
    assert_eq!(http.metrics().redirects, 1);

    // A hop to a host outside the allowlist: denied, never contacted.
    let before = up.hits();
    let error = http.send(redirect(&format!("http://127.0.0.1:{port}/hello"))).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Denied);
    assert!(error.to_string().starts_with("redirect to http://127.0.0.1"), "{error}");
    // A hop to an allowed (wildcard) name that resolves to a private address.
    let error = http.send(redirect(&format!("http://evil.wild.test:{port}/hello"))).await.unwrap_err();
    assert!(matches!(error, HttpError::AddressRefused(_)), "{error}");
    // A hop to a scheme the client does not speak.
    let error = http.send(redirect("file:///etc/passwd")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Denied, "{error}");
    assert_eq!(up.hits(), before + 3, "only the redirecting responses were served");

    // A loop stops at max_redirects.
    let looping = format!("http://upstream.test:{port}/loop");
    assert_eq!(http.send(get(looping)).await.unwrap_err(), HttpError::TooManyRedirects { limit: 2 });
}

/// What browsers and curl do: a 303 turns any method but HEAD into a GET
/// without its body, and so do 301 and 302 a POST; every other redirect
/// keeps the method and the body.
#[tokio::test]
async fn a_redirect_turns_a_request_into_a_get_only_where_browsers_do() {
    let up = Upstream::start().await;
    let mut policy = exact(&up);
    policy.methods.extend(["POST".to_string(), "PUT".to_string()]);
    let http = plugin(policy, dns());
    let cases = [
        ("POST", 303, "GET", ""),
        ("PUT", 303, "GET", ""),
        ("POST", 302, "GET", ""),
        ("POST", 301, "GET", ""),
        ("PUT", 302, "PUT", "form"),
        ("PUT", 301, "PUT", "form"),
        ("POST", 307, "POST", "form"),
        ("POST", 308, "POST", "form"),
    ];
    for (method, status, method_after, body_after) in cases {
        let mut request = get(format!("http://upstream.test:{}/redirect?to=/echo&status={status}", up.port()));
        request.method = method.into();
        request.body = Some(Bytes::from_static(b"form"));
        let echo = echo_json(&http.send(request).await.unwrap().body);
        assert_eq!(
            (echo["method"].as_str(), echo["body"].as_str()),
            (Some(method_after), Some(body_after)),
            "{method} answered {status}"
        );
    }
}

/// A resolver whose answers are counted, and which answers loopback: the
/// DNS-rebinding attacker's second answer.
struct CountingLookup(Arc<AtomicUsize>);

impl Lookup for CountingLookup {
    fn lookup<'a>(&'a self, _host: &'a str) -> LookupFuture<'a> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(Ok(vec![ip("127.0.0.1")])))
    }
}

#[tokio::test]
async fn the_address_checked_is_the_address_connected_to() {
    // DNS rebinding needs two lookups: one that a check sees (public) and
    // one that the connection uses (private). The gateway resolves once
    // per connection, inside the connector, and checks that answer: one
    // request makes exactly one lookup, and a loopback answer is refused.
    let up = Upstream::start().await;
    let lookups = Arc::new(AtomicUsize::new(0));
    let policy = HttpPolicy::new(rules(&[format!("http://*.rebind.test:{}", up.port())]));
    let http = plugin(policy, CountingLookup(lookups.clone()));
    let error = http.send(get(format!("http://a.rebind.test:{}/hello", up.port()))).await.unwrap_err();
    assert!(matches!(error, HttpError::AddressRefused(_)), "{error}");
    assert_eq!(error.kind(), ErrorKind::Denied);
    assert!(error.to_string().contains("127.0.0.1 (loopback)"), "{error}");
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn credentials_the_guest_set_do_not_follow_a_redirect_to_another_origin() {
    let up = Upstream::start().await;
    let port = up.port();
    let policy = HttpPolicy {
        rate: Rate::parse("1000/s").unwrap(),
        ..HttpPolicy::new(rules(&[format!("http://upstream.test:{port}"), format!("http://other.test:{port}")]))
    };
    let http = plugin(policy, dns());
    let with_credentials = |url: String| OutboundRequest {
        headers: vec![
            ("authorization".into(), b"Basic dXNlcjpwdw==".to_vec()),
            ("cookie".into(), b"session=1".to_vec()),
        ],
        ..get(url)
    };
    let sent_credentials =
        |echo: &Value| echo["headers"].as_array().unwrap().iter().any(|h| h[0] == "authorization" || h[0] == "cookie");
    let same_origin = with_credentials(format!("http://upstream.test:{port}/redirect?to=/echo"));
    assert!(sent_credentials(&echo_json(&http.send(same_origin).await.unwrap().body)));
    let cross_origin =
        with_credentials(format!("http://upstream.test:{port}/redirect?to=http://other.test:{port}/echo"));
    let echo = echo_json(&http.send(cross_origin).await.unwrap().body);
    assert!(!sent_credentials(&echo), "{echo}");
}

#[tokio::test]
async fn header_names_are_compared_with_underscores_read_as_dashes() {
    // CGI-style upstreams read `x_api_key` as `x-api-key` (CVE-2024-45614):
    // the deny list, injected headers and `proxy-*` must refuse both.
    let up = Upstream::start().await;
    let port = up.port();
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), "s3cr3t").unwrap();
    let mut policy = exact(&up);
    policy.deny_headers.insert("x-internal-user".into());
    policy.inject.push(Injection {
        to: AllowRule::parse(&format!("http://upstream.test:{port}")).unwrap(),
        header: "x-api-key".into(),
        secret: "api".into(),
        prefix: String::new(),
    });
    let secrets = BTreeMap::from([("api".to_string(), SecretSource::File(secret_file.path().into()))]);
    let http = PluginHttp::new("test", policy, gateway(dns()), &secrets).unwrap();
    for name in ["x_internal_user", "X_Internal-User", "x_api_key", "X-API_KEY", "Proxy-Foo", "proxy_foo", "PROXY-X"] {
        let mut request = get(format!("http://upstream.test:{port}/echo"));
        request.headers.push((name.into(), b"forged".to_vec()));
        let error = http.send(request).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Denied, "{name}: {error}");
    }
    assert_eq!(up.hits(), 0, "a header that folds onto a denied one reached the upstream");
    // Underscore names that fold onto nothing denied still go through.
    let mut request = get(format!("http://upstream.test:{port}/echo"));
    request.headers.push(("x_trace".into(), b"1".to_vec()));
    let echo = echo_json(&http.send(request).await.unwrap().body);
    let headers = echo["headers"].as_array().unwrap();
    assert!(headers.iter().any(|h| h[0] == "x_trace"), "{echo}");
    assert_eq!(headers.iter().filter(|h| h[0] == "x-api-key" && h[1] == "s3cr3t").count(), 1, "{echo}");
}

#[tokio::test]
async fn each_redirect_hop_spends_a_rate_token() {
    let up = Upstream::start().await;
    let mut policy = exact(&up);
    policy.methods.insert("POST".into());
    policy.rate = Rate::parse("1/h").unwrap();
    policy.max_redirects = 20;
    let http = plugin(policy, dns());
    let request = OutboundRequest {
        method: "POST".into(),
        url: format!("http://upstream.test:{}/redirect?to=/loop&status=307", up.port()),
        body: Some(Bytes::from_static(b"payload")),
        ..OutboundRequest::default()
    };
    let error = http.send(request).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
    assert_eq!(up.hits(), 1, "one token, one request sent");
}

#[tokio::test]
async fn a_redirect_that_changes_the_method_needs_the_new_method_granted() {
    let up = Upstream::start().await;
    let mut policy = exact(&up);
    policy.methods = ["POST".to_string()].into();
    let http = plugin(policy, dns());
    for status in [303, 302, 301] {
        let request = OutboundRequest {
            method: "POST".into(),
            url: format!("http://upstream.test:{}/redirect?to=/echo&status={status}", up.port()),
            body: Some(Bytes::from_static(b"form")),
            ..OutboundRequest::default()
        };
        let error = http.send(request).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Denied, "{status}: {error}");
        assert!(error.to_string().contains("into a GET"), "{status}: {error}");
    }
    assert_eq!(up.hits(), 3, "only the redirecting responses were served");
}

#[tokio::test]
async fn max_redirects_0_hands_every_3xx_back() {
    let up = Upstream::start().await;
    let mut policy = exact(&up);
    policy.max_redirects = 0;
    let http = plugin(policy, dns());
    let port = up.port();
    for (path, location) in [
        ("/redirect?to=/hello".to_string(), "/hello"),
        (format!("/redirect?to=http://elsewhere.test:{port}/&status=308"), "http://elsewhere.test"),
        ("/bad-redirect".to_string(), "http://exa mple.com"),
    ] {
        let response = http.send(get(format!("http://upstream.test:{port}{path}"))).await.unwrap();
        assert!(response.status.is_redirection(), "{path}: {}", response.status);
        let sent = response.headers["location"].to_str().unwrap();
        assert!(sent.starts_with(location), "{path}: {sent}");
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn an_address_the_guard_refuses_does_not_spend_the_rate_budget() {
    let up = Upstream::start().await;
    let port = up.port();
    let mut policy = exact(&up);
    policy.allow.push(AllowRule::parse(&format!("http://*.wild.test:{port}")).unwrap());
    policy.rate = Rate::parse("1/h").unwrap();
    let http = plugin(policy, dns().with("a.wild.test", &[ip("127.0.0.1")]));
    // Denied by the allowlist, by the address guard on an IP literal, and
    // on a resolved name: none spends the one token.
    let refused = [format!("http://nowhere.test:{port}/"), format!("http://a.wild.test:{port}/hello")];
    for url in refused {
        let error = http.send(get(url.clone())).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Denied, "{url}: {error}");
    }
    let ok = http.send(get(format!("http://upstream.test:{port}/hello"))).await.unwrap();
    assert_eq!(ok.status, 200);
    let error = http.send(get(format!("http://upstream.test:{port}/hello"))).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited, "{error}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn response_headers_count_against_the_response_limit() {
    let up = Upstream::start().await;
    let port = up.port();
    let mut policy = exact(&up);
    policy.max_response = 64 << 10;
    let http = plugin(policy, dns());
    // About 360 KB of headers: over the transport's fixed bound (64 KiB).
    // About 40 KB: under it, but with the body over a 32 KiB limit.
    let error = http.send(get(format!("http://upstream.test:{port}/headers?n=360000"))).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::QuotaExceeded, "{error}");
    let ok = http.send(get(format!("http://upstream.test:{port}/headers?n=40000"))).await.unwrap();
    assert_eq!(ok.status, 200);
    let mut policy = exact(&up);
    policy.max_response = 32 << 10;
    let error = plugin(policy, dns()).send(get(format!("http://upstream.test:{port}/headers?n=40000"))).await;
    assert!(matches!(error, Err(HttpError::ResponseHeadersTooLarge { limit: 32768 })), "{error:?}");
    // About 90 KB of headers written at once, under a policy that would
    // allow 4 MiB: hyper may take such a head in one read, past its buffer
    // size; the fixed 64 KiB bound still holds.
    let error = plugin(exact(&up), dns()).send(get(format!("http://upstream.test:{port}/headers?n=90000"))).await;
    assert!(matches!(error, Err(HttpError::ResponseHeadersTooLarge { limit: 65536 })), "{error:?}");
}

/// Resolves like `getaddrinfo`: on tokio's blocking pool. Names under
/// `hang.test` block their thread until the lookup is dropped (released),
/// as a lookup whose DNS server never answers does; `begun` counts them.
#[derive(Clone, Default)]
struct BlockingLookup {
    released: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    begun: Arc<AtomicUsize>,
}

impl Lookup for BlockingLookup {
    fn lookup<'a>(&'a self, host: &'a str) -> LookupFuture<'a> {
        let (released, hangs) = (self.released.clone(), host.ends_with(".hang.test"));
        if hangs {
            self.begun.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let (lock, wake) = &*released;
                let mut done = lock.lock().unwrap();
                while hangs && !*done {
                    done = wake.wait(done).unwrap();
                }
                Ok(vec![ip("127.0.0.1")])
            })
            .await
            .unwrap()
        })
    }
}

/// Unblocks every hanging lookup when dropped (also when a test fails), so
/// that the runtime, which waits for its blocking threads, can shut down.
struct Release(BlockingLookup);

impl Drop for Release {
    fn drop(&mut self) {
        let (lock, wake) = &*self.0.released;
        *lock.lock().unwrap() = true;
        wake.notify_all();
    }
}

#[test]
fn one_plugins_hanging_dns_does_not_stall_another_plugins_requests() {
    use gatehouse::services::http::resolve::MAX_LOOKUPS;
    // A blocking pool barely larger than one plugin's lookup slots, so a
    // plugin that could start a lookup per request would fill it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(MAX_LOOKUPS + 2)
        .enable_all()
        .build()
        .unwrap();
    let lookup = BlockingLookup::default();
    let _release = Release(lookup.clone());
    runtime.block_on(async {
        let up = Upstream::start().await;
        let port = up.port();
        let gateway = gateway(lookup.clone());
        let plugin = |name: &str, allow: String| {
            let policy = HttpPolicy { rate: Rate::parse("1000/s").unwrap(), ..HttpPolicy::new(rules(&[allow])) };
            Arc::new(PluginHttp::new(name, policy, gateway.clone(), &BTreeMap::new()).unwrap())
        };
        let hang = |plugin: &Arc<PluginHttp>, i: usize| {
            let (plugin, url) = (plugin.clone(), format!("http://n{i}.hang.test:{port}/"));
            let request = OutboundRequest { timeout: Some(Duration::from_millis(200)), ..get(url) };
            tokio::spawn(async move { plugin.send(request).await })
        };
        let slow = plugin("slow", format!("http://*.hang.test:{port}"));
        let stuck: Vec<_> = (0..4 * MAX_LOOKUPS).map(|i| hang(&slow, i)).collect();
        for request in futures::future::join_all(stuck).await {
            assert_eq!(request.unwrap().unwrap_err().kind(), ErrorKind::Timeout);
        }
        assert_eq!(lookup.begun.load(Ordering::SeqCst), MAX_LOOKUPS, "one plugin's lookups are bounded");

        // Another plugin with the same wildcard (same pool, same resolver)
        // still gets a slot of its own: the slots are the plugin's.
        let other = plugin("other", format!("http://*.hang.test:{port}"));
        assert_eq!(hang(&other, 0).await.unwrap().unwrap_err().kind(), ErrorKind::Timeout);
        assert_eq!(lookup.begun.load(Ordering::SeqCst), MAX_LOOKUPS + 1);

        // And a third plugin's lookup finds a thread and completes.
        let good = plugin("good", format!("http://upstream.test:{port}"));
        let mut request = get(format!("http://upstream.test:{port}/hello"));
        request.timeout = Some(Duration::from_secs(3));
        let response = good.send(request).await.expect("the other plugin's request completes");
        assert_eq!(response.status, 200);
    });
}

#[tokio::test]
async fn the_request_header_caps_hold_at_the_documented_values() {
    // policies/README.md: at most 64 headers, each value at most 8 KiB.
    let up = Upstream::start().await;
    let http = plugin(exact(&up), dns());
    let url = format!("http://upstream.test:{}/echo", up.port());
    let with_headers = |count: usize, value_len: usize| OutboundRequest {
        headers: (0..count).map(|i| (format!("x-h{i}"), vec![b'v'; value_len])).collect(),
        ..get(url.clone())
    };
    for (count, value_len) in [(64, 16), (1, 8192)] {
        let echo = echo_json(&http.send(with_headers(count, value_len)).await.unwrap().body);
        let sent = echo["headers"].as_array().unwrap().iter().filter(|h| h[0].as_str().unwrap().starts_with("x-h"));
        assert_eq!(sent.count(), count, "{echo}");
    }
    for (count, value_len) in [(65, 1), (1, 8193)] {
        let error = http.send(with_headers(count, value_len)).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{count} x {value_len}: {error}");
    }
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn injected_credentials_are_chosen_for_each_hop() {
    let up = Upstream::start().await;
    let port = up.port();
    let dir = tempfile::tempdir().unwrap();
    let mut secrets = BTreeMap::new();
    let mut policy = HttpPolicy {
        rate: Rate::parse("1000/s").unwrap(),
        ..HttpPolicy::new(rules(&[format!("http://upstream.test:{port}"), format!("http://other.test:{port}")]))
    };
    for (host, secret) in [("upstream.test", "first-secret"), ("other.test", "second-secret")] {
        let path = dir.path().join(host);
        std::fs::write(&path, secret).unwrap();
        secrets.insert(host.to_string(), SecretSource::File(path));
        policy.inject.push(Injection {
            to: AllowRule::parse(&format!("http://{host}:{port}")).unwrap(),
            header: "authorization".into(),
            secret: host.into(),
            prefix: "Bearer ".into(),
        });
    }
    let http = PluginHttp::new("test", policy, gateway(dns()), &secrets).unwrap();
    let url = format!("http://upstream.test:{port}/redirect?to=http://other.test:{port}/echo");
    let echo = echo_json(&http.send(get(url)).await.unwrap().body);
    let sent: Vec<&Value> = echo["headers"].as_array().unwrap().iter().filter(|h| h[0] == "authorization").collect();
    assert_eq!(sent, [&serde_json::json!(["authorization", "Bearer second-secret"])], "{echo}");
}

#[tokio::test]
async fn an_exact_grant_connection_is_never_reused_by_a_wildcard_plugin() {
    // Two plugins on one gateway, the same name: one grants it exactly
    // (may reach loopback), the other through a wildcard (public only).
    // If the pools were shared, the second would reuse the first's
    // connection to loopback without any address check.
    let up = Upstream::start().await;
    let port = up.port();
    let gateway = gateway(dns().with("api.shared.test", &[ip("127.0.0.1")]));
    let plugin = |name: &str, allow: String| {
        let policy = HttpPolicy { rate: Rate::parse("1000/s").unwrap(), ..HttpPolicy::new(rules(&[allow])) };
        PluginHttp::new(name, policy, gateway.clone(), &BTreeMap::new()).unwrap()
    };
    let exact = plugin("exact", format!("http://api.shared.test:{port}"));
    let wildcard = plugin("wildcard", format!("http://*.shared.test:{port}"));
    let url = format!("http://api.shared.test:{port}/hello");
    assert_eq!(exact.send(get(url.clone())).await.unwrap().status, 200);
    let error = wildcard.send(get(url.clone())).await.unwrap_err();
    assert!(matches!(error, HttpError::AddressRefused(_)), "{error}");
    assert_eq!(exact.send(get(url)).await.unwrap().status, 200);
    assert_eq!(up.hits(), 2);
}

#[test]
fn http_policy_defaults_are_the_documented_values() {
    // The literal values policies/README.md gives, not the code's constants.
    let toml = "[plugin]\nname = \"p\"\ncomponent = \"p.wasm\"\n[http]\nallow = [\"https://api.example.com\"]\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.wasm"), b"").unwrap();
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    let load = gatehouse::policy::load_dir(dir.path(), dir.path()).unwrap();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let http = load.set.plugins["p"].http.clone().expect("an [http] grant");
    assert_eq!(http.methods.iter().map(String::as_str).collect::<Vec<_>>(), ["GET", "HEAD"]);
    assert_eq!(http.rate.to_string(), "10/s");
    assert_eq!(http.max_request, 1024 * 1024);
    assert_eq!(http.max_response, 4 * 1024 * 1024);
    assert_eq!(http.timeout, Duration::from_secs(5));
    assert_eq!(http.max_redirects, 3);
}

/// Issue 16, finding 2. Attacks tried: plugin A sends a `GET` whose body is
/// a second request (`GET /smuggled`) to a server that never reads `GET`
/// bodies, so the server reads the body as the next request and holds its
/// reply on the connection; plugin B, granted the same origin, then sends
/// its own request. With a pool shared between plugins, B's request went
/// out on A's connection and B read the reply to A's smuggled request
/// (which carried B's request head, credentials included, back to A's
/// server-side request). Also: the same `GET` body from a plugin without
/// `body_methods` never leaves the sidecar.
#[tokio::test]
async fn a_request_smuggled_in_a_get_body_never_reaches_another_plugins_connection() {
    use crate::raw_upstream::{Behaviour, RawUpstream};
    let up = RawUpstream::start(Behaviour::IgnoresBodies).await;
    let port = up.port();
    let gateway = gateway(dns());
    let plugin = |name: &str, body_on_get: bool| {
        let mut policy = HttpPolicy {
            rate: Rate::parse("1000/s").unwrap(),
            ..HttpPolicy::new(rules(&[format!("http://upstream.test:{port}")]))
        };
        if body_on_get {
            policy.body_methods.insert("GET".into());
        }
        PluginHttp::new(name, policy, gateway.clone(), &BTreeMap::new()).unwrap()
    };
    let smuggle = |url: String| OutboundRequest {
        body: Some(Bytes::from_static(b"GET /smuggled HTTP/1.1\r\nhost: upstream.test\r\n\r\n")),
        ..get(url)
    };
    let url = |path: &str| format!("http://upstream.test:{port}{path}");

    // Without a grant the body is refused before any connection is made.
    let refused = plugin("refused", false);
    let error = refused.send(smuggle(url("/a"))).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Denied, "{error}");
    assert!(error.to_string().contains("body_methods"), "{error}");
    assert_eq!(up.connections(), 0);

    // Granted, the smuggled request stays on the attacker's own connection.
    let attacker = plugin("attacker", true);
    let victim = plugin("victim", false);
    assert_eq!(&attacker.send(smuggle(url("/a"))).await.unwrap().body[..], b"/a");
    let answer = victim.send(get(url("/b"))).await.unwrap();
    assert_eq!(&answer.body[..], b"/b", "the victim read {:?}", String::from_utf8_lossy(&answer.body));
    assert_eq!(up.connections(), 2, "each plugin dials its own connection");
}

/// Review 29, F4. Attack tried: an upstream that answers `101 Switching
/// Protocols` to a plain request (and goes on in a protocol of its own):
/// it was handed to the plugin as a final response with an empty body;
/// now it is the upstream's error, as a 1xx from a plugin is on the way in.
#[tokio::test]
async fn an_upstream_switching_protocols_unasked_is_an_error_not_an_answer() {
    use crate::raw_upstream::{Behaviour, RawUpstream};
    let up = RawUpstream::start(Behaviour::SwitchesProtocols).await;
    let http = plugin(HttpPolicy::new(rules(&[format!("http://upstream.test:{}", up.port())])), dns());
    let error = http.send(get(format!("http://upstream.test:{}/", up.port()))).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("101"), "{error}");
}

/// Issue 16, finding 8f. Attack tried: an upstream that sends 100,000
/// `100 Continue` heads before its answer, each parsed and discarded by the
/// client. The request fails after a few, long before the deadline.
#[tokio::test]
async fn an_upstream_sending_endless_informational_heads_is_cut_off() {
    use crate::raw_upstream::{Behaviour, RawUpstream};
    use gatehouse::services::http::transport::MAX_INFORMATIONAL;
    for (count, ok) in [(MAX_INFORMATIONAL, true), (MAX_INFORMATIONAL + 1, false), (100_000, false)] {
        let up = RawUpstream::start(Behaviour::Informational(count)).await;
        let policy = HttpPolicy {
            timeout: Duration::from_secs(60),
            ..HttpPolicy::new(rules(&[format!("http://upstream.test:{}", up.port())]))
        };
        let http = plugin(policy, dns());
        let outcome = http.send(get(format!("http://upstream.test:{}/", up.port()))).await;
        match outcome {
            Ok(response) => assert!(ok && &response.body[..] == b"done", "{count} heads were read"),
            Err(error) => {
                assert!(!ok, "{count} heads: {error}");
                assert!(error.to_string().contains("informational"), "{count}: {error}");
                assert_ne!(error.kind(), ErrorKind::Timeout, "{error}");
            }
        }
    }
}
