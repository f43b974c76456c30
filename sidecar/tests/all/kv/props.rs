//! Random operation sequences against a model (`BTreeMap` + the quota
//! rules), quota refusals included: every answer and every usage count
//! must match, on both backends.

use std::collections::BTreeMap;

use gatehouse::ErrorKind;
use gatehouse::services::kv::backend::parse_counter;
use gatehouse::services::kv::policy::{Durability, Quota};
use gatehouse::services::kv::{Bucket, KvBackend, KvError, QuotaKind, RedbBackend, Usage};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

use super::suite::{assert_usage_exact, bucket};

const QUOTA: Quota = Quota { max_keys: 6, max_bytes: 40, max_key: 2, max_value: 8 };
/// Values to pick from: empty, counters, text, one over max_value.
const VALUES: &[&[u8]] = &[b"", b"1", b"-3", b"abc", b"xxxxxxxx", b"123456789", b"9223372036854775807"];

#[derive(Debug, Clone)]
enum Op {
    Set(usize, String, usize),
    Delete(usize, String),
    Increment(usize, String, i64),
    Cas(usize, String, Option<usize>, usize),
    SetMany(usize, Vec<(String, usize)>),
    DeleteMany(usize, Vec<String>),
    Get(usize, String),
    List(usize, String),
}

/// What a call answered, errors reduced to what both sides can know.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Unit,
    Bool(bool),
    Int(i64),
    Count(u64),
    Value(Option<Vec<u8>>),
    Keys(Vec<String>),
    Quota { quota: QuotaKind, usage: u64, needed: u64, limit: u64 },
    Error(ErrorKind),
}

fn reduce<T>(result: Result<T, KvError>, ok: impl FnOnce(T) -> Out) -> Out {
    match result {
        Ok(value) => ok(value),
        Err(KvError::QuotaExceeded { quota, usage, needed, limit }) => Out::Quota { quota, usage, needed, limit },
        Err(e) => Out::Error(e.kind()),
    }
}

fn key() -> impl Strategy<Value = String> {
    "[ab]{0,3}"
}

fn op() -> impl Strategy<Value = Op> {
    let b = 0..3usize;
    let v = 0..VALUES.len();
    prop_oneof![
        4 => (b.clone(), key(), v.clone()).prop_map(|(b, k, v)| Op::Set(b, k, v)),
        2 => (b.clone(), key()).prop_map(|(b, k)| Op::Delete(b, k)),
        2 => (b.clone(), key(), prop_oneof![Just(1i64), Just(-2), Just(i64::MAX)]).prop_map(|(b, k, d)| Op::Increment(b, k, d)),
        2 => (b.clone(), key(), proptest::option::of(v.clone()), v.clone()).prop_map(|(b, k, e, n)| Op::Cas(b, k, e, n)),
        1 => (b.clone(), proptest::collection::vec((key(), v), 0..4)).prop_map(|(b, items)| Op::SetMany(b, items)),
        1 => (b.clone(), proptest::collection::vec(key(), 0..4)).prop_map(|(b, keys)| Op::DeleteMany(b, keys)),
        2 => (b.clone(), key()).prop_map(|(b, k)| Op::Get(b, k)),
        1 => (b, "[ab]{0,2}").prop_map(|(b, p)| Op::List(b, p)),
    ]
}

/// Buckets 0 and 1 belong to one plugin (they share its quota), 2 to another.
fn buckets() -> [Bucket; 3] {
    [
        bucket("alpha", "default", QUOTA, Durability::Immediate),
        bucket("alpha", "cache", QUOTA, Durability::Relaxed),
        bucket("beta", "default", QUOTA, Durability::Relaxed),
    ]
}

#[derive(Default)]
struct Model {
    data: BTreeMap<(usize, String), Vec<u8>>,
}

impl Model {
    fn plugin_usage(&self, b: usize) -> Usage {
        let same = |other: usize| (other == 2) == (b == 2);
        let mut usage = Usage::default();
        for ((other, key), value) in &self.data {
            if same(*other) {
                usage.keys += 1;
                usage.bytes += (key.len() + value.len()) as u64;
            }
        }
        usage
    }

    fn bucket_usage(&self, b: usize) -> Usage {
        let mut usage = Usage::default();
        for ((other, key), value) in &self.data {
            if *other == b {
                usage.keys += 1;
                usage.bytes += (key.len() + value.len()) as u64;
            }
        }
        usage
    }

