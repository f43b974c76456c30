//! The behavioural suite on redb, plus what only an embedded file has:
//! reopening, damaged files, the lock against a second process.

use std::sync::Arc;

use gatehouse::services::kv::policy::{Durability, Quota};
use gatehouse::services::kv::{KvBackend, KvError, RedbBackend};
use tempfile::TempDir;

use super::suite::{self, bucket, full_scan};

fn open() -> (TempDir, Arc<dyn KvBackend>) {
    let dir = tempfile::tempdir().unwrap();
    let backend = RedbBackend::open(&dir.path().join("kv.redb")).unwrap();
    (dir, Arc::new(backend))
}

macro_rules! on_redb {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, backend) = open();
            suite::$name(backend).await;
        }
    )*};
}

on_redb!(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_usage_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let b = bucket("alpha", "default", Quota::default(), Durability::Immediate);
    let relaxed = bucket("alpha", "cache", Quota::default(), Durability::Relaxed);
    {
        let backend = RedbBackend::open(&path).unwrap();
        backend.set(&b, "k".into(), b"value".to_vec()).await.unwrap();
        backend.set(&relaxed, "r".into(), b"relaxed".to_vec()).await.unwrap();
        assert_eq!(backend.increment(&b, "n".into(), 41).await.unwrap(), 41);
    }
    let backend = RedbBackend::open(&path).unwrap();
    assert_eq!(backend.get(&b, "k").await.unwrap().as_deref(), Some(&b"value"[..]));
    assert_eq!(backend.get(&relaxed, "r").await.unwrap().as_deref(), Some(&b"relaxed"[..]), "a clean close flushes");
    assert_eq!(backend.increment(&b, "n".into(), 1).await.unwrap(), 42);
    let usage = backend.usage(&b).await.unwrap();
    assert_eq!(usage.plugin.keys, 3);
    assert_eq!(usage.bucket, full_scan(&backend, &b).await.1);
}

#[test]
fn damaged_files_are_unavailable_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    // Not a database at all.
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0x5a; 64 << 10]).unwrap();
    assert!(matches!(RedbBackend::open(&garbage), Err(KvError::Unavailable(_))));

    // A real store, truncated, and one with its header overwritten.
    let path = dir.path().join("kv.redb");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    {
        let backend = RedbBackend::open(&path).unwrap();
        let b = bucket("alpha", "default", Quota::default(), Durability::Immediate);
        rt.block_on(async {
            for i in 0..200 {
                backend.set(&b, format!("key-{i}"), vec![7; 1000]).await.unwrap();
            }
        });
    }
    let bytes = std::fs::read(&path).unwrap();
    for (name, damaged) in [
        ("truncated", bytes[..bytes.len() / 3].to_vec()),
        ("header", [vec![0xff; 512], bytes[512..].to_vec()].concat()),
        ("tiny", bytes[..100].to_vec()),
    ] {
        let file = dir.path().join(format!("{name}.redb"));
        std::fs::write(&file, damaged).unwrap();
        match RedbBackend::open(&file) {
            Err(KvError::Unavailable(message)) => assert!(message.contains(name), "{message}"),
            Err(other) => panic!("{name}: {other:?}"),
            Ok(_) => panic!("{name}: a damaged file was opened"),
        }
    }
}

#[test]
fn a_store_open_elsewhere_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let _first = RedbBackend::open(&path).unwrap();
    assert!(matches!(RedbBackend::open(&path), Err(KvError::Unavailable(_))));
}
