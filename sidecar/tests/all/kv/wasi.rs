//! The two `wasi:keyvalue` doors, end to end: `guests/kv-wasmcloud`
//! (0.2.0-draft, written as a wasmCloud component) and `guests/kv-spin`
//! (0.2.0-draft2, written as a Spin 3 component), both `wasi:http`
//! components served by `gatehouse run` (the real binary) over real redb
//! files, next to `guests/kv-counter` on the custom door.

use std::sync::Arc;

use gatehouse::Runtime;

use crate::common::{Policies, guest, settings};
use crate::sidecar::{Sidecar, request};

const DRAFT: &str = "kv_wasmcloud";
const DRAFT2: &str = "kv_spin";

/// Writes the policy of `name` running `component` with `[kv]` `kv`.
fn plugin(policies: &Policies, name: &str, component: &str, kv: &str) {
    let component = guest(component).display().to_string();
    policies.write(
        &format!("{name}.toml"),
        &format!("[plugin]\nname = \"{name}\"\ncomponent = {component:?}\n[limits]\nmemory = \"16 MiB\"\n[kv]\n{kv}\n"),
    );
}

/// `method /p/<plugin><path>` with `body`: the status and the body as text.
fn call(sidecar: &Sidecar, method: &str, plugin: &str, path: &str, body: &[u8]) -> (u16, String) {
    let (status, _, body) = request(&sidecar.invoke, method, &format!("/p/{plugin}{path}"), &[], body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn ok(sidecar: &Sidecar, method: &str, plugin: &str, path: &str, body: &[u8]) -> String {
    let (status, text) = call(sidecar, method, plugin, path, body);
    assert_eq!(status, 200, "{method} {plugin}{path}: {text}");
    text
}

/// get/set/delete/exists, both `get-many` shapes, all-or-nothing
/// `set-many` and `delete-many`, `increment` (on a non-integer too)
/// through each draft.
#[test]
fn both_drafts_serve_the_store_the_batches_and_the_counters() {
    let policies = Policies::new();
    plugin(&policies, "cloud", DRAFT, "max_value = \"16 B\"");
    plugin(&policies, "spin", DRAFT2, "max_value = \"16 B\"");
    let sidecar = Sidecar::start(&policies, "", &[]);
    for p in ["cloud", "spin"] {
        assert_eq!(call(&sidecar, "GET", p, "/get?key=a", b""), (404, "absent".into()));
        ok(&sidecar, "PUT", p, "/set?key=a", b"one");
        assert_eq!(ok(&sidecar, "GET", p, "/get?key=a", b""), "one");
        assert_eq!(ok(&sidecar, "GET", p, "/exists?key=a", b""), "true");
        ok(&sidecar, "DELETE", p, "/delete?key=a", b"");
        ok(&sidecar, "DELETE", p, "/delete?key=a", b""); // absent: nothing to do, no error
        assert_eq!(ok(&sidecar, "GET", p, "/exists?key=a", b""), "false");

        ok(&sidecar, "POST", p, "/set-many", b"b=2\nc=3");
        // draft: option<tuple<key, value>>; draft2: tuple<key, option<value>>.
        assert_eq!(ok(&sidecar, "GET", p, "/many?keys=b,x,c", b""), "b=2\nx absent\nc=3");
        // One value over max_value: the whole batch is refused, none written.
        let (status, text) = call(&sidecar, "POST", p, "/set-many", b"d=4\nb=22\ne=0123456789abcdefg");
        assert_eq!(status, 500, "{text}");
        assert!(text.starts_with("other: quota-exceeded: max_value would be exceeded: 17 > 16"), "{text}");
        assert_eq!(ok(&sidecar, "GET", p, "/many?keys=b,d", b""), "b=2\nd absent");
        ok(&sidecar, "POST", p, "/delete-many?keys=b,c,nothing", b"");
        assert_eq!(ok(&sidecar, "GET", p, "/many?keys=b,c", b""), "b absent\nc absent");

        assert_eq!(ok(&sidecar, "POST", p, "/incr?key=n&by=5", b""), "5");
        assert_eq!(ok(&sidecar, "POST", p, "/incr?key=n&by=2", b""), "7");
        assert_eq!(ok(&sidecar, "GET", p, "/get?key=n", b""), "7", "stored as decimal ASCII");
        ok(&sidecar, "PUT", p, "/set?key=word", b"seven");
        let (status, text) = call(&sidecar, "POST", p, "/incr?key=word", b"");
        assert_eq!(
            (status, text.as_str()),
            (500, "other: invalid-input: the value of `word` is not a decimal integer")
        );
        assert_eq!(ok(&sidecar, "GET", p, "/get?key=word", b""), "seven", "unchanged");
        // Empty and oversized keys.
        let (status, text) = call(&sidecar, "PUT", p, "/set?key=", b"x");
        assert_eq!((status, text.as_str()), (500, "other: invalid-input: the key is empty"));
        let long = "k".repeat(4097);
        let (_, text) = call(&sidecar, "GET", p, &format!("/get?key={long}"), b"");
        assert!(text.starts_with("other: invalid-input: the key is 4097 bytes long"), "{text}");
    }
    // draft2 only: a compare-and-swap round.
    assert_eq!(ok(&sidecar, "POST", "spin", "/cas-incr?key=n", b""), "8 0");
    // A handle taken before another write fails its swap; the handle
    // `cas-failed` returns holds what is stored now, so swapping with it
    // succeeds without reading first.
    assert_eq!(ok(&sidecar, "POST", "spin", "/cas-blind?key=blind", b"mine"), "failed ok");
    assert_eq!(ok(&sidecar, "GET", "spin", "/get?key=blind", b""), "mine");
    // draft only: a counter another door made negative is not a u64.
    ok(&sidecar, "PUT", "cloud", "/set?key=neg", b"-3");
    let (_, text) = call(&sidecar, "POST", "cloud", "/incr?key=neg", b"");
    assert_eq!(text, "other: invalid-input: the counter `neg` is negative");
    assert_eq!(ok(&sidecar, "GET", "cloud", "/get?key=neg", b""), "-3", "nothing written");
}

/// Paging with each draft's cursors while keys are written between pages
/// (by the scanning component itself) and meanwhile (by another
/// invocation): every key that existed for the whole scan comes back
/// exactly once. Then cursors out of place: draft2's string cursor in
/// another plugin and another bucket, draft's number in a later
/// invocation (its handle is gone) or made up: all `invalid-input`.
#[test]
fn paging_skips_and_repeats_nothing_while_others_write() {
    let policies = Policies::new();
    let kv = "rate = \"100000/s\"\nbuckets = [\"cache\"]";
    plugin(&policies, "cloud", DRAFT, kv);
    plugin(&policies, "spin", DRAFT2, kv);
    plugin(&policies, "other", DRAFT2, kv);
    let sidecar = Arc::new(Sidecar::start(&policies, "", &[]));
    for p in ["cloud", "spin"] {
        let stable: Vec<String> = (0..2500).map(|i| format!("k{i:04}")).collect();
        for chunk in stable.chunks(500) {
            let body: String = chunk.iter().map(|k| format!("{k}=v\n")).collect();
            ok(&sidecar, "POST", p, "/set-many", body.as_bytes());
        }
        let writer = {
            let sidecar = sidecar.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    ok(&sidecar, "PUT", p, &format!("/set?key=m{i:04}"), b"v");
                    ok(&sidecar, "DELETE", p, &format!("/delete?key=m{:04}", i / 2), b"");
                }
            })
        };
        let listing = ok(&sidecar, "GET", p, "/keys?churn=1", b"");
        writer.join().unwrap();
        let mut lines = listing.lines();
        let pages: usize = lines.next().unwrap().strip_prefix("pages ").unwrap().parse().unwrap();
        assert!(pages >= 3, "{pages} pages");
        let keys: Vec<&str> = lines.collect();
        let mut seen = std::collections::BTreeSet::new();
        for key in &keys {
            assert!(seen.insert(*key), "{p}: {key} repeated");
        }
        for key in &stable {
            assert!(seen.contains(key.as_str()), "{p}: {key} skipped");
        }
        // The keys written between pages after the cursor are seen.
        assert!(seen.contains("z-1"), "{p}");
    }

    // draft2: a real cursor of spin/default.
    let first = ok(&sidecar, "GET", "spin", "/page", b"");
    let cursor = first.lines().next().unwrap().strip_prefix("cursor ").unwrap().to_string();
    assert_ne!(cursor, "none");
    let next = ok(&sidecar, "GET", "spin", &format!("/page?cursor={cursor}"), b"");
    assert!(next.lines().nth(1).unwrap() > first.lines().last().unwrap(), "the next page follows");
    for (p, bucket) in [("other", "default"), ("spin", "cache")] {
        let (status, text) = call(&sidecar, "GET", p, &format!("/page?bucket={bucket}&cursor={cursor}"), b"");
        assert_eq!(
            (status, text.as_str()),
            (500, "other: invalid-input: invalid cursor: it belongs to another plugin or bucket"),
            "{p}/{bucket}"
        );
    }
    // draft: a number handed out in another invocation, and one made up.
    let first = ok(&sidecar, "GET", "cloud", "/page", b"");
    let number = first.lines().next().unwrap().strip_prefix("cursor ").unwrap().to_string();
    for n in [number.as_str(), "123456789"] {
        let (status, text) = call(&sidecar, "GET", "cloud", &format!("/page?cursor={n}"), b"");
        assert_eq!(status, 500, "{text}");
        assert!(text.starts_with(&format!("other: invalid-input: cursor {n} is not one of the last 8")), "{text}");
    }
    // 0 is the start, as offset-based hosts read it.
    let from_zero = ok(&sidecar, "GET", "cloud", "/page?cursor=0", b"");
    assert_eq!(from_zero.split_once('\n').unwrap().1, first.split_once('\n').unwrap().1);
}