    /// Checks and applies planned changes the way the quota rules say.
    fn write(&mut self, b: usize, changes: Vec<(String, Option<Vec<u8>>)>, answer: Out) -> Out {
        let mut dk: i64 = 0;
        let mut db: i64 = 0;
        for (key, new) in &changes {
            let old = self.data.get(&(b, key.clone()));
            match (old, new) {
                (None, Some(v)) => {
                    if key.len() as u64 > QUOTA.max_key {
                        return Out::Quota { quota: QuotaKind::KeySize, usage: 0, needed: key.len() as u64, limit: 2 };
                    }
                    dk += 1;
                    db += (key.len() + v.len()) as i64;
                }
                (Some(o), Some(v)) => db += v.len() as i64 - o.len() as i64,
                (Some(o), None) => {
                    dk -= 1;
                    db -= (key.len() + o.len()) as i64;
                }
                (None, None) => {}
            }
        }
        let usage = self.plugin_usage(b);
        if dk > 0 && usage.keys.saturating_add_signed(dk) > QUOTA.max_keys {
            let needed = usage.keys.saturating_add_signed(dk);
            return Out::Quota { quota: QuotaKind::Keys, usage: usage.keys, needed, limit: QUOTA.max_keys };
        }
        if db > 0 && usage.bytes.saturating_add_signed(db) > QUOTA.max_bytes {
            let needed = usage.bytes.saturating_add_signed(db);
            return Out::Quota { quota: QuotaKind::Bytes, usage: usage.bytes, needed, limit: QUOTA.max_bytes };
        }
        for (key, new) in changes {
            match new {
                Some(v) => self.data.insert((b, key), v),
                None => self.data.remove(&(b, key)),
            };
        }
        answer
    }

    fn apply(&mut self, op: &Op) -> Out {
        let too_big = |v: &[u8]| Out::Quota { quota: QuotaKind::ValueSize, usage: 0, needed: v.len() as u64, limit: 8 };
        let bad_key = |k: &str| k.is_empty();
        match op {
            Op::Set(b, k, v) => {
                let v = VALUES[*v];
                if bad_key(k) {
                    return Out::Error(ErrorKind::InvalidInput);
                }
                if v.len() as u64 > QUOTA.max_value {
                    return too_big(v);
                }
                self.write(*b, vec![(k.clone(), Some(v.to_vec()))], Out::Unit)
            }
            Op::Delete(b, k) => {
                if bad_key(k) {
                    return Out::Error(ErrorKind::InvalidInput);
                }
                let existed = self.data.contains_key(&(*b, k.clone()));
                self.write(*b, vec![(k.clone(), None)], Out::Bool(existed))
            }
            Op::Increment(b, k, delta) => {
                if bad_key(k) {
                    return Out::Error(ErrorKind::InvalidInput);
                }
                let now = match self.data.get(&(*b, k.clone())) {
                    None => 0,
                    Some(v) => match parse_counter(v) {
                        Some(n) => n,
                        None => return Out::Error(ErrorKind::Conflict),
                    },
                };
                let Some(next) = now.checked_add(*delta) else { return Out::Error(ErrorKind::Conflict) };
                let value = next.to_string().into_bytes();
                if value.len() as u64 > QUOTA.max_value {
                    return too_big(&value);
                }
                self.write(*b, vec![(k.clone(), Some(value))], Out::Int(next))
            }
            Op::Cas(b, k, expected, new) => {
                let new = VALUES[*new];
                if bad_key(k) {
                    return Out::Error(ErrorKind::InvalidInput);
                }
                if new.len() as u64 > QUOTA.max_value {
                    return too_big(new);
                }
                let expected = expected.map(|e| VALUES[e].to_vec());
                if self.data.get(&(*b, k.clone())) != expected.as_ref() {
                    return Out::Bool(false);
                }
                self.write(*b, vec![(k.clone(), Some(new.to_vec()))], Out::Bool(true))
            }
            Op::SetMany(b, items) => {
                for (k, v) in items {
                    if bad_key(k) {
                        return Out::Error(ErrorKind::InvalidInput);
                    }
                    if VALUES[*v].len() as u64 > QUOTA.max_value {
                        return too_big(VALUES[*v]);
                    }
                }
                let last: BTreeMap<String, Vec<u8>> =
                    items.iter().map(|(k, v)| (k.clone(), VALUES[*v].to_vec())).collect();
                self.write(*b, last.into_iter().map(|(k, v)| (k, Some(v))).collect(), Out::Unit)
            }
            Op::DeleteMany(b, keys) => {
                if keys.iter().any(|k| bad_key(k)) {
                    return Out::Error(ErrorKind::InvalidInput);
                }
                let unique: std::collections::BTreeSet<String> = keys.iter().cloned().collect();
                let existing = unique.iter().filter(|k| self.data.contains_key(&(*b, (*k).clone()))).count();
                self.write(*b, unique.into_iter().map(|k| (k, None)).collect(), Out::Count(existing as u64))
            }
            Op::Get(b, k) => {
                if bad_key(k) {
                    return Out::Error(ErrorKind::InvalidInput);
                }
                Out::Value(self.data.get(&(*b, k.clone())).cloned())
            }
            Op::List(b, prefix) => Out::Keys(
                self.data
                    .keys()
                    .filter(|(o, k)| o == b && k.starts_with(prefix.as_str()))
                    .map(|(_, k)| k.clone())
                    .collect(),
            ),
        }
    }
}

