//! The audit log in the running sidecar (the real binary): each load and
//! reload records exactly its grant changes, named by their actor, before
//! they take effect; a change that cannot be recorded does not take
//! effect; `gatehouse audit …` reads and proves what was recorded; the
//! admin routes need the token and page.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{Policies, gatehouse_command, guest};
use crate::sidecar::{Sidecar, json as body_json, request};
use crate::upstream::Upstream;

const TOKEN: &str = "ci-secret-token";

/// The settings' directory (kept across restarts) and file, with a named
/// admin token `ci` (from `AUDIT_TEST_TOKEN`) and `[server] admin_token`
/// (the name `admin`).
fn settings(policies: &Policies) -> (tempfile::TempDir, PathBuf) {
    policies.settings(
        "[engine]\nmax_instances = 64\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         admin_token = { env = \"AUDIT_TEST_ADMIN\" }\n[server.admin_tokens.ci]\nenv = \"AUDIT_TEST_TOKEN\"\n",
    )
}

fn start(config: &Path) -> Sidecar {
    // The data directory is the settings' own (kept by the test), not
    // the placeholder handed to the sidecar.
    let sidecar = Sidecar::spawn(
        config,
        &[("AUDIT_TEST_TOKEN", TOKEN), ("AUDIT_TEST_ADMIN", "admin-secret")],
        tempfile::tempdir().unwrap(),
    );
    sidecar.wait_loaded();
    sidecar
}