/// One namespace through three doors: `kv-counter` counts on the custom
/// door, then the same plugin name is served by the draft component, then
/// by the draft2 one, then by the counter again, each reading and adding
/// to the same key. Another plugin sees none of it.
///
/// Attacks: reading another plugin's key by name; opening a bucket
/// another plugin is granted.
#[test]
fn the_three_doors_share_one_namespace_and_plugins_stay_apart() {
    let policies = Policies::new();
    plugin(&policies, "shared", "kv_counter", "buckets = [\"cache\"]");
    plugin(&policies, "stranger", DRAFT2, "");
    let sidecar = Sidecar::start(&policies, "", &[]);
    let reload = |component: &str| {
        plugin(&policies, "shared", component, "buckets = [\"cache\"]");
        let (status, _, body) = request(&sidecar.admin, "POST", "/admin/reload", &[], b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    };
    for _ in 0..2 {
        assert_eq!(sidecar.invoke("shared", "visit").0, 200);
    }
    reload(DRAFT);
    assert_eq!(ok(&sidecar, "GET", "shared", "/get?key=visits", b""), "2");
    assert_eq!(ok(&sidecar, "POST", "shared", "/incr?key=visits", b""), "3");
    ok(&sidecar, "PUT", "shared", "/set?key=secret&bucket=cache", b"s");
    reload(DRAFT2);
    assert_eq!(ok(&sidecar, "GET", "shared", "/get?key=visits", b""), "3");
    assert_eq!(ok(&sidecar, "POST", "shared", "/cas-incr?key=visits", b""), "4 0");
    assert_eq!(ok(&sidecar, "GET", "shared", "/get?bucket=cache&key=secret", b""), "s");
    reload("kv_counter");
    let (status, _, body) = sidecar.invoke("shared", "visit");
    assert_eq!((status, crate::sidecar::json(&body)["visits"].as_i64()), (200, Some(5)));

    // The stranger: its own `visits` is another key, and `cache` is not its bucket.
    assert_eq!(call(&sidecar, "GET", "stranger", "/get?key=visits", b""), (404, "absent".into()));
    assert_eq!(call(&sidecar, "GET", "stranger", "/get?bucket=cache&key=secret", b""), (403, "access-denied".into()));
    assert_eq!(call(&sidecar, "GET", "stranger", "/get?bucket=shared&key=visits", b""), (403, "access-denied".into()));
    ok(&sidecar, "PUT", "stranger", "/set?key=mine", b"m");
    assert_eq!(ok(&sidecar, "GET", "stranger", "/get?bucket=&key=mine", b""), "m", "\"\" is the default bucket");
}

/// Quotas and rate through the drafts, which have no variant for them.
///
/// Attacks: a write past `max_bytes` (refused whole, nothing written);
/// calls past the rate (refused with a retry hint).
#[test]
fn quota_and_rate_refusals_read_other_with_their_kind() {
    let policies = Policies::new();
    plugin(&policies, "full", DRAFT2, "max_bytes = \"64 B\"");
    plugin(&policies, "slow", DRAFT, "rate = \"6/m\"");
    let sidecar = Sidecar::start(&policies, "", &[]);
    ok(&sidecar, "PUT", "full", "/set?key=a", &[b'x'; 40]);
    let (status, text) = call(&sidecar, "PUT", "full", "/set?key=b", &[b'x'; 40]);
    assert_eq!(status, 500);
    assert_eq!(text, "other: quota-exceeded: max_bytes would be exceeded: 82 > 64 (in use: 41)");
    assert_eq!(ok(&sidecar, "GET", "full", "/exists?key=b", b""), "false", "nothing written");

    // Each request spends two tokens (`open`, then the call): three pass.
    for _ in 0..3 {
        ok(&sidecar, "GET", "slow", "/exists?key=a", b"");
    }
    let (status, text) = call(&sidecar, "GET", "slow", "/exists?key=a", b"");
    assert_eq!(status, 500);
    let wait: u64 = text
        .strip_prefix("other: rate-limited: key-value rate of 6/m exceeded, retry after ")
        .and_then(|t| t.strip_suffix(" ms"))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 10_000, "{wait}");
}

