//! The key-value store's operator side, through the real binary: the
//! example `kv-counter` plugin under `gatehouse run` (its count grows and
//! survives a restart), `gatehouse kv …` with and without a sidecar
//! holding the store, the admin routes, and the `/metrics` series.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::services::kv::backend::Namespace;
use gatehouse::services::kv::policy::{Durability, Quota};
use gatehouse::services::kv::{Bucket, KvBackend, RedbBackend};

use crate::common::{Policies, gatehouse_command, guest};
use crate::sidecar::{Sidecar, json, request};

const TOKEN: &str = "kv-operator-token";

/// Settings for `gatehouse run` on `policies` with kernel-chosen ports and
/// an admin token read from `TEST_ADMIN_TOKEN`; the data directory is
/// `<root>/data`, kept across restarts.
fn settings(policies: &Policies) -> (tempfile::TempDir, PathBuf) {
    policies.settings(
        "[engine]\nmax_instances = 256\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         admin_token = { env = \"TEST_ADMIN_TOKEN\" }\n",
    )
}

fn start(config: &Path) -> Sidecar {
    let sidecar = Sidecar::spawn(config, &[("TEST_ADMIN_TOKEN", TOKEN)], tempfile::tempdir().unwrap());
    sidecar.wait_ready();
    sidecar
}

/// Stops a sidecar with SIGTERM and waits for it to exit.
fn stop(mut sidecar: Sidecar) {
    sidecar.signal("TERM");
    sidecar.wait_exit(Duration::from_secs(30));
}

fn kv_cli(config: &Path, args: &[&str], token: &str) -> Output {
    gatehouse_command()
        .args(["--config", config.to_str().unwrap(), "kv"])
        .args(args)
        .env("TEST_ADMIN_TOKEN", token)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn visits(sidecar: &Sidecar) -> u64 {
    let (status, _, body) = sidecar.invoke("kv-counter", "visit");
    assert_eq!(status, 200, "{}", text(&body));
    json(&body)["visits"].as_u64().unwrap()
}

/// The example policy as `./dev run` serves it (its component resolves
/// against the guests, the settings' plugin directory).
fn example_policies() -> Policies {
    let policies = Policies::new();
    let example = crate::common::repo_root().join("policies/kv-counter.toml");
    policies.write("kv-counter.toml", &std::fs::read_to_string(example).unwrap());
    policies
}

/// The example plugin counts across invocations and restarts of the
/// sidecar; `gatehouse kv` reads the count through the running sidecar's
/// admin API (the file is locked) without disturbing it, and from the file
/// once the sidecar has stopped. After a SIGKILL the file needs the
/// sidecar's repair: the CLI says so instead of reading or repairing it.
#[test]
fn the_example_counts_across_restarts_and_the_cli_reads_it_with_or_without_a_sidecar() {
    let policies = example_policies();
    let (_root, config) = settings(&policies);
    let cfg = config.as_path();

    let sidecar = start(cfg);
    assert_eq!(visits(&sidecar), 1);
    assert_eq!(visits(&sidecar), 2);
    let admin = sidecar.admin.clone();

    // While it runs: through its admin API.
    let out = kv_cli(cfg, &["get", "kv-counter", "visits", "--admin", &admin], TOKEN);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "2\n");
    assert!(text(&out.stderr).contains("asking the sidecar"), "{}", text(&out.stderr));
    let out = kv_cli(cfg, &["usage", "--admin", &admin], TOKEN);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let usage = text(&out.stdout);
    assert!(usage.starts_with("kv-counter: 1 keys, 7 bytes of 100 keys and 65536 bytes"), "{usage}");
    assert!(usage.contains("  bucket default: 1 keys, 7 bytes"), "{usage}");
    let out = kv_cli(cfg, &["list", "kv-counter", "--admin", &admin], TOKEN);
    assert_eq!(text(&out.stdout), "visits\n", "{}", text(&out.stderr));
    // A missing key: exit 1, said on stderr.
    let out = kv_cli(cfg, &["get", "kv-counter", "nothing", "--admin", &admin], TOKEN);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no key `nothing`"), "{}", text(&out.stderr));
    // The wrong token: a clear refusal, exit 1.
    let out = kv_cli(cfg, &["get", "kv-counter", "visits", "--admin", &admin], "wrong");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("answered 401"), "{}", text(&out.stderr));
    // The sidecar went on serving, and writing.
    assert_eq!(visits(&sidecar), 3);
    stop(sidecar);

    // Without a sidecar: from the file, read-only (no admin address works).
    let out = kv_cli(cfg, &["get", "kv-counter", "visits", "--admin", "127.0.0.1:9"], TOKEN);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "3\n");
    assert!(!text(&out.stderr).contains("asking"), "{}", text(&out.stderr));
    let out = kv_cli(cfg, &["usage"], TOKEN);
    assert!(text(&out.stdout).starts_with("kv-counter: 1 keys, 7 bytes of 100 keys"), "{}", text(&out.stdout));

    // A restart: the count survived, and goes on.
    let sidecar = start(cfg);
    assert_eq!(visits(&sidecar), 4);
    sidecar.signal("KILL");
    drop(sidecar);
    let out = kv_cli(cfg, &["get", "kv-counter", "visits"], TOKEN);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not closed cleanly"), "{}", text(&out.stderr));
    // The sidecar repairs it, and nothing acknowledged was lost.
    let sidecar = start(cfg);
    assert_eq!(visits(&sidecar), 5);
}

