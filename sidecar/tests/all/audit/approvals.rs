//! Approvals (`[audit] require_approval`) in the running sidecar (the real
//! binary): grants that would grow wait, the plugin keeps the version it
//! has (or stays out, if new), and only a decision through the admin API
//! or `gatehouse grants approve` lets them take effect; decisions and
//! requests are audit entries naming who made them; permission manifests
//! beside a component count as grants asked for.
//!
//! Attacks tried: a new plugin loading itself without approval; a grant
//! raised by editing the file (SIGHUP or an admin reload) taking effect
//! unapproved; a rejected grant coming back by reloading; an upgrade whose
//! manifest asks for more slipping through because its policy did not
//! change; a decision for a plugin with nothing pending; a malformed
//! decision body; approval rows edited outside the sidecar; a held
//! plugin kept on a version approved away since it loaded.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};

use crate::common::{Policies, gatehouse_command, guest};
use crate::sidecar::{Sidecar, json as body_json, request};

const TOKEN: &str = "approver-token";

fn settings(policies: &Policies) -> (tempfile::TempDir, PathBuf) {
    policies.settings(
        "[engine]\nmax_instances = 64\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [server.admin_tokens.lead]\nenv = \"APPROVALS_TEST_TOKEN\"\n[audit]\nrequire_approval = true\n",
    )
}

fn start(config: &Path) -> Sidecar {
    let sidecar = Sidecar::spawn(config, &[("APPROVALS_TEST_TOKEN", TOKEN)], tempfile::tempdir().unwrap());
    sidecar.wait_loaded();
    sidecar
}

