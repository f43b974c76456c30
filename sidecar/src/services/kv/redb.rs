//! The embedded backend: one redb file in the data directory, written by
//! one thread that commits concurrent writes together (group commit).
//!
//! # Layout
//! - `kv_data`: `ns || key -> value`, where `ns` is the length-prefixed
//!   plugin and bucket (`[len] plugin [len] bucket`). Names are 1–64 of
//!   `a-z0-9_-`, so no namespace's prefix is a prefix of another's: a range
//!   scan of one namespace never sees another's keys.
//! - usage rows in the same table, under keys starting with a 0 byte (no
//!   namespace prefix does: a length byte is at least 1): `0 'n' ns ->
//!   (keys, bytes)` per namespace and `0 'p' plugin -> (keys, bytes)` per
//!   plugin, 16 bytes little-endian. They change in the transaction that
//!   changes the data, so usage is exact after any crash. Bytes are key +
//!   value lengths (the key without the namespace prefix). One table, not
//!   three: a commit then rewrites the pages of one B-tree, not three.
//!
//! # Group commit
//! redb runs one write transaction at a time and every durable commit
//! costs an fsync (hundreds per second on a VM disk). So every write is
//! sent to one writer thread, which takes what is queued (up to
//! [`MAX_BATCH_OPS`] operations or [`MAX_BATCH_BYTES`], one operation of
//! each plugin in turn, the plugin served least recently first:
//! [`super::fair_batches`]), applies each operation in order inside one
//! transaction, commits once and then answers each caller. Each operation
//! is checked before it writes anything (sizes, quotas against the usage
//! left by the operations before it, CAS expectations, counters): a
//! refused operation writes nothing and its neighbours commit. Only a storage failure fails the whole batch, and
//! then nothing of it is acknowledged.
//!
//! The queue is bounded in bytes, not just in entries: a caller waits for
//! room in its plugin's share and in the common budget
//! ([`super::queue`]: each entry costs its keys and values plus an
//! overhead) before its operation is queued, so the queue and a batch
//! never hold more than [`QUEUE_BYTES`], whatever guests send.
//!
//! # Relaxed durability
//! A batch made only of writes to relaxed buckets is committed without an
//! fsync (`Durability::None`) and acknowledged at once. Such commits become
//! durable with the next durable commit: the next batch with a durable
//! write, or a flush the writer makes when [`RELAXED_FLUSH`] has passed
//! since the first unflushed relaxed commit. A crash loses the relaxed
//! writes acknowledged in that window (at most [`RELAXED_FLUSH`]), never a
//! durable one, and never part of a write.
//!
//! Reads run on the caller's thread in the latest committed snapshot,
//! shared by reads until the writer's next commit ([`super::snapshot`];
//! MVCC: never blocked by the writer), and see every acknowledged write.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::backend::{
    Bucket, KvBackend, KvFuture, MAX_BATCH_BYTES as MAX_CALL_BYTES, Namespace, Page, Usage, UsageReport,
    check_batch_len, check_expected, check_key, check_limit, check_new_key, check_prefix, check_value, parse_counter,
};
use super::error::{KvError, QuotaKind};
use super::fair_batches::FairBatches;
use super::offload;
use super::policy::{Durability, Quota};
use super::queue::{QueueBudget, QueuePermit};
use super::snapshot::{DataTable, Latest};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_data");

/// The key of a namespace's usage row.
fn ns_usage_key(ns_prefix: &[u8]) -> Vec<u8> {
    [&[0, b'n'][..], ns_prefix].concat()
}

/// The key of a plugin's usage row.
fn plugin_usage_key(plugin: &str) -> Vec<u8> {
    [&[0, b'p'][..], plugin.as_bytes()].concat()
}

/// A usage row, or zeros when absent.
fn usage_row(table: &impl ReadableTable<&'static [u8], &'static [u8]>, key: &[u8]) -> Result<(u64, u64), KvError> {
    let Some(row) = table.get(key).map_err(unavailable)? else { return Ok((0, 0)) };
    let row = row.value();
    let (keys, bytes) = row
        .split_at_checked(8)
        .filter(|(_, b)| b.len() == 8)
        .ok_or_else(|| KvError::Internal("a usage row is not 16 bytes".into()))?;
    Ok((u64::from_le_bytes(keys.try_into().unwrap()), u64::from_le_bytes(bytes.try_into().unwrap())))
}

fn put_usage_row(
    table: &mut ::redb::Table<'_, &'static [u8], &'static [u8]>,
    key: &[u8],
    row: (u64, u64),
) -> Result<(), KvError> {
    if row == (0, 0) {
        table.remove(key).map_err(unavailable)?;
    } else {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&row.0.to_le_bytes());
        bytes[8..].copy_from_slice(&row.1.to_le_bytes());
        table.insert(key, &bytes[..]).map_err(unavailable)?;
    }
    Ok(())
}

pub use super::queue::{ENTRY_OVERHEAD, PLUGIN_QUEUE_BYTES, QUEUE_BYTES};
/// Most operations applied in one transaction.
pub const MAX_BATCH_OPS: usize = 1024;
/// Most bytes of operations applied in one transaction (the writer stops
/// taking more once a batch reaches it).
pub const MAX_BATCH_BYTES: u64 = 16 << 20;
/// Longest time a relaxed write stays acknowledged but not on disk.
pub const RELAXED_FLUSH: Duration = Duration::from_secs(1);

/// The redb backend. Cheap to share behind an `Arc`; dropping it waits for
/// the writer to finish what is queued.
pub struct RedbBackend {
    db: Arc<Database>,
    latest: Arc<Latest>,
    queue: Option<mpsc::Sender<Request>>,
    budget: QueueBudget,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbBackend").finish_non_exhaustive()
    }
}

