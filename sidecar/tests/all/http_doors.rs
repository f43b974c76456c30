//! Outbound HTTP end to end, through both doors: `fetcher` uses
//! `gatehouse:services/http-client`, `wasi-fetcher` the standard
//! `wasi:http/outgoing-handler`. Both are real components built from
//! `guests/`, loaded from real policy files, talking to a real server on
//! loopback; the same policy must give the same answers through either.

use gatehouse::services::Services;
use std::collections::BTreeMap;
use std::sync::Arc;

use gatehouse::secrets::SecretSource;
use gatehouse::{Document, ErrorKind, InvokeError, Runtime, RuntimeSettings};
use serde_json::{Value, json};

use crate::common::{Policies, guest, settings};
use crate::http_gateway::{dns, ip};
use crate::upstream::Upstream;

/// (plugin name, guest component) for each door.
const DOORS: [(&str, &str); 2] = [("fetcher", "fetcher"), ("wasi-fetcher", "wasi_fetcher")];

fn policy(name: &str, guest_name: &str, http: &str) -> String {
    format!(
        "[plugin]\nname = \"{name}\"\ncomponent = {:?}\n\n[http]\n{http}\n",
        guest(guest_name).display().to_string()
    )
}

/// The services of this file's runtimes: names point at loopback. One per
/// test process (nextest runs each test in its own), so a test reads the
/// counters of the runtimes it made.
fn services() -> Arc<Services> {
    static SERVICES: std::sync::OnceLock<Arc<Services>> = std::sync::OnceLock::new();
    SERVICES
        .get_or_init(|| Arc::new(Services::with_dns(Arc::new(dns().with("a.wild.test", &[ip("127.0.0.1")]))).unwrap()))
        .clone()
}

/// Both fetchers under the same `[http]` section.
async fn runtime(http: &str) -> Runtime {
    runtime_with_secrets(http, BTreeMap::new()).await
}

async fn runtime_with_secrets(http: &str, secrets: BTreeMap<String, SecretSource>) -> Runtime {
    let policies = Policies::new();
    for (name, guest_name) in DOORS {
        policies.write(&format!("{name}.toml"), &policy(name, guest_name, http));
    }
    let load = policies.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    let runtime = Runtime::new(RuntimeSettings { secrets, ..settings() }, services()).unwrap();
    let report = runtime.load(&load.set).await;
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    runtime
}

fn allow(up: &Upstream, extra: &str) -> String {
    format!(
        "allow = [\"http://upstream.test:{port}\", \"http://*.wild.test:{port}\"]\nmethods = [\"GET\", \"POST\"]\nrate = \"1000/s\"\n{extra}",
        port = up.port()
    )
}

async fn fetch(runtime: &Runtime, plugin: &str, request: Value) -> Result<Value, InvokeError> {
    let input = Document { content_type: "application/json".into(), body: request.to_string().into_bytes() };
    let output = runtime.invoke(plugin, input).await?;
    Ok(serde_json::from_slice(&output.body).expect("fetcher output is JSON"))
}

fn guest_error(error: InvokeError) -> gatehouse::GuestError {
    match error {
        InvokeError::Plugin { error, .. } => error,
        other => panic!("expected the plugin's own error, got {other:?}"),
    }
}

#[tokio::test]
async fn both_doors_fetch_an_allowed_url() {
    let up = Upstream::start().await;
    let runtime = runtime(&allow(&up, "")).await;
    for (plugin, _) in DOORS {
        let url = format!("http://upstream.test:{}/hello", up.port());
        let response = fetch(&runtime, plugin, json!({ "url": url })).await.unwrap();
        assert_eq!(response["status"], 200, "{plugin}: {response}");
        assert_eq!(response["body"], "hello", "{plugin}");

        let url = format!("http://upstream.test:{}/echo", up.port());
        let request =
            json!({ "method": "POST", "url": url, "headers": [["x-trace", plugin]], "body": "from the guest" });
        let response = fetch(&runtime, plugin, request).await.unwrap();
        let echo: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            (echo["method"].as_str(), echo["body"].as_str()),
            (Some("POST"), Some("from the guest")),
            "{plugin}"
        );
        assert!(echo["headers"].as_array().unwrap().iter().any(|h| h[0] == "x-trace" && h[1] == plugin), "{echo}");

        let response =
            fetch(&runtime, plugin, json!({ "url": format!("http://upstream.test:{}/hello", up.port()), "repeat": 3 }))
                .await
                .unwrap();
        assert_eq!(response["requests"], 3);
        let metrics = services().http.metrics(plugin).unwrap();
        assert_eq!((metrics.requests, metrics.responses), (5, 5), "{plugin}");
    }
    assert_eq!(up.hits(), 10);
}