fn cli(config: &Path, args: &[&str]) -> Output {
    gatehouse_command().args(["--config", config.to_str().unwrap()]).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn admin(sidecar: &Sidecar, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = request(&sidecar.admin, method, path, &[("authorization", &auth)], body);
    (status, body_json(&body))
}

fn reload(sidecar: &Sidecar) -> Value {
    admin(sidecar, "POST", "/admin/reload", b"").1
}

/// (actor, kind, item) of every entry from `from` on.
fn entries(sidecar: &Sidecar, from: usize) -> Vec<(String, String, String)> {
    let (status, page) = admin(sidecar, "GET", "/admin/audit?limit=1000", b"");
    assert_eq!(status, 200, "{page}");
    page["entries"].as_array().unwrap()[from..]
        .iter()
        .map(|e| {
            let text = |v: &Value| v.as_str().unwrap().to_string();
            (text(&e["actor"]), text(&e["change"]["kind"]), text(&e["change"]["item"]))
        })
        .collect()
}

fn count(sidecar: &Sidecar) -> usize {
    entries(sidecar, 0).len()
}

/// The `max_keys` the store enforces for `plugin` now (`None`: no grant in
/// force).
fn max_keys(sidecar: &Sidecar, plugin: &str) -> Option<u64> {
    let (status, usage) = admin(sidecar, "GET", &format!("/admin/kv/usage?plugin={plugin}"), b"");
    assert_eq!(status, 200, "{usage}");
    usage["plugins"][0]["quota"]["max_keys"].as_u64()
}

fn store_policy(max_keys: u64) -> String {
    format!(
        "[plugin]\nname = \"store\"\ncomponent = {:?}\n[kv]\nmax_keys = {max_keys}\n",
        guest("echo").display().to_string()
    )
}

#[test]
fn grants_that_grow_wait_for_a_decision_and_every_step_is_audited() {
    let policies = Policies::new();
    let file = policies.write("store.toml", &store_policy(10));
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);

    // A new plugin is held: not loaded, listed as pending, one `requested`
    // entry by its file; nothing added.
    assert_eq!(max_keys(&sidecar, "store"), None);
    let (status, _, ready) = sidecar.get(&sidecar.invoke, "/readyz");
    assert_eq!((status, String::from_utf8_lossy(&ready).contains("plugin `store` refused")), (503, true));
    let (status, list) = admin(&sidecar, "GET", "/admin/approvals", b"");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["approvals"][0]["plugin"], "store");
    assert_eq!(list["approvals"][0]["state"], "pending");
    assert_eq!(list["approvals"][0]["grows"][0]["item"], "");
    let first = entries(&sidecar, 0);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].0.starts_with(&format!("file:{}#sha256:", file.display())), "{first:?}");
    assert_eq!((first[0].1.as_str(), first[0].2.as_str()), ("requested", ""));
    // Reloading changes nothing: the request is not recorded twice.
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!(["store"]), "{summary}");
    assert_eq!(summary["audit_entries"], 0, "{summary}");
    assert_eq!(count(&sidecar), 1);

    // Bad decisions: malformed body, nothing pending.
    let (status, _) = admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"maybe\"}");
    assert_eq!(status, 400);
    let (status, answer) = admin(&sidecar, "POST", "/admin/approvals/other", b"{\"decision\":\"approve\"}");
    assert_eq!(status, 404, "{answer}");
    assert_eq!(count(&sidecar), 1, "a refused decision writes nothing");

    // Approved through the API by the `lead` token: loaded at once.
    let (status, answer) = admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["reload"]["loaded"], json!(["store"]), "{answer}");
    assert_eq!(max_keys(&sidecar, "store"), Some(10));
    assert_eq!(sidecar.get(&sidecar.invoke, "/readyz").0, 200);
    // The server's log names the decision and who made it.
    let waited = std::time::Instant::now();
    while !sidecar.stderr().contains("grants approved") && waited.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(sidecar.stderr().contains("actor=admin:lead"), "{}", sidecar.stderr());
    assert_eq!(
        entries(&sidecar, 1),
        vec![
            ("admin:lead".into(), "approved".into(), String::new()),
            ("admin:lead".into(), "added".into(), String::new())
        ]
    );

    // A quota raised in the file: held, the old grant stays in force, and
    // `grants diff` says so without applying anything.
    policies.write("store.toml", &store_policy(20));
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!(["store"]), "{summary}");
    assert_eq!(summary["audit_entries"], 1, "the `requested` entry is counted: {summary}");
    assert_eq!(max_keys(&sidecar, "store"), Some(10));
    assert_eq!(entries(&sidecar, 3), vec![("admin:lead".into(), "requested".into(), "kv.quota.max_keys".into())]);
    let diff = cli(&config, &["grants", "diff"]);
    assert!(diff.status.success());
    assert!(stdout(&diff).contains("store  kv.quota.max_keys  10 -> 20  (needs approval)"), "{}", stdout(&diff));
    assert_eq!(count(&sidecar), 4, "diff applies nothing");

    // Approved from the CLI, by the OS user; applied at the next reload.
    let approved = cli(&config, &["grants", "approve", "store"]);
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    assert!(stdout(&approved).contains("by os-user:"), "{}", stdout(&approved));
    assert_eq!(max_keys(&sidecar, "store"), Some(10), "not before the reload");
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!([]), "{summary}");
    assert_eq!(max_keys(&sidecar, "store"), Some(20));
    let after = entries(&sidecar, 4);
    assert!(after[0].0.starts_with("os-user:") && after[0].1 == "approved", "{after:?}");
    assert_eq!(after[1], ("admin:lead".into(), "changed".into(), "kv.quota.max_keys".into()));

    // Lowered: no approval needed. Raised back within what was approved:
    // none either.
    policies.write("store.toml", &store_policy(5));
    assert_eq!(reload(&sidecar)["pending"], json!([]));
    assert_eq!(max_keys(&sidecar, "store"), Some(5));
    policies.write("store.toml", &store_policy(20));
    assert_eq!(reload(&sidecar)["pending"], json!([]));
    assert_eq!(max_keys(&sidecar, "store"), Some(20));

    // Raised beyond: rejected from the CLI; reloads keep it held (not
    // pending again); asking for something else makes it pending again.
    policies.write("store.toml", &store_policy(30));
    reload(&sidecar);
    let rejected = cli(&config, &["grants", "reject", "store"]);
    assert!(rejected.status.success(), "{}", String::from_utf8_lossy(&rejected.stderr));
    let before = count(&sidecar);
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!(["store"]), "{summary}");
    assert!(summary["errors"].to_string().contains("rejected"), "{summary}");
    assert_eq!(count(&sidecar), before, "a rejected request is not recorded again");
    assert_eq!(max_keys(&sidecar, "store"), Some(20));
    assert_eq!(admin(&sidecar, "GET", "/admin/approvals", b"").1["approvals"][0]["state"], "rejected");
    let again = cli(&config, &["grants", "approve", "store"]);
    assert_eq!(again.status.code(), Some(1), "nothing pending after a rejection");
    policies.write("store.toml", &store_policy(40));
    reload(&sidecar);
    let pending = cli(&config, &["grants", "pending"]);
    assert!(stdout(&pending).starts_with("pending  store  sha256:"), "{}", stdout(&pending));
    assert!(stdout(&pending).contains("kv.quota.max_keys  20 -> 40"), "{}", stdout(&pending));

    // Back within the approved grants: the pending request is withdrawn.
    policies.write("store.toml", &store_policy(20));
    reload(&sidecar);
    assert_eq!(entries(&sidecar, count(&sidecar) - 1)[0].1, "withdrawn");
    assert!(stdout(&cli(&config, &["grants", "pending"])).contains("nothing waits"));
    drop(sidecar);

    // The approval state is signed with the grants: the log verifies.
    let verified = cli(&config, &["audit", "verify"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
}

/// A component shipping `<stem>.permissions.toml`: what it asks for is a
/// grant that grows like the policy's own, so an upgrade whose manifest
/// asks for more waits even when its policy is unchanged; `grants diff`
/// lists what is granted but not asked for; a bad manifest refuses the
/// plugin, naming the manifest and the line.
#[test]
fn a_manifest_that_asks_for_more_waits_and_a_bad_one_is_refused() {
    let policies = Policies::new();
    // The component and its manifest beside the policy (the policy
    // directory skips manifests).
    std::fs::copy(guest("echo"), policies.dir.path().join("echo.wasm")).unwrap();
    let manifest = policies.write("echo.permissions.toml", "[kv]\nmax_keys = 10\n");
    policies.write(
        "store.toml",
        "[plugin]\nname = \"store\"\ncomponent = \"echo.wasm\"\n[kv]\nmax_keys = 10\nbuckets = [\"cache\"]\n",
    );
    let (_root, config) = settings(&policies);
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            &format!("plugin_dir = {:?}", crate::common::guest_dir().display().to_string()),
            &format!("plugin_dir = {:?}", policies.dir.path().display().to_string()),
        ),
    )
    .unwrap();

    let diff = stdout(&cli(&config, &["grants", "diff"]));
    assert!(diff.contains("granted-not-requested  store  kv.buckets.cache  - -> \"immediate\""), "{diff}");
    let sidecar = start(&config);
    admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    assert_eq!(max_keys(&sidecar, "store"), Some(10));

    // The manifest asks for a bucket the policy already grants: held.
    std::fs::write(&manifest, "[kv]\nmax_keys = 10\nbuckets = [\"cache\"]\n").unwrap();
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!(["store"]), "{summary}");
    let last = entries(&sidecar, count(&sidecar) - 1);
    assert_eq!(last[0].1, "requested");
    assert!(last[0].2.starts_with("requested.kv"), "{last:?}");

    // A manifest with an unknown field refuses the plugin: the loaded
    // version stays.
    std::fs::write(&manifest, "[kv]\nmax_keys = 10\nmax_everything = 1\n").unwrap();
    let summary = reload(&sidecar);
    let errors = summary["errors"].to_string();
    assert!(errors.contains("echo.permissions.toml") && errors.contains("max_everything"), "{summary}");
    assert_eq!(max_keys(&sidecar, "store"), Some(10));
}

