//! Audit log benchmark. Prints a table for BENCHMARKS.md:
//!
//! - durable appends (`AuditLog::append`: one redb transaction with
//!   `Durability::Immediate`, entries + tree nodes + a signed checkpoint),
//!   one entry per batch and 64 entries per batch, as entries/s;
//! - checkpoint signing alone (Ed25519 over the note text);
//! - proof generation from the stored nodes (inclusion of a random entry,
//!   consistency from a random older size) on a log of 100,000 entries;
//! - `verify` over an export of that log, in MB/s of entry bytes, beside
//!   raw SHA-256 over the same bytes (one pass, same run), and the leaf
//!   hashing + tree part of verify alone.
//!
//! - the same durable appends into a shared PostgreSQL log
//!   (`AuditLog::postgres`, a throwaway cluster with the server's default
//!   durability), beside the baseline of one sqlx transaction inserting
//!   the same entry bytes into a plain table (skipped without server
//!   binaries).
//!
//! Run with `./dev bench` or `cargo bench -p gatehouse --bench audit`;
//! `GATEHOUSE_BENCH_DIR` picks the disk (default: the system's temporary
//! directory).
#![allow(missing_docs)]

#[allow(dead_code)]
#[path = "../tests/all/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use gatehouse::audit::{AuditLog, Change, Checkpoint, NewEntry, NoteSigner, export, merkle, verify};
use sha2::{Digest, Sha256};

const ORIGIN: &str = "bench.gatehouse/audit";
const ROW_TIME: Duration = Duration::from_millis(2000);
const LOG_SIZE: u64 = 100_000;

fn change(n: u64) -> NewEntry {
    NewEntry {
        actor: "policy:policies/doc-enricher.toml@3f2a9c".into(),
        plugin: Some("doc-enricher".into()),
        change: Change {
            kind: "changed".into(),
            item: "http.allow".into(),
            before: Some(serde_json::json!(["https://api.example.com", format!("https://n{n}.example.org")])),
            after: Some(serde_json::json!(["https://api.example.com", format!("https://n{}.example.org", n + 1)])),
        },
    }
}

fn key() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, [1; 32]).unwrap()
}

/// Runs `f` until ROW_TIME passes; returns (operations, elapsed).
fn timed(mut f: impl FnMut() -> u64) -> (u64, Duration) {
    let start = Instant::now();
    let mut ops = 0;
    while start.elapsed() < ROW_TIME {
        ops += f();
    }
    (ops, start.elapsed())
}

fn row(label: &str, ops: u64, elapsed: Duration, unit: &str) {
    let rate = ops as f64 / elapsed.as_secs_f64();
    println!("| {label} | {rate:.0} {unit}/s | {:.1} µs |", 1e6 / rate);
}

