//! Property tests of the URL normaliser and the allowlist matcher: no input
//! makes them panic, and equivalent spellings of a URL (case, trailing dot,
//! explicit default port, percent-encoded host characters, fragments) get
//! the same origin and the same allow/deny answer.

use gatehouse::services::http::HttpPolicy;
use gatehouse::services::http::policy::AllowRule;
use gatehouse::services::http::url::normalize;
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    // Not `xn--…`: those must be valid punycode, and most generated ones are not.
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?".prop_filter("an A-label", |label| !label.starts_with("xn--"))
}

fn domain() -> impl Strategy<Value = String> {
    (prop::collection::vec(label(), 1..4), prop::sample::select(vec!["com", "org", "test", "example"]))
        .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")))
}

/// A spelling of `http(s)://domain[:port]/path` that must mean the same.
fn respell(scheme: &str, domain: &str, port: Option<u16>, path: &str, tweak: &[bool; 5]) -> String {
    let default_port = if scheme == "https" { 443 } else { 80 };
    let mut host: String = if tweak[0] { domain.to_ascii_uppercase() } else { domain.to_string() };
    if tweak[1] {
        host.push('.');
    }
    if tweak[2] {
        // Percent-encode the first letter of the host.
        let first = host.remove(0);
        host = format!("%{:02X}{host}", first as u8);
    }
    let port = match (port, tweak[3]) {
        (Some(port), _) => format!(":{port}"),
        (None, true) => format!(":{default_port}"),
        (None, false) => String::new(),
    };
    let scheme = if tweak[4] { scheme.to_ascii_uppercase() } else { scheme.to_string() };
    format!("{scheme}://{host}{port}{path}#fragment")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn normalising_arbitrary_input_never_panics(input in ".{0,200}") {
        let _ = normalize(&input);
        let _ = AllowRule::parse(&input);
    }

    #[test]
    fn normalising_url_shaped_input_never_panics(
        scheme in prop::sample::select(vec!["http", "https", "HTTP", "ftp", ""]),
        host in r"[a-zA-Z0-9.%@:\[\]_~-]{0,40}",
        rest in r"[/?#a-z0-9%@:.\\]{0,30}",
    ) {
        let _ = normalize(&format!("{scheme}://{host}{rest}"));
    }

    #[test]
    fn equivalent_spellings_get_the_same_origin_and_verdict(
        scheme in prop::sample::select(vec!["http", "https"]),
        domain in domain(),
        port in prop::option::of(1u16..),
        path in "(/[a-z0-9]{0,6}){0,3}",
        tweak in any::<[bool; 5]>(),
        rule_domain in domain(),
        wildcard in any::<bool>(),
    ) {
        let plain = format!("{scheme}://{domain}{}{path}", port.map(|p| format!(":{p}")).unwrap_or_default());
        let variant = respell(scheme, &domain, port, &path, &tweak);
        let a = normalize(&plain).expect("a well-formed URL normalises");
        let b = normalize(&variant).expect("a respelled URL normalises");
        prop_assert_eq!(a.origin(), b.origin(), "{} vs {}", plain, variant);

        // Rules built from the URL's own host, a parent, and an unrelated one.
        let parent = domain.split_once('.').map_or(domain.as_str(), |(_, parent)| parent);
        let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();
        for host in [domain.as_str(), parent, rule_domain.as_str()] {
            let star = if wildcard && host.contains('.') { "*." } else { "" };
            let Ok(rule) = AllowRule::parse(&format!("{scheme}://{star}{host}{port_part}")) else { continue };
            let policy = HttpPolicy::new(vec![rule]);
            prop_assert_eq!(policy.check_target(&a).is_ok(), policy.check_target(&b).is_ok(), "{} vs {}", plain, variant);
        }
    }
}
