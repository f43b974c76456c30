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
use gatehouse::services::kv::{KvBackend, KvError, PostgresBackend, QuotaKind};
use sqlx::Connection as _;
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
    buckets_are_those_that_hold_keys,
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
    assert_eq!(applied.trim(), gatehouse::databases::MIGRATIONS.len().to_string(), "each migration applied once");
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
/// next call after the retry interval opens the store, with no restart, and the count lands in
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
    // A failed open is the answer for this long; then the store opens.
    tokio::time::sleep(gatehouse::services::kv::host::OPEN_RETRY_INTERVAL).await;
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

/// An outside transaction holding the data table, so the store's
/// statements wait on the server until it ends.
async fn lock_data_table(postgres: &TestPostgres) -> sqlx::PgConnection {
    let mut holder = sqlx::PgConnection::connect_with(&options(postgres)).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE gatehouse_kv_data IN ACCESS EXCLUSIVE MODE").execute(&mut holder).await.unwrap();
    holder
}

/// Ends the store's backends on the server (`pg_terminate_backend`), those
/// also matching `and` (SQL, `""` for all); how many. Run from the
/// `postgres` database, which stays open to logins.
fn end_store_backends(postgres: &TestPostgres, and: &str) -> usize {
    let ended = postgres.psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = 'gatehouse' AND usename = 'gatehouse' {and}"
    ));
    ended.trim().parse().unwrap()
}

/// How many of the server's sessions wait on a lock now.
fn waiting_on_locks(postgres: &TestPostgres) -> usize {
    let count = postgres.psql_in("gatehouse", "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'");
    count.trim().parse().unwrap()
}