fn main() {
    let base = std::env::var_os("GATEHOUSE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();

    println!("| operation | rate | per operation |");
    println!("|---|---|---|");
    // Durable appends.
    let log = AuditLog::open(&dir.path().join("append.redb"), ORIGIN, vec![key()]).unwrap();
    let mut n = 0;
    let (ops, t) = timed(|| {
        n += 1;
        log.append(&[change(n)]).unwrap();
        1
    });
    row("append, 1 entry per batch (durable)", ops, t, "entries");
    let (ops, t) = timed(|| {
        let batch: Vec<NewEntry> = (0..64).map(|i| change(n + i)).collect();
        n += 64;
        log.append(&batch).unwrap();
        64
    });
    row("append, 64 entries per batch (durable)", ops, t, "entries");
    drop(log);
    if postgres::available() {
        postgres_appends();
    }

    // Signing alone.
    let signer = key();
    let cp = Checkpoint { origin: ORIGIN.into(), size: 123_456, root: [7; 32], grants: None };
    let (ops, t) = timed(|| {
        for _ in 0..100 {
            std::hint::black_box(cp.sign(&[&signer]).unwrap());
        }
        100
    });
    row("sign a checkpoint (Ed25519)", ops, t, "checkpoints");

    // A large log, built in batches of 1,000.
    let log = AuditLog::open(&dir.path().join("big.redb"), ORIGIN, vec![key()]).unwrap();
    for b in 0..LOG_SIZE / 1000 {
        let batch: Vec<NewEntry> = (0..1000).map(|i| change(b * 1000 + i)).collect();
        log.append(&batch).unwrap();
    }
    let mut x = 0x2545F4914F6CDD1Du64;
    let mut rand = move |below: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % below
    };
    let (ops, t) = timed(|| {
        std::hint::black_box(log.prove(rand(LOG_SIZE)).unwrap());
        1
    });
    row(&format!("inclusion proof, log of {LOG_SIZE}"), ops, t, "proofs");
    let (ops, t) = timed(|| {
        std::hint::black_box(log.consistency(1 + rand(LOG_SIZE - 1)).unwrap());
        1
    });
    row(&format!("consistency proof, log of {LOG_SIZE}"), ops, t, "proofs");

    // Verify vs raw SHA-256 over the same bytes.
    let mut out = Vec::new();
    log.export(&mut out).unwrap();
    let exported = export::read(&mut &out[..]).unwrap();
    let bytes: u64 = exported.entries.iter().map(|e| e.len() as u64).sum();
    let trusted = [key().verifier()];
    let mb = |t: Duration| bytes as f64 / 1e6 / t.as_secs_f64();
    let mut best = (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let start = Instant::now();
        let mut h = Sha256::new();
        for e in &exported.entries {
            h.update(e);
        }
        std::hint::black_box(h.finalize());
        best.0 = best.0.min(start.elapsed());

        let start = Instant::now();
        let summary = verify(&exported.entries, &exported.checkpoints, &trusted, None).unwrap();
        best.1 = best.1.min(start.elapsed());
        assert_eq!(summary.size, LOG_SIZE);

        let start = Instant::now();
        let tree = merkle::Tree::from_leaves(exported.entries.iter().map(|e| merkle::leaf_hash(e)).collect());
        std::hint::black_box(merkle::root(&tree, LOG_SIZE).unwrap());
        best.2 = best.2.min(start.elapsed());

        let start = Instant::now();
        for e in &exported.entries {
            std::hint::black_box(gatehouse::audit::scan::scan(e).unwrap());
        }
        best.3 = best.3.min(start.elapsed());
    }
    println!();
    println!("| {LOG_SIZE} entries, {:.1} MB, best of 3 | MB/s | vs raw SHA-256 |", bytes as f64 / 1e6);
    println!("|---|---|---|");
    println!("| raw SHA-256, one pass | {:.0} | 1.00 |", mb(best.0));
    println!(
        "| verify (decode + canonical check + chain + tree + {} checkpoints) | {:.0} | {:.2} |",
        exported.checkpoints.len(),
        mb(best.1),
        best.0.as_secs_f64() / best.1.as_secs_f64()
    );
    println!("| leaf hashes + tree only | {:.0} | {:.2} |", mb(best.2), best.0.as_secs_f64() / best.2.as_secs_f64());
    println!("| canonical-entry scan only | {:.0} | {:.2} |", mb(best.3), best.0.as_secs_f64() / best.3.as_secs_f64());
}

/// Durable appends to a PostgreSQL log against one plain sqlx insert
/// transaction of the same bytes (what any durable write to the database
/// costs at least).
fn postgres_appends() {
    use sqlx::Connection;

    let cluster = postgres::TestPostgres::start_durable("gatehouse", "bench-password", "gatehouse");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _entered = runtime.enter();
    let store = gatehouse::audit::postgres::PgStore::open(cluster.url().parse().unwrap(), "bench").unwrap();
    let log = AuditLog::postgres(store, ORIGIN, vec![key()]).unwrap();
    let bytes = serde_json::to_vec(&serde_json::json!({ "change": change(0).change.after })).unwrap();
    let mut conn = runtime.block_on(sqlx::PgConnection::connect(&cluster.url())).unwrap();
    runtime
        .block_on(
            sqlx::query("CREATE TABLE baseline (seq bigserial PRIMARY KEY, entry bytea NOT NULL)").execute(&mut conn),
        )
        .unwrap();
    for per_batch in [1u64, 64] {
        let mut n = 0;
        let (ops, t) = timed(|| {
            let batch: Vec<NewEntry> = (0..per_batch).map(|i| change(n + i)).collect();
            n += per_batch;
            log.append(&batch).unwrap();
            per_batch
        });
        let audit = ops as f64 / t.as_secs_f64();
        let (ops, t) = timed(|| {
            runtime.block_on(async {
                let mut txn = conn.begin().await.unwrap();
                for _ in 0..per_batch {
                    sqlx::query("INSERT INTO baseline (entry) VALUES ($1)")
                        .bind(&bytes)
                        .execute(&mut *txn)
                        .await
                        .unwrap();
                }
                txn.commit().await.unwrap();
            });
            per_batch
        });
        let plain = ops as f64 / t.as_secs_f64();
        println!(
            "| PostgreSQL append, {per_batch} per batch (durable) | {audit:.0} entries/s | {:.1} µs | plain sqlx insert+commit {plain:.0}/s: {:.2}x |",
            1e6 / audit,
            audit / plain
        );
    }
}
