//! Key-value storage benchmark: the redb backend (group-commit writer)
//! against redb called directly from Rust, same disk, same run. Prints
//! tables for BENCHMARKS.md.
//!
//! Durable `set` (100-byte values, a new key each), at 1, 8 and 64
//! concurrent writers:
//! - direct redb, one `Durability::Immediate` transaction per write (each
//!   writer in `spawn_blocking`: redb runs one write transaction at a time,
//!   so they queue on `begin_write`): the baseline every ratio is against;
//! - `RedbBackend::set` on a durable bucket: group commit, one fsync per
//!   batch, answered after it;
//! - `RedbBackend::set` on a relaxed bucket (acknowledged before the fsync);
//! - direct redb, one `Durability::None` transaction per write (no fsync:
//!   the ceiling for one transaction per write).
//!
//! `get` of a random key among 10,000 (warm): `RedbBackend::get` against a
//! direct read (`begin_read` + `open_table` + `get`), at 1 and 8 callers.
//!
//! A guest's `get` through the sidecar (issue 18, performance (a)): the
//! `kv-counter` component calling `gatehouse:services/kv` `get` in a loop
//! of 10,000 inside one invocation (the per-get cost, invocation
//! amortised), and one invocation per `get` (`read 1`), against a direct
//! redb read of the same key and value from Rust (`begin_read` +
//! `open_table` + `get` + copying the value out, as the guest gets a copy),
//! in the same run.
//!
//! Then the same against PostgreSQL (a throwaway cluster started here from
//! the system's server binaries, with its default durability: `fsync` and
//! `synchronous_commit` on; skipped with a message when there are none):
//! `PostgresBackend::set` (group commit: a plugin's queued writes in one
//! transaction, the plugin's usage row locked, the keys read, the values
//! and both usage rows written, one `COMMIT`) on a durable and a relaxed
//! bucket, and on durable buckets of 16 plugins (batches of different
//! plugins do not wait for each other's lock), against a direct
//! sqlx `INSERT` (autocommit, a pool of the same size) into a plain table
//! of the same database; and `get` against a direct sqlx `SELECT`.
//!
//! Each row runs for a fixed time; rows alternate over three rounds and the
//! median is kept. Run with `./dev bench` (or `cargo bench -p gatehouse
//! --bench kv`); `GATEHOUSE_BENCH_DIR` picks the disk of the redb part
//! (default: the system's temporary directory; the PostgreSQL cluster is
//! always there). `GATEHOUSE_BENCH_ONLY=guest-get` runs the guest `get`
//! section alone (about 20 s), for working on the door's cost.
//!
//! Last, fairness on PostgreSQL (review 29's load): a light plugin's `get`s,
//! one at a time, alone and then beside ten plugins reading hard (16
//! callers each) on the same backend; `GATEHOUSE_BENCH_ONLY=pg-fair` runs
//! that alone, `GATEHOUSE_BENCH_ONLY=postgres` the PostgreSQL part.
#![allow(missing_docs)]

