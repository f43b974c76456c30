//! The behavioural suite of `KvBackend`: every function takes a fresh
//! backend, so each backend (redb in `redb.rs`, PostgreSQL in
//! `postgres.rs`) runs the same checks. Nothing here knows which backend it
//! talks to. The `_on` variants take several backends over one store
//! (several sidecar processes on one PostgreSQL database) and spread their
//! tasks over them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gatehouse::services::kv::backend::{MAX_BATCH_ITEMS, Namespace};
use gatehouse::services::kv::policy::{Durability, Quota};
use gatehouse::services::kv::{Bucket, KvBackend, KvError, QuotaKind, Usage};

pub fn bucket(plugin: &str, name: &str, quota: Quota, durability: Durability) -> Bucket {
    Bucket { namespace: Namespace::new(plugin, name).unwrap(), quota, durability }
}

fn default_bucket(plugin: &str) -> Bucket {
    bucket(plugin, "default", Quota::default(), Durability::Immediate)
}

/// Every key and value of a bucket, read page by page, and what they count.
pub async fn full_scan(backend: &dyn KvBackend, b: &Bucket) -> (BTreeMap<String, Vec<u8>>, Usage) {
    let mut all = BTreeMap::new();
    let mut cursor = None;
    loop {
        let page = backend.list_keys(b, "", cursor.as_deref(), 97).await.unwrap();
        let values = backend.get_many(b, &page.keys).await.unwrap();
        for (key, value) in page.keys.into_iter().zip(values) {
            all.insert(key, value.expect("a listed key has a value"));
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let usage = Usage { keys: all.len() as u64, bytes: all.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum() };
    (all, usage)
}

/// The stored usage of a bucket equals what a full scan counts.
pub async fn assert_usage_exact(backend: &dyn KvBackend, b: &Bucket) -> Usage {
    let (_, scanned) = full_scan(backend, b).await;
    let stored = backend.usage(b).await.unwrap();
    assert_eq!(stored.bucket, scanned, "stored usage of {:?} differs from a full scan", b.namespace);
    scanned
}

fn quota_error(result: Result<impl std::fmt::Debug, KvError>) -> QuotaKind {
    match result {
        Err(KvError::QuotaExceeded { quota, .. }) => quota,
        other => panic!("expected quota-exceeded, got {other:?}"),
    }
}

fn invalid<T: std::fmt::Debug>(result: Result<T, KvError>) {
    assert!(matches!(result, Err(KvError::InvalidInput(_))), "expected invalid-input, got {result:?}");
}

pub async fn namespaces_are_isolated(backend: Arc<dyn KvBackend>) {
    let backend = &*backend;
    let spaces = [
        default_bucket("alpha"),
        bucket("alpha", "cache", Quota::default(), Durability::Immediate),
        default_bucket("beta"),
        // Joined naively these two would both read "a" "b" "c".
        bucket("a", "b-c", Quota::default(), Durability::Immediate),
        bucket("a-b", "c", Quota::default(), Durability::Immediate),
    ];
    for (i, b) in spaces.iter().enumerate() {
        backend.set(b, "k".into(), format!("v{i}").into_bytes()).await.unwrap();
        backend.set(b, format!("only-{i}"), b"x".to_vec()).await.unwrap();
        // Keys that look like paths or other namespaces stay plain keys.
        backend.set(b, "../alpha/default/k".into(), b"trick".to_vec()).await.unwrap();
        backend.set(b, "\0k".into(), b"nul".to_vec()).await.unwrap();
    }
    for (i, b) in spaces.iter().enumerate() {
        assert_eq!(backend.get(b, "k").await.unwrap(), Some(format!("v{i}").into_bytes()));
        let page = backend.list_keys(b, "", None, 100).await.unwrap();
        let mut expected = vec!["\0k".to_string(), "../alpha/default/k".into(), "k".into(), format!("only-{i}")];
        expected.sort();
        assert_eq!(page.keys, expected, "{:?}", b.namespace);
        assert_eq!(backend.list_keys(b, "only-", None, 100).await.unwrap().keys, vec![format!("only-{i}")]);
        for (j, other) in spaces.iter().enumerate() {
            if i != j {
                assert!(!backend.exists(b, &format!("only-{j}")).await.unwrap());
            }
            let _ = other;
        }
        assert_usage_exact(backend, b).await;
    }
    // Deleting in one namespace leaves the others.
    assert!(backend.delete(&spaces[0], "k".into()).await.unwrap());
    for b in &spaces[1..] {
        assert!(backend.exists(b, "k").await.unwrap());
    }
    // A cursor works only in the namespace that issued it.
    let page = backend.list_keys(&spaces[1], "", None, 1).await.unwrap();
    let cursor = page.cursor.expect("more than one key");
    assert!(backend.list_keys(&spaces[1], "", Some(&cursor), 10).await.is_ok());
    for other in [&spaces[0], &spaces[2], &spaces[3]] {
        invalid(backend.list_keys(other, "", Some(&cursor), 10).await);
    }
    invalid(backend.list_keys(&spaces[1], "", Some("00"), 10).await);
    invalid(backend.list_keys(&spaces[1], "", Some("not hex at all"), 10).await);
}

pub async fn keys_are_checked(backend: Arc<dyn KvBackend>) {
    let backend = &*backend;
    let quota = Quota { max_key: 10, ..Quota::default() };
    let b = bucket("alpha", "default", quota, Durability::Immediate);
    invalid(backend.get(&b, "").await);
    invalid(backend.exists(&b, "").await);
    invalid(backend.set(&b, String::new(), b"v".to_vec()).await);
    invalid(backend.delete(&b, String::new()).await);
    invalid(backend.increment(&b, String::new(), 1).await);
    invalid(backend.compare_and_swap(&b, String::new(), None, b"v".to_vec()).await);
    invalid(backend.get_many(&b, &["ok".into(), String::new()]).await);
    invalid(backend.set_many(&b, vec![("ok".into(), vec![]), (String::new(), vec![])]).await);
    invalid(backend.delete_many(&b, vec![String::new()]).await);
    let huge = "k".repeat(4097);
    invalid(backend.get(&b, &huge).await);
    invalid(backend.set(&b, huge.clone(), vec![]).await);
    invalid(backend.list_keys(&b, &huge, None, 10).await);
    invalid(backend.list_keys(&b, "", None, 0).await);
    // max_key: exactly at the limit passes, one byte over is a quota refusal.
    backend.set(&b, "k".repeat(10), b"v".to_vec()).await.unwrap();
    assert_eq!(quota_error(backend.set(&b, "k".repeat(11), b"v".to_vec()).await), QuotaKind::KeySize);
    assert_eq!(quota_error(backend.increment(&b, "k".repeat(11), 1).await), QuotaKind::KeySize);
    assert!(!backend.exists(&b, &"k".repeat(11)).await.unwrap());
    // Reading a key longer than max_key is fine (it may predate the limit).
    assert_eq!(backend.get(&b, &"k".repeat(11)).await.unwrap(), None);
    let usage = assert_usage_exact(backend, &b).await;
    assert_eq!(usage, Usage { keys: 1, bytes: 11 });
}

pub async fn quota_boundaries_are_exact(backend: Arc<dyn KvBackend>) {
    let backend = &*backend;
    let quota = Quota { max_keys: 3, max_bytes: 100, max_key: 10, max_value: 50 };
    let b = bucket("alpha", "default", quota, Durability::Immediate);
    // max_value: exactly 50 passes, 51 is refused, and the old value stays.
    backend.set(&b, "a".into(), vec![1; 50]).await.unwrap();
    assert_eq!(quota_error(backend.set(&b, "b".into(), vec![1; 51]).await), QuotaKind::ValueSize);
    assert_eq!(quota_error(backend.set(&b, "a".into(), vec![1; 51]).await), QuotaKind::ValueSize);
    assert_eq!(quota_error(backend.compare_and_swap(&b, "a".into(), None, vec![1; 51]).await), QuotaKind::ValueSize);
    assert_eq!(backend.get(&b, "a").await.unwrap(), Some(vec![1; 50]));
    // max_bytes: 51 used; 49 more fill it exactly, then one byte more is refused.
    backend.set(&b, "b".into(), vec![2; 48]).await.unwrap();
    assert_eq!(
        backend.set(&b, "c".into(), vec![]).await.unwrap_err(),
        KvError::QuotaExceeded { quota: QuotaKind::Bytes, usage: 100, needed: 101, limit: 100 }
    );
    assert_eq!(quota_error(backend.set(&b, "b".into(), vec![2; 49]).await), QuotaKind::Bytes);
    assert_eq!(quota_error(backend.increment(&b, "c".into(), 1).await), QuotaKind::Bytes);
    assert_eq!(
        quota_error(backend.compare_and_swap(&b, "b".into(), Some(vec![2; 48]), vec![2; 49]).await),
        QuotaKind::Bytes
    );
    assert!(!backend.exists(&b, "c").await.unwrap());
    assert_eq!(backend.get(&b, "b").await.unwrap(), Some(vec![2; 48]));
    assert_eq!(assert_usage_exact(backend, &b).await, Usage { keys: 2, bytes: 100 });
    // An overwrite of the same size fits at the limit.
    backend.set(&b, "b".into(), vec![3; 48]).await.unwrap();
    // max_keys: a third key passes, a fourth is refused.
    backend.set(&b, "b".into(), vec![]).await.unwrap();
    backend.set(&b, "c".into(), vec![]).await.unwrap();
    assert_eq!(
        backend.set(&b, "d".into(), vec![]).await.unwrap_err(),
        KvError::QuotaExceeded { quota: QuotaKind::Keys, usage: 3, needed: 4, limit: 3 }
    );
    assert_eq!(quota_error(backend.set_many(&b, vec![("d".into(), vec![])]).await), QuotaKind::Keys);
    assert!(!backend.exists(&b, "d").await.unwrap());
    // Replacing a key within one batch: delete one, add one.
    backend.delete_many(&b, vec!["c".into()]).await.unwrap();
    backend.set_many(&b, vec![("d".into(), vec![]), ("d".into(), vec![9])]).await.unwrap();
    assert_eq!(backend.get(&b, "d").await.unwrap(), Some(vec![9]), "the last value of a repeated key wins");
    assert_eq!(assert_usage_exact(backend, &b).await, Usage { keys: 3, bytes: 51 + 1 + 2 });
    let report = backend.usage(&b).await.unwrap();
    assert_eq!(report.plugin, report.bucket);
    assert_eq!(report.quota, quota);
}

pub async fn quotas_count_every_bucket_of_a_plugin(backend: Arc<dyn KvBackend>) {
    let backend = &*backend;
    let quota = Quota { max_keys: 2, max_bytes: 1000, max_key: 10, max_value: 100 };
    let a = bucket("alpha", "default", quota, Durability::Immediate);
    let cache = bucket("alpha", "cache", quota, Durability::Relaxed);
    let other = bucket("beta", "default", quota, Durability::Immediate);
    backend.set(&a, "x".into(), b"1".to_vec()).await.unwrap();
    backend.set(&cache, "x".into(), b"1".to_vec()).await.unwrap();
    assert_eq!(quota_error(backend.set(&cache, "y".into(), b"1".to_vec()).await), QuotaKind::Keys);
    assert_eq!(quota_error(backend.set(&a, "y".into(), b"1".to_vec()).await), QuotaKind::Keys);
    // Another plugin has its own count.
    backend.set(&other, "x".into(), b"1".to_vec()).await.unwrap();
    backend.set(&other, "y".into(), b"1".to_vec()).await.unwrap();
    let report = backend.usage(&cache).await.unwrap();
    assert_eq!(report.bucket, Usage { keys: 1, bytes: 2 });
    assert_eq!(report.plugin, Usage { keys: 2, bytes: 4 });
    assert_usage_exact(backend, &a).await;
    assert_usage_exact(backend, &cache).await;
    assert_usage_exact(backend, &other).await;
}

/// `buckets` names each bucket of the plugin that holds a key, in byte
/// order, and no other: not another plugin's (one whose name is a prefix
/// of it, or has it as a prefix), not one emptied by deletes.
pub async fn buckets_are_those_that_hold_keys(backend: Arc<dyn KvBackend>) {
    let backend = &*backend;
    let quota = Quota::default();
    assert!(backend.buckets("alpha").await.unwrap().is_empty());
    for (plugin, name) in
        [("alpha", "z-last"), ("alpha", "a_first"), ("alpha", "a-first"), ("alph", "x"), ("alphabet", "y")]
    {
        backend.set(&bucket(plugin, name, quota, Durability::Immediate), "k".into(), b"v".to_vec()).await.unwrap();
    }
    let emptied = bucket("alpha", "emptied", quota, Durability::Relaxed);
    backend.set(&emptied, "k".into(), b"v".to_vec()).await.unwrap();
    assert!(backend.delete(&emptied, "k".into()).await.unwrap());
    assert_eq!(backend.buckets("alpha").await.unwrap(), ["a-first", "a_first", "z-last"]);
    assert_eq!(backend.buckets("alph").await.unwrap(), ["x"]);
    assert_eq!(backend.buckets("alphabet").await.unwrap(), ["y"]);
}

pub async fn a_lowered_quota_blocks_growth_only(backend: Arc<dyn KvBackend>) {
    let backend = &*backend;
    let wide = bucket("alpha", "default", Quota::default(), Durability::Immediate);
    backend.set(&wide, "long-key-of-20-bytes".into(), vec![1; 100]).await.unwrap();
    backend.set(&wide, "b".into(), vec![1; 100]).await.unwrap();
    backend.set(&wide, "c".into(), vec![1; 100]).await.unwrap();
    // Now below usage on every count.
    let narrow = bucket(
        "alpha",
        "default",
        Quota { max_keys: 1, max_bytes: 50, max_key: 5, max_value: 200 },
        Durability::Immediate,
    );
    assert_eq!(backend.get(&narrow, "long-key-of-20-bytes").await.unwrap(), Some(vec![1; 100]), "reads still work");
    assert_eq!(backend.list_keys(&narrow, "", None, 10).await.unwrap().keys.len(), 3);
    assert_eq!(quota_error(backend.set(&narrow, "d".into(), vec![]).await), QuotaKind::Keys);
    assert_eq!(quota_error(backend.set(&narrow, "b".into(), vec![1; 101]).await), QuotaKind::Bytes);
    // Shrinking overwrites pass, also of a key longer than the new max_key.
    backend.set(&narrow, "b".into(), vec![1; 10]).await.unwrap();
    backend.set(&narrow, "long-key-of-20-bytes".into(), vec![1; 10]).await.unwrap();
    assert!(!backend.compare_and_swap(&narrow, "c".into(), None, vec![]).await.unwrap());
    assert!(backend.compare_and_swap(&narrow, "c".into(), Some(vec![1; 100]), vec![2]).await.unwrap());
    // Deletes pass.
    assert!(backend.delete(&narrow, "c".into()).await.unwrap());
    assert_eq!(backend.delete_many(&narrow, vec!["b".into(), "zzz".into()]).await.unwrap(), 1);
    assert_eq!(assert_usage_exact(backend, &narrow).await, Usage { keys: 1, bytes: 30 });
}

pub async fn batches_are_all_or_nothing(backend: Arc<dyn KvBackend>) {
    let backend = &*backend;
    let quota = Quota { max_keys: 5, max_bytes: 1000, max_key: 10, max_value: 10 };
    let b = bucket("alpha", "default", quota, Durability::Immediate);
    backend.set(&b, "keep".into(), b"old".to_vec()).await.unwrap();
    // One oversized value refuses the whole batch.
    let result = backend
        .set_many(&b, vec![("keep".into(), b"new".to_vec()), ("a".into(), vec![0; 10]), ("b".into(), vec![0; 11])])
        .await;
    assert_eq!(quota_error(result), QuotaKind::ValueSize);
    // Too many keys, too long a key: the same.
    let six: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("n{i}"), vec![])).collect();
    assert_eq!(quota_error(backend.set_many(&b, six).await), QuotaKind::Keys);
    let long = vec![("keep".into(), b"new".to_vec()), ("k".repeat(11), vec![])];
    assert_eq!(quota_error(backend.set_many(&b, long).await), QuotaKind::KeySize);
    assert_eq!(backend.get(&b, "keep").await.unwrap(), Some(b"old".to_vec()));
    assert_eq!(assert_usage_exact(backend, &b).await, Usage { keys: 1, bytes: 7 });
    // A delete_many with one bad key deletes nothing.
    invalid(backend.delete_many(&b, vec!["keep".into(), String::new()]).await);
    assert!(backend.exists(&b, "keep").await.unwrap());
    // Bounds on one call.
    let many: Vec<String> = (0..=MAX_BATCH_ITEMS).map(|i| format!("k{i}")).collect();
    assert_eq!(quota_error(backend.get_many(&b, &many).await), QuotaKind::Call);
    assert_eq!(quota_error(backend.delete_many(&b, many.clone()).await), QuotaKind::Call);
    // get_many answers in order, None for missing keys.
    backend.set_many(&b, vec![("x".into(), b"1".to_vec()), ("y".into(), b"2".to_vec())]).await.unwrap();
    let got = backend.get_many(&b, &["y".into(), "missing".into(), "x".into(), "y".into()]).await.unwrap();
    assert_eq!(got, vec![Some(b"2".to_vec()), None, Some(b"1".to_vec()), Some(b"2".to_vec())]);
    assert_eq!(backend.delete_many(&b, vec!["x".into(), "x".into(), "y".into(), "nope".into()]).await.unwrap(), 2);
    assert_eq!(assert_usage_exact(backend, &b).await, Usage { keys: 1, bytes: 7 });
}