async fn run(backend: &dyn KvBackend, buckets: &[Bucket; 3], op: &Op) -> Out {
    match op {
        Op::Set(b, k, v) => reduce(backend.set(&buckets[*b], k.clone(), VALUES[*v].to_vec()).await, |()| Out::Unit),
        Op::Delete(b, k) => reduce(backend.delete(&buckets[*b], k.clone()).await, Out::Bool),
        Op::Increment(b, k, d) => reduce(backend.increment(&buckets[*b], k.clone(), *d).await, Out::Int),
        Op::Cas(b, k, e, n) => reduce(
            backend.compare_and_swap(&buckets[*b], k.clone(), e.map(|e| VALUES[e].to_vec()), VALUES[*n].to_vec()).await,
            Out::Bool,
        ),
        Op::SetMany(b, items) => reduce(
            backend.set_many(&buckets[*b], items.iter().map(|(k, v)| (k.clone(), VALUES[*v].to_vec())).collect()).await,
            |()| Out::Unit,
        ),
        Op::DeleteMany(b, keys) => reduce(backend.delete_many(&buckets[*b], keys.clone()).await, Out::Count),
        Op::Get(b, k) => reduce(backend.get(&buckets[*b], k).await, Out::Value),
        Op::List(b, prefix) => reduce(backend.list_keys(&buckets[*b], prefix, None, 1000).await, |p| Out::Keys(p.keys)),
    }
}

/// Runs `ops` against `backend` (empty) and the model: every answer and
/// every usage count must match.
async fn matches_the_model(backend: &dyn KvBackend, ops: &[Op]) -> Result<(), TestCaseError> {
    let buckets = buckets();
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        let expected = model.apply(op);
        let got = run(backend, &buckets, op).await;
        prop_assert_eq!(got, expected, "operation {} {:?}", i, op);
    }
    for (i, b) in buckets.iter().enumerate() {
        let usage = assert_usage_exact(backend, b).await;
        prop_assert_eq!(usage, model.bucket_usage(i));
        prop_assert_eq!(backend.usage(b).await.unwrap().plugin, model.plugin_usage(i));
    }
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn kv_redb_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(&dir.path().join("kv.redb")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(matches_the_model(&backend, &ops))?;
    }
}

/// The same sequences on PostgreSQL: one cluster and one backend for the
/// whole run, the tables emptied before each case.
#[test]
fn kv_postgres_matches_the_model() {
    let postgres = super::postgres::cluster();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let backend = rt.block_on(super::postgres::open(&postgres));
    let admin = rt.block_on(sqlx::PgPool::connect_with(super::postgres::options(&postgres))).unwrap();
    let mut runner = TestRunner::new(config(48));
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        rt.block_on(async {
            sqlx::query("TRUNCATE gatehouse_kv_data, gatehouse_kv_plugin_usage, gatehouse_kv_bucket_usage")
                .execute(&admin)
                .await
                .unwrap();
            matches_the_model(&*backend, &ops).await
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
