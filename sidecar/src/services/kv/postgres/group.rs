//! Group commit for the PostgreSQL backend: the queue of each plugin's
//! writes and the task that drains it.
//!
//! Every write of a plugin takes that plugin's usage-row lock until its
//! `COMMIT`, so one transaction per write means one WAL flush per write,
//! one after another. Instead, a write is queued on its plugin's lane; the
//! first write to find the lane idle starts a task that takes what is
//! queued (up to [`MAX_BATCH_OPS`] operations or [`MAX_BATCH_BYTES`]),
//! runs it as one transaction ([`super::PostgresBackend`]'s batch: one
//! lock, one `COMMIT`, one flush), answers each caller and takes the next
//! batch, until the lane is empty. Writes that arrive while a batch runs
//! make up the next one. Different plugins' lanes run side by side.
//!
//! The task, not the caller, runs the batch: a caller that gives up (its
//! invocation hit its deadline) never leaves the others of its batch
//! without an answer. Its write is still applied, as on redb.
//!
//! # Bounds
//! All lanes share [`QUEUE_BYTES`] of budget, and each plugin has a share
//! of it ([`super::super::queue`]): a write waits (at most
//! [`CALL_TIMEOUT`], then `unavailable`) until its keys and values plus
//! [`ENTRY_OVERHEAD`] per item fit in both before it is queued, and gives
//! them back when answered. A write that waited in its lane longer than
//! [`CALL_TIMEOUT`] (the database is slow) is answered `unavailable`
//! without being applied.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sqlx::postgres::PgPool;
use tokio::sync::oneshot;

use super::super::backend::Bucket;
use super::super::error::KvError;
use super::super::policy::Durability;
use super::super::queue::{QueueBudget, QueuePermit};
use super::plan::{Answer, Op, Write};
use super::{CALL_TIMEOUT, bounded, commit_batch, on_a_connection};
use crate::services::fair_places::Places;

pub use super::super::queue::{ENTRY_OVERHEAD, QUEUE_BYTES};
/// Most operations in one batch (one transaction).
pub const MAX_BATCH_OPS: usize = 1024;
/// Most bytes of operations in one batch; a single operation larger than
/// this (a `set_many` of up to 32 MiB) is a batch of its own.
pub const MAX_BATCH_BYTES: u64 = 16 << 20;

/// A queued write and its caller.
pub(super) struct Request {
    pub write: Write,
    pub durability: Durability,
    pub cost: u64,
    pub queued: Instant,
    reply: oneshot::Sender<Result<Answer, KvError>>,
    /// Held until the request is answered: what bounds the queue.
    budget: QueuePermit,
}

impl Request {
    /// Gives the budget back, then answers.
    pub fn answer(self, answer: Result<Answer, KvError>) {
        let Request { reply, budget, .. } = self;
        drop(budget);
        let _ = reply.send(answer);
    }
}

/// The plugins' lanes. A plugin has a lane exactly while a task drains it.
type Lanes = Mutex<HashMap<String, VecDeque<Request>>>;

/// The queue of every plugin's writes.
pub(super) struct Group {
    pool: PgPool,
    /// The backend's places in the pool: each batch takes its plugin's.
    places: Arc<Places>,
    lanes: Arc<Lanes>,
    budget: QueueBudget,
}

impl Group {
    pub fn new(pool: PgPool, places: Arc<Places>) -> Group {
        Group { pool, places, lanes: Arc::default(), budget: QueueBudget::default() }
    }

    /// Queues `op` on its plugin's lane and waits for the answer. `bytes`:
    /// its keys and values; `items`: how many it names.
    pub async fn submit(&self, bucket: &Bucket, op: Op, bytes: u64, items: u64) -> Result<Answer, KvError> {
        let cost = QueueBudget::cost(bytes, items);
        let plugin = bucket.namespace.plugin().to_string();
        let budget = tokio::time::timeout(CALL_TIMEOUT, self.budget.acquire(&plugin, cost))
            .await
            .map_err(|_| {
                KvError::Unavailable(format!(
                    "the write queue had no room within {CALL_TIMEOUT:?} (the database is slow)"
                ))
            })?
            .map_err(|_| KvError::Unavailable("the write queue is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            write: Write { bucket: bucket.namespace.bucket().to_string(), quota: bucket.quota, op },
            durability: bucket.durability,
            cost,
            queued: Instant::now(),
            reply,
            budget,
        };
        let start = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            match lanes.get_mut(&plugin) {
                Some(lane) => {
                    lane.push_back(request);
                    false
                }
                None => {
                    lanes.insert(plugin.clone(), VecDeque::from([request]));
                    true
                }
            }
        };
        if start {
            tokio::spawn(drain(self.pool.clone(), Arc::clone(&self.places), Arc::clone(&self.lanes), plugin));
        }
        answer.await.map_err(|_| KvError::Unavailable("the write was dropped before it was answered".into()))?
    }

