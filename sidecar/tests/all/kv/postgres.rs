//! The behavioural suite on PostgreSQL (a throwaway cluster per test,
//! `crate::postgres`), plus what only a shared database has: several
//! backends (several sidecar processes) on one store, a server that goes
//! away mid-run and comes back, and one that is down when the store is
//! first used.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatehouse::services::kv::policy::{Durability, Quota};
use gatehouse::services::kv::{KvBackend, KvError, PostgresBackend};
use sqlx::postgres::PgConnectOptions;

use super::suite::{self, assert_usage_exact, bucket};
use crate::postgres::TestPostgres;

/// A cluster with the role and database the sidecar would be given.
pub fn cluster() -> TestPostgres {
    TestPostgres::start("gatehouse", "kv-test-password", "gatehouse")
}

pub fn options(postgres: &TestPostgres) -> PgConnectOptions {
    postgres.url().parse().unwrap()
}

pub async fn open(postgres: &TestPostgres) -> Arc<dyn KvBackend> {
    Arc::new(PostgresBackend::open(options(postgres)).await.unwrap())
}

macro_rules! on_postgres {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let postgres = cluster();
            suite::$name(open(&postgres).await).await;
        }
    )*};
}

on_postgres!(
    namespaces_are_isolated,
    keys_are_checked,
    quota_boundaries_are_exact,
    quotas_count_every_bucket_of_a_plugin,
    a_lowered_quota_blocks_growth_only,
    batches_are_all_or_nothing,
    increment_and_cas_semantics,
    increments_and_cas_under_concurrency_lose_no_update,
    quotas_hold_under_concurrent_writers,
    refused_writes_do_not_fail_their_neighbours,
    paging_is_stable_under_concurrent_writes,
    relaxed_buckets_read_their_writes,
);

/// Three backends, each with its own pool, on one database: what three
/// sidecar processes sharing it do. Attacks: 64 writers racing for the last
/// keys of one quota from different processes (each process alone sees
/// room); 32 tasks incrementing and CAS-looping one counter from different
/// processes (lost updates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_increments_and_cas_hold_across_sidecar_processes() {
    let postgres = cluster();
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(open(&postgres).await);
    }
    suite::quotas_hold_under_concurrent_writers_on(backends.clone()).await;
    suite::increments_and_cas_under_concurrency_lose_no_update_on(backends).await;
}

/// Opening twice (a second sidecar, or a restart) applies nothing twice,
/// and data and usage written by one backend are there for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_usage_survive_a_new_backend() {
    let postgres = cluster();
    let b = bucket("alpha", "default", Quota::default(), Durability::Immediate);
    {
        let first = open(&postgres).await;
        first.set(&b, "k".into(), b"value".to_vec()).await.unwrap();
        assert_eq!(first.increment(&b, "n".into(), 41).await.unwrap(), 41);
    }
    let (second, third) = tokio::join!(open(&postgres), open(&postgres));
    assert_eq!(second.get(&b, "k").await.unwrap().as_deref(), Some(&b"value"[..]));
    assert_eq!(third.increment(&b, "n".into(), 1).await.unwrap(), 42);
    assert_eq!(assert_usage_exact(&*second, &b).await.keys, 2);
    let applied = postgres.psql_in("gatehouse", "SELECT count(*) FROM _sqlx_migrations WHERE success");
    assert_eq!(applied.trim(), "1");
}