/// A decision whose body trickles in (an outside review held twelve such
/// requests open indefinitely, blocking the admin API) is answered 408
/// within `[server] request_timeout`; an oversized one 413.
#[test]
fn a_trickled_or_oversized_decision_body_is_refused() {
    use std::io::{Read, Write};

    let policies = Policies::new();
    policies.write("store.toml", &store_policy(10));
    let (_root, config) = settings(&policies);
    let text = std::fs::read_to_string(&config).unwrap().replace("[server]\n", "[server]\nrequest_timeout = \"1s\"\n");
    std::fs::write(&config, text).unwrap();
    let sidecar = start(&config);

    let mut stream = std::net::TcpStream::connect(&sidecar.admin).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /admin/approvals/store HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{",
        sidecar.admin
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    let (status, _) = admin(&sidecar, "POST", "/admin/approvals/store", &vec![b' '; 5000]);
    assert_eq!(status, 413);
    assert_eq!(count(&sidecar), 1, "only the request of the new plugin");
}

/// Attack (an outside review): a manifest naming 1,500 origins. Its
/// changes would overfill the reload's one batch (1,024 entries) and fail
/// every plugin's reload; instead they are one `requested` entry of the
/// whole plugin, the plugin waits, and the other plugin's change applies.
#[test]
fn a_manifest_naming_thousands_of_origins_waits_alone() {
    let policies = Policies::new();
    std::fs::copy(guest("echo"), policies.dir.path().join("echo.wasm")).unwrap();
    let manifest = policies.write("echo.permissions.toml", "[http]\nallow = [\"https://a.example.com\"]\n");
    policies.write("store.toml", "[plugin]\nname = \"store\"\ncomponent = \"echo.wasm\"\n");
    policies.write("other.toml", &store_policy(10).replace("\"store\"", "\"other\""));
    let (_root, config) = settings(&policies);
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap().replace(
            &format!("plugin_dir = {:?}", crate::common::guest_dir().display().to_string()),
            &format!("plugin_dir = {:?}", policies.dir.path().display().to_string()),
        ),
    )
    .unwrap();
    let sidecar = start(&config);
    for plugin in ["store", "other"] {
        let (status, _) = admin(&sidecar, "POST", &format!("/admin/approvals/{plugin}"), b"{\"decision\":\"approve\"}");
        assert_eq!(status, 200);
    }
    let before = count(&sidecar);

    let origins: Vec<String> = (0..1500).map(|n| format!("\"https://h{n}.example.com\"")).collect();
    std::fs::write(&manifest, format!("[http]\nallow = [{}]\n", origins.join(", "))).unwrap();
    policies.write("other.toml", &store_policy(5).replace("\"store\"", "\"other\""));
    let summary = reload(&sidecar);
    assert_eq!(summary["applied"], true, "{summary}");
    assert_eq!(summary["pending"], json!(["store"]), "{summary}");
    assert_eq!(max_keys(&sidecar, "other"), Some(5), "the other plugin's change applied");
    let written = entries(&sidecar, before);
    assert_eq!(
        written.iter().map(|(_, kind, item)| (kind.as_str(), item.as_str())).collect::<Vec<_>>(),
        vec![("requested", ""), ("changed", "kv.quota.max_keys")],
        "{written:?}"
    );
    // Approved: the change in force is one entry of the whole plugin too.
    let before = count(&sidecar);
    let (status, answer) = admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["reload"]["applied"], true, "{answer}");
    let written = entries(&sidecar, before);
    assert_eq!(
        written.iter().map(|(_, kind, item)| (kind.as_str(), item.as_str())).collect::<Vec<_>>(),
        vec![("approved", ""), ("changed", "")],
        "{written:?}"
    );
}