/// N concurrent invocations on one key: draft increments; draft2
/// increments and `cas`/`swap` rounds mixed. No update is lost.
#[test]
fn concurrent_increments_and_swaps_lose_no_update() {
    let policies = Policies::new();
    plugin(&policies, "cloud", DRAFT, "rate = \"100000/s\"");
    plugin(&policies, "spin", DRAFT2, "rate = \"100000/s\"");
    let sidecar = Arc::new(Sidecar::start(&policies, "", &[]));
    const N: usize = 24;
    let threads: Vec<_> = (0..N)
        .flat_map(|i| {
            let routes =
                [("cloud", "/incr?key=n"), ("spin", if i % 2 == 0 { "/cas-incr?key=n" } else { "/incr?key=n" })];
            routes.map(|(p, route)| {
                let sidecar = sidecar.clone();
                std::thread::spawn(move || ok(&sidecar, "POST", p, route, b""))
            })
        })
        .collect();
    let mut retries = 0;
    for thread in threads {
        let answer = thread.join().unwrap();
        retries += answer.split_once(' ').map_or(0, |(_, r)| r.parse::<u32>().unwrap());
    }
    assert_eq!(ok(&sidecar, "GET", "cloud", "/get?key=n", b""), N.to_string());
    assert_eq!(ok(&sidecar, "GET", "spin", "/get?key=n", b""), N.to_string());
    eprintln!("cas-failed retries: {retries}");
}

