//! The load-time import check: a plugin whose component imports an
//! interface that its policy does not grant, or that the sidecar does not
//! provide, is refused before it ever runs, with a message naming the
//! import. Failing at load rather than at the first call means a bad
//! deployment shows up in `gatehouse policy check`, not in production.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::policy::PluginPolicy;

/// How the sidecar treats an imported interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Provided to every plugin, sandboxed (see [`super::linker`]).
    Always,
    /// Linked only for plugins whose policy has this section.
    Needs(&'static str),
    /// Never linked; the reason is shown to the operator.
    Never(&'static str),
    /// Not something this sidecar provides.
    Unknown,
}

/// Interfaces every plugin gets. The WASI ones are what ordinary guests
/// (Rust's standard library among them) import; they are sandboxed: no
/// environment, no arguments, no preopened directories, stdio captured.
const ALWAYS: &[(&str, &[&str])] = &[
    ("wasi:io", &["error", "poll", "streams"]),
    ("wasi:clocks", &["wall-clock", "monotonic-clock"]),
    ("wasi:random", &["random", "insecure", "insecure-seed"]),
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
    ),
    ("wasi:filesystem", &["types", "preopens"]),
    ("gatehouse:services", &["types", "log"]),
];

/// The `wasi:keyvalue` versions the linker holds (`services::kv::wasi_draft`
/// and `wasi_draft2`). Pre-release versions match only exactly, so another
/// one is refused here rather than failing to link.
const KEYVALUE_VERSIONS: &[&str] = &["0.2.0-draft", "0.2.0-draft2"];

/// Spin's sqlite interfaces the linker holds (`services::sql::spin`), by
/// package. Exact versions only: `spin:sqlite@3.1.0` adds async functions
/// this door does not serve.
const SPIN_SQLITE: &[(&str, &str)] = &[("fermyon:spin", "2.0.0"), ("spin:sqlite", "3.0.0")];

/// `serves_http`: the component exports `wasi:http/incoming-handler`.
fn rule(package: &str, interface: &str, version: Option<&str>, serves_http: bool) -> Rule {
    if ALWAYS.iter().any(|(p, interfaces)| *p == package && interfaces.contains(&interface)) {
        return Rule::Always;
    }
    match (package, interface) {
        // Every wasi:http/proxy component imports the types for its own
        // request and response. A plugin-world component needs them only
        // to send requests, which takes [http]: without it, the types
        // would only let it make the host hold fields and bodies.
        ("wasi:http", "types") if serves_http => Rule::Always,
        ("wasi:http", "types") => Rule::Needs("http"),
        ("gatehouse:services", "http-client") | ("wasi:http", "outgoing-handler") => Rule::Needs("http"),
        ("gatehouse:services", "kv") => Rule::Needs("kv"),
        ("gatehouse:services", "sql") => Rule::Needs("sql"),
        ("wasi:keyvalue", "store" | "atomics" | "batch") if version.is_some_and(|v| KEYVALUE_VERSIONS.contains(&v)) => {
            Rule::Needs("kv")
        }
        (_, "sqlite") if SPIN_SQLITE.iter().any(|&(p, v)| p == package && version == Some(v)) => Rule::Needs("sql"),
        ("wasi:sockets", _) => Rule::Never("raw sockets would bypass the HTTP allowlist and the SSRF guard"),
        _ => Rule::Unknown,
    }
}

/// Checks every import of `component` against what `policy` grants and
/// returns one message per refused import.
pub(super) fn check(engine: &Engine, component: &Component, policy: &PluginPolicy) -> Result<(), Vec<String>> {
    let ty = component.component_type();
    let serves_http =
        ty.exports(engine).any(|(name, _)| split_interface_name(name) == Some(("wasi:http", "incoming-handler")));
    let refused: Vec<String> = ty
        .imports(engine)
        .filter_map(|(name, _)| {
            let Some((package, interface)) = split_interface_name(name) else {
                return Some(format!("imports `{name}`, which is not an interface the sidecar provides"));
            };
            let version = name.split_once('@').map(|(_, v)| v);
            match rule(package, interface, version, serves_http) {
                Rule::Always => None,
                Rule::Needs(section) if policy.grants(section) => None,
                Rule::Needs(section) => {
                    Some(format!("imports `{name}`, which needs a [{section}] section in its policy"))
                }
                Rule::Never(why) => Some(format!("imports `{name}`, which is never granted: {why}")),
                Rule::Unknown => Some(format!("imports `{name}`, which the sidecar does not provide")),
            }
        })
        .collect();
    if refused.is_empty() { Ok(()) } else { Err(refused) }
}