/// Attack (an outside review): the grants change between the approver's
/// review and the decision (someone raises the quota again and reloads).
/// A decision naming the reviewed digest is refused (CLI exit 1, API 409)
/// and writes nothing; one naming the current digest passes.
#[test]
fn an_approval_that_names_its_review_approves_only_what_was_reviewed() {
    let policies = Policies::new();
    policies.write("store.toml", &store_policy(10));
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);
    let digest = |sidecar: &Sidecar| {
        let (_, list) = admin(sidecar, "GET", "/admin/approvals", b"");
        list["approvals"][0]["sha256"].as_str().unwrap().to_string()
    };
    let reviewed = digest(&sidecar);
    assert_eq!(reviewed.len(), 64);
    assert!(stdout(&cli(&config, &["grants", "pending"])).contains(&format!("sha256:{reviewed}")));

    policies.write("store.toml", &store_policy(999_999));
    reload(&sidecar);
    let before = count(&sidecar);
    let stale = cli(&config, &["grants", "approve", "store", "--sha256", &reviewed]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stale.stderr).contains("not the ones reviewed"), "{stale:?}");
    let body = format!("{{\"decision\":\"approve\",\"sha256\":\"{reviewed}\"}}");
    let (status, answer) = admin(&sidecar, "POST", "/admin/approvals/store", body.as_bytes());
    assert_eq!(status, 409, "{answer}");
    // A null digest is not an absent one (an outside review: it approved
    // whatever was pending, unchecked).
    let (status, answer) =
        admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\",\"sha256\":null}");
    assert_eq!(status, 400, "{answer}");
    assert_eq!(count(&sidecar), before, "a refused decision writes nothing");
    assert_eq!(max_keys(&sidecar, "store"), None);

    let current = digest(&sidecar);
    assert_ne!(current, reviewed);
    let body = format!("{{\"decision\":\"approve\",\"sha256\":\"{current}\"}}");
    let (status, answer) = admin(&sidecar, "POST", "/admin/approvals/store", body.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(max_keys(&sidecar, "store"), Some(999_999));
}

/// Attacks (an outside review): a request left pending for a plugin whose
/// policy was deleted, approved later for whatever comes back under its
/// name; and `grants diff` not marking a plugin re-added with more than
/// was approved.
#[test]
fn a_removed_plugins_request_is_withdrawn_and_a_re_added_plugin_is_marked() {
    let policies = Policies::new();
    let file = policies.write("store.toml", &store_policy(10));
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);
    std::fs::remove_file(&file).unwrap();
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!([]), "{summary}");
    assert_eq!(entries(&sidecar, count(&sidecar) - 1)[0].1, "withdrawn");
    assert_eq!(cli(&config, &["grants", "approve", "store"]).status.code(), Some(1), "nothing left to approve");

    // Approved at 10, removed, then back at 20: the diff says it waits.
    policies.write("store.toml", &store_policy(10));
    reload(&sidecar);
    admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    assert_eq!(max_keys(&sidecar, "store"), Some(10));
    std::fs::remove_file(&file).unwrap();
    reload(&sidecar);
    policies.write("store.toml", &store_policy(20));
    let diff = stdout(&cli(&config, &["grants", "diff"]));
    assert!(diff.contains("added") && diff.contains("store  (plugin)") && diff.contains("(needs approval)"), "{diff}");
}