/// Writes `items` into plugin `plugin`'s default bucket of the store under
/// `data`, before any sidecar opens it.
fn seed(data: &Path, plugin: &str, items: &[(&str, &[u8])]) {
    seed_bucket(data, plugin, "default", items);
}

/// [`seed`] into `bucket`.
fn seed_bucket(data: &Path, plugin: &str, bucket: &str, items: &[(&str, &[u8])]) {
    let dir = data.join("kv");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let store = Arc::new(RedbBackend::open(&dir.join("store.redb")).unwrap());
    let bucket = Bucket {
        namespace: Namespace::new(plugin, bucket).unwrap(),
        quota: Quota::default(),
        durability: Durability::Immediate,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        for (key, value) in items {
            store.set(&bucket, key.to_string(), value.to_vec()).await.unwrap();
        }
    });
}

fn counter_policy(policies: &Policies, name: &str, kv: &str) {
    let component = guest("kv_counter").display().to_string();
    policies.write(
        &format!("{name}.toml"),
        &format!("[plugin]\nname = \"{name}\"\ncomponent = {component:?}\n[kv]\n{kv}\n"),
    );
}

/// Keys left in a bucket the plugin's grant no longer names still count
/// in its total and quota, so the per-bucket breakdown lists that bucket
/// too, marked not granted: through the admin API (the running store)
/// and from the file (`gatehouse kv usage` with no sidecar). Buckets with
/// no key (never written, or emptied) are not listed unless granted.
#[test]
fn usage_lists_buckets_that_hold_keys_without_a_grant() {
    let policies = Policies::new();
    counter_policy(&policies, "a", "max_keys = 50\nbuckets = [\"fresh\"]");
    let (root, config) = settings(&policies);
    let data = root.path().join("data");
    seed(&data, "a", &[("visits", b"1")]);
    seed_bucket(&data, "a", "retired", &[("k1", b"v1"), ("k2", b"v2")]);
    seed_bucket(&data, "b", "other", &[("k", b"v")]);
    let sidecar = start(&config);
    let (status, _, body) = request(
        &sidecar.admin,
        "GET",
        "/admin/kv/usage?plugin=a",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        b"",
    );
    assert_eq!(status, 200, "{}", text(&body));
    let usage = &json(&body)["plugins"][0];
    let buckets: Vec<(String, bool, u64)> = usage["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (b["bucket"].as_str().unwrap().to_string(), b["granted"].as_bool().unwrap(), b["keys"].as_u64().unwrap())
        })
        .collect();
    let expected =
        vec![("default".to_string(), true, 1), ("fresh".to_string(), true, 0), ("retired".to_string(), false, 2)];
    assert_eq!(buckets, expected, "{usage}");
    assert_eq!(usage["keys"], 3, "the retired bucket's keys count in the total");
    stop(sidecar);

    let out = kv_cli(&config, &["usage", "a"], TOKEN);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("a: 3 keys"), "{shown}");
    assert!(shown.contains("  bucket default: 1 keys, 7 bytes\n"), "{shown}");
    assert!(shown.contains("  bucket fresh: 0 keys, 0 bytes\n"), "{shown}");
    assert!(shown.contains("  bucket retired: 2 keys, 8 bytes (not granted: counts in the quota)\n"), "{shown}");
    assert!(!shown.contains("other"), "another plugin's bucket: {shown}");
}

