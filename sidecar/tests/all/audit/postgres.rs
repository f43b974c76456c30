//! The audit log in PostgreSQL (`[audit] database`), against a real
//! throwaway server (`crate::postgres`): several processes appending to
//! one log at once never fork it, and the store's own checks hold there
//! as they do in redb.
//!
//! Attacks tried: four writer processes racing on one log (a repeated or
//! missing sequence number, a batch split by another's, two checkpoints of
//! one size); sidecars sharing the log that each see the same policy
//! change (recorded twice); a grants row, an entry and the head edited
//! in the database behind the log's back; the CLI reading the shared log;
//! a restored dump re-signed by a sidecar; a lagging sidecar serving and
//! writing back grants approved away through another.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use gatehouse::audit::postgres::PgStore;
use gatehouse::audit::{AuditError, AuditLog, AuditReader, Change, Entry, NewEntry};

use super::{ORIGIN, key};
use crate::postgres::TestPostgres;

const CHILD_URL: &str = "GATEHOUSE_AUDIT_PG_URL";
const CHILD_NAME: &str = "GATEHOUSE_AUDIT_PG_WRITER";
const WRITERS: usize = 4;
const BATCHES: u64 = 25;

fn cluster() -> TestPostgres {
    TestPostgres::start("gatehouse", "audit-test-password", "gatehouse")
}

/// The log over `url`; `runtime` runs its queries.
fn open(runtime: &tokio::runtime::Runtime, url: &str) -> AuditLog {
    let _entered = runtime.enter();
    let store = PgStore::open(url.parse().unwrap(), "shared").unwrap();
    AuditLog::postgres(store, ORIGIN, vec![key()]).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// Settings of a sidecar on the shared log in `postgres`, its key in
/// `keys` (shared by every sidecar of a test): `before` goes ahead of the
/// `[server]` table, `audit` at the end of `[audit]`.
fn shared_settings(postgres: &TestPostgres, keys: &std::path::Path, before: &str, audit: &str) -> String {
    format!(
        "{before}[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[databases.shared]\nurl = {:?}\n\
         [audit]\ndatabase = \"shared\"\nkey = {:?}\norigin = \"gatehouse.test/shared\"\n{audit}",
        postgres.url(),
        keys.join("keys/key").display().to_string()
    )
}

fn batch(writer: &str, b: u64) -> Vec<NewEntry> {
    (0..1 + b % 4)
        .map(|k| NewEntry {
            actor: format!("{writer}-b{b}-{k}"),
            plugin: None,
            change: Change { kind: "added".into(), item: "race".into(), before: None, after: Some(k.into()) },
        })
        .collect()
}

#[test]
#[ignore = "a child process of writers_in_several_processes_never_fork_a_postgresql_log"]
fn pg_writer_child() {
    let (Some(url), Some(name)) = (std::env::var_os(CHILD_URL), std::env::var_os(CHILD_NAME)) else {
        return;
    };
    let (url, name) = (url.into_string().unwrap(), name.into_string().unwrap());
    let runtime = runtime();
    let log = open(&runtime, &url);
    let _entered = runtime.enter();
    for b in 0..BATCHES {
        let appended = log.append(&batch(&name, b)).unwrap();
        println!("ACK {b} {} {}", appended.first, appended.size);
    }
}

#[test]
fn writers_in_several_processes_never_fork_a_postgresql_log() {
    let postgres = cluster();
    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "audit::postgres::pg_writer_child", "--ignored", "--nocapture", "--test-threads=1"])
                .env(CHILD_URL, postgres.url())
                .env(CHILD_NAME, format!("w{w}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut acks = Vec::new();
    for (w, mut child) in children.into_iter().enumerate() {
        let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap()).lines().map(Result::unwrap).collect();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(status.success(), "writer {w}: {stderr}");
        // libtest may print its `test … ` prefix on the first line.
        for line in lines.iter().filter_map(|l| l.split_once("ACK ").map(|(_, ack)| ack)) {
            let n: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
            acks.push((format!("w{w}"), n[0], n[1], n[2]));
        }
    }
    assert_eq!(acks.len(), WRITERS * BATCHES as usize, "every batch acknowledged");

    let runtime = runtime();
    let log = open(&runtime, &postgres.url());
    let _entered = runtime.enter();
    // The chain, the tree and every checkpoint verify: no sequence number
    // repeats or is missing, and the checkpoints grow one batch at a time.
    let summary = log.verify(&[key().verifier()], None).unwrap().unwrap();
    let total: u64 = acks.iter().map(|(_, _, first, size)| size - first).sum();
    assert_eq!(summary.size, total);
    assert_eq!(summary.checkpoints, acks.len());
    // Each acknowledged batch is where its writer was told, whole.
    for (writer, b, first, size) in &acks {
        let want = batch(writer, *b);
        assert_eq!(size - first, want.len() as u64);
        for (k, new) in want.iter().enumerate() {
            let bytes = log.entry(first + k as u64).unwrap().unwrap();
            assert_eq!(Entry::decode(&bytes).unwrap().actor, new.actor, "{writer} batch {b}");
        }
    }
}