#[tokio::test]
async fn both_doors_deny_what_the_policy_does_not_grant() {
    let up = Upstream::start().await;
    let runtime = runtime(&allow(&up, "")).await;
    let port = up.port();
    // (request, what the custom door's message says, the wasi:http code)
    let cases = [
        (json!({ "url": format!("http://127.0.0.1:{port}/hello") }), "not in the allowlist", "HttpRequestDenied"),
        (json!({ "url": format!("http://upstream.test:{}/hello", port + 1) }), "allowed only as", "HttpRequestDenied"),
        (
            json!({ "method": "DELETE", "url": format!("http://upstream.test:{port}/hello") }),
            "method DELETE",
            "HttpRequestDenied",
        ),
        (
            json!({ "url": format!("http://a.wild.test:{port}/hello") }),
            "127.0.0.1 (loopback)",
            "DestinationIpProhibited",
        ),
        (
            json!({ "url": format!("http://upstream.test:{port}/redirect?to=http://a.wild.test:{port}/hello") }),
            "127.0.0.1 (loopback)",
            "DestinationIpProhibited",
        ),
    ];
    for (request, custom_says, wasi_code) in cases {
        let custom = guest_error(fetch(&runtime, "fetcher", request.clone()).await.unwrap_err());
        assert_eq!(custom.kind, ErrorKind::Denied, "{request}: {custom:?}");
        assert!(custom.message.contains(custom_says), "{request}: {}", custom.message);
        let wasi = guest_error(fetch(&runtime, "wasi-fetcher", request.clone()).await.unwrap_err());
        assert_eq!(wasi.kind, ErrorKind::Denied, "{request}: {wasi:?}");
        assert!(wasi.message.contains(wasi_code), "{request}: {}", wasi.message);
    }
    assert_eq!(up.hits(), 2, "only the two redirecting responses were served");
}