    /// The queue's budget (for tests).
    #[cfg(test)]
    pub fn budget(&self) -> &QueueBudget {
        &self.budget
    }
}

/// Takes the next batch from the front of `lane`: at least one request,
/// then more while the batch stays within [`MAX_BATCH_OPS`] and
/// [`MAX_BATCH_BYTES`].
pub(super) fn take_batch(lane: &mut VecDeque<Request>) -> Vec<Request> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    while let Some(next) = lane.front() {
        if !batch.is_empty() && (batch.len() >= MAX_BATCH_OPS || bytes + next.cost > MAX_BATCH_BYTES) {
            break;
        }
        bytes += next.cost;
        batch.extend(lane.pop_front());
    }
    batch
}

/// Removes a lane whose task ends without emptying it (a panic, or the
/// runtime shutting down): its queued callers are answered `unavailable`
/// (their requests are dropped), and the next write starts a new task
/// instead of queueing behind one that is gone.
struct LaneGuard {
    lanes: Arc<Lanes>,
    plugin: String,
    /// Set once the task removed its lane itself: a lane there then is a
    /// new task's.
    done: AtomicBool,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if self.done.load(Ordering::Relaxed) {
            return;
        }
        let orphans = self.lanes.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.plugin);
        drop(orphans);
    }
}