#[allow(dead_code)]
#[path = "../tests/all/postgres.rs"]
mod postgres;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatehouse::services::Services;
use gatehouse::services::http::resolve::SystemLookup;
use gatehouse::services::kv::backend::Namespace;
use gatehouse::services::kv::policy::{Durability, Quota};
use gatehouse::services::kv::{Bucket, KvBackend, KvStore, PostgresBackend, RedbBackend};
use gatehouse::{Document, Runtime, RuntimeSettings};
use redb::{ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");
const ROUNDS: usize = 3;
const SET_TIME: Duration = Duration::from_millis(1500);
const GET_TIME: Duration = Duration::from_millis(1000);
const KEYS: u64 = 10_000;
const VALUE: [u8; 100] = [7; 100];

type Call = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Path {
    label: &'static str,
    call: Call,
}

fn path<F, Fut>(label: &'static str, call: F) -> Path
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Path { label, call: Arc::new(move |n| Box::pin(call(n))) }
}

/// Room for everything the bench writes.
const QUOTA: Quota = Quota { max_keys: 1 << 30, max_bytes: 1 << 40, max_key: 64, max_value: HEAVY_VALUE as u64 };

fn bucket(name: &str, durability: Durability) -> Arc<Bucket> {
    Arc::new(Bucket { namespace: Namespace::new("bench", name).unwrap(), quota: QUOTA, durability })
}

fn direct_write(db: Arc<redb::Database>, durability: redb::Durability) -> Path {
    let label = match durability {
        redb::Durability::None => "direct redb, Durability::None per write",
        _ => "direct redb, Durability::Immediate per write",
    };
    path(label, move |n| {
        let db = db.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut txn = db.begin_write().unwrap();
                txn.set_durability(durability).unwrap();
                {
                    let mut table = txn.open_table(TABLE).unwrap();
                    table.insert(format!("key-{n}").as_bytes(), &VALUE[..]).unwrap();
                }
                txn.commit().unwrap();
            })
            .await
            .unwrap();
        }
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let base = std::env::var_os("GATEHOUSE_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let only = std::env::var("GATEHOUSE_BENCH_ONLY").unwrap_or_default();
    let guest_get_only = only == "guest-get";
    if only == "postgres" || only == "pg-fair" {
        rt.block_on(on_postgres(only == "pg-fair"));
        return;
    }
    rt.block_on(async {
        let backend = Arc::new(RedbBackend::open(&dir.path().join("kv.redb")).unwrap());
        let direct = Arc::new(redb::Database::create(dir.path().join("direct.redb")).unwrap());
        {
            let txn = direct.begin_write().unwrap();
            txn.open_table(TABLE).unwrap();
            txn.commit().unwrap();
        }
        if guest_get_only {
            return guest_gets(backend, direct).await;
        }

        let durable = bucket("durable", Durability::Immediate);
        let relaxed = bucket("relaxed", Durability::Relaxed);
        let sets = [
            direct_write(direct.clone(), redb::Durability::Immediate),
            path("RedbBackend::set, durable bucket (group commit)", {
                let (backend, b) = (backend.clone(), durable.clone());
                move |n| {
                    let (backend, b) = (backend.clone(), b.clone());
                    async move { backend.set(&b, format!("key-{n}"), VALUE.to_vec()).await.unwrap() }
                }
            }),
            path("RedbBackend::set, relaxed bucket", {
                let (backend, b) = (backend.clone(), relaxed.clone());
                move |n| {
                    let (backend, b) = (backend.clone(), b.clone());
                    async move { backend.set(&b, format!("key-{n}"), VALUE.to_vec()).await.unwrap() }
                }
            }),
            direct_write(direct.clone(), redb::Durability::None),
        ];
        println!(
            "durable set of a 100-byte value (a new key each), {} ms per row, median of {ROUNDS} rounds\n",
            SET_TIME.as_millis()
        );
        println!("| path | writers | ops/s | p50 µs | p99 µs | vs one Immediate txn per write |");
        println!("|---|---|---|---|---|---|");
        for writers in [1, 8, 64] {
            table(&sets, writers, SET_TIME).await;
        }

        // Reads: the same 10,000 keys in both stores.
        let reads = bucket("reads", Durability::Immediate);
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
            let items = chunk.iter().map(|i| (format!("read-{i}"), VALUE.to_vec())).collect();
            backend.set_many(&reads, items).await.unwrap();
        }
        {
            let txn = direct.begin_write().unwrap();
            {
                let mut table = txn.open_table(TABLE).unwrap();
                for i in 0..KEYS {
                    table.insert(format!("read-{i}").as_bytes(), &VALUE[..]).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let gets = [
            path("direct redb read (begin_read + open_table + get)", {
                let db = direct.clone();
                move |n| {
                    let db = db.clone();
                    async move {
                        let txn = db.begin_read().unwrap();
                        let table = txn.open_table(TABLE).unwrap();
                        let key = format!("read-{}", scramble(n) % KEYS);
                        assert_eq!(table.get(key.as_bytes()).unwrap().unwrap().value().len(), 100);
                    }
                }
            }),
            path("RedbBackend::get", {
                let (backend, b) = (backend.clone(), reads.clone());
                move |n| {
                    let (backend, b) = (backend.clone(), b.clone());
                    async move {
                        let key = format!("read-{}", scramble(n) % KEYS);
                        assert_eq!(backend.get(&b, &key).await.unwrap().unwrap().len(), 100);
                    }
                }
            }),
        ];
        println!(
            "\nget of a random key among {KEYS} (warm), {} ms per row, median of {ROUNDS} rounds\n",
            GET_TIME.as_millis()
        );
        println!("| path | callers | ops/s | p50 µs | p99 µs | vs direct read |");
        println!("|---|---|---|---|---|---|");
        for callers in [1, 8] {
            table(&gets, callers, GET_TIME).await;
        }

        guest_gets(backend.clone(), direct.clone()).await;
    });
    if guest_get_only {
        return;
    }
    if postgres::available() {
        rt.block_on(on_postgres(false));
    } else {
        println!("\nPostgreSQL: skipped (no server binaries in /usr/lib/postgresql/*/bin; set GATEHOUSE_PG_BIN)");
    }
}

fn set_path(label: &'static str, backend: Arc<PostgresBackend>, buckets: Vec<Arc<Bucket>>) -> Path {
    path(label, move |n| {
        let backend = backend.clone();
        let b = buckets[n as usize % buckets.len()].clone();
        async move { backend.set(&b, format!("key-{n}"), VALUE.to_vec()).await.unwrap() }
    })
}

/// A durable bucket of its own plugin.
fn plugin_bucket(plugin: &str) -> Arc<Bucket> {
    let namespace = Namespace::new(plugin, "default").unwrap();
    Arc::new(Bucket { namespace, quota: QUOTA, durability: Durability::Immediate })
}

async fn on_postgres(fairness_only: bool) {
    let server = postgres::TestPostgres::start_durable("gatehouse", "bench-password", "gatehouse");
    let options: sqlx::postgres::PgConnectOptions = server.url().parse().unwrap();
    let backend = Arc::new(PostgresBackend::open(options.clone()).await.unwrap());
    if fairness_only {
        return light_beside_heavy(backend).await;
    }
    let direct = sqlx::postgres::PgPoolOptions::new()
        .max_connections(gatehouse::services::kv::postgres::MAX_CONNECTIONS)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE bench (key bytea PRIMARY KEY, value bytea NOT NULL)").execute(&direct).await.unwrap();
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&direct).await.unwrap();

    let plugins: Vec<Arc<Bucket>> = (0..16).map(|i| plugin_bucket(&format!("bench-{i}"))).collect();
    let sets = [
        path("direct sqlx INSERT (autocommit)", {
            let pool = direct.clone();
            move |n| {
                let pool = pool.clone();
                async move {
                    sqlx::query("INSERT INTO bench (key, value) VALUES ($1, $2)")
                        .bind(format!("key-{n}").into_bytes())
                        .bind(&VALUE[..])
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            }
        }),
        set_path(
            "PostgresBackend::set, durable bucket",
            backend.clone(),
            vec![bucket("durable", Durability::Immediate)],
        ),
        set_path("PostgresBackend::set, relaxed bucket", backend.clone(), vec![bucket("relaxed", Durability::Relaxed)]),
        set_path("PostgresBackend::set, durable, 16 plugins", backend.clone(), plugins),
    ];
    println!(
        "\nPostgreSQL {version} (fsync on, synchronous_commit on): set of a 100-byte value (a new key each), \
         {} ms per row, median of {ROUNDS} rounds\n",
        SET_TIME.as_millis()
    );
    println!("| path | writers | ops/s | p50 µs | p99 µs | vs direct sqlx |");
    println!("|---|---|---|---|---|---|");
    for writers in [1, 8, 64] {
        table(&sets, writers, SET_TIME).await;
    }

    let reads = bucket("reads", Durability::Relaxed);
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let items = chunk.iter().map(|i| (format!("read-{i}"), VALUE.to_vec())).collect();
        backend.set_many(&reads, items).await.unwrap();
        let keys: Vec<Vec<u8>> = chunk.iter().map(|i| format!("read-{i}").into_bytes()).collect();
        sqlx::query("INSERT INTO bench (key, value) SELECT k, $2 FROM unnest($1::bytea[]) AS t(k)")
            .bind(&keys)
            .bind(&VALUE[..])
            .execute(&direct)
            .await
            .unwrap();
    }
    let gets = [
        path("direct sqlx SELECT", {
            let pool = direct.clone();
            move |n| {
                let pool = pool.clone();
                async move {
                    let key = format!("read-{}", scramble(n) % KEYS);
                    let value: Vec<u8> = sqlx::query_scalar("SELECT value FROM bench WHERE key = $1")
                        .bind(key.into_bytes())
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                    assert_eq!(value.len(), 100);
                }
            }
        }),
        path("PostgresBackend::get", {
            let (backend, b) = (backend.clone(), reads.clone());
            move |n| {
                let (backend, b) = (backend.clone(), b.clone());
                async move {
                    let key = format!("read-{}", scramble(n) % KEYS);
                    assert_eq!(backend.get(&b, &key).await.unwrap().unwrap().len(), 100);
                }
            }
        }),
    ];
    println!("\nPostgreSQL: get of a random key among {KEYS} (warm), {} ms per row\n", GET_TIME.as_millis());
    println!("| path | callers | ops/s | p50 µs | p99 µs | vs direct sqlx |");
    println!("|---|---|---|---|---|---|");
    for callers in [1, 8] {
        table(&gets, callers, GET_TIME).await;
    }
}

/// Gets in the guest's loop of one invocation.
const GUEST_LOOP: u64 = 10_000;

/// (a): a guest `get` through the sidecar against a direct redb read.
async fn guest_gets(backend: Arc<RedbBackend>, direct: Arc<redb::Database>) {
    let guests = std::env::var_os("GATEHOUSE_GUEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"));
    let policies = tempfile::tempdir().unwrap();
    let component = guests.join("kv_counter.wasm");
    std::fs::write(
        policies.path().join("kvbench.toml"),
        format!(
            "[plugin]\nname = \"kvbench\"\ncomponent = {:?}\n[limits]\ntimeout = \"30s\"\n[kv]\nrate = \"1000000000/s\"\n",
            component.display().to_string()
        ),
    )
    .unwrap();
    let load = gatehouse::policy::load_dir(policies.path(), policies.path()).unwrap();
    assert!(load.errors.is_empty(), "{:?} (run ./dev guests first)", load.errors);
    let store = KvStore::with_backend(backend.clone() as Arc<dyn KvBackend>);
    let services = Services::with_dns(Arc::new(SystemLookup)).unwrap().with_kv(store);
    let runtime = Runtime::new(RuntimeSettings::default(), Arc::new(services)).unwrap();
    let report = runtime.load(&load.set).await;
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let runtime = Arc::new(runtime);

    // The same key and 100-byte value in both stores.
    let bucket = Arc::new(Bucket {
        namespace: Namespace::new("kvbench", "default").unwrap(),
        quota: Quota::default(),
        durability: Durability::Immediate,
    });
    backend.set(&bucket, "k".into(), VALUE.to_vec()).await.unwrap();
    {
        let txn = direct.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert(&b"k"[..], &VALUE[..]).unwrap();
        txn.commit().unwrap();
    }

    let invoke = |command: String| {
        let runtime = runtime.clone();
        async move {
            let input = Document { content_type: "text/plain".into(), body: command.into_bytes() };
            let output = runtime.invoke("kvbench", input).await.unwrap();
            assert!(output.body.starts_with(b"{\"reads\""), "{}", String::from_utf8_lossy(&output.body));
        }
    };
    let direct_read = |db: &redb::Database| {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TABLE).unwrap();
        let value = table.get(&b"k"[..]).unwrap().unwrap().value().to_vec();
        assert_eq!(value.len(), 100);
    };

    // Per get, µs: each row is one batch of GUEST_LOOP gets, timed whole.
    let mut guest_loop = Vec::new();
    let mut direct_loop = Vec::new();
    let mut backend_loop = Vec::new();
    let mut invocation = Vec::new();
    invoke(format!("read {GUEST_LOOP} k")).await; // warm: compiled, pooled
    for _ in 0..5 {
        let started = Instant::now();
        invoke(format!("read {GUEST_LOOP} k")).await;
        guest_loop.push(started.elapsed().as_secs_f64() * 1e6 / GUEST_LOOP as f64);
        let started = Instant::now();
        for _ in 0..GUEST_LOOP {
            direct_read(&direct);
        }
        direct_loop.push(started.elapsed().as_secs_f64() * 1e6 / GUEST_LOOP as f64);
        let started = Instant::now();
        for _ in 0..GUEST_LOOP {
            assert_eq!(backend.get(&bucket, "k").await.unwrap().unwrap().len(), 100);
        }
        backend_loop.push(started.elapsed().as_secs_f64() * 1e6 / GUEST_LOOP as f64);
        let started = Instant::now();
        for _ in 0..1000 {
            invoke("read 1 k".into()).await;
        }
        invocation.push(started.elapsed().as_secs_f64() * 1e6 / 1000.0);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let direct = median(direct_loop);
    println!("\na guest `get` through the sidecar (100-byte value, one key), median of 5 batches\n");
    println!("| path | µs per get | vs direct read |");
    println!("|---|---|---|");
    for (label, us) in [
        ("direct redb read from Rust (begin_read + open_table + get + copy)", direct),
        ("`RedbBackend::get` from Rust", median(backend_loop)),
        ("guest `get` in a loop of 10,000 in one invocation (kv-counter `read`)", median(guest_loop)),
        ("one invocation per guest `get` (`read 1`, 1,000 invocations)", median(invocation)),
    ] {
        println!("| {label} | {us:.2} | {:.2}x |", us / direct);
    }
}

/// How long the light plugin calls, alone and beside the heavy ones.
const FAIR_TIME: Duration = Duration::from_secs(5);
/// The value each heavy plugin reads: large enough that a read holds its
/// connection for a while, as review 29's did.
const HEAVY_VALUE: usize = 256 << 10;

/// The light plugin's `get`s, one at a time for [`FAIR_TIME`]: their
/// latencies sorted, and how many were `unavailable`.
async fn light_calls(backend: &PostgresBackend, light: &Bucket) -> (Vec<Duration>, usize) {
    let (mut latencies, mut unavailable) = (Vec::new(), 0);
    let start = Instant::now();
    while start.elapsed() < FAIR_TIME {
        let call = Instant::now();
        match backend.get(light, "key").await {
            Ok(value) => assert_eq!(value.map(|v| v.len()), Some(VALUE.len())),
            Err(gatehouse::services::kv::KvError::Unavailable(_)) => unavailable += 1,
            Err(e) => panic!("{e}"),
        }
        latencies.push(call.elapsed());
    }
    latencies.sort();
    (latencies, unavailable)
}

/// Review 29's load: ten plugins reading hard, 16 callers each, beside a
/// light plugin calling `get` one at a time; its latencies against the
/// same calls alone, in the same run.
async fn light_beside_heavy(backend: Arc<PostgresBackend>) {
    let light = plugin_bucket("light");
    backend.set(&light, "key".into(), VALUE.to_vec()).await.unwrap();
    let alone = light_calls(&backend, &light).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heavy_calls = Arc::new(AtomicU64::new(0));
    let mut heavy = Vec::new();
    for plugin in 0..10 {
        let bucket = plugin_bucket(&format!("heavy-{plugin}"));
        backend.set(&bucket, "key".into(), vec![7; HEAVY_VALUE]).await.unwrap();
        for _ in 0..16 {
            let (backend, bucket, stop, calls) = (backend.clone(), bucket.clone(), stop.clone(), heavy_calls.clone());
            heavy.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = backend.get(&bucket, "key").await;
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = heavy_calls.load(Ordering::Relaxed);
    let beside = light_calls(&backend, &light).await;
    let heavy_rate = (heavy_calls.load(Ordering::Relaxed) - before) as f64 / FAIR_TIME.as_secs_f64();
    let heavy_kib = HEAVY_VALUE >> 10;
    stop.store(true, Ordering::Relaxed);
    for task in heavy {
        task.await.unwrap();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // The `q`th percentile of sorted latencies.
    let at = |latencies: &[Duration], q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    let row = |label: &str, (latencies, unavailable): &(Vec<Duration>, usize)| {
        println!(
            "| {label} | {} | {:.2} | {:.2} | {:.2} | {unavailable} |",
            latencies.len(),
            ms(at(latencies, 50)),
            ms(at(latencies, 99)),
            ms(*latencies.last().unwrap())
        );
    };
    println!(
        "\nPostgreSQL fairness: a light plugin's get, one at a time, {} s each; the ten heavy plugins made {heavy_rate:.0} gets/s of {heavy_kib} KiB\n",
        FAIR_TIME.as_secs()
    );
    println!("| light plugin | calls | p50 ms | p99 ms | max ms | unavailable |");
    println!("|---|---|---|---|---|---|");
    row("alone", &alone);
    row("beside ten heavy plugins (16 callers each)", &beside);
    println!("\np99 beside / alone: {:.1}x", ms(at(&beside.0, 99)) / ms(at(&alone.0, 99)));
}

/// Rows alternate over the rounds, so drift on a shared VM favours none.
async fn table(paths: &[Path], callers: usize, time: Duration) {
    let mut runs: Vec<Vec<Result>> = paths.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (path, runs) in paths.iter().zip(&mut runs) {
            runs.push(run(callers, time, &path.call).await);
        }
    }
    let medians: Vec<Result> = runs.into_iter().map(median).collect();
    let baseline = medians[0].ops;
    for (path, result) in paths.iter().zip(&medians) {
        println!(
            "| {} | {callers} | {:.0} | {:.0} | {:.0} | {:.2} |",
            path.label,
            result.ops,
            result.p50.as_secs_f64() * 1e6,
            result.p99.as_secs_f64() * 1e6,
            result.ops / baseline
        );
    }
}

fn scramble(n: u64) -> u64 {
    n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 17
}

struct Result {
    ops: f64,
    p50: Duration,
    p99: Duration,
}

fn median(mut runs: Vec<Result>) -> Result {
    runs.sort_by(|a, b| a.ops.total_cmp(&b.ops));
    runs.swap_remove(runs.len() / 2)
}

/// Runs `call` from `callers` tasks for `time`; each call gets a new number.
async fn run(callers: usize, time: Duration, call: &Call) -> Result {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while started.elapsed() < time {
                    let n = NEXT.fetch_add(1, Ordering::Relaxed);
                    let start = Instant::now();
                    call(n).await;
                    latencies.push(start.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    Result { ops: all.len() as f64 / elapsed.as_secs_f64(), p50: all[all.len() / 2], p99: all[all.len() * 99 / 100] }
}