#[tokio::test]
async fn headers_the_policy_denies_are_refused_by_both_doors() {
    let up = Upstream::start().await;
    let runtime = runtime(&allow(&up, "deny_headers = [\"x-internal\"]")).await;
    for header in ["host", "x-internal", "connection"] {
        let request = json!({ "url": format!("http://upstream.test:{}/echo", up.port()), "headers": [[header, "x"]] });
        for (plugin, _) in DOORS {
            let error = guest_error(fetch(&runtime, plugin, request.clone()).await.unwrap_err());
            assert_eq!(error.kind, ErrorKind::Denied, "{plugin} {header}: {error:?}");
        }
        // wasi:http refuses the field as the guest sets it (`forbidden`),
        // before there is a request to send.
        let error = guest_error(fetch(&runtime, "wasi-fetcher", request).await.unwrap_err());
        assert!(error.message.contains("the host forbids one of the request headers"), "{header}: {error:?}");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn size_limits_hold_through_both_doors() {
    let up = Upstream::start().await;
    let runtime = runtime(&allow(&up, "max_request = \"8 B\"\nmax_response = \"1 KiB\"")).await;
    let port = up.port();
    let (logs, _guard) = crate::common::capture_logs();
    for (plugin, _) in DOORS {
        let big_body =
            json!({ "method": "POST", "url": format!("http://upstream.test:{port}/echo"), "body": "123456789" });
        let error = guest_error(fetch(&runtime, plugin, big_body).await.unwrap_err());
        assert_eq!(error.kind, ErrorKind::InvalidInput, "{plugin}: {error:?}");
        // Refused by either door, the request is logged (the wasi:http door
        // refuses it while reading the body, before the pipeline).
        let logged = logs.events().iter().any(|e| {
            e.target == "gatehouse::http"
                && e.fields.get("plugin").is_some_and(|p| p == plugin)
                && e.fields.get("error").is_some_and(|m| m.contains("request body"))
        });
        assert!(logged, "{plugin}: the refusal is not in the log");
        let big_response = json!({ "url": format!("http://upstream.test:{port}/big?n=4096&chunked=1") });
        let error = guest_error(fetch(&runtime, plugin, big_response).await.unwrap_err());
        assert_eq!(error.kind, ErrorKind::QuotaExceeded, "{plugin}: {error:?}");
    }
}

#[tokio::test]
async fn the_rate_limit_answers_each_door_in_its_own_vocabulary() {
    let up = Upstream::start().await;
    let http = format!("allow = [\"http://upstream.test:{}\"]\nrate = \"1/m\"", up.port());
    let runtime = runtime(&http).await;
    let request = json!({ "url": format!("http://upstream.test:{}/hello", up.port()) });

    fetch(&runtime, "fetcher", request.clone()).await.unwrap();
    let error = guest_error(fetch(&runtime, "fetcher", request.clone()).await.unwrap_err());
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert!(error.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 60_000), "{error:?}");

    // wasi:http has no rate-limit error code: the guest sees a 429.
    fetch(&runtime, "wasi-fetcher", request.clone()).await.unwrap();
    let response = fetch(&runtime, "wasi-fetcher", request).await.unwrap();
    assert_eq!(response["status"], 429, "{response}");
    let headers = response["headers"].as_array().unwrap();
    assert!(headers.iter().any(|h| h[0] == "retry-after"), "{response}");
    assert!(headers.iter().any(|h| h[0] == "gatehouse-retry-after-ms"), "{response}");
    // Limits are per plugin: each fetcher had its own one request.
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn a_plugin_that_imports_http_without_an_http_grant_is_refused_at_load() {
    let policies = Policies::new();
    for (name, guest_name) in DOORS {
        policies.plugin(name, guest_name, "");
    }
    let runtime = Runtime::new(settings(), crate::common::services()).unwrap();
    let report = runtime.load(&policies.load().set).await;
    assert!(report.loaded.is_empty());
    let reasons: Vec<String> = report.refused.iter().map(|e| e.to_string()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("gatehouse:services/http-client") && r.contains("[http]")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("wasi:http/outgoing-handler") && r.contains("[http]")), "{reasons:?}");
}

#[tokio::test]
async fn a_request_deadline_holds_through_both_doors() {
    let up = Upstream::start().await;
    let runtime = runtime(&allow(&up, "timeout = \"2s\"")).await;
    // The guest asks for 100 ms (http-client `timeout-ms`; wasi:http
    // `first-byte-timeout`), shorter than the policy's 2 s. Were it ignored,
    // the invocation's own 1 s deadline would stop the plugin first, and
    // the error would be the runtime's, not the plugin's.
    let request = json!({ "url": format!("http://upstream.test:{}/slow?ms=5000", up.port()), "timeout_ms": 100 });
    for (plugin, _) in DOORS {
        let error = guest_error(fetch(&runtime, plugin, request.clone()).await.unwrap_err());
        assert_eq!(error.kind, ErrorKind::Timeout, "{plugin}: {error:?}");
    }
}

#[tokio::test]
async fn underscore_and_proxy_headers_are_refused_by_both_doors() {
    // The upstream's /echo records every header it receives; with these
    // refused, nothing reaches it at all.
    let up = Upstream::start().await;
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), "s3cr3t").unwrap();
    let inject = format!(
        "deny_headers = [\"x-internal-user\"]\n[[http.inject]]\norigin = \"http://upstream.test:{}\"\nheader = \"x-api-key\"\nsecret = \"api\"",
        up.port()
    );
    let secrets = BTreeMap::from([("api".to_string(), SecretSource::File(secret_file.path().into()))]);
    let runtime = runtime_with_secrets(&allow(&up, &inject), secrets).await;
    let url = format!("http://upstream.test:{}/echo", up.port());
    for header in ["x_internal_user", "x_api_key", "X_Api-Key", "proxy-foo", "Proxy_Foo", "proxy-authorization"] {
        let request = json!({ "url": url, "headers": [[header, "forged"]] });
        for (plugin, _) in DOORS {
            let error = guest_error(fetch(&runtime, plugin, request.clone()).await.unwrap_err());
            assert_eq!(error.kind, ErrorKind::Denied, "{plugin} {header}: {error:?}");
        }
    }
    assert_eq!(up.hits(), 0);
    for (plugin, _) in DOORS {
        let response = fetch(&runtime, plugin, json!({ "url": url, "headers": [["x_trace", "1"]] })).await.unwrap();
        let echo: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
        let headers = echo["headers"].as_array().unwrap();
        assert!(headers.iter().any(|h| h[0] == "x_trace"), "{plugin}: {echo}");
        assert_eq!(headers.iter().filter(|h| h[0] == "x-api-key").count(), 1, "{plugin}: {echo}");
        assert_eq!(headers.iter().find(|h| h[0] == "x-api-key").unwrap()[1], "s3cr3t", "{plugin}: {echo}");
    }
}