/// One write, as the writer applies it.
enum Op {
    /// `expect`: `Some(expected)` makes it a compare-and-swap.
    Set {
        key: String,
        value: Vec<u8>,
        expect: Option<Option<Vec<u8>>>,
    },
    Delete {
        key: String,
    },
    Increment {
        key: String,
        delta: i64,
    },
    SetMany(Vec<(String, Vec<u8>)>),
    DeleteMany(Vec<String>),
}

enum Answer {
    Unit,
    Bool(bool),
    Int(i64),
    Count(u64),
}

struct Request {
    namespace: Namespace,
    quota: Quota,
    durability: Durability,
    op: Op,
    cost: u64,
    reply: oneshot::Sender<Result<Answer, KvError>>,
    /// Held until the request is answered: what bounds the queue.
    budget: QueuePermit,
}

impl Request {
    /// Gives the queue budget back, then answers: a caller that has its
    /// answer finds the room its write took already free.
    fn answer(self, answer: Result<Answer, KvError>) {
        let Request { reply, budget, .. } = self;
        drop(budget);
        let _ = reply.send(answer);
    }
}

fn unavailable(e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(e.to_string())
}

/// `[len] plugin`: the prefix of every namespace of a plugin.
fn plugin_prefix(plugin: &str) -> Vec<u8> {
    [&[plugin.len() as u8][..], plugin.as_bytes()].concat()
}

/// `[len] plugin [len] bucket`: the prefix of every key of a namespace.
fn ns_prefix(ns: &Namespace) -> Vec<u8> {
    let (plugin, bucket) = (ns.plugin().as_bytes(), ns.bucket().as_bytes());
    let mut prefix = Vec::with_capacity(2 + plugin.len() + bucket.len());
    prefix.push(plugin.len() as u8);
    prefix.extend_from_slice(plugin);
    prefix.push(bucket.len() as u8);
    prefix.extend_from_slice(bucket);
    prefix
}

fn full_key(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut full = Vec::with_capacity(prefix.len() + key.len());
    full.extend_from_slice(prefix);
    full.extend_from_slice(key.as_bytes());
    full
}

/// Bytes of the store's pages redb keeps in memory (its read and write
/// cache; redb's own default is 1 GiB). Charged to the sidecar: it is
/// shared by every plugin, whatever they store.
pub const CACHE_BYTES: usize = 64 << 20;

/// Refuses a store file that exists but is empty: redb would take it for
/// a new store, and a crash that left the file empty would silently reset
/// every namespace and quota. A missing file is fine (redb creates it).
fn prepare_file(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.len() == 0 => Err(std::io::Error::other(
            "the file is empty, so damaged (restore it from a backup, or move it away to start an empty store)",
        )),
        Ok(_) => Ok(()),
    }
}

impl RedbBackend {
    /// Opens (or creates) the store at `path` and starts its writer. A file
    /// that is not a redb database, or a damaged one, is `unavailable`
    /// (never a panic), and so is a file another process has open.
    pub fn open(path: &Path) -> Result<RedbBackend, KvError> {
        RedbBackend::try_open(path).map_err(|e| match e {
            OpenError::Other(e) => e,
            other => KvError::Unavailable(other.to_string()),
        })
    }

    /// [`RedbBackend::open`], telling a file another process has open
    /// (`gatehouse kv …` reading it, another sidecar) from other failures.
    pub fn try_open(path: &Path) -> Result<RedbBackend, OpenError> {
        let shown = crate::policy::shown(path);
        prepare_file(path).map_err(|e| KvError::Unavailable(format!("cannot open {shown}: {e}")))?;
        let opened = crate::quiet_panic::catch(|| Database::builder().set_cache_size(CACHE_BYTES).create(path));
        let db = match opened {
            Some(Ok(db)) => db,
            Some(Err(::redb::DatabaseError::DatabaseAlreadyOpen)) => return Err(OpenError::Locked(shown)),
            Some(Err(e)) => return Err(KvError::Unavailable(format!("cannot open {shown}: {e}")).into()),
            None => return Err(KvError::Unavailable(format!("cannot open {shown}: the file is damaged")).into()),
        };
        crate::data_dir::make_private(path)
            .map_err(|e| KvError::Unavailable(format!("cannot make {shown} private: {e}")))?;
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(DATA).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        let db = Arc::new(db);
        let (queue, requests) = mpsc::channel();
        let latest = Arc::new(Latest::default());
        let (writer_db, writer_latest) = (Arc::clone(&db), Arc::clone(&latest));
        let writer = std::thread::Builder::new()
            .name("gatehouse-kv-writer".into())
            .spawn(move || writer(&writer_db, &writer_latest, &requests))
            .map_err(|e| KvError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(RedbBackend { db, latest, queue: Some(queue), budget: QueueBudget::default(), writer: Some(writer) })
    }

    /// Queues `op` for the writer and waits for its answer.
    async fn submit(&self, bucket: &Bucket, op: Op, bytes: u64, items: u64) -> Result<Answer, KvError> {
        let cost = QueueBudget::cost(bytes, items);
        let permit = self
            .budget
            .acquire(bucket.namespace.plugin(), cost)
            .await
            .map_err(|_| unavailable("the writer has stopped"))?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            namespace: bucket.namespace.clone(),
            quota: bucket.quota,
            durability: bucket.durability,
            op,
            cost,
            reply,
            budget: permit,
        };
        let queue = self.queue.as_ref().ok_or_else(|| unavailable("the writer has stopped"))?;
        queue.send(request).map_err(|_| unavailable("the writer has stopped"))?;
        answer.await.map_err(|_| KvError::Internal("the writer stopped before answering".into()))?
    }