/// Review 31: a batch waiting on its plugin's lock past the call's 10 s was
/// cut off by the sidecar but went on waiting on the server, holding a
/// connection its place no longer counted; fourteen such plugins took
/// every connection and every other plugin's call was `unavailable`.
/// Attack: an outside transaction holds a plugin's usage row (as another
/// sidecar's long batch would) while that plugin writes. Checked: the
/// server ends the waiting statement (`STATEMENT_TIMEOUT`), the write is
/// `unavailable` and not applied after the lock goes, no connection of
/// the store is left waiting on the lock once it is answered, and another
/// plugin is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stuck_on_its_plugins_lock_is_ended_by_the_server_and_gives_its_connection_back() {
    let postgres = cluster();
    let backend = open(&postgres).await;
    let stuck = bucket("stuck", "default", Quota::default(), Durability::Immediate);
    let other = bucket("other", "default", Quota::default(), Durability::Immediate);
    backend.set(&stuck, "k".into(), b"before".to_vec()).await.unwrap();

    let mut holder = sqlx::PgConnection::connect_with(&options(&postgres)).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT keys FROM gatehouse_kv_plugin_usage WHERE plugin = 'stuck' FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let waiting = {
        let (backend, stuck) = (Arc::clone(&backend), stuck.clone());
        tokio::spawn(async move { backend.set(&stuck, "k".into(), b"after".to_vec()).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(waiting_on_locks(&postgres), 1, "the write waits on the lock");
    backend.set(&other, "k".into(), b"v".to_vec()).await.unwrap();
    assert_eq!(backend.get(&other, "k").await.unwrap().as_deref(), Some(&b"v"[..]));

    let answer = waiting.await.unwrap();
    assert!(
        matches!(&answer, Err(KvError::Unavailable(m)) if m.contains("the database said: canceling statement due to statement timeout") && !m.contains(" at line ")),
        "{answer:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(waiting_on_locks(&postgres), 0, "a connection still waits on the lock after its answer");
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(backend.get(&stuck, "k").await.unwrap().as_deref(), Some(&b"before"[..]), "applied after all");
    backend.set(&stuck, "k".into(), b"later".to_vec()).await.unwrap();
}

/// A call dropped mid-statement (its invocation ended) closes its
/// connection: sqlx would take it back only once the statement ended,
/// while its place already served another call. Attack: an outside
/// transaction locks the data table, so reads wait on the server; their
/// calls are dropped after 300 ms. Checked: the server stops their
/// statements within a second (its client check), not at the lock's end
/// or the 8 s `statement_timeout`; the store serves on after the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_mid_statement_closes_its_connection() {
    let postgres = cluster();
    let backend = open(&postgres).await;
    let plugin = bucket("reader", "default", Quota::default(), Durability::Immediate);
    backend.set(&plugin, "k".into(), b"v".to_vec()).await.unwrap();

    let mut holder = lock_data_table(&postgres).await;
    for _ in 0..3 {
        let dropped = tokio::time::timeout(Duration::from_millis(300), backend.get(&plugin, "k")).await;
        assert!(dropped.is_err(), "the read was answered under the lock: {dropped:?}");
    }
    let dropped_at = Instant::now();
    while waiting_on_locks(&postgres) > 0 {
        assert!(dropped_at.elapsed() < Duration::from_secs(3), "the dropped reads still wait on the server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(backend.get(&plugin, "k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

/// Connections the server closed cost no call, whenever it closed them:
/// one idle past a second is checked before it is lent (sqlx's ping
/// before every call, a round trip each, is off); one idle for less is
/// lent unchecked, found closed by the call's first statement (a read's,
/// or a batch's `BEGIN`: nothing done), and the call runs on another.
/// Attacks (review 34: every second call failed under the first, a whole
/// batch of writes under the second, calls after the server was back
/// under the third):
/// - `idle_session_timeout = 300ms` and calls 0.6 s apart, each a read and
///   an increment (a batch), with no other traffic;
/// - every backend of the store terminated (`pg_terminate_backend`) while
///   idle, then a burst of increments;
/// - the server restarted under four idle connections, calls at once after
///   it is back, then calls past a second.
///
/// Every call answers, and every increment counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_closed_cost_no_call() {
    let postgres = Arc::new(cluster());
    let backend = open(&postgres).await;
    let b = bucket("alpha", "default", Quota::default(), Durability::Immediate);
    backend.set(&b, "k".into(), b"v".to_vec()).await.unwrap();
    let mut increments = 0;
    let read_and_count = async |n: &str, increments: &mut i64| {
        let read = backend.get(&b, "k").await;
        assert_eq!(read.as_ref().map(|v| v.as_deref()), Ok(Some(&b"v"[..])), "{n}: {read:?}");
        *increments += 1;
        let counted = backend.increment(&b, "count".into(), 1).await;
        assert_eq!(counted, Ok(*increments), "{n}");
    };

    postgres.psql("ALTER SYSTEM SET idle_session_timeout = '300ms'");
    postgres.psql("SELECT pg_reload_conf()");
    read_and_count("before the timeout", &mut increments).await;
    for n in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        read_and_count(&format!("call {n} after an idle-session timeout"), &mut increments).await;
    }
    postgres.psql("ALTER SYSTEM RESET idle_session_timeout");
    postgres.psql("SELECT pg_reload_conf()");

    let burst = async |increments: &mut i64| {
        let calls: Vec<_> = (0..12)
            .map(|_| {
                let (backend, b) = (Arc::clone(&backend), b.clone());
                tokio::spawn(async move { backend.increment(&b, "count".into(), 1).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
            *increments += 1;
        }
    };
    burst(&mut increments).await;
    assert_ne!(end_store_backends(&postgres, "AND state = 'idle'"), 0, "no idle connection to terminate");
    burst(&mut increments).await;

    let reads: Vec<_> = (0..4)
        .map(|_| {
            let (backend, b) = (Arc::clone(&backend), b.clone());
            tokio::spawn(async move { backend.get(&b, "k").await })
        })
        .collect();
    for read in reads {
        read.await.unwrap().unwrap();
    }
    let restarted = Arc::clone(&postgres);
    tokio::task::spawn_blocking(move || {
        restarted.pause();
        restarted.resume();
    })
    .await
    .unwrap();
    for n in 0..3 {
        read_and_count(&format!("call {n} right after the restart"), &mut increments).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 0..3 {
        read_and_count(&format!("call {n} a second after the restart"), &mut increments).await;
    }
    assert_eq!(backend.get(&b, "count").await.unwrap(), Some(increments.to_string().into_bytes()));
}

/// After a lost connection a call checks the others (every idle one may
/// be closed: a restart, a terminate of them all) and the one the pool
/// then opens: with all 16 connections idle and ended on the server, the
/// next call meets one, checks the other 15 and a new one, and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_every_idle_connection_was_ended_is_served() {
    let postgres = cluster();
    let backend = open(&postgres).await;
    let b = |plugin: usize| bucket(&format!("p{plugin}"), "default", Quota::default(), Durability::Immediate);
    backend.set(&b(0), "k".into(), b"v".to_vec()).await.unwrap();
    // Sixteen plugins' reads held on a lock: sixteen connections.
    let mut holder = lock_data_table(&postgres).await;
    let reads: Vec<_> = (0..16)
        .map(|plugin| {
            let (backend, b) = (Arc::clone(&backend), b(plugin));
            tokio::spawn(async move { backend.get(&b, "k").await })
        })
        .collect();
    let started = Instant::now();
    while waiting_on_locks(&postgres) < 16 {
        assert!(started.elapsed() < Duration::from_secs(5), "{} reads waiting", waiting_on_locks(&postgres));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    for read in reads {
        read.await.unwrap().unwrap();
    }
    assert_eq!(end_store_backends(&postgres, ""), 16);
    let read = backend.get(&b(0), "k").await;
    assert_eq!(read.as_ref().map(|v| v.as_deref()), Ok(Some(&b"v"[..])), "{read:?}");
}

/// A failed commit says whether its batch may have been applied, and is
/// not run again: refused by the server (a deferred constraint) it wrote
/// nothing; lost with its connection (the backend ended during its
/// commit) the sidecar cannot know (review 34: "nothing of the batch is
/// acknowledged" was read as "not applied" where most were). Staged with
/// a deferred trigger that raises for one key and ends its own backend
/// for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_says_whether_the_batch_may_have_been_applied() {
    let postgres = cluster();
    let backend = open(&postgres).await;
    let b = bucket("alpha", "default", Quota::default(), Durability::Immediate);
    backend.set(&b, "k".into(), b"v".to_vec()).await.unwrap();
    postgres.psql_in(
        "gatehouse",
        "CREATE FUNCTION at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.key = convert_to('refused', 'UTF8') THEN RAISE EXCEPTION 'refused at commit'; END IF; \
           IF NEW.key = convert_to('lost', 'UTF8') THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; \
           RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT OR UPDATE ON gatehouse_kv_data \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION at_commit()",
    );
    let refused = backend.set(&b, "refused".into(), b"x".to_vec()).await;
    assert!(
        matches!(&refused, Err(KvError::Unavailable(m)) if m.contains("nothing of the batch was written") && m.contains("refused at commit")),
        "{refused:?}"
    );
    let lost = backend.set(&b, "lost".into(), b"x".to_vec()).await;
    assert!(matches!(&lost, Err(KvError::Unavailable(m)) if m.contains("may have been applied")), "{lost:?}");
    for key in ["refused", "lost"] {
        assert_eq!(backend.get(&b, key).await, Ok(None), "{key}");
    }
    assert_eq!(backend.get(&b, "k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

/// A server that refuses logins answers every call `unavailable` (retry
/// later), naming why, and the store works again once logins are allowed.
/// Attack (review 35): `ALLOW_CONNECTIONS false` (or a `pg_hba.conf`
/// `reject`), the store's connections ended: every call was `internal`,
/// which tells a caller not to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_logins_is_unavailable() {
    let postgres = cluster();
    let backend = open(&postgres).await;
    let b = bucket("alpha", "default", Quota::default(), Durability::Immediate);
    backend.set(&b, "k".into(), b"v".to_vec()).await.unwrap();
    postgres.psql("ALTER DATABASE gatehouse ALLOW_CONNECTIONS false");
    end_store_backends(&postgres, "");
    let mut named = 0;
    for n in 0..3 {
        let read = backend.get(&b, "k").await;
        let write = backend.increment(&b, "count".into(), 1).await;
        for answer in [read.map(drop), write.map(drop)] {
            let Err(KvError::Unavailable(message)) = &answer else { panic!("call {n}: {answer:?}") };
            named += usize::from(message.contains("is not currently accepting connections"));
        }
    }
    assert!(named >= 4, "the refusal was named in {named} of 6 answers");
    postgres.psql("ALTER DATABASE gatehouse ALLOW_CONNECTIONS true");
    assert_eq!(backend.get(&b, "k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(backend.increment(&b, "count".into(), 1).await, Ok(1));
}

/// How many transactions wrote the plugin's current rows (rows written by
/// one transaction share its `xmin`): fewer than the writes means they
/// were grouped.
fn transactions_of(postgres: &TestPostgres, plugin: &str) -> usize {
    let count = postgres.psql_in(
        "gatehouse",
        &format!("SELECT count(DISTINCT xmin::text) FROM gatehouse_kv_data WHERE plugin = '{plugin}'"),
    );
    count.trim().parse().unwrap()
}

/// Group commit with refusals inside the batches. 96 tasks of one plugin
/// start together: 48 each add a key (30 fit the key quota, 18 must be
/// refused), 24 increment a counter (all succeed, none lost), 12 increment
/// a text value (`conflict`), 12 CAS a key that exists expecting it absent
/// (`false`). Attacks: the last keys of the quota raced inside one batch;
/// a refused write or a conflict failing the writes batched with it.
/// Checked: each answer is the right one, exactly the quota is stored,
/// usage equals a full scan, and the writes were grouped (fewer
/// transactions than stored writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_one_plugin_are_grouped_and_each_answered_on_its_own() {
    let postgres = cluster();
    let backend = open(&postgres).await;
    let quota = Quota { max_keys: 32, max_bytes: 1 << 20, max_key: 16, max_value: 64 };
    let b = Arc::new(bucket("alpha", "default", quota, Durability::Immediate));
    backend.set(&b, "text".into(), b"not a number".to_vec()).await.unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(96));
    let tasks: Vec<_> = (0..96)
        .map(|t| {
            let (backend, b, start) = (Arc::clone(&backend), Arc::clone(&b), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                match t % 8 {
                    0..4 => backend.set(&b, format!("key-{t:02}"), vec![7; 20]).await.map(|()| "set"),
                    4 | 5 => backend.increment(&b, "n".into(), 1).await.map(|_| "increment"),
                    6 => backend.increment(&b, "text".into(), 1).await.map(|_| "increment of text"),
                    _ => backend.compare_and_swap(&b, "text".into(), None, vec![]).await.map(|swapped| {
                        assert!(!swapped, "a CAS expecting absence swapped an existing key");
                        "cas"
                    }),
                }
            })
        })
        .collect();
    let mut sets = 0;
    let mut refused = 0;
    for (t, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        match (t % 8, result) {
            (0..4, Ok(_)) => sets += 1,
            (0..4, Err(KvError::QuotaExceeded { quota: QuotaKind::Keys, .. })) => refused += 1,
            (4 | 5, Ok(_)) | (7, Ok(_)) => {}
            (6, Err(KvError::Conflict(_))) => {}
            (t, other) => panic!("task kind {t}: {other:?}"),
        }
    }
    // "text" and "n" take two keys of 32.
    assert_eq!((sets, refused), (30, 18));
    assert_eq!(backend.get(&b, "n").await.unwrap(), Some(b"24".to_vec()), "no increment lost");
    assert_eq!(backend.get(&b, "text").await.unwrap(), Some(b"not a number".to_vec()));
    let usage = assert_usage_exact(&*backend, &b).await;
    assert_eq!(usage.keys, 32);
    assert_eq!(backend.usage(&b).await.unwrap().plugin, usage);
    let transactions = transactions_of(&postgres, "alpha");
    assert!(transactions < 30, "30 stored sets (and 24 increments) took {transactions} transactions: not grouped");
}

/// Four backends on one database (four sidecar processes), each with 32
/// writers of one plugin, so each batches on its own and their batches
/// race for the plugin's lock. Attacks: the last keys and the last bytes
/// of the quotas taken by batches of different processes at once; keys
/// of different sizes, so the byte quota, not the key quota, decides at
/// the end. Checked: never over either quota, every acknowledged write
/// stored and nothing else, usage equals a full scan, and batches formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_several_sidecar_processes_stay_within_the_quotas() {
    let postgres = cluster();
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(open(&postgres).await);
    }
    let quota = Quota { max_keys: 200, max_bytes: 4000, max_key: 16, max_value: 64 };
    let b = Arc::new(bucket("alpha", "default", quota, Durability::Immediate));
    let tasks: Vec<_> = (0..128)
        .map(|t| {
            let (backend, b) = (Arc::clone(&backends[t % 4]), Arc::clone(&b));
            tokio::spawn(async move {
                let mut acknowledged = BTreeMap::new();
                for i in 0..4 {
                    let key = format!("{t:03}-{i}");
                    let value = vec![b'v'; 10 + (t * 7 + i) % 40];
                    match backend.set(&b, key.clone(), value.clone()).await {
                        Ok(()) => {
                            acknowledged.insert(key, value);
                        }
                        Err(KvError::QuotaExceeded { .. }) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = BTreeMap::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    let (stored, usage) = suite::full_scan(&*backends[0], &b).await;
    assert_eq!(stored, acknowledged, "stored data is exactly the acknowledged writes");
    assert!(usage.keys <= 200 && usage.bytes <= 4000, "over quota: {usage:?}");
    assert!(usage.bytes > 4000 - 60, "the byte quota was filled: {usage:?}");
    assert_usage_exact(&*backends[1], &b).await;
    let transactions = transactions_of(&postgres, "alpha");
    assert!(transactions < stored.len(), "{} writes took {transactions} transactions", stored.len());
}

/// The server stops while batches are queued: a transaction of another
/// client holds the plugin's usage row, so the first batch waits for the
/// lock and 64 more writes queue behind it; then a fast shutdown cuts
/// every connection. Attacks: a batch whose connection dies before its
/// COMMIT; queued batches meeting a database that is gone. Checked: each
/// of the 64 writes is `unavailable` or acknowledged (a batch may commit
/// in the race with the shutdown; no other kind), exactly the
/// acknowledged ones are stored after the restart, the writes
/// acknowledged before the outage are all there, usage equals a full scan,
/// and the same backend writes again once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_stopped_under_queued_batches_answers_all_unavailable_and_loses_nothing() {
    let postgres = Arc::new(cluster());
    let backend = open(&postgres).await;
    // The waiting batch may win its race with the shutdown and commit every
    // queued write (all acknowledged, all stored): then no write met the
    // outage, and the round is played again with another plugin.
    let mut met = false;
    for round in 0..5 {
        met = stop_under_queued_batches(&postgres, &backend, &format!("alpha{round}")).await;
        if met {
            break;
        }
    }
    assert!(met, "no queued write met the outage in five rounds");
}

/// One round of [`a_database_stopped_under_queued_batches_answers_all_unavailable_and_loses_nothing`]
/// for `plugin`; whether a queued write met the outage.
async fn stop_under_queued_batches(postgres: &Arc<TestPostgres>, backend: &Arc<dyn KvBackend>, plugin: &str) -> bool {
    let postgres = Arc::clone(postgres);
    let backend = Arc::clone(backend);
    let b = Arc::new(bucket(plugin, "default", Quota::default(), Durability::Immediate));
    let mut before = BTreeMap::new();
    for i in 0..20 {
        backend.set(&b, format!("before-{i:02}"), vec![i]).await.unwrap();
        before.insert(format!("before-{i:02}"), vec![i]);
    }
    use sqlx::Connection;
    let mut blocker = sqlx::PgConnection::connect_with(&options(&postgres)).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("SELECT keys FROM gatehouse_kv_plugin_usage WHERE plugin = $1 FOR UPDATE")
        .bind(plugin)
        .execute(&mut blocker)
        .await
        .unwrap();
    let writers: Vec<_> = (0..64)
        .map(|t| {
            let (backend, b) = (Arc::clone(&backend), Arc::clone(&b));
            tokio::spawn(async move { backend.set(&b, format!("queued-{t:02}"), vec![1; 10]).await })
        })
        .collect();
    // Wait until a batch waits for the lock.
    let started = Instant::now();
    while postgres.psql_in("gatehouse", "SELECT count(*) FROM pg_locks WHERE NOT granted").trim() == "0" {
        assert!(started.elapsed() < Duration::from_secs(10), "no batch ever waited for the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = Arc::clone(&postgres);
    tokio::task::spawn_blocking(move || stopped.pause()).await.unwrap();
    // A batch may still commit while the server shuts down (the blocker's
    // backend exits first, releasing the lock, and the waiting batch's
    // COMMIT beats its own termination): then its writes are acknowledged
    // and must be stored. Every other answer is `unavailable`.
    let mut unavailable = 0;
    for (t, writer) in writers.into_iter().enumerate() {
        match writer.await.unwrap() {
            Ok(()) => {
                before.insert(format!("queued-{t:02}"), vec![1; 10]);
            }
            Err(KvError::Unavailable(_)) => unavailable += 1,
            Err(e) => panic!("a queued write answered {e:?}"),
        }
    }
    drop(blocker);
    let resumed = Arc::clone(&postgres);
    tokio::task::spawn_blocking(move || resumed.resume()).await.unwrap();
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
    before.insert("after".into(), b"x".to_vec());
    let (stored, _) = suite::full_scan(&*backend, &b).await;
    assert_eq!(stored, before, "exactly the acknowledged writes are stored");
    assert_usage_exact(&*backend, &b).await;
    unavailable > 0
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