/// The server stops mid-run (fast shutdown: open connections are cut)
/// while 8 tasks write. Checked: calls during the outage fail with
/// `unavailable` (never another kind, never a hang past the call bound);
/// after the restart, the same backend serves again without being
/// reopened; every write that was acknowledged, before, during or after the
/// outage, is there with its value, and usage equals a full scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_unavailable_and_loses_no_acknowledged_write() {
    let postgres = Arc::new(cluster());
    let backend = open(&postgres).await;
    let b = Arc::new(bucket("alpha", "default", Quota::default(), Durability::Immediate));
    let stop = Arc::new(AtomicBool::new(false));
    let unavailable = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (backend, b, stop, unavailable) =
                (Arc::clone(&backend), Arc::clone(&b), Arc::clone(&stop), Arc::clone(&unavailable));
            tokio::spawn(async move {
                let mut acknowledged = BTreeMap::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{t}-{i:06}");
                    let value = format!("{t}:{i}").into_bytes();
                    match backend.set(&b, key.clone(), value.clone()).await {
                        Ok(()) => {
                            acknowledged.insert(key, value);
                        }
                        Err(KvError::Unavailable(_)) => {
                            unavailable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("a write failed with another kind than unavailable: {e:?}"),
                    }
                    i += 1;
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = Arc::clone(&postgres);
    tokio::task::spawn_blocking(move || stopped.pause()).await.unwrap();
    // Down: a read is unavailable too, within the call bound.
    let started = Instant::now();
    assert!(matches!(backend.get(&b, "w0-000000").await, Err(KvError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = unavailable.load(Ordering::Relaxed);
    assert!(during > 0, "no write saw the outage");
    let resumed = Arc::clone(&postgres);
    tokio::task::spawn_blocking(move || resumed.resume()).await.unwrap();
    // Back: the same backend recovers by itself.
    let started = Instant::now();
    loop {
        match backend.set(&b, "after".into(), b"x".to_vec()).await {
            Ok(()) => break,
            Err(KvError::Unavailable(_)) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery: {e:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    acknowledged.insert("after".to_string(), b"x".to_vec());
    let (stored, _) = suite::full_scan(&*backend, &b).await;
    for (key, value) in &acknowledged {
        assert_eq!(stored.get(key), Some(value), "acknowledged write {key} is missing or changed");
    }
    // A write whose commit answer was lost may be there unacknowledged;
    // nothing else may.
    assert!(stored.len() - acknowledged.len() <= during as usize, "{} stored, {}", stored.len(), acknowledged.len());
    assert_usage_exact(&*backend, &b).await;
}

/// Through the door, with the store `Services::from_config` builds for
/// `[kv] database` (an alias whose URL is read at the first call): the database is down at the first call (the schema
/// cannot be applied), so the guest gets `unavailable`; once it answers, the
/// next call opens the store, with no restart, and the count lands in
/// PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_database_is_down_at_first_use_opens_once_it_answers() {
    use gatehouse::databases::UrlSource;
    use gatehouse::services::Services;
    use gatehouse::services::kv::KvStore;
    use gatehouse::{Document, ErrorKind, Runtime};

    use crate::common::{Policies, guest, settings};

    let postgres = cluster();
    postgres.pause();
    let policies = Policies::new();
    let component = guest("kv_counter").display().to_string();
    // A deadline longer than the wait for a connection.
    let policy = format!("[plugin]\nname = \"counter\"\ncomponent = {component:?}\n[limits]\ntimeout = \"5s\"\n[kv]\n");
    policies.write("counter.toml", &policy);
    let services = Services::with_dns(Arc::new(gatehouse::services::http::resolve::SystemLookup))
        .unwrap()
        .with_kv(KvStore::postgres_alias("shared", UrlSource::Inline(postgres.url())));
    let runtime = Runtime::new(settings(), Arc::new(services)).unwrap();
    let load = policies.load();
    assert!(runtime.load(&load.set).await.refused.is_empty());
    let visit = || runtime.invoke("counter", Document { content_type: "text/plain".into(), body: b"visit".to_vec() });
    assert_eq!(visit().await.unwrap_err().kind(), ErrorKind::Unavailable);
    postgres.resume();
    for expected in [1, 2] {
        let output = visit().await.unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&output.body).unwrap();
        assert_eq!(answer["visits"], expected);
    }
    let stored = postgres.psql_in(
        "gatehouse",
        "SELECT convert_from(value, 'UTF8') FROM gatehouse_kv_data WHERE plugin = 'counter' AND key = 'visits'",
    );
    assert_eq!(stored.trim(), "2");
}

/// `gatehouse kv` with `[kv] database`: the CLI reads the PostgreSQL store
/// itself (no file, no sidecar needed), and prints guest keys escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_a_postgresql_store() {
    use gatehouse::services::kv::{Bucket, KvPolicy};

    use crate::common::{Policies, gatehouse_command};

    let postgres = cluster();
    let backend = open(&postgres).await;
    let grant = Bucket::open("reader", &KvPolicy::default(), "").unwrap();
    backend.set(&grant, "greeting".into(), b"hello".to_vec()).await.unwrap();
    backend.set(&grant, "line\nbreak".into(), b"x".to_vec()).await.unwrap();
    let policies = Policies::new();
    let (_root, config) =
        policies.settings(&format!("[databases.shared]\nurl = {:?}\n[kv]\ndatabase = \"shared\"\n", postgres.url()));
    let cli = |args: &[&str]| {
        gatehouse_command().args(["--config", config.to_str().unwrap(), "kv"]).args(args).output().unwrap()
    };
    let get = cli(&["get", "reader", "greeting"]);
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hello");
    let list = cli(&["list", "reader"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert_eq!(String::from_utf8_lossy(&list.stdout), "greeting\nline\\nbreak\n");
    let usage = cli(&["usage", "reader"]);
    assert!(String::from_utf8_lossy(&usage.stdout).contains("reader: 2 keys"), "{usage:?}");
    let missing = cli(&["get", "reader", "absent"]);
    assert_eq!(missing.status.code(), Some(1));
}