/// Attack (an outside review): an approval outliving its plugin, so that
/// whatever is added back under the name loads up to the old approval
/// without anyone asking. A removal ends the plugin's approved and
/// rejected grants (`revoked` entries, in the removal's batch); a held
/// plugin (rejected, reloaded) keeps them.
#[test]
fn an_approval_ends_with_its_plugin_and_a_held_plugin_keeps_its_own() {
    let policies = Policies::new();
    let file = policies.write("store.toml", &store_policy(10));
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);
    admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    assert_eq!(max_keys(&sidecar, "store"), Some(10));

    std::fs::remove_file(&file).unwrap();
    let before = count(&sidecar);
    reload(&sidecar);
    let ended: Vec<(String, String)> =
        entries(&sidecar, before).into_iter().map(|(_, kind, item)| (kind, item)).collect();
    assert_eq!(ended, [("removed".to_string(), String::new()), ("revoked".to_string(), "approved".to_string())]);
    // Back with exactly the grants approved before: it asks again.
    policies.write("store.toml", &store_policy(10));
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!(["store"]), "{summary}");
    assert_eq!(max_keys(&sidecar, "store"), None);

    // Rejected, it stays held (and keeps the rejection) however often it
    // is reloaded; removed, the rejection ends too.
    let (status, _) = admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"reject\"}");
    assert_eq!(status, 200);
    let before = count(&sidecar);
    for _ in 0..2 {
        assert_eq!(reload(&sidecar)["pending"], json!(["store"]));
    }
    assert_eq!(count(&sidecar), before, "a held plugin's reload writes nothing");
    let (_, list) = admin(&sidecar, "GET", "/admin/approvals", b"");
    assert_eq!(list["approvals"][0]["state"], "rejected", "{list}");
    std::fs::remove_file(&file).unwrap();
    reload(&sidecar);
    let ended: Vec<(String, String)> =
        entries(&sidecar, before).into_iter().map(|(_, kind, item)| (kind, item)).collect();
    assert_eq!(ended, [("revoked".to_string(), "rejected".to_string())]);
    let (_, list) = admin(&sidecar, "GET", "/admin/approvals", b"");
    assert_eq!(list["approvals"], json!([]), "{list}");
    let verified = cli(&config, &["audit", "verify"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
}

/// Attack (an outside review): a plugin briefly unnameable lost its
/// approval: a second file claiming its name across a restart (both
/// refused, nothing in force) revoked it, so it had to be approved again.
/// A refused file that names its plugin keeps that plugin's approvals.
#[test]
fn a_plugin_whose_name_is_briefly_claimed_twice_keeps_its_approval() {
    let policies = Policies::new();
    policies.write("store.toml", &store_policy(10));
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);
    admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    assert_eq!(max_keys(&sidecar, "store"), Some(10));
    drop(sidecar);

    let duplicate = policies.write("zz-dup.toml", &store_policy(10));
    let sidecar = start(&config);
    // Both claims refused; the version in force before the restart (kept
    // on disk) serves on, as it would have without the restart.
    assert_eq!(max_keys(&sidecar, "store"), Some(10));
    assert!(served(&sidecar).1.to_string().contains("is claimed by"));
    let kinds: Vec<String> = entries(&sidecar, 0).into_iter().map(|(_, kind, _)| kind).collect();
    assert!(!kinds.iter().any(|k| k == "revoked"), "{kinds:?}");
    std::fs::remove_file(&duplicate).unwrap();
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!([]), "{summary}");
    assert_eq!(max_keys(&sidecar, "store"), Some(10), "back without a new approval");
}