    /// The values of `keys` in one snapshot, in order: copied here when
    /// they come to at most [`offload::INLINE_BYTES`], else read again and
    /// copied on a blocking thread (see [`offload`]).
    async fn values_of(
        &self,
        namespace: &Namespace,
        keys: &[impl AsRef<str>],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let ns = ns_prefix(namespace);
        if let Some(values) = self.read(|t| values_in(t, &ns, keys, offload::INLINE_BYTES))? {
            return Ok(values);
        }
        // Read again in the same snapshot, so the copy is what was counted.
        let snapshot = self.latest.table(&self.db, DATA)?;
        let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_string()).collect();
        offload::sized(u64::MAX, move || values_in(&snapshot, &ns, &keys, u64::MAX).map(Option::unwrap_or_default))
            .await
    }
}

/// The values of `keys` (under the namespace prefix `ns`) in `t`, in
/// order, or `None`, with nothing copied, when they come to more than
/// `inline` bytes. Counted before copying, with the keys, so an answer is
/// at most `MAX_CALL_BYTES` (`quota-exceeded` past it).
fn values_in(
    t: &::redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    ns: &[u8],
    keys: &[impl AsRef<str>],
    inline: u64,
) -> Result<Option<Vec<Option<Vec<u8>>>>, KvError> {
    let mut found = Vec::with_capacity(keys.len());
    let mut total = 0u64;
    for key in keys.iter().map(AsRef::as_ref) {
        let value = t.get(full_key(ns, key).as_slice()).map_err(unavailable)?;
        total += value.as_ref().map_or(0, |v| v.value().len() as u64) + key.len() as u64;
        if total > MAX_CALL_BYTES {
            return Err(KvError::call_bound(total, MAX_CALL_BYTES));
        }
        found.push(value);
    }
    if total > inline {
        return Ok(None);
    }
    Ok(Some(found.into_iter().map(|value| value.map(|v| v.value().to_vec())).collect()))
}

/// Where reads come from: the backend's latest snapshot, or a read
/// transaction of their own on a read-only handle (`gatehouse kv …`).
trait Reads {
    fn read<T>(&self, f: impl FnOnce(&DataTable) -> Result<T, KvError>) -> Result<T, KvError>;
}

impl Reads for RedbBackend {
    fn read<T>(&self, f: impl FnOnce(&DataTable) -> Result<T, KvError>) -> Result<T, KvError> {
        f(&*self.latest.table(&self.db, DATA)?)
    }
}

impl Reads for RedbReader {
    fn read<T>(&self, f: impl FnOnce(&DataTable) -> Result<T, KvError>) -> Result<T, KvError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        f(&txn.open_table(DATA).map_err(unavailable)?)
    }
}

/// Why [`RedbBackend::try_open`] or [`RedbReader::open`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process (or another handle in this one) has the file open:
    /// redb lets one process open a file for writing, or several for
    /// reading, never both.
    #[error("{0} is open in another process")]
    Locked(String),
    /// There is no store yet.
    #[error("{0} does not exist")]
    Missing(String),
    /// The file was not closed cleanly (its writer was killed); only a
    /// writer may repair it, which a read-only open never does.
    #[error("{0} was not closed cleanly; the sidecar repairs it when it next opens the store")]
    NeedsRepair(String),
    /// Anything else (a damaged file, an I/O error).
    #[error(transparent)]
    Other(#[from] KvError),
}

/// The store opened read-only, for `gatehouse kv …` when no sidecar has
/// it open. It holds a shared lock on the file while it lives, which keeps
/// a sidecar from opening the store meanwhile (the sidecar's first open
/// waits for it: see [`crate::services::kv::KvStore`]), so hold it for
/// one page of work at a time.
pub struct RedbReader {
    db: ::redb::ReadOnlyDatabase,
}

impl RedbReader {
    /// Opens `path` read-only. Never creates, repairs or writes the file.
    pub fn open(path: &Path) -> Result<RedbReader, OpenError> {
        let shown = crate::policy::shown(path);
        if !path.exists() {
            return Err(OpenError::Missing(shown));
        }
        let opened = crate::quiet_panic::catch(|| ::redb::Builder::new().open_read_only(path));
        match opened {
            Some(Ok(db)) => Ok(RedbReader { db }),
            Some(Err(::redb::DatabaseError::DatabaseAlreadyOpen)) => Err(OpenError::Locked(shown)),
            Some(Err(::redb::DatabaseError::RepairAborted)) => Err(OpenError::NeedsRepair(shown)),
            Some(Err(e)) => Err(KvError::Unavailable(format!("cannot open {shown}: {e}")).into()),
            None => Err(KvError::Unavailable(format!("cannot open {shown}: the file is damaged")).into()),
        }
    }

    /// The value of `key` in `namespace`.
    pub fn get(&self, namespace: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        read_get(self, namespace, key)
    }