/// Rows changed in the database behind the log's back stop the next
/// append, as in the embedded store; nothing is signed over them.
#[test]
fn the_postgresql_log_refuses_to_sign_over_rows_changed_behind_its_back() {
    let postgres = cluster();
    let runtime = runtime();
    let log = open(&runtime, &postgres.url());
    let _entered = runtime.enter();
    log.append_with_state(&batch("w", 3), &[("echo".into(), Some(b"{}".to_vec()))]).unwrap();
    log.append(&batch("w", 1)).unwrap();
    let refused = |what: &str| match log.append(&batch("w", 0)) {
        Err(AuditError::Inconsistent(reason)) => reason,
        other => panic!("{what}: {other:?}"),
    };
    let sql = |statement: &str| postgres.psql_in("gatehouse", statement);

    sql("UPDATE gatehouse_audit_grants SET grants = '\\x7b2278223a317d' WHERE plugin = 'echo'");
    assert!(refused("grants row edited").contains("grants in force"));
    sql("UPDATE gatehouse_audit_grants SET grants = '\\x7b7d' WHERE plugin = 'echo'");
    log.append(&batch("w", 0)).unwrap();

    let size = log.size().unwrap();
    let last = log.entry(size - 1).unwrap().unwrap();
    let forged = String::from_utf8(last.clone()).unwrap().replace("w-b0-0", "w-b0-X");
    sql(&format!(
        "UPDATE gatehouse_audit_entries SET entry = '\\x{}' WHERE seq = {}",
        hex::encode(forged.as_bytes()),
        size - 1
    ));
    assert!(refused("last entry edited").contains(&format!("entry {}", size - 1)));
    sql(&format!("UPDATE gatehouse_audit_entries SET entry = '\\x{}' WHERE seq = {}", hex::encode(&last), size - 1));

    // The head moved back: the append starts from the stored entries, and
    // the compare-and-swap on the head refuses it.
    sql("UPDATE gatehouse_audit_head SET size = 1");
    assert!(matches!(log.append(&batch("w", 0)), Err(AuditError::Store(e)) if e.0.contains("head")));
    sql(&format!("UPDATE gatehouse_audit_head SET size = {size}"));
    log.append(&batch("w", 0)).unwrap();

    // Nothing signs the head or the tree nodes, so `audit verify` checks
    // them beside the entries: a head moved back, a tree gone.
    let reader = AuditReader::postgres(PgStore::open(postgres.url().parse().unwrap(), "shared").unwrap());
    let judged = || {
        let snapshot = reader.snapshot().unwrap();
        let summary =
            gatehouse::audit::verify(&snapshot.entries, &snapshot.checkpoints, &[key().verifier()], None).unwrap();
        snapshot.store_problem(summary.size, &summary.root)
    };
    assert_eq!(judged(), None);
    sql("UPDATE gatehouse_audit_head SET size = 1");
    let problem = judged().unwrap();
    assert!(problem.starts_with("head-mismatch: the head row counts 1 entries"), "{problem}");
    sql(&format!("UPDATE gatehouse_audit_head SET size = {}", log.size().unwrap()));
    sql("ALTER TABLE gatehouse_audit_nodes RENAME TO gone");
    let problem = judged().unwrap();
    assert!(problem.starts_with("tree-mismatch") && problem.contains("gatehouse_audit_nodes"), "{problem}");
    sql("ALTER TABLE gone RENAME TO gatehouse_audit_nodes");
    assert_eq!(judged(), None);

    // Every entry deleted: the log refuses rather than starting afresh.
    sql("DELETE FROM gatehouse_audit_entries");
    assert!(refused("entries deleted").contains("covers"));
    // A reader still reads (and the verifier names what is wrong).
    let reader = AuditReader::postgres(PgStore::open(postgres.url().parse().unwrap(), "shared").unwrap());
    assert_eq!(reader.size().unwrap(), 0);
}

