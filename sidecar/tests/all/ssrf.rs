//! The SSRF table: URL and address forms that must never reach an internal
//! address. A real server listens on 127.0.0.1 the whole time and must
//! receive nothing.
//!
//! The policy under attack grants `http://*.victim.test:<port>` (a wildcard:
//! public addresses only) and `http://granted.test:<port>` (exact). The
//! attacks, by the layer that stops them:
//! - spellings of internal IP literals (decimal, octal, hex, short IPv4,
//!   IPv6 loopback, IPv4-mapped/-compatible/NAT64 IPv6, percent-encoded
//!   digits, cloud metadata, a double trailing dot that turns a name into
//!   a literal): normalised, then not in the allowlist (an IP literal can
//!   only be granted exactly, and an exact grant of a loopback or private
//!   literal opens it by design);
//! - confusion tricks (userinfo `allowed@evil`, backslashes, fragments and
//!   `@` combinations, control characters, suffix and apex tricks, foreign
//!   schemes): refused by the URL normaliser or the allowlist;
//! - allowed names that resolve to internal addresses (every non-public
//!   class, IPv4 and IPv6, IPv6 forms embedding internal IPv4, mixed
//!   answers, trailing dots, IDNA and case variants of the name): refused
//!   by the guard on the resolved address;
//! - exact grants of addresses that are never one destination (`0.0.0.0`,
//!   `[::]`, multicast, broadcast, as names and as IP literals in several
//!   spellings): allowed by the allowlist, so these rows reach the address
//!   guard itself, which refuses them;
//! - a DNS answer mixing a public address with internal ones
//!   (`a_mixed_answer_connects_only_to_its_public_address`): only the
//!   public one is ever connected to.

use gatehouse::ErrorKind;
use gatehouse::services::http::policy::Rate;
use gatehouse::services::http::resolve::StaticLookup;
use gatehouse::services::http::{HttpError, HttpGateway, HttpPolicy, OutboundRequest, PluginHttp};

use crate::http_gateway::{ip, rules};
use crate::upstream::Upstream;

#[derive(Debug, Clone, Copy, PartialEq)]
enum StoppedBy {
    /// The URL normaliser refused it (`invalid-input`, or `denied` for
    /// credentials).
    Url,
    /// Normalised fine, but no allow entry matches (`denied`).
    Allowlist,
    /// Allowed by name, refused on the resolved address (`denied`).
    Address,
}

fn stopped_by(error: &HttpError) -> Option<StoppedBy> {
    match error {
        HttpError::Url(_) => Some(StoppedBy::Url),
        HttpError::Denied(_) => Some(StoppedBy::Allowlist),
        HttpError::AddressRefused(_) => Some(StoppedBy::Address),
        _ => None,
    }
}

/// Names under the wildcard and the internal addresses they resolve to.
const HOSTILE_NAMES: &[(&str, &[&str])] = &[
    ("loopback.victim.test", &["127.0.0.1"]),
    ("loopback2.victim.test", &["127.0.0.2"]),
    ("ten.victim.test", &["10.0.0.1"]),
    ("rfc1918-172.victim.test", &["172.16.0.1"]),
    ("rfc1918-192.victim.test", &["192.168.1.1"]),
    ("cgnat.victim.test", &["100.64.0.1"]),
    ("metadata.victim.test", &["169.254.169.254"]),
    ("ecs-metadata.victim.test", &["169.254.170.2"]),
    ("alibaba-metadata.victim.test", &["100.100.100.200"]),
    // Azure's WireServer: in a public range, refused by name (issue 16, 8e).
    ("wireserver.victim.test", &["168.63.129.16"]),
    ("wireserver-mapped.victim.test", &["::ffff:168.63.129.16"]),
    ("gcp-metadata6.victim.test", &["fd20:ce::254"]),
    ("zero.victim.test", &["0.0.0.0"]),
    ("broadcast.victim.test", &["255.255.255.255"]),
    ("multicast.victim.test", &["224.0.0.1"]),
    ("docs.victim.test", &["192.0.2.1"]),
    ("bench.victim.test", &["198.18.0.1"]),
    ("reserved.victim.test", &["240.0.0.1"]),
    ("v6-loopback.victim.test", &["::1"]),
    ("v6-unspecified.victim.test", &["::"]),
    ("v4-mapped.victim.test", &["::ffff:127.0.0.1"]),
    ("v4-mapped-metadata.victim.test", &["::ffff:169.254.169.254"]),
    ("v4-compatible.victim.test", &["::127.0.0.1"]),
    ("nat64.victim.test", &["64:ff9b::a9fe:a9fe"]),
    ("sixtofour.victim.test", &["2002:7f00:1::1"]),
    ("ula.victim.test", &["fd00::1"]),
    ("link-local6.victim.test", &["fe80::1"]),
    ("multicast6.victim.test", &["ff02::1"]),
    ("docs6.victim.test", &["2001:db8::1"]),
    ("mixed.victim.test", &["10.0.0.1", "127.0.0.1", "::1"]),
    ("xn--lp-fka.victim.test", &["127.0.0.1"]),
];