fn audit(config: &Path, args: &[&str]) -> Output {
    gatehouse_command().args(["--config", config.to_str().unwrap(), "audit"]).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every entry, through the admin API (paged by `limit`).
fn entries(sidecar: &Sidecar, limit: u64) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let query = match after {
            Some(after) => format!("/admin/audit?limit={limit}&after={after}"),
            None => format!("/admin/audit?limit={limit}"),
        };
        let (status, _, body) = request(&sidecar.admin, "GET", &query, &[("authorization", &bearer())], b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let page = body_json(&body);
        let list = page["entries"].as_array().unwrap();
        assert!(list.len() as u64 <= limit);
        all.extend(list.iter().cloned());
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn reload_as(sidecar: &Sidecar, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = request(&sidecar.admin, "POST", "/admin/reload", &[("authorization", &auth)], b"");
    (status, body_json(&body))
}

/// `file:<path>#sha256:<hex of the file's bytes>`.
fn file_actor(path: &Path) -> String {
    format!("file:{}#sha256:{}", path.display(), hex::encode(Sha256::digest(std::fs::read(path).unwrap())))
}

/// (actor, plugin, kind, item, before, after) of entries `from..`.
fn changes(list: &[Value], from: usize) -> Vec<(String, String, String, String, Value, Value)> {
    list[from..]
        .iter()
        .map(|e| {
            let c = &e["change"];
            let value = |v: &Value| if v.is_null() { Value::Null } else { v["value"].clone() };
            (
                e["actor"].as_str().unwrap().to_string(),
                e["plugin"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
                c["item"].as_str().unwrap().to_string(),
                value(&c["before"]),
                value(&c["after"]),
            )
        })
        .collect()
}

fn fetcher_policy(allow: &str) -> String {
    format!(
        "[plugin]\nname = \"fetch\"\ncomponent = {:?}\n[http]\nallow = [{allow}]\n",
        guest("fetcher").display().to_string()
    )
}

fn counter_policy(max_keys: u64) -> String {
    format!(
        "[plugin]\nname = \"store\"\ncomponent = {:?}\n[kv]\nmax_keys = {max_keys}\n",
        guest("echo").display().to_string()
    )
}

fn wait_for_log(sidecar: &Sidecar, needle: &str, count: usize) {
    let started = Instant::now();
    while sidecar.stderr().matches(needle).count() < count {
        assert!(started.elapsed() < Duration::from_secs(30), "no {count}x `{needle}`:\n{}", sidecar.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_reload_records_exactly_its_changes_with_its_actor_and_a_restart_records_nothing() {
    let policies = Policies::new();
    let fetch = policies.write("fetch.toml", &fetcher_policy("\"https://a.example\""));
    let store = policies.write("store.toml", &counter_policy(10));
    let (root, config) = settings(&policies);

    let sidecar = start(&config);
    // The first start of a fresh data directory: every plugin added, by
    // its file.
    let list = entries(&sidecar, 1);
    let first = changes(&list, 0);
    assert_eq!(first.len(), 2, "{list:?}");
    assert_eq!(
        (first[0].0.as_str(), first[0].1.as_str(), first[0].2.as_str()),
        (file_actor(&fetch).as_str(), "fetch", "added")
    );
    assert_eq!(first[0].3, "");
    assert_eq!(first[0].5["http"]["allow"], json!(["https://a.example:443"]));
    assert_eq!((first[1].0.as_str(), first[1].1.as_str()), (file_actor(&store).as_str(), "store"));

    // An origin added, picked up on SIGHUP: one entry, by the new file.
    policies.write("fetch.toml", &fetcher_policy("\"https://a.example\", \"https://b.example\""));
    sidecar.signal("HUP");
    wait_for_log(&sidecar, "policies loaded", 2);
    let list = entries(&sidecar, 2);
    assert_eq!(
        changes(&list, 2),
        vec![(
            file_actor(&fetch),
            "fetch".into(),
            "added".into(),
            "http.allow".into(),
            Value::Null,
            json!("https://b.example:443")
        )]
    );

    // A quota changed, reloaded through the admin API with the `ci`
    // token: one entry, by that token's name.
    policies.write("store.toml", &counter_policy(20));
    let (status, summary) = reload_as(&sidecar, TOKEN);
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["audit_entries"], 1);
    let list = entries(&sidecar, 100);
    assert_eq!(
        changes(&list, 3),
        vec![("admin:ci".into(), "store".into(), "changed".into(), "kv.quota.max_keys".into(), json!(10), json!(20))]
    );

    // A reload that changes nothing writes nothing (a comment is no grant).
    std::fs::write(&store, format!("# reviewed\n{}", counter_policy(20))).unwrap();
    let (status, summary) = reload_as(&sidecar, "admin-secret");
    assert_eq!((status, &summary["audit_entries"]), (200, &json!(0)), "{summary}");
    assert_eq!(entries(&sidecar, 100).len(), 4);

    // A plugin removed, by the single token (named `admin`).
    std::fs::remove_file(&store).unwrap();
    let (status, _) = reload_as(&sidecar, "admin-secret");
    assert_eq!(status, 200);
    let list = entries(&sidecar, 100);
    let removed = changes(&list, 4);
    assert_eq!(removed.len(), 1, "{list:?}");
    assert_eq!(
        (removed[0].0.as_str(), removed[0].1.as_str(), removed[0].2.as_str()),
        ("admin:admin", "store", "removed")
    );
    assert_eq!((&removed[0].3, &removed[0].5), (&String::new(), &Value::Null));
    assert_eq!(removed[0].4["kv"]["quota"]["max_keys"], 20);
    drop(sidecar);

    // A restart with the same policies records nothing.
    let sidecar = start(&config);
    wait_for_log(&sidecar, "audit_entries=0", 1);
    assert_eq!(entries(&sidecar, 100).len(), 5);
    drop(sidecar);

    // A policy edited while stopped is recorded at the next start.
    policies.write("fetch.toml", &fetcher_policy("\"https://b.example\""));
    let sidecar = start(&config);
    let list = entries(&sidecar, 100);
    assert_eq!(
        changes(&list, 5),
        vec![(
            file_actor(&fetch),
            "fetch".into(),
            "removed".into(),
            "http.allow".into(),
            json!("https://a.example:443"),
            Value::Null
        )]
    );
    drop(sidecar);

    // The whole log verifies, offline, with the key `audit key` prints.
    let vkey = stdout(&audit(&config, &["key"])).trim().to_string();
    let verified = audit(&config, &["verify", "--key", &vkey]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    assert!(stdout(&verified).starts_with("ok: 6 entries"), "{}", stdout(&verified));
    drop(root);
}

/// Attack: make the log unwritable while a reload widens a plugin's
/// grants (another process holds the log's file, so the append cannot
/// happen). The widened grant must not take effect: the plugin's
/// requests to the new origin are still refused and never reach it.
#[test]
fn a_reload_whose_entries_cannot_be_written_leaves_the_old_grants_in_force() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(Upstream::start());
    let policies = Policies::new();
    policies.write("fetch.toml", &fetcher_policy("\"http://localhost:9\""));
    let (root, config) = settings(&policies);
    let sidecar = start(&config);
    let url = format!("{{\"url\": \"http://localhost:{}/hello\"}}", upstream.port());
    assert_eq!(sidecar.invoke("fetch", &url).0, 403);

    // Held read-only by this process for longer than the sidecar waits.
    let store = root.path().join("data/audit/log.redb");
    let held = gatehouse::audit::AuditReader::open(&store).unwrap();
    policies.write("fetch.toml", &fetcher_policy(&format!("\"http://localhost:{}\"", upstream.port())));
    let (status, summary) = reload_as(&sidecar, TOKEN);
    assert_eq!(status, 503, "{summary}");
    assert_eq!(summary["applied"], false);
    assert!(summary["audit_error"].as_str().unwrap().contains("open in another process"), "{summary}");
    // Plugins are loaded: the summary says they keep their grants (not
    // that nothing is loaded, as at a first load).
    assert!(summary["errors"][0].as_str().unwrap().ends_with("; the grants in force are unchanged"), "{summary}");
    let (status, _, body) = sidecar.invoke("fetch", &url);
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(upstream.hits(), 0);
    let metrics = String::from_utf8(sidecar.get(&sidecar.invoke, "/metrics").2).unwrap();
    assert!(metrics.contains("gatehouse_audit_append_failures_total 1"), "{metrics}");
    assert_eq!(sidecar.get(&sidecar.invoke, "/readyz").0, 503);
    assert_eq!(held.size().unwrap(), 1, "nothing was written");
    drop(held);

    // Let go: the same reload records its two changes and takes effect.
    let (status, summary) = reload_as(&sidecar, TOKEN);
    assert_eq!((status, &summary["audit_entries"]), (200, &json!(2)), "{summary}");
    assert_eq!(sidecar.invoke("fetch", &url).0, 200);
    assert_eq!(upstream.hits(), 1);
    let metrics = String::from_utf8(sidecar.get(&sidecar.invoke, "/metrics").2).unwrap();
    for line in ["gatehouse_audit_entries_appended_total 3", "gatehouse_audit_checkpoint_size 3"] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    assert!(metrics.contains("gatehouse_audit_checkpoint_age_seconds "), "{metrics}");
}

/// Attacks on the admin routes: no token, a wrong token, a limit past the
/// bound, a negative `after`; and on the CLI: an entry edited in the store after a run.
#[test]
fn the_cli_proves_and_verifies_what_a_run_recorded_and_names_a_tampered_entry() {
    let policies = Policies::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        policies.write(
            &format!("{name}.toml"),
            &format!(
                "[plugin]\nname = \"{name}\"\ncomponent = {:?}\n[limits]\nconcurrency = {}\n",
                guest("echo").display().to_string(),
                i + 1
            ),
        );
    }
    let (root, config) = settings(&policies);
    let sidecar = start(&config);
    policies
        .write("a.toml", &format!("[plugin]\nname = \"a\"\ncomponent = {:?}\n", guest("echo").display().to_string()));
    assert_eq!(reload_as(&sidecar, TOKEN).0, 200);

    // The admin routes: the token is needed; pages are bounded.
    assert_eq!(sidecar.get(&sidecar.admin, "/admin/audit").0, 401);
    let wrong = [("authorization", "Bearer nope")];
    assert_eq!(request(&sidecar.admin, "GET", "/admin/audit/checkpoint", &wrong, b"").0, 401);
    let auth = bearer();
    let over = request(&sidecar.admin, "GET", "/admin/audit?limit=1001", &[("authorization", &auth)], b"");
    assert_eq!(over.0, 400);
    let negative = request(&sidecar.admin, "GET", "/admin/audit?after=-1", &[("authorization", &auth)], b"");
    assert_eq!((negative.0, body_json(&negative.2)["kind"].clone()), (400, json!("invalid-input")));
    let (status, _, note) = request(&sidecar.admin, "GET", "/admin/audit/checkpoint", &[("authorization", &auth)], b"");
    assert_eq!(status, 200);
    let note = String::from_utf8(note).unwrap();
    let list = entries(&sidecar, 3);
    assert_eq!(list.len(), 4);
    assert_eq!(list.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    let page = request(&sidecar.admin, "GET", "/admin/audit?after=2&limit=5", &[("authorization", &auth)], b"");
    let page = body_json(&page.2);
    assert_eq!(
        (page["entries"][0]["seq"].clone(), page["next"].clone(), page["size"].clone()),
        (json!(3), Value::Null, json!(4))
    );
    // A page that ends exactly at the log's end has no next page either.
    let page = request(&sidecar.admin, "GET", "/admin/audit?after=0&limit=3", &[("authorization", &auth)], b"");
    let page = body_json(&page.2);
    assert_eq!((page["entries"].as_array().unwrap().len(), page["next"].clone()), (3, Value::Null));
    drop(sidecar);

    // `show`, filtered and escaped.
    let shown = stdout(&audit(&config, &["show", "--plugin", "a"]));
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(
        lines[1].starts_with("3 ") && lines[1].contains(" admin:ci a changed limits.concurrency before=1 after=16"),
        "{shown}"
    );
    assert_eq!(stdout(&audit(&config, &["show", "--since", "2000-01-01T00:00:00Z"])).lines().count(), 4);
    assert_eq!(stdout(&audit(&config, &["show", "--since", "2999-01-01T00:00:00Z"])).lines().count(), 0);

    // Proofs from the CLI verify with implementations no one here wrote.
    let vkey = stdout(&audit(&config, &["key"])).trim().to_string();
    let verifiers = signed_note::VerifierList::new(vec![Box::new(signed_note::StandardVerifier::new(&vkey).unwrap())]);
    let root_of = |note: &str| {
        let note = signed_note::Note::from_bytes(note.as_bytes()).unwrap();
        note.verify(&verifiers).unwrap();
        let checkpoint = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
        (checkpoint.size(), tlog_tiles::tlog::Hash(checkpoint.hash().0))
    };
    assert_eq!(root_of(&note).0, 4);
    let hashes = |v: &Value| -> Vec<tlog_tiles::tlog::Hash> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD.decode(h.as_str().unwrap()).unwrap();
                tlog_tiles::tlog::Hash(bytes.try_into().unwrap())
            })
            .collect()
    };
    for seq in 0..4u64 {
        let proof: Value = serde_json::from_str(&stdout(&audit(&config, &["prove", &seq.to_string()]))).unwrap();
        let (size, tree) = root_of(proof["checkpoint"].as_str().unwrap());
        let leaf = tlog_tiles::tlog::record_hash(proof["entry"].as_str().unwrap().as_bytes());
        tlog_tiles::tlog::check_record(&hashes(&proof["path"]), size, tree, seq, leaf).unwrap();
        assert_eq!(serde_json::from_str::<Value>(proof["entry"].as_str().unwrap()).unwrap(), list[seq as usize]);
    }
    // The checkpoint of size 3 (the first start) is a prefix of the latest.
    let export = stdout(&audit(&config, &["export"]));
    let notes: Vec<String> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?.get("checkpoint")?.as_str().map(str::to_string))
        .collect();
    assert_eq!(notes.len(), 2);
    let (old_size, old_root) = root_of(&notes[0]);
    assert_eq!(old_size, 3);
    let proof: Value = serde_json::from_str(&stdout(&audit(&config, &["consistency", "3"]))).unwrap();
    let (size, tree) = root_of(proof["checkpoint"].as_str().unwrap());
    tlog_tiles::tlog::check_tree(&hashes(&proof["path"]), size, tree, old_size, old_root).unwrap();

    // The tiles export, read by the tile client: the same entries as the
    // JSON export; a second export into the same directory is refused.
    let tiles = root.path().join("tiles");
    let written = audit(&config, &["export", "--tiles", tiles.to_str().unwrap()]);
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    assert!(stdout(&written).starts_with("wrote 4 entries in 3 files"), "{}", stdout(&written));
    let from_tiles = super::independent::read_tiles_independently(&tiles, &vkey).unwrap();
    let from_json: Vec<Vec<u8>> =
        export.lines().filter(|l| !l.starts_with("{\"checkpoint\"")).map(|l| l.as_bytes().to_vec()).collect();
    assert_eq!(from_tiles, from_json);
    let again = audit(&config, &["export", "--tiles", tiles.to_str().unwrap()]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("is not empty"));

    // verify with a held checkpoint; then an entry edited in the store is
    // named, with why.
    let held = root.path().join("held.note");
    std::fs::write(&held, &notes[0]).unwrap();
    let verified = audit(&config, &["verify", "--checkpoint", held.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    assert!(stdout(&verified).contains("extends the held checkpoint of size 3"), "{}", stdout(&verified));
    let store = root.path().join("data/audit/log.redb");
    {
        let db = redb::Database::open(&store).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(gatehouse::audit::store::ENTRIES).unwrap();
            use redb::ReadableTable;
            // The last entry: the latest checkpoint no longer vouches for it.
            let edited = String::from_utf8(table.get(3).unwrap().unwrap().value().to_vec())
                .unwrap()
                .replace("\"after\":{\"value\":16}", "\"after\":{\"value\":1000}");
            table.insert(3, edited.as_bytes()).unwrap();
        }
        txn.commit().unwrap();
    }
    let verified = audit(&config, &["verify"]);
    assert_eq!(verified.status.code(), Some(1));
    assert!(stdout(&verified).starts_with("entry 3: root-mismatch"), "{}", stdout(&verified));
}

/// The grants in force beside the log (what the next load is compared
/// with) are signed in each checkpoint. Attack (an outside review): with
/// the sidecar stopped, widen a plugin's policy and write the widened
/// grants into the store's `audit_grants` too, so that the next start
/// sees no change and records none. Checked: `audit verify` names the
/// mismatch (the store of an honest run with the same policy verifies),
/// and the sidecar refuses to start, so the widened grant is never served
/// unrecorded.
#[test]
fn grants_edited_while_stopped_fail_verify_and_stop_the_start() {
    use redb::ReadableDatabase;
    let policies = Policies::new();
    policies.write("fetch.toml", &fetcher_policy("\"http://localhost:9\""));
    let (root, config) = settings(&policies);
    drop(start(&config));
    // An honest run of the widened policy, in a data directory of its own,
    // gives the row the attacker writes.
    policies.write("fetch.toml", &fetcher_policy("\"http://localhost:10\""));
    let (honest_root, honest_config) = settings(&policies);
    drop(start(&honest_config));
    let widened = {
        let db = redb::Database::open(honest_root.path().join("data/audit/log.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(gatehouse::audit::store::GRANTS).unwrap();
        table.get("fetch").unwrap().unwrap().value().to_vec()
    };
    assert!(audit(&honest_config, &["verify"]).status.success());
    let store = root.path().join("data/audit/log.redb");
    {
        let db = redb::Database::open(&store).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(gatehouse::audit::store::GRANTS).unwrap().insert("fetch", widened.as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let verified = audit(&config, &["verify"]);
    assert_eq!(verified.status.code(), Some(1), "{}", stdout(&verified));
    assert!(stdout(&verified).contains("grants-mismatch"), "{}", stdout(&verified));

    let mut run = gatehouse_command()
        .args(["--config", config.to_str().unwrap(), "run"])
        .envs([("AUDIT_TEST_TOKEN", TOKEN), ("AUDIT_TEST_ADMIN", "admin-secret")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = run.kill();
            panic!("the sidecar started on a store whose grants in force were edited");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("not the ones the last checkpoint signed"), "{stderr}");
}

/// Attack (an outside review): swap the store under a running sidecar, by
/// an older copy of itself or by deleting it. Each copy is consistent with
/// its own last checkpoint, so only what the sidecar saw can tell: the
/// next append is refused, and the grants in force stay.
#[test]
fn a_store_rolled_back_or_deleted_under_a_running_sidecar_stops_its_appends() {
    let policies = Policies::new();
    policies.plugin("echo", "echo", "concurrency = 2");
    let (root, config) = settings(&policies);
    let sidecar = start(&config);
    let store = root.path().join("data/audit/log.redb");
    let older = std::fs::read(&store).unwrap();
    policies.plugin("echo", "echo", "concurrency = 4");
    let (status, summary) = reload_as(&sidecar, TOKEN);
    assert_eq!((status, summary["audit_entries"].as_u64()), (200, Some(1)), "{summary}");

    for (what, swap) in [
        ("rolled back", Box::new(|| std::fs::write(&store, &older).unwrap()) as Box<dyn Fn()>),
        ("deleted", Box::new(|| std::fs::remove_file(&store).unwrap())),
    ] {
        swap();
        policies.plugin("echo", "echo", "concurrency = 8");
        let (status, summary) = reload_as(&sidecar, TOKEN);
        assert_eq!(status, 503, "{what}: {summary}");
        assert_eq!(summary["applied"], false, "{what}");
        assert!(
            summary["audit_error"].as_str().unwrap().contains("does not extend the log of 2 entries"),
            "{what}: {summary}"
        );
        let (_, _, plugins) = request(&sidecar.admin, "GET", "/admin/plugins", &[("authorization", &bearer())], b"");
        let plugins = body_json(&plugins);
        assert_eq!(plugins["plugins"][0]["concurrency"], 4, "{what}: the grant in force stays: {plugins}");
    }
}

/// A policy file whose name is not UTF-8 (JSON cannot carry it). Attack
/// (an outside review): such a file made every reload's audit append
/// panic, so no change applied (not even removing a plugin, the emergency
/// revocation) and a restart loaded nothing. Now it loads like any other,
/// its entries name it escaped, and removing it applies.
#[test]
fn a_policy_file_whose_name_is_not_utf8_is_recorded_like_any_other() {
    use std::os::unix::ffi::OsStrExt;
    let policies = Policies::new();
    policies.write("store.toml", &counter_policy(10));
    let (_root, config) = settings(&policies);
    let sidecar = start(&config);
    let odd = policies.dir.path().join(std::ffi::OsStr::from_bytes(b"fetch\xff.toml"));
    std::fs::write(&odd, fetcher_policy("\"https://api.example.com\"")).unwrap();
    let (status, summary) = reload_as(&sidecar, TOKEN);
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["loaded"], serde_json::json!(["fetch", "store"]), "{summary}");
    let added = entries(&sidecar, 100);
    let last = added.last().unwrap();
    assert_eq!((last["plugin"].as_str(), last["change"]["kind"].as_str()), (Some("fetch"), Some("added")), "{last}");

    std::fs::remove_file(&odd).unwrap();
    let (status, summary) = reload_as(&sidecar, TOKEN);
    assert_eq!((status, summary["loaded"].clone()), (200, serde_json::json!(["store"])), "{summary}");
    let removed = entries(&sidecar, 100);
    assert_eq!(removed.last().unwrap()["change"]["kind"], "removed");
    drop(sidecar);
    let verified = audit(&config, &["verify"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
}