    /// A page of keys, as [`KvBackend::list_keys`] gives it.
    pub fn list_keys(
        &self,
        namespace: &Namespace,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page, KvError> {
        read_list(self, namespace, prefix, cursor, limit)
    }

    /// What `namespace` and its plugin store.
    pub fn usage(&self, namespace: &Namespace) -> Result<(Usage, Usage), KvError> {
        read_usage(self, namespace)
    }

    /// The buckets of `plugin` that hold a key ([`KvBackend::buckets`]).
    pub fn buckets(&self, plugin: &str) -> Result<Vec<String>, KvError> {
        read_buckets(self, plugin)
    }
}

fn read_get(store: &impl Reads, namespace: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
    check_key(key)?;
    let full = full_key(&ns_prefix(namespace), key);
    store.read(|t| Ok(t.get(full.as_slice()).map_err(unavailable)?.map(|v| v.value().to_vec())))
}

fn read_list(
    store: &impl Reads,
    namespace: &Namespace,
    prefix: &str,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Page, KvError> {
    check_prefix(prefix)?;
    let limit = check_limit(limit)? as usize;
    let ns = ns_prefix(namespace);
    let from = full_key(&ns, prefix);
    let after = cursor.map(|c| namespace.resume_after(c)).transpose()?.map(|k| full_key(&ns, &k));
    let start = match &after {
        Some(after) if *after >= from => Bound::Excluded(after.as_slice()),
        _ => Bound::Included(from.as_slice()),
    };
    store.read(|t| {
        let mut keys = Vec::new();
        let mut more = false;
        for entry in t.range::<&[u8]>((start, Bound::Unbounded)).map_err(unavailable)? {
            let (key, _) = entry.map_err(unavailable)?;
            let key = key.value();
            if !key.starts_with(&from) {
                break;
            }
            if keys.len() == limit {
                more = true;
                break;
            }
            let key = std::str::from_utf8(&key[ns.len()..])
                .map_err(|_| KvError::Internal("a stored key is not UTF-8".into()))?;
            keys.push(key.to_string());
        }
        let cursor = if more { keys.last().map(|k| namespace.cursor_after(k)) } else { None };
        Ok(Page { keys, cursor })
    })
}

/// The buckets of `plugin` with a usage row (one that holds a key: a
/// row that falls to zero is removed), from the rows' keys: `[0, 'n',
/// len, plugin, len, bucket]`.
fn read_buckets(store: &impl Reads, plugin: &str) -> Result<Vec<String>, KvError> {
    let prefix = ns_usage_key(&plugin_prefix(plugin));
    store.read(|table| {
        let mut buckets = Vec::new();
        for row in table.range::<&[u8]>(prefix.as_slice()..).map_err(unavailable)? {
            let (key, _) = row.map_err(unavailable)?;
            let Some(rest) = key.value().strip_prefix(prefix.as_slice()) else { break };
            let bucket = rest
                .split_first()
                .filter(|(len, name)| usize::from(**len) == name.len())
                .and_then(|(_, name)| std::str::from_utf8(name).ok())
                .ok_or_else(|| KvError::Internal("a bucket usage row with a malformed key".into()))?;
            buckets.push(bucket.to_string());
        }
        // Rows are in key order, which puts a name's length first.
        buckets.sort();
        Ok(buckets)
    })
}

/// The namespace's usage and its plugin's.
fn read_usage(store: &impl Reads, namespace: &Namespace) -> Result<(Usage, Usage), KvError> {
    store.read(|table| {
        let (keys, bytes) = usage_row(table, &ns_usage_key(&ns_prefix(namespace)))?;
        let bucket = Usage { keys, bytes };
        let (keys, bytes) = usage_row(table, &plugin_usage_key(namespace.plugin()))?;
        Ok((bucket, Usage { keys, bytes }))
    })
}

impl Drop for RedbBackend {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn sized(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl KvBackend for RedbBackend {
    fn get<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            check_key(key)?;
            let mut values = self.values_of(&bucket.namespace, &[key]).await?;
            Ok(values.pop().flatten())
        })
    }

    fn exists<'a>(&'a self, bucket: &'a Bucket, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(async move {
            check_key(key)?;
            let full = full_key(&ns_prefix(&bucket.namespace), key);
            self.read(|t| Ok(t.get(full.as_slice()).map_err(unavailable)?.is_some()))
        })
    }

    fn set<'a>(&'a self, bucket: &'a Bucket, key: String, value: Vec<u8>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            check_key(&key)?;
            check_value(&bucket.quota, &value)?;
            let bytes = sized(&key, &value);
            self.submit(bucket, Op::Set { key, value, expect: None }, bytes, 1).await.map(drop)
        })
    }

    fn delete<'a>(&'a self, bucket: &'a Bucket, key: String) -> KvFuture<'a, bool> {
        Box::pin(async move {
            check_key(&key)?;
            let bytes = key.len() as u64;
            match self.submit(bucket, Op::Delete { key }, bytes, 1).await? {
                Answer::Bool(existed) => Ok(existed),
                _ => Err(KvError::Internal("unexpected answer to delete".into())),
            }
        })
    }

    fn list_keys<'a>(
        &'a self,
        bucket: &'a Bucket,
        prefix: &'a str,
        cursor: Option<&'a str>,
        limit: u32,
    ) -> KvFuture<'a, Page> {
        Box::pin(async move { read_list(self, &bucket.namespace, prefix, cursor, limit) })
    }

    fn get_many<'a>(&'a self, bucket: &'a Bucket, keys: &'a [String]) -> KvFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            check_batch_len(keys.len())?;
            keys.iter().try_for_each(|k| check_key(k))?;
            self.values_of(&bucket.namespace, keys).await
        })
    }

    fn set_many<'a>(&'a self, bucket: &'a Bucket, items: Vec<(String, Vec<u8>)>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            check_batch_len(items.len())?;
            let mut bytes = 0;
            for (key, value) in &items {
                check_key(key)?;
                check_value(&bucket.quota, value)?;
                bytes += sized(key, value);
            }
            if bytes > MAX_CALL_BYTES {
                return Err(KvError::call_bound(bytes, MAX_CALL_BYTES));
            }
            let n = items.len() as u64;
            self.submit(bucket, Op::SetMany(items), bytes, n).await.map(drop)
        })
    }

    fn delete_many<'a>(&'a self, bucket: &'a Bucket, keys: Vec<String>) -> KvFuture<'a, u64> {
        Box::pin(async move {
            check_batch_len(keys.len())?;
            keys.iter().try_for_each(|k| check_key(k))?;
            let bytes = keys.iter().map(|k| k.len() as u64).sum();
            let n = keys.len() as u64;
            match self.submit(bucket, Op::DeleteMany(keys), bytes, n).await? {
                Answer::Count(n) => Ok(n),
                _ => Err(KvError::Internal("unexpected answer to delete_many".into())),
            }
        })
    }

    fn increment<'a>(&'a self, bucket: &'a Bucket, key: String, delta: i64) -> KvFuture<'a, i64> {
        Box::pin(async move {
            check_key(&key)?;
            let bytes = key.len() as u64 + 20;
            match self.submit(bucket, Op::Increment { key, delta }, bytes, 1).await? {
                Answer::Int(n) => Ok(n),
                _ => Err(KvError::Internal("unexpected answer to increment".into())),
            }
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        bucket: &'a Bucket,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> KvFuture<'a, bool> {
        Box::pin(async move {
            check_key(&key)?;
            check_value(&bucket.quota, &new)?;
            check_expected(expected.as_deref())?;
            let bytes = sized(&key, &new) + expected.as_ref().map_or(0, |e| e.len() as u64);
            match self.submit(bucket, Op::Set { key, value: new, expect: Some(expected) }, bytes, 1).await? {
                Answer::Bool(swapped) => Ok(swapped),
                _ => Err(KvError::Internal("unexpected answer to compare_and_swap".into())),
            }
        })
    }

    fn usage<'a>(&'a self, bucket: &'a Bucket) -> KvFuture<'a, UsageReport> {
        Box::pin(async move {
            let (bucket_usage, plugin_usage) = read_usage(self, &bucket.namespace)?;
            Ok(UsageReport { bucket: bucket_usage, plugin: plugin_usage, quota: bucket.quota })
        })
    }

    fn buckets<'a>(&'a self, plugin: &'a str) -> KvFuture<'a, Vec<String>> {
        Box::pin(async move { read_buckets(self, plugin) })
    }
}

/// The writer thread: batches, applies, commits, answers. Ends when the
/// backend is dropped, after a last durable commit.
fn writer(db: &Database, latest: &Latest, requests: &mpsc::Receiver<Request>) {
    let mut unflushed: Option<Instant> = None;
    let mut lanes = FairBatches::default();
    let mut open = true;
    loop {
        if lanes.is_empty() {
            if !open {
                if unflushed.is_some() {
                    let _ = flush(db, latest);
                }
                return;
            }
            let received = match unflushed {
                None => requests.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(since) => requests.recv_timeout(RELAXED_FLUSH.saturating_sub(since.elapsed())),
            };
            match received {
                Ok(request) => lanes.push(request.namespace.plugin().to_string(), request.cost, request),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if flush(db, latest).is_ok() {
                        unflushed = None;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    continue;
                }
            }
        }
        // Everything queued (the queue budget bounds it), so that each
        // plugin waiting has its lane before the batch is chosen.
        while let Ok(request) = requests.try_recv() {
            lanes.push(request.namespace.plugin().to_string(), request.cost, request);
        }
        let batch = lanes.next_batch(MAX_BATCH_OPS, MAX_BATCH_BYTES);
        let durable = batch.iter().any(|r| r.durability == Durability::Immediate)
            || unflushed.is_some_and(|since| since.elapsed() >= RELAXED_FLUSH);
        let committed = commit_batch(db, &batch, durable);
        latest.committed();
        match committed {
            Ok(answers) => {
                if durable {
                    unflushed = None;
                } else if unflushed.is_none() {
                    unflushed = Some(Instant::now());
                }
                for (request, answer) in batch.into_iter().zip(answers) {
                    request.answer(answer);
                }
            }
            Err(e) => {
                for request in batch {
                    request.answer(Err(e.clone()));
                }
            }
        }
    }
}

/// Makes the relaxed commits so far durable: an empty durable commit.
fn flush(db: &Database, latest: &Latest) -> Result<(), KvError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let committed = txn.commit().map_err(unavailable);
    latest.committed();
    committed
}

struct Tables<'t> {
    data: ::redb::Table<'t, &'static [u8], &'static [u8]>,
}

