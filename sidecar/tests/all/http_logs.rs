//! What a hostile guest can do to the sidecar's log through outbound HTTP.
//! Attacks tried, thousands of times each in a loop, as a guest stuck
//! retrying would:
//! - URLs of 8,000 bytes carrying `\n` (to start a forged log line) and
//!   ANSI escapes (to recolour it), refused by the URL normaliser;
//! - long allowlist-refused URLs and a method carrying ESC;
//! - a name the SSRF guard refuses (its `warn` line).
//!
//! Asserted: no captured field holds a line break or ESC, each line's
//! guest-derived text stays within the documented 2 KiB, the number of
//! refusal lines stays within the documented budget (a burst of 10, then
//! 2 a second), and the lines left out are counted in `suppressed`.
//!
//! `#[tokio::test]` runs on one thread, so the thread-local log capture
//! sees every event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use gatehouse::services::http::gateway::{REFUSAL_LOG_BURST, REFUSAL_LOG_INTERVAL};
use gatehouse::services::http::policy::Rate;
use gatehouse::services::http::{HttpGateway, HttpPolicy, OutboundRequest, PluginHttp};

use crate::common::capture_logs;
use crate::http_gateway::{dns, ip, rules};
use crate::upstream::Upstream;

#[tokio::test]
async fn refused_requests_cannot_forge_or_flood_the_log() {
    let up = Upstream::start().await;
    let port = up.port();
    let mut policy =
        HttpPolicy::new(rules(&[format!("http://upstream.test:{port}"), format!("http://*.wild.test:{port}")]));
    policy.rate = Rate::parse("100000/s").unwrap();
    let lookup = dns().with("a.wild.test", &[ip("127.0.0.1")]);
    let gateway = Arc::new(HttpGateway::new(Arc::new(lookup)).unwrap());
    let http = PluginHttp::new("hostile", policy, gateway, &BTreeMap::new()).unwrap();

    let forged = "\n2025-01-01T00:00:00Z \u{1b}[31mERROR\u{1b}[0m gatehouse::runtime: forged\r\n";
    let padding = "A".repeat(8000 - forged.len() - 40);
    let attacks = [
        ("GET".to_string(), format!("http://upstream.test:{port}/{padding}{forged}")),
        ("GET".to_string(), format!("http://evil.test:{port}/{padding}%1b")),
        (format!("G{forged}ET"), format!("http://upstream.test:{port}/")),
        ("GET".to_string(), format!("http://a.wild.test:{port}/{}", "B".repeat(7000))),
    ];
    let (captured, _guard) = capture_logs();
    // Long enough for the budget to refill a few times, so that lines
    // after a suppressed stretch are written and carry the count.
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 1000 || started.elapsed() < 3 * REFUSAL_LOG_INTERVAL {
        let (method, url) = &attacks[rounds % attacks.len()];
        let request = OutboundRequest { method: method.clone(), url: url.clone(), ..Default::default() };
        http.send(request).await.expect_err("every attack is refused");
        rounds += 1;
    }
    let elapsed = started.elapsed();
    assert_eq!(up.hits(), 0);

    let events: Vec<_> = captured.events().into_iter().filter(|e| e.target == "gatehouse::http").collect();
    let budget = REFUSAL_LOG_BURST as u128 + elapsed.as_nanos() / REFUSAL_LOG_INTERVAL.as_nanos() + 1;
    assert!(!events.is_empty());
    assert!(events.len() as u128 <= budget, "{} refusal lines in {elapsed:?}, budget {budget}", events.len());
    for event in &events {
        let text: usize = event.fields.values().map(String::len).sum();
        assert!(text <= 2048, "a line of {text} bytes: {event:?}");
        for (name, value) in &event.fields {
            assert!(!value.contains(['\n', '\r', '\u{1b}']), "field {name} is raw: {value:?}");
        }
    }
    let suppressed: u64 = events.iter().filter_map(|e| e.fields.get("suppressed")?.parse::<u64>().ok()).sum();
    assert!(suppressed > 0, "no line reported the suppressed count: {events:?}");
    assert!(suppressed + events.len() as u64 <= rounds as u64);
    assert!(events.iter().any(|e| e.fields.get("message").is_some_and(|m| m.contains("SSRF guard"))), "{events:?}");
}

/// An answered request's line says how long it took, in milliseconds: at
/// least the upstream's delay, at most the time the test saw pass.
#[tokio::test]
async fn an_answered_request_logs_its_duration_in_milliseconds() {
    let up = Upstream::start().await;
    let port = up.port();
    let policy = HttpPolicy::new(rules(&[format!("http://upstream.test:{port}")]));
    let gateway = Arc::new(HttpGateway::new(Arc::new(dns())).unwrap());
    let http = PluginHttp::new("timed", policy, gateway, &BTreeMap::new()).unwrap();
    let (captured, _guard) = capture_logs();
    let url = format!("http://upstream.test:{port}/slow?ms=300");
    let started = Instant::now();
    http.send(OutboundRequest { method: "GET".into(), url, ..Default::default() }).await.expect("answered");
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;

    let events = captured.events();
    let line = events
        .iter()
        .find(|e| e.target == "gatehouse::http" && e.fields.get("message").is_some_and(|m| m == "outbound request"))
        .unwrap_or_else(|| panic!("no line for the answered request: {events:?}"));
    let elapsed_ms: f64 = line.fields["elapsed_ms"].parse().expect("a number");
    assert!((300.0..=wall_ms).contains(&elapsed_ms), "elapsed_ms {elapsed_ms}, the test saw {wall_ms} ms");
}