#[tokio::test]
async fn every_ssrf_form_is_refused_and_nothing_reaches_loopback() {
    let up = Upstream::start().await;
    let port = up.port();
    let mut lookup = StaticLookup::new()
        .with("granted-zero.test", &[ip("0.0.0.0")])
        .with("granted-multicast.test", &[ip("239.1.1.1")]);
    for (name, addrs) in HOSTILE_NAMES {
        lookup = lookup.with(name, &addrs.iter().map(|a| ip(a)).collect::<Vec<_>>());
    }
    let mut policy = HttpPolicy::new(rules(&[
        format!("http://*.victim.test:{port}"),
        format!("http://granted-zero.test:{port}"),
        format!("http://granted-multicast.test:{port}"),
        format!("http://0.0.0.0:{port}"),
        format!("http://[ff02::1]:{port}"),
        format!("http://[::]:{port}"),
        format!("http://224.0.0.1:{port}"),
        format!("http://255.255.255.255:{port}"),
        format!("http://[::ffff:0.0.0.0]:{port}"),
    ]));
    policy.rate = Rate::parse("1000/s").unwrap();
    let gateway = std::sync::Arc::new(HttpGateway::new(std::sync::Arc::new(lookup)).unwrap());
    let http = PluginHttp::new("victim", policy, gateway, &Default::default()).unwrap();

    use StoppedBy::*;
    let mut cases: Vec<(String, StoppedBy)> = vec![
        // Internal IP literals in every spelling the WHATWG parser accepts.
        (format!("http://127.0.0.1:{port}/"), Allowlist),
        (format!("http://2130706433:{port}/"), Allowlist),
        (format!("http://0x7f000001:{port}/"), Allowlist),
        (format!("http://0177.0.0.1:{port}/"), Allowlist),
        (format!("http://0x7f.0.0.1:{port}/"), Allowlist),
        (format!("http://127.1:{port}/"), Allowlist),
        (format!("http://127.0.1:{port}/"), Allowlist),
        (format!("http://%31%32%37.0.0.1:{port}/"), Allowlist),
        (format!("http://[::1]:{port}/"), Allowlist),
        (format!("http://[::ffff:127.0.0.1]:{port}/"), Allowlist),
        (format!("http://[::ffff:7f00:1]:{port}/"), Allowlist),
        (format!("http://[0:0:0:0:0:ffff:169.254.169.254]:{port}/"), Allowlist),
        (format!("http://[64:ff9b::7f00:1]:{port}/"), Allowlist),
        (format!("http://127.0.0.1..:{port}/"), Allowlist),
        (format!("http://0x7f.1...:{port}/"), Allowlist),
        ("http://169.254.169.254/latest/meta-data/".into(), Allowlist),
        ("http://[fd00:ec2::254]/latest/meta-data/".into(), Allowlist),
        (format!("http://localhost:{port}/"), Allowlist),
        (format!("http://localhost.:{port}/"), Allowlist),
        // Confusion between what a check reads and what a client connects to.
        (format!("http://a.victim.test@127.0.0.1:{port}/"), Url),
        (format!("http://a.victim.test:{port}@127.0.0.1:{port}/"), Url),
        (format!("http://127.0.0.1:{port}#@a.victim.test:{port}/"), Allowlist),
        (format!("http://127.0.0.1:{port}\\@a.victim.test:{port}/"), Url),
        (format!("http://127.0.0.1:{port}\t.victim.test/"), Url),
        (format!("http://a.victim.test.127.0.0.1.nip.io:{port}/"), Allowlist),
        (format!("http://victim.test:{port}/"), Allowlist),
        (format!("http://a.victim.test.evil.net:{port}/"), Allowlist),
        (format!("http://avictim.test:{port}/"), Allowlist),
        (format!("https://a.victim.test:{port}/"), Allowlist),
        (format!("http://a.victim.test:{}/", port.wrapping_add(1)), Allowlist),
        (format!("gopher://a.victim.test:{port}/"), Url),
        ("file:///etc/passwd".into(), Url),
        ("dict://127.0.0.1:11211/stats".into(), Url),
        // Exact grants of addresses that are never a single destination.
        (format!("http://granted-zero.test:{port}/"), Address),
        (format!("http://granted-multicast.test:{port}/"), Address),
        (format!("http://0.0.0.0:{port}/"), Address),
        (format!("http://0:{port}/"), Address),
        (format!("http://[ff02::1]:{port}/"), Address),
        (format!("http://0x0:{port}/"), Address),
        (format!("http://0.0.0.0..:{port}/"), Address),
        (format!("http://[::]:{port}/"), Address),
        (format!("http://[0:0::0]:{port}/"), Address),
        (format!("http://224.0.0.1:{port}/"), Address),
        (format!("http://0xe0000001:{port}/"), Address),
        (format!("http://255.255.255.255:{port}/"), Address),
        (format!("http://4294967295:{port}/"), Address),
        (format!("http://[::ffff:0.0.0.0]:{port}/"), Address),
    ];
    for (name, _) in HOSTILE_NAMES {
        cases.push((format!("http://{name}:{port}/"), Address));
    }
    // Spelling variants of hostile names resolve to the same name.
    cases.push((format!("http://LOOPBACK.Victim.TEST:{port}/"), Address));
    cases.push((format!("http://loopback.victim.test.:{port}/"), Address));
    cases.push((format!("http://%6coopback.victim.test:{port}/"), Address));
    cases.push((format!("http://löp.victim.test:{port}/"), Address));
    assert!(cases.len() >= 40, "the table lists {} forms", cases.len());

    for (url, expected) in &cases {
        let request = OutboundRequest { method: "GET".into(), url: url.clone(), ..Default::default() };
        let error = http.send(request).await.expect_err(&format!("{url} must be refused"));
        assert_eq!(stopped_by(&error), Some(*expected), "{url}: {error:?}");
        assert!(matches!(error.kind(), ErrorKind::Denied | ErrorKind::InvalidInput), "{url}: {error:?}");
    }
    assert_eq!(up.hits(), 0, "a refused request reached the loopback server");
    println!("{} SSRF forms refused", cases.len());
}