/// One transaction for the whole batch. `Err` only for a storage failure,
/// which aborts everything; refusals are per operation.
fn commit_batch(db: &Database, batch: &[Request], durable: bool) -> Result<Vec<Result<Answer, KvError>>, KvError> {
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(if durable { ::redb::Durability::Immediate } else { ::redb::Durability::None })
        .map_err(unavailable)?;
    let answers = {
        let mut tables = Tables { data: txn.open_table(DATA).map_err(unavailable)? };
        let mut answers = Vec::with_capacity(batch.len());
        for request in batch {
            answers.push(apply(&mut tables, request)?);
        }
        answers
    };
    txn.commit().map_err(unavailable)?;
    Ok(answers)
}

/// One planned change: the key (without namespace) and its new value,
/// borrowed from the request (only a counter's new value is made here), so
/// the writer copies no guest value before writing it.
type Change<'r> = (&'r str, Option<Cow<'r, [u8]>>);

/// Applies one operation: plans it, checks it, and only then writes.
fn apply<'r>(t: &mut Tables<'_>, request: &'r Request) -> Result<Result<Answer, KvError>, KvError> {
    let prefix = ns_prefix(&request.namespace);
    let current = |t: &Tables<'_>, key: &str| -> Result<Option<Vec<u8>>, KvError> {
        Ok(t.data.get(full_key(&prefix, key).as_slice()).map_err(unavailable)?.map(|v| v.value().to_vec()))
    };
    let (changes, answer): (Vec<Change<'r>>, Answer) = match &request.op {
        Op::Set { key, value, expect: None } => {
            (vec![(key.as_str(), Some(Cow::Borrowed(value.as_slice())))], Answer::Unit)
        }
        Op::Set { key, value, expect: Some(expected) } => {
            // Compared in place: the stored value is not copied.
            let stored = t.data.get(full_key(&prefix, key).as_slice()).map_err(unavailable)?;
            let matches = match (stored, expected) {
                (None, None) => true,
                (Some(stored), Some(expected)) => stored.value() == expected.as_slice(),
                _ => false,
            };
            if !matches {
                return Ok(Ok(Answer::Bool(false)));
            }
            (vec![(key.as_str(), Some(Cow::Borrowed(value.as_slice())))], Answer::Bool(true))
        }
        Op::Delete { key } => {
            let existed = t.data.get(full_key(&prefix, key).as_slice()).map_err(unavailable)?.is_some();
            (vec![(key.as_str(), None)], Answer::Bool(existed))
        }
        Op::Increment { key, delta } => {
            let now = match current(t, key)? {
                None => 0,
                Some(value) => match parse_counter(&value) {
                    Some(n) => n,
                    None => {
                        return Ok(Err(KvError::Conflict(format!(
                            "the value of `{}` is not a decimal integer",
                            crate::guest_text::escaped(key, crate::guest_text::SHORT)
                        ))));
                    }
                },
            };
            let Some(next) = now.checked_add(*delta) else {
                return Ok(Err(KvError::Conflict(format!("{now} + {delta} overflows a signed 64-bit integer"))));
            };
            let value = next.to_string().into_bytes();
            if let Err(e) = check_value(&request.quota, &value) {
                return Ok(Err(e));
            }
            (vec![(key.as_str(), Some(Cow::Owned(value)))], Answer::Int(next))
        }
        Op::SetMany(items) => {
            let last: BTreeMap<&str, &[u8]> = items.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            (last.into_iter().map(|(k, v)| (k, Some(Cow::Borrowed(v)))).collect(), Answer::Unit)
        }
        Op::DeleteMany(keys) => {
            let unique: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
            let mut existing = 0;
            for key in &unique {
                existing += u64::from(t.data.get(full_key(&prefix, key).as_slice()).map_err(unavailable)?.is_some());
            }
            (unique.into_iter().map(|k| (k, None)).collect(), Answer::Count(existing))
        }
    };

    // Check: what the changes do to usage, before anything is written.
    let mut delta_keys: i64 = 0;
    let mut delta_bytes: i64 = 0;
    for (key, new) in &changes {
        let old = t.data.get(full_key(&prefix, key).as_slice()).map_err(unavailable)?.map(|v| v.value().len());
        match (old, new) {
            (None, Some(value)) => {
                if let Err(e) = check_new_key(&request.quota, key.as_bytes()) {
                    return Ok(Err(e));
                }
                delta_keys += 1;
                delta_bytes += (key.len() + value.len()) as i64;
            }
            (Some(old), Some(value)) => delta_bytes += value.len() as i64 - old as i64,
            (Some(old), None) => {
                delta_keys -= 1;
                delta_bytes -= (key.len() + old) as i64;
            }
            (None, None) => {}
        }
    }
    let plugin = request.namespace.plugin();
    let plugin_key = plugin_usage_key(plugin);
    let (keys, bytes) = usage_row(&t.data, &plugin_key)?;
    let quota = &request.quota;
    let after = |now: u64, delta: i64| now.saturating_add_signed(delta);
    if delta_keys > 0 && after(keys, delta_keys) > quota.max_keys {
        let needed = after(keys, delta_keys);
        return Ok(Err(KvError::QuotaExceeded { quota: QuotaKind::Keys, usage: keys, needed, limit: quota.max_keys }));
    }
    if delta_bytes > 0 && after(bytes, delta_bytes) > quota.max_bytes {
        let needed = after(bytes, delta_bytes);
        return Ok(Err(KvError::QuotaExceeded {
            quota: QuotaKind::Bytes,
            usage: bytes,
            needed,
            limit: quota.max_bytes,
        }));
    }

    // Apply: data and both usage rows, in this transaction.
    for (key, new) in &changes {
        let full = full_key(&prefix, key);
        match new {
            Some(value) => {
                t.data.insert(full.as_slice(), value.as_ref()).map_err(unavailable)?;
            }
            None => {
                t.data.remove(full.as_slice()).map_err(unavailable)?;
            }
        }
    }
    if delta_keys != 0 || delta_bytes != 0 {
        put_usage_row(&mut t.data, &plugin_key, (after(keys, delta_keys), after(bytes, delta_bytes)))?;
        let ns_key = ns_usage_key(&prefix);
        let (ns_keys, ns_bytes) = usage_row(&t.data, &ns_key)?;
        put_usage_row(&mut t.data, &ns_key, (after(ns_keys, delta_keys), after(ns_bytes, delta_bytes)))?;
    }
    Ok(Ok(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::kv::backend::Namespace;

    /// An outside review emptied the file of a stopped sidecar: redb took
    /// it for a new store, and every namespace and quota started over.
    #[test]
    fn an_empty_store_file_is_refused_not_taken_for_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        std::fs::write(&path, b"").unwrap();
        let Err(error) = RedbBackend::open(&path) else { panic!("an empty file must be refused") };
        assert!(matches!(&error, KvError::Unavailable(m) if m.contains("empty")), "{error:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "the file was left as it was");
    }

    /// The store holds every plugin's data: created or found readable by
    /// others, it is made private (an outside review read a 0644 file).
    #[test]
    fn the_store_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let created = dir.path().join("new.redb");
        drop(RedbBackend::open(&created).unwrap());
        assert_eq!(mode(&created), 0o600);
        let existing = dir.path().join("old.redb");
        drop(RedbBackend::open(&existing).unwrap());
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(RedbBackend::open(&existing).unwrap());
        assert_eq!(mode(&existing), 0o600);
    }

    /// A `set_many` of exactly [`MAX_CALL_BYTES`] (keys plus values) is
    /// one call; a byte more is refused whole, naming the bound.
    #[tokio::test]
    async fn set_many_and_get_many_are_bounded_at_exactly_the_call_bound() {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(&dir.path().join("kv.redb")).unwrap();
        let bucket = Bucket {
            namespace: Namespace::new("alpha", "default").unwrap(),
            quota: Quota { max_value: MAX_CALL_BYTES, max_bytes: 4 * MAX_CALL_BYTES, ..Quota::default() },
            durability: Durability::Immediate,
        };
        let half = (MAX_CALL_BYTES / 2) as usize;
        let items =
            |extra: usize| vec![("a".to_string(), vec![1; half - 1]), ("b".to_string(), vec![2; half - 1 + extra])];
        backend.set_many(&bucket, items(0)).await.unwrap();
        assert_eq!(backend.get(&bucket, "b").await.unwrap().map(|v| v.len()), Some(half - 1));
        // A get_many's answer is bounded the same way, keys included: "a"
        // and "b" come to the bound exactly; a further key, even absent,
        // takes it one byte past.
        let at_bound = backend.get_many(&bucket, &["a".to_string(), "b".to_string()]).await.unwrap();
        assert_eq!(at_bound.iter().map(|v| v.as_ref().map(Vec::len)).collect::<Vec<_>>(), [Some(half - 1); 2]);
        let past = backend.get_many(&bucket, &["a".to_string(), "b".to_string(), "c".to_string()]).await;
        assert!(matches!(past, Err(KvError::QuotaExceeded { .. })), "{past:?}");
        let error = backend.set_many(&bucket, items(1)).await.unwrap_err();
        assert!(error.to_string().contains(&MAX_CALL_BYTES.to_string()), "{error}");
        assert_eq!(backend.get(&bucket, "b").await.unwrap().map(|v| v.len()), Some(half - 1), "nothing written");
    }

    /// Review 29: copying large values out on the executor held up other
    /// plugins' timers. Reads whose values pass `offload::INLINE_BYTES` are
    /// copied on a blocking thread (the one read that counts), smaller ones
    /// inline, and the answers are the same either way.
    #[tokio::test]
    async fn large_reads_are_copied_off_the_executor() {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(&dir.path().join("kv.redb")).unwrap();
        let bucket = Bucket {
            namespace: Namespace::new("alpha", "default").unwrap(),
            quota: Quota { max_value: 1 << 20, ..Quota::default() },
            durability: Durability::Immediate,
        };
        let inline = offload::INLINE_BYTES as usize;
        // Each key is one byte: "s" and "t" come to the bound exactly.
        for (key, len) in [("s", inline / 2 - 1), ("t", inline / 2 - 1), ("l", inline)] {
            backend.set(&bucket, key.into(), vec![key.as_bytes()[0]; len]).await.unwrap();
        }
        let keys = |names: &[&str]| names.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let lens = |values: Vec<Option<Vec<u8>>>| values.into_iter().map(|v| v.map(|v| v.len())).collect::<Vec<_>>();
        let before = offload::offloaded();
        assert_eq!(backend.get(&bucket, "s").await.unwrap().unwrap(), vec![b's'; inline / 2 - 1]);
        assert_eq!(lens(backend.get_many(&bucket, &keys(&["s", "t"])).await.unwrap()).len(), 2);
        assert_eq!(offload::offloaded(), before, "small reads left the executor");
        assert_eq!(backend.get(&bucket, "l").await.unwrap().unwrap(), vec![b'l'; inline]);
        assert_eq!(offload::offloaded(), before + 1, "a large get was copied inline");
        let values = backend.get_many(&bucket, &keys(&["s", "none", "t", "s"])).await.unwrap();
        assert_eq!(lens(values), [Some(inline / 2 - 1), None, Some(inline / 2 - 1), Some(inline / 2 - 1)]);
        assert_eq!(offload::offloaded(), before + 2, "a get_many past the bound was copied inline");
    }

    /// Reads share the latest snapshot (`super::snapshot`): each read after
    /// an acknowledged write sees it, durable or relaxed, and the snapshots
    /// reads leave behind keep no page from being reused: 300 overwrites
    /// of a 64 KiB value, each read back, leave the file at a few of them
    /// (a snapshot's transaction left open holds every older version: ~20 MB).
    #[tokio::test]
    async fn reads_between_overwrites_see_each_and_hold_no_old_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let backend = RedbBackend::open(&path).unwrap();
        let bucket = |durability| Bucket {
            namespace: Namespace::new("alpha", "default").unwrap(),
            quota: Quota { max_value: 1 << 20, ..Quota::default() },
            durability,
        };
        for durability in [Durability::Immediate, Durability::Relaxed] {
            let bucket = bucket(durability);
            for i in 0..150u32 {
                let value = [i.to_le_bytes().as_slice(), &[7; 64 << 10]].concat();
                backend.set(&bucket, "k".into(), value.clone()).await.unwrap();
                assert_eq!(backend.get(&bucket, "k").await.unwrap(), Some(value), "{durability:?} write {i}");
                assert!(backend.exists(&bucket, "k").await.unwrap());
            }
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 4 << 20, "the store grew to {size} bytes");
    }

    /// The store closes cleanly with a read snapshot kept open: redb's
    /// last commit at close still trims the file to what is stored, and
    /// the next open needs no repair (checked with redb 3.1: a live read
    /// transaction at close changes neither).
    #[tokio::test]
    async fn a_store_closed_with_a_snapshot_kept_is_trimmed_and_opens_without_repair() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let bucket = Bucket {
            namespace: Namespace::new("alpha", "default").unwrap(),
            quota: Quota { max_value: 1 << 20, max_bytes: 64 << 20, ..Quota::default() },
            durability: Durability::Immediate,
        };
        let backend = RedbBackend::open(&path).unwrap();
        for i in 0..20 {
            backend.set(&bucket, format!("k{i}"), vec![1; 1 << 20]).await.unwrap();
        }
        assert!(backend.get(&bucket, "k1").await.unwrap().is_some());
        for i in 0..20 {
            backend.delete(&bucket, format!("k{i}")).await.unwrap();
        }
        assert!(backend.get(&bucket, "k1").await.unwrap().is_none());
        assert!(std::fs::metadata(&path).unwrap().len() > 16 << 20);
        drop(backend);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 4 << 20, "the closed store kept {size} bytes");
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::clone(&repaired);
        let db = Database::builder()
            .set_repair_callback(move |_| seen.store(true, std::sync::atomic::Ordering::SeqCst))
            .create(&path)
            .unwrap();
        assert!(!repaired.load(std::sync::atomic::Ordering::SeqCst), "the store needed a repair");
        drop(db);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_makes_callers_wait_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(RedbBackend::open(&dir.path().join("kv.redb")).unwrap());
        let bucket = Arc::new(Bucket {
            namespace: Namespace::new("alpha", "default").unwrap(),
            quota: Quota::default(),
            durability: Durability::Immediate,
        });
        // Take all of the queue's budget, as queued writes would.
        let held = Arc::clone(backend.budget.total()).acquire_many_owned(QUEUE_BYTES as u32).await.unwrap();
        let write = {
            let (backend, bucket) = (Arc::clone(&backend), Arc::clone(&bucket));
            tokio::spawn(async move { backend.set(&bucket, "k".into(), vec![1; 10]).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!write.is_finished(), "a write was queued past the budget");
        assert_eq!(backend.get(&bucket, "k").await.unwrap(), None);
        drop(held);
        write.await.unwrap().unwrap();
        assert_eq!(backend.get(&bucket, "k").await.unwrap(), Some(vec![1; 10]));
        assert_eq!(backend.budget.available(), QUEUE_BYTES, "answered writes give their budget back");
    }

    /// Waits (at most 10 s) until the queue's common budget has `left`.
    async fn budget_reaches(backend: &RedbBackend, left: u64) {
        for _ in 0..1000 {
            if backend.budget.available() == left {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the queue budget stayed at {} (expected {left})", backend.budget.available());
    }

    /// An outside review's plugin kept the queue full with large writes
    /// and another plugin's small write waited behind all of them. With
    /// the writer stopped (a write transaction held), alpha's writes fill
    /// its share and its next one waits unqueued, while beta's is queued
    /// at once; everything is written once the writer goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_past_its_queue_share_waits_and_others_are_queued() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(RedbBackend::open(&dir.path().join("kv.redb")).unwrap());
        let bucket = |plugin: &str| {
            Arc::new(Bucket {
                namespace: Namespace::new(plugin, "default").unwrap(),
                quota: Quota { max_value: 8 << 20, max_bytes: 1 << 30, ..Quota::default() },
                durability: Durability::Immediate,
            })
        };
        let write = |bucket: &Arc<Bucket>, key: &str, len: usize| {
            let (backend, bucket, key) = (Arc::clone(&backend), Arc::clone(bucket), key.to_string());
            tokio::spawn(async move { backend.set(&bucket, key, vec![7; len]).await })
        };
        let (alpha, beta) = (bucket("alpha"), bucket("beta"));
        let large = 6 << 20;
        let cost = |key: &str, len: usize| QueueBudget::cost((key.len() + len) as u64, 1);
        let blocker = backend.db.begin_write().unwrap();
        let mut writes = vec![write(&alpha, "a1", large)];
        budget_reaches(&backend, QUEUE_BYTES - cost("a1", large)).await;
        writes.push(write(&alpha, "a2", large));
        let alpha_queued = QUEUE_BYTES - cost("a1", large) - cost("a2", large);
        budget_reaches(&backend, alpha_queued).await;
        writes.push(write(&alpha, "a3", large));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(backend.budget.available(), alpha_queued, "alpha queued past its share");
        writes.push(write(&beta, "b1", 100));
        budget_reaches(&backend, alpha_queued - cost("b1", 100)).await;
        drop(blocker);
        for write in writes {
            write.await.unwrap().unwrap();
        }
        for (bucket, key, len) in [(&alpha, "a1", large), (&alpha, "a3", large), (&beta, "b1", 100)] {
            assert_eq!(backend.get(bucket, key).await.unwrap().map(|v| v.len()), Some(len));
        }
        assert_eq!(backend.budget.available(), QUEUE_BYTES);
    }

    #[test]
    fn namespace_prefixes_are_prefix_free_and_never_start_with_the_usage_byte() {
        let names = ["a", "a-b", "b-c", "ab", "default", "c"];
        let mut prefixes = Vec::new();
        for plugin in names {
            for bucket in names {
                prefixes.push(ns_prefix(&Namespace::new(plugin, bucket).unwrap()));
            }
        }
        for (i, a) in prefixes.iter().enumerate() {
            assert_ne!(a[0], 0, "usage rows start with 0");
            for (j, b) in prefixes.iter().enumerate() {
                assert!(i == j || !b.starts_with(a), "{a:?} is a prefix of {b:?}");
            }
        }
    }
}