/// Attacks on the admin routes: reading without the token (401 on every
/// route); keys that forge lines, recolour a terminal or reverse text
/// (escaped in `key`, exact only as `key_hex`); a binary value (hex, or
/// raw bytes only when asked); a plugin or bucket name with a path or a
/// control character (400, quoted escaped); a cursor of another plugin
/// (400). And what an operator may see: another plugin's data, also after
/// its grant is gone (`granted: false`), with the token.
#[test]
fn the_admin_routes_need_the_token_and_show_guest_keys_and_values_safely() {
    let policies = Policies::new();
    counter_policy(&policies, "a", "max_keys = 50");
    let (root, config) = settings(&policies);
    let forged = "k\n2026-01-01T00:00:00Z ERROR forged\u{1b}[31m\u{202e}\\";
    let binary: &[u8] = &[0xff, 0x00, 0x1b, b'\n'];
    seed(&root.path().join("data"), "a", &[("plain", b"hello"), (forged, binary), ("x1", b"1"), ("x2", b"2")]);
    seed(&root.path().join("data"), "ghost", &[("left", b"behind")]);
    let sidecar = start(&config);
    let admin = sidecar.admin.clone();
    let auth = [("authorization", format!("Bearer {TOKEN}"))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let get = |path: &str| request(&admin, "GET", path, &auth, b"");

    for path in ["/admin/kv/usage", "/admin/kv/a/keys", "/admin/kv/a/value?key=plain"] {
        let (status, _, body) = request(&admin, "GET", path, &[], b"");
        assert_eq!(status, 401, "{path}");
        assert_eq!(json(&body)["kind"], "denied");
        assert!(!text(&body).contains("hello"));
        // Not on the invoke listener at all.
        assert_eq!(request(&sidecar.invoke, "GET", path, &auth, b"").0, 404, "{path}");
    }

    let (status, _, body) = get("/admin/kv/usage");
    assert_eq!(status, 200, "{}", text(&body));
    let usage = json(&body);
    let plugins = usage["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 1, "only plugins loaded with a grant: {usage}");
    assert_eq!(plugins[0]["plugin"], "a");
    assert_eq!(plugins[0]["keys"], 4);
    let bytes = 5 + 5 + forged.len() + binary.len() + 2 * 3;
    assert_eq!(plugins[0]["bytes"], bytes as u64);
    assert_eq!(plugins[0]["quota"]["max_keys"], 50);
    assert_eq!(plugins[0]["granted"], true);
    let (_, _, body) = get("/admin/kv/usage?plugin=ghost");
    let ghost = &json(&body)["plugins"][0];
    assert_eq!(
        (ghost["granted"].as_bool(), ghost["keys"].as_u64(), ghost["quota"].is_null()),
        (Some(false), Some(1), true)
    );

    let (status, _, body) = get("/admin/kv/a/keys");
    assert_eq!(status, 200);
    assert!(!body.contains(&0x1b), "{}", text(&body));
    let page = json(&body);
    let keys = page["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4);
    let hostile = keys.iter().find(|k| k.get("key_hex").is_some()).expect("the forged key has key_hex");
    let shown = hostile["key"].as_str().unwrap();
    assert!(!shown.contains('\n') && !shown.contains('\u{1b}') && !shown.contains('\u{202e}'), "{shown:?}");
    assert!(shown.contains("\\n2026") && shown.contains("\\u{1b}"), "{shown:?}");
    assert_eq!(hex::decode(hostile["key_hex"].as_str().unwrap()).unwrap(), forged.as_bytes());
    assert!(keys.iter().filter(|k| k.get("key_hex").is_none()).all(|k| k["key"].as_str().unwrap().is_ascii()));

    // Paging, and a cursor that belongs to another plugin.
    let (_, _, body) = get("/admin/kv/a/keys?limit=1&prefix=x");
    let first = json(&body);
    assert_eq!(first["keys"][0]["key"], "x1");
    let cursor = first["cursor"].as_str().unwrap().to_string();
    let (_, _, body) = get(&format!("/admin/kv/a/keys?limit=1&prefix=x&cursor={cursor}"));
    assert_eq!(json(&body)["keys"][0]["key"], "x2");
    let (status, _, body) = get(&format!("/admin/kv/ghost/keys?cursor={cursor}"));
    assert_eq!(status, 400, "{}", text(&body));
    assert!(json(&body)["message"].as_str().unwrap().contains("another plugin or bucket"));

    // Values: text, binary as hex, raw bytes on request.
    let (_, _, body) = get("/admin/kv/a/value?key=plain");
    let value = json(&body);
    assert_eq!((value["value"]["encoding"].as_str(), value["value"]["shown"].as_str()), (Some("text"), Some("hello")));
    let encoded: String = url::form_urlencoded::byte_serialize(forged.as_bytes()).collect();
    let (status, _, body) = get(&format!("/admin/kv/a/value?key={encoded}"));
    assert_eq!(status, 200, "{}", text(&body));
    let value = json(&body);
    assert_eq!(
        (value["value"]["encoding"].as_str(), value["value"]["shown"].as_str()),
        (Some("hex"), Some("ff001b0a"))
    );
    assert!(!text(&body).contains('\n'));
    let (status, headers, body) = get(&format!("/admin/kv/a/value?key={encoded}&raw=1"));
    assert_eq!(status, 200);
    assert_eq!(body, binary);
    assert_eq!(crate::sidecar::header(&headers, "content-type"), Some("application/octet-stream"));

    // Bad names and missing keys: JSON errors, guest text escaped.
    let (status, _, body) = get("/admin/kv/a/value?key=no%0Asuch%1B");
    assert_eq!(status, 404);
    let message = json(&body)["message"].as_str().unwrap().to_string();
    assert!(message.contains("no\\nsuch\\u{1b}") && !message.contains('\n'), "{message:?}");
    for path in [
        "/admin/kv/A/keys",
        "/admin/kv/a/keys?bucket=..%2Fb",
        "/admin/kv/a/keys?bucket=b%0Ax",
        "/admin/kv/usage?plugin=a%1B",
    ] {
        let (status, _, body) = get(path);
        assert_eq!(status, 400, "{path}: {}", text(&body));
        let message = json(&body)["message"].as_str().unwrap().to_string();
        assert!(!message.contains('\n') && !message.contains('\u{1b}'), "{message:?}");
    }

    // The CLI through the same routes prints the keys escaped, one a line.
    let out = kv_cli(&config, &["list", "a", "--admin", &admin], TOKEN);
    let listed = text(&out.stdout);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(!listed.contains('\u{1b}') && listed.contains("\\n2026"), "{listed:?}");
    let out = kv_cli(&config, &["get", "a", forged, "--admin", &admin], TOKEN);
    assert_eq!(text(&out.stdout), "ff001b0a\n", "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not UTF-8, shown in hex"));
    let out = kv_cli(&config, &["get", "a", forged, "--raw", "--admin", &admin], TOKEN);
    assert_eq!(out.stdout, binary);
}

/// Attacks counted: a bucket the policy does not grant (denied), a write
/// past `max_bytes` (quota-exceeded), calls past the rate (rate-limited);
/// each is a real guest call through the door, and each moves its own
/// series. Usage and quota gauges follow the store.
#[test]
fn metrics_count_guest_calls_by_operation_and_outcome() {
    let policies = Policies::new();
    counter_policy(&policies, "a", "max_bytes = \"1 KiB\"\nmax_keys = 7\nrate = \"6/m\"");
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);
    assert_eq!(visits_of(&sidecar, "a", "visit"), 200);
    assert_eq!(visits_of(&sidecar, "a", "visit"), 200);
    assert_eq!(visits_of(&sidecar, "a", "peek secret k"), 403);
    assert_eq!(visits_of(&sidecar, "a", "fill 2000"), 507);
    assert_eq!(visits_of(&sidecar, "a", "fill 100"), 200);
    assert_eq!(visits_of(&sidecar, "a", "usage"), 200);
    // The seventh call this minute.
    assert_eq!(visits_of(&sidecar, "a", "visit"), 429);

    let (status, _, body) = sidecar.get(&sidecar.invoke, "/metrics");
    assert_eq!(status, 200);
    let text = text(&body);
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
    };
    let op = |operation: &str, outcome: &str| {
        value(&format!("gatehouse_kv_operations_total{{plugin=\"a\",operation=\"{operation}\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(op("increment", "ok"), 2.0);
    assert_eq!(op("get", "denied"), 1.0);
    assert_eq!(op("set", "quota-exceeded"), 1.0);
    assert_eq!(op("set", "ok"), 1.0);
    assert_eq!(op("usage", "ok"), 1.0);
    assert_eq!(op("increment", "rate-limited"), 1.0);
    assert_eq!(value("gatehouse_kv_keys{plugin=\"a\"}"), 2.0);
    assert_eq!(value("gatehouse_kv_bytes{plugin=\"a\"}"), (6 + 1 + 4 + 100) as f64);
    assert_eq!(value("gatehouse_kv_max_keys{plugin=\"a\"}"), 7.0);
    assert_eq!(value("gatehouse_kv_max_bytes{plugin=\"a\"}"), 1024.0);
    assert!(!text.contains("secret"), "guest text became a label:\n{text}");
}

fn visits_of(sidecar: &Sidecar, plugin: &str, command: &str) -> u16 {
    sidecar.invoke(plugin, command).0
}

/// A store file that redb finds damaged (a truncated file, as a full disk
/// or a bad copy leaves it): the CLI refuses it in one line, without
/// printing redb's panic; the sidecar serves, says 503 on `/readyz` with
/// `key-value store unavailable` (the reason is in its log, once) and
/// answers the plugin's calls `unavailable`; once the operator moves the
/// file away, a new store opens without a restart and `/readyz` is 200.
#[test]
fn a_damaged_store_makes_the_sidecar_unready_and_the_cli_prints_no_panic() {
    let policies = example_policies();
    let (root, config) = settings(&policies);
    let data = root.path().join("data");
    let items: Vec<(String, Vec<u8>)> = (0..200).map(|i| (format!("key-{i}"), vec![7; 1000])).collect();
    let items: Vec<(&str, &[u8])> = items.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    seed(&data, "kv-counter", &items);
    let file = data.join("kv/store.redb");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();

    let out = kv_cli(&config, &["get", "kv-counter", "key-1"], TOKEN);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot open"), "{stderr}");
    assert!(!stderr.contains("panicked"), "the CLI printed a panic: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let sidecar = Sidecar::spawn(&config, &[("TEST_ADMIN_TOKEN", TOKEN)], tempfile::tempdir().unwrap());
    let started = Instant::now();
    loop {
        let (status, _, body) = sidecar.get(&sidecar.invoke, "/readyz");
        if status == 503 && text(&body) == "key-value store unavailable\n" {
            break;
        }
        assert_ne!(status, 200, "ready with a damaged store");
        assert!(started.elapsed() < Duration::from_secs(30), "{status} {}", text(&body));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _, body) = sidecar.invoke("kv-counter", "visit");
    assert_eq!(status, 503, "{}", text(&body));
    assert_eq!(json(&body)["kind"], "unavailable", "{}", text(&body));
    assert!(!sidecar.stderr().contains("panicked"), "{}", sidecar.stderr());
    // The sidecar's stderr reaches the test through a pipe and a thread:
    // wait for the line before counting it.
    let logged = || sidecar.stderr().matches("the key-value store cannot be opened").count();
    let waited = Instant::now();
    while logged() == 0 && waited.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(logged(), 1, "{}", sidecar.stderr());

    std::fs::rename(&file, data.join("kv/store.redb.damaged")).unwrap();
    sidecar.wait_ready();
    assert_eq!(visits(&sidecar), 1, "a new store, opened without a restart");
}