/// Runs `plugin`'s lane until it is empty, then removes it (under the
/// lock, so a write queued meanwhile finds no lane and starts a new task).
async fn drain(pool: PgPool, places: Arc<Places>, lanes: Arc<Lanes>, plugin: String) {
    let guard = LaneGuard { lanes, plugin, done: AtomicBool::new(false) };
    let (lanes, plugin) = (&guard.lanes, &guard.plugin);
    loop {
        let batch = {
            let mut all = lanes.lock().unwrap_or_else(|e| e.into_inner());
            let Some(lane) = all.get_mut(plugin) else {
                guard.done.store(true, Ordering::Relaxed);
                return;
            };
            let batch = take_batch(lane);
            if batch.is_empty() {
                all.remove(plugin);
                guard.done.store(true, Ordering::Relaxed);
                return;
            }
            batch
        };
        let (stale, batch): (Vec<Request>, Vec<Request>) =
            batch.into_iter().partition(|r| r.queued.elapsed() > CALL_TIMEOUT);
        for request in stale {
            request.answer(Err(KvError::Unavailable(format!(
                "the write waited more than {CALL_TIMEOUT:?} behind its plugin's earlier writes; nothing was written"
            ))));
        }
        if batch.is_empty() {
            continue;
        }
        // Durable unless every write of the batch is to a relaxed bucket.
        let relaxed = batch.iter().all(|r| r.durability == Durability::Relaxed);
        let writes: Vec<&Write> = batch.iter().map(|r| &r.write).collect();
        let committed = bounded(on_a_connection(&pool, &places, plugin, async |conn| {
            commit_batch(conn, plugin, &writes, relaxed).await
        }));
        match committed.await {
            Ok(answers) => {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::backend::{KvBackend, Namespace};
    use super::super::super::policy::Quota;
    use super::super::PostgresBackend;
    use super::*;

    fn request(cost: u64) -> (Request, oneshot::Receiver<Result<Answer, KvError>>) {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            write: Write { bucket: "default".into(), quota: Quota::default(), op: Op::Delete { key: "k".into() } },
            durability: Durability::Immediate,
            cost,
            queued: Instant::now(),
            reply,
            budget: QueuePermit::empty(),
        };
        (request, answer)
    }

    #[test]
    fn a_batch_stays_within_its_operations_and_bytes() {
        let mut lane: VecDeque<Request> = (0..3000).map(|_| request(ENTRY_OVERHEAD).0).collect();
        assert_eq!(take_batch(&mut lane).len(), MAX_BATCH_OPS);
        assert_eq!(lane.len(), 3000 - MAX_BATCH_OPS);
        // By bytes: 4 MiB each, so four fill a batch exactly.
        let mut lane: VecDeque<Request> = (0..9).map(|_| request(4 << 20).0).collect();
        assert_eq!(take_batch(&mut lane).len(), 4);
        // One operation larger than a batch goes alone, never with others.
        let mut lane: VecDeque<Request> = [request(1).0, request(MAX_BATCH_BYTES + 1).0, request(1).0].into();
        assert_eq!(take_batch(&mut lane).len(), 1);
        assert_eq!(take_batch(&mut lane).len(), 1);
        assert_eq!(take_batch(&mut lane).len(), 1);
        assert!(take_batch(&mut lane).is_empty());
    }

    /// A backend whose database never answers (nothing listens on port 1).
    fn unreachable_backend() -> Arc<PostgresBackend> {
        let options = "postgres://nobody:x@127.0.0.1:1/none".parse().unwrap();
        let pool =
            sqlx::postgres::PgPoolOptions::new().acquire_timeout(Duration::from_millis(200)).connect_lazy_with(options);
        Arc::new(PostgresBackend::with_pool(pool))
    }

    /// Plugin `alpha`'s default bucket under `quota`.
    fn alpha(quota: Quota) -> Arc<Bucket> {
        Arc::new(Bucket {
            namespace: Namespace::new("alpha", "default").unwrap(),
            quota,
            durability: Durability::Immediate,
        })
    }

    /// Attack: writes that keep coming while the queue is full. They wait
    /// for room instead of growing it, and every answered write (here:
    /// `unavailable`, no server listens) gives its room back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_makes_callers_wait_instead_of_growing() {
        let backend = unreachable_backend();
        let bucket = alpha(Quota::default());
        let held = Arc::clone(backend.group.budget().total()).acquire_many_owned(QUEUE_BYTES as u32).await.unwrap();
        let write = {
            let (backend, bucket) = (Arc::clone(&backend), Arc::clone(&bucket));
            tokio::spawn(async move { backend.set(&bucket, "k".into(), vec![1; 10]).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!write.is_finished(), "a write was queued past the budget");
        assert!(backend.group.lanes.lock().unwrap().is_empty(), "nothing was queued");
        drop(held);
        let answer = write.await.unwrap();
        assert!(matches!(answer, Err(KvError::Unavailable(_))), "{answer:?}");
        assert_eq!(backend.group.budget().available(), QUEUE_BYTES);
        assert!(backend.group.lanes.lock().unwrap().is_empty(), "an empty lane is removed");
    }

    /// Each write is charged the bytes it carries, whatever its kind: with
    /// 1 MiB of room left, writes carrying 2 MiB wait (a compare-and-swap
    /// with no expected value was once charged nothing for its new one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_kind_of_write_is_charged_its_bytes() {
        let backend = unreachable_backend();
        let bucket = alpha(Quota { max_value: 4 << 20, ..Quota::default() });
        let held = Arc::clone(backend.group.budget().total())
            .acquire_many_owned((QUEUE_BYTES - (1 << 20)) as u32)
            .await
            .unwrap();
        let big = || vec![7u8; 2 << 20];
        // One at a time: the budget is fair, so one waiting write would
        // hold back the next whatever its size.
        for kind in ["set", "compare-and-swap"] {
            let write = {
                let (backend, bucket) = (Arc::clone(&backend), Arc::clone(&bucket));
                tokio::spawn(async move {
                    match kind {
                        "set" => backend.set(&bucket, "k".into(), big()).await.map(drop),
                        _ => backend.compare_and_swap(&bucket, "k".into(), None, big()).await.map(drop),
                    }
                })
            };
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!write.is_finished(), "a {kind} of 2 MiB was queued in 1 MiB of room");
            write.abort();
            assert!(write.await.unwrap_err().is_cancelled());
        }
        drop(held);
        assert_eq!(backend.group.budget().available(), QUEUE_BYTES);
    }
}