/// Attack: holding bucket and `cas` handles without bound. They live in
/// the invocation's resource table, whose cap (`[limits] memory`: here
/// 16 MiB, 128 handles) stops the component; a smaller number is served.
#[test]
fn bucket_and_cas_handles_are_capped_by_the_resource_table() {
    let policies = Policies::new();
    plugin(&policies, "holder", DRAFT2, "rate = \"100000/s\"");
    let sidecar = Sidecar::start(&policies, "", &[]);
    assert_eq!(ok(&sidecar, "GET", "holder", "/hold?n=50", b""), "held 50");
    let (status, text) = call(&sidecar, "GET", "holder", "/hold?n=10000", b"");
    assert_eq!(status, 507, "{text}");
    assert!(text.contains("quota-exceeded"), "{text}");
    assert_eq!(ok(&sidecar, "GET", "holder", "/hold?n=1", b""), "held 1", "the plugin still serves");
}

/// A component importing `wasi:keyvalue` (either draft) without `[kv]` is
/// refused at load, naming the import and the section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasi_doors_need_a_kv_section() {
    let policies = Policies::new();
    for (name, component) in [("cloud", DRAFT), ("spin", DRAFT2)] {
        let component = guest(component).display().to_string();
        policies.write(&format!("{name}.toml"), &format!("[plugin]\nname = \"{name}\"\ncomponent = {component:?}\n"));
    }
    let runtime = Runtime::new(settings(), crate::common::services()).unwrap();
    let report = runtime.load(&policies.load().set).await;
    assert_eq!(report.refused.len(), 2, "{:?}", report.refused);
    for (name, version) in [("cloud", "0.2.0-draft"), ("spin", "0.2.0-draft2")] {
        let reason = &report.refused.iter().find(|r| r.plugin == name).unwrap().reason;
        let import = format!("wasi:keyvalue/store@{version}`");
        assert!(reason.contains(&import) && reason.contains("needs a [kv] section"), "{reason}");
    }
}