#[tokio::test]
async fn max_redirects_0_returns_redirects_through_both_doors() {
    let up = Upstream::start().await;
    let runtime = runtime(&allow(&up, "max_redirects = 0")).await;
    let port = up.port();
    for (path, status, location) in
        [("/redirect?to=/hello&status=302", 302, "/hello"), ("/bad-redirect", 302, "http://exa mple.com:99999/")]
    {
        for (plugin, _) in DOORS {
            let url = format!("http://upstream.test:{port}{path}");
            let response = fetch(&runtime, plugin, json!({ "url": url })).await.unwrap();
            assert_eq!(response["status"], status, "{plugin} {path}: {response}");
            let headers = response["headers"].as_array().unwrap();
            assert!(headers.iter().any(|h| h[0] == "location" && h[1] == location), "{plugin}: {response}");
        }
    }
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn response_headers_are_bounded_through_both_doors() {
    let up = Upstream::start().await;
    let runtime = runtime(&allow(&up, "max_response = \"32 KiB\"")).await;
    let port = up.port();
    for n in [360_000, 40_000] {
        let request = json!({ "url": format!("http://upstream.test:{port}/headers?n={n}") });
        for (plugin, _) in DOORS {
            let error = guest_error(fetch(&runtime, plugin, request.clone()).await.unwrap_err());
            assert_eq!(error.kind, ErrorKind::QuotaExceeded, "{plugin} {n}: {error:?}");
        }
    }
}

#[tokio::test]
async fn a_guest_that_never_finishes_its_body_is_stopped_at_the_request_deadline() {
    // The wasi:http door reads the whole body before sending. A guest that
    // stalls its upload gets `timeout` at the policy's deadline (300 ms),
    // as its own error, well before the invocation's deadline (1 s) would
    // stop it.
    let up = Upstream::start().await;
    let runtime = runtime(&allow(&up, "timeout = \"300ms\"")).await;
    let url = format!("http://upstream.test:{}/echo", up.port());
    let request = json!({ "method": "POST", "url": url, "body": "partial", "unfinished_body": true });
    let error = guest_error(fetch(&runtime, "wasi-fetcher", request).await.unwrap_err());
    assert_eq!(error.kind, ErrorKind::Timeout, "{error:?}");
    assert_eq!(up.hits(), 0);
}

/// Issue 16, finding 8c. Attack tried: a `wasi:http` guest that uploads its
/// body slowly (300 ms of a 400 ms `timeout`) to an upstream that answers
/// slowly (300 ms): with one deadline for the upload and another for the
/// send, the request held its slot and connection for 600 ms, past its
/// `timeout`. One deadline runs from hand-over, as in the custom door.
/// (The invocation's own deadline, 1 s by default, is longer than both.)
#[tokio::test]
async fn the_wasi_http_door_gives_upload_and_send_one_deadline() {
    let up = Upstream::start().await;
    let runtime = runtime(&allow(&up, "timeout = \"400ms\"")).await;
    let url = format!("http://upstream.test:{}/slow?ms=300", up.port());
    let request = json!({ "method": "POST", "url": url, "body": "four parts", "upload_ms": 300 });
    let error = guest_error(fetch(&runtime, "wasi-fetcher", request).await.unwrap_err());
    assert_eq!(error.kind, ErrorKind::Timeout, "{error:?}");
}

/// Issue 16, findings 2 and 8a through both doors. Attacks tried: a `GET`
/// with a body (request smuggling on a server that does not read it), and
/// `X-HTTP-Method-Override: DELETE`, `X-Forwarded-Host` and `Forwarded` on
/// a plugin granted `GET` only. Each is refused without reaching the
/// server; granted (`body_methods`, `allow_headers`), each goes through.
#[tokio::test]
async fn bodies_on_get_and_forwarding_headers_need_a_grant_through_both_doors() {
    let up = Upstream::start().await;
    let url = format!("http://upstream.test:{}/echo", up.port());
    let strict = runtime(&allow(&up, "")).await;
    for (plugin, _) in DOORS {
        let request = json!({ "method": "GET", "url": url, "body": "GET /admin HTTP/1.1\r\n\r\n" });
        let error = guest_error(fetch(&strict, plugin, request).await.unwrap_err());
        // The wasi:http guest may see its body write fail first, once the
        // door has refused the request.
        assert!(matches!(error.kind, ErrorKind::Denied | ErrorKind::InvalidInput), "{plugin}: {error:?}");
        for header in ["X-HTTP-Method-Override", "X-Forwarded-Host", "Forwarded", "x_original_url"] {
            let request = json!({ "url": url, "headers": [[header, "DELETE"]] });
            let error = guest_error(fetch(&strict, plugin, request).await.unwrap_err());
            assert_eq!(error.kind, ErrorKind::Denied, "{plugin} {header}: {error:?}");
        }
    }
    assert_eq!(up.hits(), 0);

    let granted = runtime(&allow(&up, "body_methods = [\"GET\"]\nallow_headers = [\"x-forwarded-for\"]")).await;
    for (plugin, _) in DOORS {
        let request = json!({ "url": url, "body": "query", "headers": [["x-forwarded-for", "203.0.113.9"]] });
        let answer = fetch(&granted, plugin, request).await.unwrap();
        let echo: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(echo["body"], "query", "{plugin}: {echo}");
    }
}