#[tokio::test]
async fn a_mixed_answer_connects_only_to_its_public_address() {
    // `[public, internal]` under a wildcard grant: the internal address is
    // a live loopback server, listed first and last, so a guard that let
    // it through would connect to it before giving up on the public one
    // (which does not answer within the deadline, or refuses).
    let up = Upstream::start().await;
    let port = up.port();
    let lookup = StaticLookup::new()
        .with("first.victim.test", &[ip("127.0.0.1"), ip("1.2.3.4")])
        .with("last.victim.test", &[ip("1.2.3.4"), ip("169.254.169.254"), ip("127.0.0.1")]);
    let mut policy = HttpPolicy::new(rules(&[format!("http://*.victim.test:{port}")]));
    policy.timeout = std::time::Duration::from_millis(300);
    let gateway = std::sync::Arc::new(HttpGateway::new(std::sync::Arc::new(lookup)).unwrap());
    let http = PluginHttp::new("victim", policy, gateway, &Default::default()).unwrap();
    for name in ["first.victim.test", "last.victim.test"] {
        let request =
            OutboundRequest { method: "GET".into(), url: format!("http://{name}:{port}/hello"), ..Default::default() };
        let error = http.send(request).await.expect_err("1.2.3.4 does not serve HTTP here");
        assert!(matches!(error.kind(), ErrorKind::Timeout | ErrorKind::Unavailable), "{name}: {error:?}");
    }
    assert_eq!(up.hits(), 0, "a request reached the internal address of a mixed answer");
}