/// Three sidecar processes on one policy directory and one PostgreSQL
/// log (same key and origin): a policy change that all three reload at
/// once is recorded once, and `gatehouse audit` reads the shared log.
#[test]
fn sidecars_sharing_a_postgresql_log_record_each_change_once() {
    use crate::common::{Policies, gatehouse_command, guest};
    use crate::sidecar::{Sidecar, request};

    let postgres = cluster();
    let policies = Policies::new();
    let policy = |max_keys: u32| {
        format!("[plugin]\nname = \"store\"\ncomponent = {:?}\n[kv]\nmax_keys = {max_keys}\n", guest("echo").display())
    };
    policies.write("store.toml", &policy(10));
    // The key is shared, in a directory only this user may write (as is
    // its parent: the sidecar checks both).
    let shared = tempfile::tempdir().unwrap();
    let settings = shared_settings(&postgres, shared.path(), "[engine]\nmax_instances = 16\n", "");
    let mut configs = Vec::new();
    let mut sidecars = Vec::new();
    // One after another: the first creates the key the others load.
    for _ in 0..3 {
        let (root, config) = policies.settings(&settings);
        let sidecar = Sidecar::spawn(&config, &[], tempfile::tempdir().unwrap());
        sidecar.wait_loaded();
        configs.push((root, config));
        sidecars.push(sidecar);
    }
    let cli = |args: &[&str]| {
        gatehouse_command().args(["--config", configs[0].1.to_str().unwrap(), "audit"]).args(args).output().unwrap()
    };
    let kinds = || {
        let out = cli(&["show"]);
        assert!(out.status.success(), "audit show: {}", String::from_utf8_lossy(&out.stderr));
        let shown = String::from_utf8(out.stdout).unwrap();
        shown.lines().map(|l| l.split(' ').nth(4).unwrap_or_default().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(kinds(), vec!["added"], "the first load, recorded by the first sidecar only");

    policies.write("store.toml", &policy(20));
    std::thread::scope(|scope| {
        for sidecar in &sidecars {
            scope.spawn(|| {
                let (status, _, body) = request(&sidecar.admin, "POST", "/admin/reload", &[], b"");
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            });
        }
    });
    assert_eq!(kinds(), vec!["added", "changed"], "one change, recorded once");
    let verified = cli(&["verify"]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("ok: 2 entries"), "{verified:?}");

    // The CLI creates nothing (an outside review found it migrating): an
    // auditor's role with SELECT alone verifies, and a database with no
    // log is an error, not an empty log that verifies.
    postgres.psql_in(
        "gatehouse",
        "CREATE ROLE auditor LOGIN PASSWORD 'audit-pw'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO auditor",
    );
    postgres.psql("CREATE DATABASE empty");
    let base = postgres.url();
    let at = base.rfind('@').unwrap();
    for (url, ok) in [
        (format!("postgres://auditor:audit-pw{}", &base[at..]), true),
        (format!("{}/empty", &base[..base.rfind('/').unwrap()]), false),
    ] {
        let text = std::fs::read_to_string(&configs[0].1)
            .unwrap()
            .replace(&format!("{:?}", postgres.url()), &format!("{url:?}"));
        let config = configs[0].0.path().join("auditor.toml");
        std::fs::write(&config, text).unwrap();
        let out = gatehouse_command().args(["--config", config.to_str().unwrap(), "audit", "verify"]).output().unwrap();
        assert_eq!(out.status.success(), ok, "{url}: {out:?}");
        if !ok {
            assert!(String::from_utf8_lossy(&out.stderr).contains("no audit log in [databases.shared]"), "{out:?}");
        }
    }
    assert!(postgres.psql_in("empty", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").trim() == "0");
}

/// Attack (an outside review): restore the shared database to a copy
/// taken before a change, then reload a sidecar that did not append since
/// the copy. It followed the log meanwhile (every 2 s), so it refuses to
/// sign over the rollback instead of forking the log; and restarted, it
/// refuses to start on it.
#[test]
fn a_sidecar_that_followed_the_shared_log_refuses_a_rolled_back_database() {
    use crate::common::{Policies, guest};
    use crate::sidecar::{Sidecar, json, request};

    let postgres = cluster();
    let policies = Policies::new();
    let policy = |max_keys: u32| {
        format!("[plugin]\nname = \"store\"\ncomponent = {:?}\n[kv]\nmax_keys = {max_keys}\n", guest("echo").display())
    };
    policies.write("store.toml", &policy(10));
    let shared = tempfile::tempdir().unwrap();
    let settings = shared_settings(&postgres, shared.path(), "", "");
    let (_a_root, a_config) = policies.settings(&settings);
    let a = Sidecar::spawn(&a_config, &[], tempfile::tempdir().unwrap());
    a.wait_loaded();
    let (_b_root, b_config) = policies.settings(&settings);
    let b = Sidecar::spawn(&b_config, &[], tempfile::tempdir().unwrap());
    b.wait_loaded();

    let tables = ["entries", "nodes", "checkpoints", "grants", "head"];
    let copy: Vec<String> =
        tables.iter().map(|t| format!("CREATE TABLE snap_{t} AS SELECT * FROM gatehouse_audit_{t}")).collect();
    postgres.psql_in("gatehouse", &copy.join("; "));
    policies.write("store.toml", &policy(20));
    let (status, _, body) = request(&a.admin, "POST", "/admin/reload", &[], b"");
    assert_eq!((status, json(&body)["audit_entries"].as_u64()), (200, Some(1)));
    std::thread::sleep(gatehouse::audit::trail::FOLLOW_INTERVAL * 2);

    let restore: Vec<String> = tables
        .iter()
        .map(|t| format!("DELETE FROM gatehouse_audit_{t}; INSERT INTO gatehouse_audit_{t} SELECT * FROM snap_{t}"))
        .collect();
    postgres.psql_in("gatehouse", &restore.join("; "));
    policies.write("store.toml", &policy(30));
    let (status, _, body) = request(&b.admin, "POST", "/admin/reload", &[], b"");
    let summary = json(&body);
    assert_eq!(status, 503, "{summary}");
    assert!(summary["audit_error"].as_str().unwrap().contains("does not extend the log of 2 entries"), "{summary}");

    // Restarted, it still refuses: the tree it saw is remembered outside
    // the database (`<data_dir>/audit/seen`), so it does not start on the
    // rolled-back log at all.
    drop(b);
    let mut restarted = crate::common::gatehouse_command()
        .args(["--config", b_config.to_str().unwrap(), "run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waited = std::time::Instant::now();
    let status = loop {
        if let Some(status) = restarted.try_wait().unwrap() {
            break status;
        }
        if waited.elapsed() > std::time::Duration::from_secs(30) {
            restarted.kill().unwrap();
            panic!("a restarted sidecar started on the rolled-back log");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut restarted.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("does not extend the log of 2 entries") && stderr.contains("audit/seen"), "{stderr}");
}

/// Approvals across sidecars sharing one log. Attack (an outside review):
/// grants approved through one sidecar while another still serves the
/// version approved before, then a newer change to the file: the lagging
/// sidecar held the change, kept serving the no-longer-approved version
/// and wrote it back into the shared grants in force. Now it stops serving
/// that version, and nothing it writes grants it again.
#[test]
fn a_lagging_sidecar_never_serves_or_writes_back_grants_approved_away() {
    use crate::common::{Policies, guest};
    use crate::sidecar::{Sidecar, json, request};

    let postgres = cluster();
    let policies = Policies::new();
    let policy = |buckets: &[&str]| {
        format!("[plugin]\nname = \"store\"\ncomponent = {:?}\n[kv]\nbuckets = {buckets:?}\n", guest("echo").display())
    };
    policies.write("store.toml", &policy(&["a"]));
    let shared = tempfile::tempdir().unwrap();
    let settings = shared_settings(&postgres, shared.path(), "", "require_approval = true\n");
    let (_a_root, a_config) = policies.settings(&settings);
    let a = Sidecar::spawn(&a_config, &[], tempfile::tempdir().unwrap());
    a.wait_loaded();
    let (_b_root, b_config) = policies.settings(&settings);
    let b = Sidecar::spawn(&b_config, &[], tempfile::tempdir().unwrap());
    b.wait_loaded();
    let call = |sidecar: &Sidecar, method: &str, path: &str, body: &[u8]| {
        // A reload that holds a plugin answers 422 (a policy refused).
        let (status, _, body) = request(&sidecar.admin, method, path, &[], body);
        assert!(status == 200 || status == 422, "{method} {path}: {status} {}", String::from_utf8_lossy(&body));
        json(&body)
    };
    let loaded = |sidecar: &Sidecar| call(sidecar, "GET", "/admin/plugins", b"")["plugins"].as_array().unwrap().len();
    let buckets_granted = || {
        let entries = call(&a, "GET", "/admin/audit?limit=1000", b"")["entries"].as_array().unwrap().clone();
        entries
            .iter()
            .filter(|e| e["change"]["kind"] != "requested")
            .map(|e| e["change"].to_string())
            .collect::<Vec<_>>()
    };

    // `a` approved through A; B picks it up at its reload.
    call(&a, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    call(&b, "POST", "/admin/reload", b"");
    assert_eq!((loaded(&a), loaded(&b)), (1, 1));

    // `b` added: held on both, each keeps `a`.
    policies.write("store.toml", &policy(&["a", "b"]));
    call(&a, "POST", "/admin/reload", b"");
    call(&b, "POST", "/admin/reload", b"");
    assert_eq!((loaded(&a), loaded(&b)), (1, 1));
    // `a` swapped for `b`, seen by A only: A stops serving `a` at once (a
    // removal does not wait), then `b` is approved through A, which
    // reloads and serves it.
    policies.write("store.toml", &policy(&["b"]));
    call(&a, "POST", "/admin/reload", b"");
    assert_eq!(loaded(&a), 0, "A keeps nothing the policy takes away");
    call(&a, "POST", "/admin/approvals/store", b"{\"decision\":\"approve\"}");
    assert_eq!((loaded(&a), loaded(&b)), (1, 1), "B has not reloaded yet");
    let before = buckets_granted().len();

    // The file grows again; B reloads first.
    policies.write("store.toml", &policy(&["b", "c"]));
    let summary = call(&b, "POST", "/admin/reload", b"");
    assert_eq!(summary["pending"], serde_json::json!(["store"]), "{summary}");
    assert_eq!(loaded(&b), 0, "B stops serving the version approved away");
    assert_eq!(loaded(&a), 1, "A keeps the approved one");
    let written = &buckets_granted()[before..];
    assert!(written.iter().all(|change| !change.contains("\"a\"")), "B wrote `a` back: {written:?}");
}