pub async fn increment_and_cas_semantics(backend: Arc<dyn KvBackend>) {
    let backend = &*backend;
    let b = default_bucket("alpha");
    assert_eq!(backend.increment(&b, "n".into(), 5).await.unwrap(), 5);
    assert_eq!(backend.increment(&b, "n".into(), -7).await.unwrap(), -2);
    assert_eq!(backend.get(&b, "n").await.unwrap(), Some(b"-2".to_vec()), "counters are decimal ASCII");
    backend.set(&b, "m".into(), b"41".to_vec()).await.unwrap();
    assert_eq!(backend.increment(&b, "m".into(), 1).await.unwrap(), 42);
    backend.set(&b, "text".into(), b"forty".to_vec()).await.unwrap();
    assert!(matches!(backend.increment(&b, "text".into(), 1).await, Err(KvError::Conflict(_))));
    backend.set(&b, "max".into(), i64::MAX.to_string().into_bytes()).await.unwrap();
    assert!(matches!(backend.increment(&b, "max".into(), 1).await, Err(KvError::Conflict(_))));
    assert_eq!(backend.get(&b, "max").await.unwrap(), Some(i64::MAX.to_string().into_bytes()));
    assert_eq!(backend.get(&b, "text").await.unwrap(), Some(b"forty".to_vec()));
    // compare-and-swap.
    assert!(backend.compare_and_swap(&b, "c".into(), None, b"1".to_vec()).await.unwrap());
    assert!(!backend.compare_and_swap(&b, "c".into(), None, b"2".to_vec()).await.unwrap());
    assert!(!backend.compare_and_swap(&b, "c".into(), Some(b"2".to_vec()), b"3".to_vec()).await.unwrap());
    assert!(backend.compare_and_swap(&b, "c".into(), Some(b"1".to_vec()), b"3".to_vec()).await.unwrap());
    assert_eq!(backend.get(&b, "c").await.unwrap(), Some(b"3".to_vec()));
    assert!(!backend.compare_and_swap(&b, "absent".into(), Some(vec![]), b"x".to_vec()).await.unwrap());
    assert!(!backend.exists(&b, "absent").await.unwrap());
    // delete reports whether the key existed.
    assert!(backend.delete(&b, "c".into()).await.unwrap());
    assert!(!backend.delete(&b, "c".into()).await.unwrap());
    assert_usage_exact(backend, &b).await;
}