/// Splits `ns:pkg/interface@1.2.3` into (`ns:pkg`, `interface`).
fn split_interface_name(name: &str) -> Option<(&str, &str)> {
    let unversioned = name.split_once('@').map_or(name, |(n, _)| n);
    let (package, interface) = unversioned.split_once('/')?;
    package.contains(':').then_some((package, interface))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_names_split_into_package_and_interface() {
        assert_eq!(split_interface_name("wasi:cli/stdout@0.2.4"), Some(("wasi:cli", "stdout")));
        assert_eq!(split_interface_name("gatehouse:services/log@0.1.0"), Some(("gatehouse:services", "log")));
        assert_eq!(split_interface_name("bare-function"), None);
        assert_eq!(split_interface_name("no-namespace/iface"), None);
    }

    #[test]
    fn rules_table() {
        for serves_http in [false, true] {
            let rule = |p, i| rule(p, i, None, serves_http);
            assert_eq!(rule("wasi:cli", "environment"), Rule::Always);
            assert_eq!(rule("gatehouse:services", "log"), Rule::Always);
            assert!(matches!(rule("wasi:sockets", "tcp"), Rule::Never(_)));
            assert_eq!(rule("wasi:http", "outgoing-handler"), Rule::Needs("http"));
            assert_eq!(rule("gatehouse:services", "http-client"), Rule::Needs("http"));
            assert_eq!(rule("gatehouse:services", "sql"), Rule::Needs("sql"));
            assert_eq!(rule("wasi:http", "incoming-handler"), Rule::Unknown);
            assert_eq!(rule("wasi:cli", "run"), Rule::Unknown);
            assert_eq!(rule("evil:net", "raw"), Rule::Unknown);
        }
        // The types: for a proxy component's own request and response, or
        // for sending with [http].
        assert_eq!(rule("wasi:http", "types", None, true), Rule::Always);
        assert_eq!(rule("wasi:http", "types", None, false), Rule::Needs("http"));
    }

    #[test]
    fn spin_sqlite_needs_sql_in_the_versions_the_linker_holds() {
        assert_eq!(rule("fermyon:spin", "sqlite", Some("2.0.0"), false), Rule::Needs("sql"));
        assert_eq!(rule("spin:sqlite", "sqlite", Some("3.0.0"), false), Rule::Needs("sql"));
        for (package, version) in [
            ("fermyon:spin", None),
            ("fermyon:spin", Some("3.0.0")),
            ("spin:sqlite", Some("3.1.0")),
            ("spin:sqlite", Some("2.0.0")),
            ("spin:sqlite", None),
        ] {
            assert_eq!(rule(package, "sqlite", version, false), Rule::Unknown, "{package} {version:?}");
        }
        // Other Spin interfaces are not served.
        assert_eq!(rule("fermyon:spin", "postgres", Some("2.0.0"), false), Rule::Unknown);
    }

    #[test]
    fn keyvalue_needs_kv_in_the_versions_the_linker_holds() {
        for version in ["0.2.0-draft", "0.2.0-draft2"] {
            for interface in ["store", "atomics", "batch"] {
                assert_eq!(rule("wasi:keyvalue", interface, Some(version), false), Rule::Needs("kv"), "{interface}");
            }
            // An export, never an import the host serves.
            assert_eq!(rule("wasi:keyvalue", "watcher", Some(version), false), Rule::Unknown);
        }
        for version in [None, Some("0.2.0"), Some("0.2.0-draft3"), Some("0.1.0")] {
            assert_eq!(rule("wasi:keyvalue", "store", version, false), Rule::Unknown, "{version:?}");
        }
    }
}