/// Attack (an outside review): a SQL table grant cut from every column to
/// a list of them was taken for growth, so the cut waited for approval
/// and the loaded version kept serving every column (even after the
/// "growth" was rejected). A cut applies at once.
#[test]
fn a_sql_table_grant_cut_to_columns_applies_at_once() {
    let policies = Policies::new();
    let policy = |products: &str| {
        format!(
            "[plugin]\nname = \"sd\"\ncomponent = {:?}\n[sql.app]\nstatements = [\"select\"]\n\
             [sql.app.tables]\nproducts = {products}\n",
            guest("sql_demo").display().to_string()
        )
    };
    policies.write("sd.toml", &policy("\"select\""));
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);
    admin(&sidecar, "POST", "/admin/approvals/sd", b"{\"decision\":\"approve\"}");
    let price = r#"{"query":"SELECT price_cents FROM products LIMIT 1"}"#;
    let (status, _, body) = sidecar.invoke("sd", price);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    policies.write("sd.toml", &policy("{ select = [\"id\"] }"));
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!([]), "{summary}");
    let (status, _, body) = sidecar.invoke("sd", price);
    assert_ne!(status, 200, "the cut column is still served: {}", String::from_utf8_lossy(&body));
    let (status, _, body) = sidecar.invoke("sd", r#"{"query":"SELECT id FROM products LIMIT 1"}"#);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Attack (an outside review): a restart while a plugin's secret could
/// not be read refused the plugin (not in force) and revoked its
/// approval, so it had to be approved again once the secret was back. A
/// plugin its policy still names keeps its approvals, loaded or not.
#[test]
fn a_plugin_out_until_its_secret_is_back_keeps_its_approval() {
    let policies = Policies::new();
    policies.write(
        "fetch.toml",
        &format!(
            "[plugin]\nname = \"fetch\"\ncomponent = {:?}\n[http]\nallow = [\"http://127.0.0.1:9\"]\n\
             [[http.inject]]\norigin = \"http://127.0.0.1:9\"\nheader = \"x-api-key\"\nsecret = \"tok\"\n",
            guest("fetcher").display().to_string()
        ),
    );
    let (_root, config) = policies.settings(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [server.admin_tokens.lead]\nenv = \"APPROVALS_TEST_TOKEN\"\n[secrets.tok]\nenv = \"APPROVALS_SECRET\"\n\
         [audit]\nrequire_approval = true\n",
    );
    let spawn = |secret: Option<&str>| {
        let mut env = vec![("APPROVALS_TEST_TOKEN", TOKEN)];
        env.extend(secret.map(|s| ("APPROVALS_SECRET", s)));
        let sidecar = Sidecar::spawn(&config, &env, tempfile::tempdir().unwrap());
        sidecar.wait_loaded();
        sidecar
    };
    let sidecar = spawn(Some("s3cret"));
    admin(&sidecar, "POST", "/admin/approvals/fetch", b"{\"decision\":\"approve\"}");
    assert_eq!(served(&sidecar).0, vec!["fetch"]);
    drop(sidecar);

    let sidecar = spawn(None);
    assert_eq!(served(&sidecar).0, Vec::<String>::new(), "refused without its secret");
    let kinds: Vec<String> = entries(&sidecar, 0).into_iter().map(|(_, kind, _)| kind).collect();
    assert!(!kinds.iter().any(|k| k == "revoked"), "{kinds:?}");
    drop(sidecar);

    let sidecar = spawn(Some("s3cret"));
    assert_eq!(served(&sidecar).0, vec!["fetch"], "back without a new approval");
}

/// The copy kept for a restart is the version in force, not the one a
/// reload read and refused: a component replaced on disk by one the
/// runtime refuses (the policy file unchanged) leaves the old version
/// serving, and after a restart that holds the policy it is that version
/// which serves.
#[test]
fn a_refused_component_is_never_kept_for_a_restart() {
    let policies = Policies::new();
    let components = tempfile::tempdir().unwrap();
    let component = components.path().join("store.wasm");
    std::fs::copy(guest("echo"), &component).unwrap();
    let policy = |buckets: &[&str]| {
        format!(
            "[plugin]\nname = \"store\"\ncomponent = {:?}\n[kv]\nbuckets = {buckets:?}\n",
            component.display().to_string()
        )
    };
    policies.write("store.toml", &policy(&["a"]));
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);
    assert_eq!(admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}").0, 200);
    assert_eq!(served(&sidecar).0, vec!["store"]);

    std::fs::write(&component, b"not wasm").unwrap();
    let summary = reload(&sidecar);
    assert_eq!(summary["errors"].as_array().map(Vec::len), Some(1), "{summary}");
    let (loaded, refused) = served(&sidecar);
    assert_eq!(loaded, vec!["store"], "the loaded version serves on: {refused}");
    drop(sidecar);

    policies.write("store.toml", &policy(&["a", "b"]));
    let sidecar = start(&config);
    let (loaded, refused) = served(&sidecar);
    assert_eq!(loaded, vec!["store"], "the kept version is the one in force: {refused} {}", sidecar.stderr());
    assert!(refused[0]["reason"].as_str().unwrap().contains("waiting for approval"), "{refused}");
    assert_eq!(sidecar.invoke("store", "{\"x\":1}").0, 200);
}

fn bucket_policy(buckets: &[&str]) -> String {
    format!(
        "[plugin]\nname = \"store\"\ncomponent = {:?}\n[kv]\nbuckets = {buckets:?}\n",
        guest("echo").display().to_string()
    )
}