pub async fn increments_and_cas_under_concurrency_lose_no_update(backend: Arc<dyn KvBackend>) {
    increments_and_cas_under_concurrency_lose_no_update_on(vec![backend]).await;
}

pub async fn increments_and_cas_under_concurrency_lose_no_update_on(backends: Vec<Arc<dyn KvBackend>>) {
    let backend = Arc::clone(&backends[0]);
    let b = Arc::new(default_bucket("alpha"));
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (backend, b) = (Arc::clone(&backends[t % backends.len()]), Arc::clone(&b));
            tokio::spawn(async move {
                for _ in 0..20 {
                    backend.increment(&b, "counter".into(), 1).await.unwrap();
                }
                // A CAS loop: read, add one, swap; retry on a lost race.
                for _ in 0..5 {
                    loop {
                        let now = backend.get(&b, "cas").await.unwrap();
                        let n: u64 = now.as_deref().map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                        let next = (n + 1).to_string().into_bytes();
                        if backend.compare_and_swap(&b, "cas".into(), now, next).await.unwrap() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(backend.get(&b, "counter").await.unwrap(), Some(b"640".to_vec()));
    assert_eq!(backend.get(&b, "cas").await.unwrap(), Some(b"160".to_vec()));
    assert_usage_exact(&*backend, &b).await;
}

pub async fn quotas_hold_under_concurrent_writers(backend: Arc<dyn KvBackend>) {
    quotas_hold_under_concurrent_writers_on(vec![backend]).await;
}

pub async fn quotas_hold_under_concurrent_writers_on(backends: Vec<Arc<dyn KvBackend>>) {
    let backend = Arc::clone(&backends[0]);
    let quota = Quota { max_keys: 50, max_bytes: 1500, max_key: 16, max_value: 64 };
    let b = Arc::new(bucket("alpha", "default", quota, Durability::Immediate));
    let cache = Arc::new(bucket("alpha", "cache", quota, Durability::Relaxed));
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let backend = Arc::clone(&backends[t % backends.len()]);
            let b = if t % 2 == 0 { Arc::clone(&b) } else { Arc::clone(&cache) };
            tokio::spawn(async move {
                let mut stored = 0u64;
                for i in 0..4 {
                    // 6-byte keys, 24-byte values: 30 bytes each, 50 fit.
                    match backend.set(&b, format!("{t:02}-{i:03}"), vec![0; 24]).await {
                        Ok(()) => stored += 1,
                        Err(KvError::QuotaExceeded { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                stored
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap();
    }
    assert_eq!(stored, 50, "exactly the quota is stored, never more");
    let a = assert_usage_exact(&*backend, &b).await;
    let c = assert_usage_exact(&*backend, &cache).await;
    assert_eq!(a.keys + c.keys, 50);
    assert_eq!(backend.usage(&b).await.unwrap().plugin, Usage { keys: 50, bytes: 1500 });
}

pub async fn refused_writes_do_not_fail_their_neighbours(backend: Arc<dyn KvBackend>) {
    let quota = Quota { max_keys: 40, ..Quota::default() };
    let b = Arc::new(bucket("alpha", "default", quota, Durability::Immediate));
    backend.set(&b, "text".into(), b"not a number".to_vec()).await.unwrap();
    let tasks: Vec<_> = (0..96)
        .map(|t| {
            let (backend, b) = (Arc::clone(&backend), Arc::clone(&b));
            tokio::spawn(async move {
                match t % 3 {
                    0 => backend.increment(&b, "text".into(), 1).await.map(drop),
                    1 => {
                        backend.compare_and_swap(&b, "text".into(), None, vec![]).await.map(|swapped| assert!(!swapped))
                    }
                    _ => backend.set(&b, format!("key-{t}"), vec![1; 10]).await,
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    for (t, result) in results.iter().enumerate() {
        match t % 3 {
            0 => assert!(matches!(result, Err(KvError::Conflict(_))), "{result:?}"),
            _ => assert!(result.is_ok(), "task {t}: {result:?}"),
        }
    }
    assert_eq!(assert_usage_exact(&*backend, &b).await.keys, 33);
}

pub async fn paging_is_stable_under_concurrent_writes(backend: Arc<dyn KvBackend>) {
    let b = Arc::new(default_bucket("alpha"));
    let stable: Vec<(String, Vec<u8>)> = (0..300).map(|i| (format!("k{i:04}"), vec![1])).collect();
    for chunk in stable.chunks(100) {
        backend.set_many(&b, chunk.to_vec()).await.unwrap();
    }
    let writer = {
        let (backend, b) = (Arc::clone(&backend), Arc::clone(&b));
        tokio::spawn(async move {
            for round in 0..40 {
                // Keys that sort between, before and after the stable ones.
                let items: Vec<(String, Vec<u8>)> =
                    (0..300).step_by(7).map(|i| (format!("k{i:04}-{round}"), vec![2])).collect();
                let keys = items.iter().map(|(k, _)| k.clone()).collect();
                backend.set_many(&b, items).await.unwrap();
                backend.set(&b, format!("a{round}"), vec![]).await.unwrap();
                backend.set(&b, format!("z{round}"), vec![]).await.unwrap();
                backend.delete_many(&b, keys).await.unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut scans = 0;
    while !writer.is_finished() || scans == 0 {
        seen.clear();
        let mut cursor = None;
        loop {
            let page = backend.list_keys(&b, "k", cursor.as_deref(), 7).await.unwrap();
            seen.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "keys come in order, none twice");
        let found: BTreeSet<&String> = seen.iter().filter(|k| !k.contains('-')).collect();
        assert_eq!(found.len(), 300, "every key that existed for the whole scan was returned");
        scans += 1;
    }
    writer.await.unwrap();
    assert_usage_exact(&*backend, &b).await;
}

pub async fn relaxed_buckets_read_their_writes(backend: Arc<dyn KvBackend>) {
    let backend = &*backend;
    let relaxed = bucket("alpha", "cache", Quota::default(), Durability::Relaxed);
    let durable = default_bucket("alpha");
    for i in 0..20 {
        backend.set(&relaxed, format!("r{i}"), vec![i]).await.unwrap();
        assert_eq!(backend.get(&relaxed, &format!("r{i}")).await.unwrap(), Some(vec![i]));
    }
    backend.set(&durable, "d".into(), vec![]).await.unwrap();
    assert_eq!(assert_usage_exact(backend, &relaxed).await.keys, 20);
    assert_eq!(backend.usage(&durable).await.unwrap().plugin.keys, 21);
}