/// (loaded plugin names, `serving` of each refusal) from `/admin/plugins`.
fn served(sidecar: &Sidecar) -> (Vec<String>, Value) {
    let (status, list) = admin(sidecar, "GET", "/admin/plugins", b"");
    assert_eq!(status, 200, "{list}");
    let names = list["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string());
    (names.collect(), list["refused"].clone())
}

/// A kept version is kept only while it is within the approved grants.
/// Attack: grants approved from the CLI (so no reload follows), then the
/// file grows again before the next reload; the sidecar held the new
/// request and kept serving the old version, which no one approved any
/// more, and wrote it back as the grants in force (with several sidecars
/// on one shared log, a lagging sidecar did this over the others' newer
/// grants).
#[test]
fn a_held_plugin_whose_loaded_version_is_no_longer_approved_stops_serving() {
    let policies = Policies::new();
    policies.write("store.toml", &bucket_policy(&["a"]));
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);
    assert_eq!(admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}").0, 200);
    assert_eq!(served(&sidecar).0, vec!["store"]);

    // `b` added: held, the approved `a` version stays.
    policies.write("store.toml", &bucket_policy(&["a", "b"]));
    assert_eq!(reload(&sidecar)["pending"], json!(["store"]));
    let (loaded, refused) = served(&sidecar);
    assert_eq!(loaded, vec!["store"]);
    assert!(refused[0]["reason"].as_str().unwrap().contains("the loaded version, if any, stays"), "{refused}");

    // `a` swapped for `b` before that is decided: `a` is taken away at
    // once, so the loaded `a` version stops serving (a removal cannot wait
    // for an addition's decision). The log says its grants left force.
    policies.write("store.toml", &bucket_policy(&["b"]));
    let before = count(&sidecar);
    let summary = reload(&sidecar);
    assert_eq!(summary["pending"], json!(["store"]), "{summary}");
    let (loaded, refused) = served(&sidecar);
    assert_eq!(loaded, Vec::<String>::new(), "the version granting `a` is not kept");
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(reason.contains("it still has what the policy takes away (kv.buckets.a)"), "{refused}");
    assert_eq!(refused[0]["serving"], Value::Null, "{refused}");
    assert_eq!(max_keys(&sidecar, "store"), None, "no grant of the old version stays in force");
    let written = entries(&sidecar, before);
    assert!(written.iter().any(|(_, kind, item)| kind == "removed" && item.is_empty()), "{written:?}");

    // Approving what is asked for brings it back.
    let (status, answer) = admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(served(&sidecar).0, vec!["store"]);
    drop(sidecar);
    let verified = cli(&config, &["audit", "verify"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
}

/// The screening itself, as several sidecars on one log meet it: a
/// loaded version is judged against the approved grants and against the
/// next policy. Attack: grants approved by another sidecar (or the CLI)
/// since this one loaded its version, which is no longer within them;
/// and a policy that adds `c` and takes `a` away, whose removal must not
/// wait for the addition's decision.
#[test]
fn a_loaded_version_beyond_the_approval_or_past_a_removal_is_unloaded() {
    use gatehouse::audit::approval::Decision;
    use gatehouse::audit::{AuditTrail, Trigger};
    use gatehouse::config::AuditSettings;
    use gatehouse::policy::PluginPolicy;

    let data = tempfile::tempdir().unwrap();
    let settings = AuditSettings {
        enabled: true,
        key: data.path().join("audit/key"),
        origin: Some("approvals.test/log".into()),
        require_approval: true,
        database: None,
    };
    let trail = AuditTrail::open(data.path(), &settings).unwrap();
    let version = |buckets: &[&str]| -> PluginPolicy {
        let policies = Policies::new();
        policies.write("store.toml", &bucket_policy(buckets));
        let load = policies.load();
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        load.set.plugins["store"].clone()
    };
    let (a, b, ab, bc) = (version(&["a"]), version(&["b"]), version(&["a", "b"]), version(&["b", "c"]));
    let approve = |next: &PluginPolicy, loaded: &[PluginPolicy]| {
        trail.screen(&Trigger::Disk, &[next], loaded).unwrap();
        trail.decide("store", Decision::Approve, "os-user:test", None).unwrap();
    };

    // `a` approved and loaded here.
    approve(&a, &[]);
    trail.record(&Trigger::Disk, std::slice::from_ref(&a), &[]).unwrap();
    // `a, b` asks for more: held, and `a` is kept (nothing taken away).
    let screened = trail.screen(&Trigger::Disk, &[&ab], std::slice::from_ref(&a)).unwrap();
    assert_eq!((screened.held.len(), screened.held[0].unload), (1, false), "{screened:?}");
    // `b, c` adds `c` and takes `a` away: `a` goes now.
    let screened = trail.screen(&Trigger::Disk, &[&bc], std::slice::from_ref(&a)).unwrap();
    let held = &screened.held[0];
    assert!(held.unload && held.reason.contains("still has what the policy takes away (kv.buckets.a)"), "{held:?}");
    // Another sidecar, with nothing loaded, gets `b` approved; this one
    // still has `a` loaded when `b, c` comes: beyond the approval.
    approve(&b, &[]);
    let screened = trail.screen(&Trigger::Disk, &[&bc], std::slice::from_ref(&a)).unwrap();
    let held = &screened.held[0];
    assert!(held.unload && held.reason.contains("grows beyond the approved grants too (kv.buckets.a)"), "{held:?}");
    // With `b` loaded, `b, c` only waits.
    let screened = trail.screen(&Trigger::Disk, &[&bc], std::slice::from_ref(&b)).unwrap();
    assert!(!screened.held[0].unload, "{screened:?}");
}

/// A restart while a plugin's grants wait: the version in force before
/// it (kept in `<data_dir>/kept`) serves on, as it would have without the
/// restart, and the log records no change of it; the approval then loads
/// the new one. The kept version is judged as a loaded one is, and
/// without it the plugin stays out until decided. Attacks: a restart
/// taking a held plugin out of service (or, the other way, serving a kept
/// version that keeps what the waiting policy takes away).
#[test]
fn a_held_plugin_serves_its_kept_version_across_a_restart() {
    let policies = Policies::new();
    policies.write("store.toml", &bucket_policy(&["a"]));
    let (root, config) = settings(&policies);
    let sidecar = start(&config);
    assert_eq!(admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}").0, 200);
    assert_eq!(served(&sidecar).0, vec!["store"]);
    let before = count(&sidecar);
    drop(sidecar);

    // `b` added while the sidecar was down: held, and `a` serves on.
    policies.write("store.toml", &bucket_policy(&["a", "b"]));
    let sidecar = start(&config);
    let (loaded, refused) = served(&sidecar);
    assert_eq!(loaded, vec!["store"], "{refused} {}", sidecar.stderr());
    assert!(refused[0]["serving"].is_string(), "{refused}");
    assert!(refused[0]["reason"].as_str().unwrap().contains("waiting for approval"), "{refused}");
    assert_eq!(sidecar.get(&sidecar.invoke, "/readyz").0, 200);
    let written: Vec<(String, String)> = entries(&sidecar, before).into_iter().map(|(_, k, i)| (k, i)).collect();
    assert_eq!(written, vec![("requested".to_string(), "kv.buckets.b".to_string())], "nothing else changed");
    let (status, answer) = admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    assert_eq!(status, 200, "{answer}");
    let (loaded, refused) = served(&sidecar);
    assert_eq!((loaded, refused), (vec!["store".to_string()], json!([])));
    drop(sidecar);

    // `a` swapped for `c`: the kept `a, b` still has what the policy takes
    // away, so it does not serve.
    policies.write("store.toml", &bucket_policy(&["b", "c"]));
    let sidecar = start(&config);
    let (loaded, refused) = served(&sidecar);
    assert_eq!(loaded, Vec::<String>::new(), "{refused}");
    assert!(refused[0]["reason"].as_str().unwrap().contains("still has what the policy takes away"), "{refused}");
    drop(sidecar);

    // Out before the restart, so out after it too, though its copy is
    // within the approvals: only the version the log records in force is
    // brought back.
    policies.write("store.toml", &bucket_policy(&["a", "b", "d"]));
    let sidecar = start(&config);
    assert_eq!(served(&sidecar).0, Vec::<String>::new());
    policies.write("store.toml", &bucket_policy(&["b", "c"]));
    reload(&sidecar);
    assert_eq!(admin(&sidecar, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}").0, 200);
    assert_eq!(served(&sidecar).0, vec!["store"]);
    drop(sidecar);

    // Growth alone: the kept `b, c` serves. A second file claiming the
    // name: the kept version serves on, as a running sidecar's would.
    policies.write("store.toml", &bucket_policy(&["b", "c", "d"]));
    let sidecar = start(&config);
    assert_eq!(served(&sidecar).0, vec!["store"]);
    drop(sidecar);
    policies.write("store.toml", &bucket_policy(&["b", "c"]));
    policies.write("claim.toml", &bucket_policy(&["z"]));
    let sidecar = start(&config);
    let (loaded, refused) = served(&sidecar);
    assert_eq!(loaded, vec!["store"], "{refused}");
    assert!(refused.to_string().contains("is claimed by"), "{refused}");
    drop(sidecar);
    std::fs::remove_file(policies.dir.path().join("claim.toml")).unwrap();

    // A copy that is not what the log records in force (its component
    // swapped on disk) is not used.
    policies.write("store.toml", &bucket_policy(&["b", "c", "d"]));
    let kept = root.path().join("data").join("kept").join("store");
    let version = std::fs::read_to_string(kept.join("current")).unwrap();
    let component = kept.join(version.trim()).join("component.wasm");
    std::fs::copy(guest("noop"), &component).unwrap();
    let sidecar = start(&config);
    let (loaded, refused) = served(&sidecar);
    assert_eq!(loaded, Vec::<String>::new(), "a swapped component is not served: {refused}");
    assert_eq!(refused[0]["serving"], Value::Null, "{refused}");
    drop(sidecar);
    let verified = cli(&config, &["audit", "verify"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
}
