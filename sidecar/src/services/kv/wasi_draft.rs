//! The `wasi:keyvalue@0.2.0-draft` door (wasmtime's own host, wasmCloud),
//! generated from `wit/deps/keyvalue-0.2.0-draft`, onto the same service as
//! the custom door (see [`super::wasi`] for the error mapping).
//!
//! What differs from draft2, and how it maps:
//!
//! - **Cursors are `u64`.** The service's cursors are strings (a key, up
//!   to 4 KiB), which a `u64` cannot carry, and an offset would skip or
//!   repeat keys when others are written during a scan. So each `bucket`
//!   handle keeps the service cursors of its last [`CURSORS_PER_HANDLE`]
//!   pages, each under a number drawn from one process-wide counter, and
//!   `list-keys` hands out the number. Guarantee: the same as the
//!   service's cursors (no key that exists for the whole scan is skipped
//!   or repeated, whatever is written meanwhile) while the cursor is one
//!   of the last [`CURSORS_PER_HANDLE`] this handle returned. Bound: at
//!   most that many cursors of at most ~8 KiB per handle, freed with the
//!   handle, and handles are capped by the invocation's resource table. A
//!   number this handle did not return recently (another handle's, an
//!   older invocation's, another plugin's, a made-up one) is
//!   `invalid-input`; `0` is read as "from the start", as hosts that use
//!   offsets read it.
//! - **`increment` is unsigned** (`delta: u64 -> u64`) on the service's
//!   decimal counters: a delta above `i64::MAX`, or a counter another door
//!   made negative, is `invalid-input` and nothing is written.
//! - There is no compare-and-swap in this draft's `atomics` (only draft2
//!   has `cas`/`swap`).
//! - `get-many` answers `none` for an absent key, `some((key, value))`
//!   otherwise; batch calls are all-or-nothing (stronger than the draft
//!   promises).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::component::Resource;

use super::backend::{Bucket, parse_counter};
use super::host::to_guest;
use super::metrics::KvOp;
use super::wasi::{PAGE_KEYS, Refusal, WasiKvView, invalid};
use crate::error::GuestError;
use crate::guest_text::{SHORT, escaped};

/// Generated from the vendored WIT by `bindgen!`.
#[allow(missing_docs)]
pub mod bindings {
    pub use super::DraftBucket;

    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports@0.2.0-draft",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": DraftBucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// `list-keys` cursors a bucket handle keeps (the most recent ones).
pub const CURSORS_PER_HANDLE: usize = 8;

/// Numbers given to cursors, process-wide, so that no two handles (in
/// any invocation) ever hand out the same one. Starts at 1: 0 means "from
/// the start".
static NEXT_CURSOR: AtomicU64 = AtomicU64::new(1);

/// A `bucket` handle: the bucket, and the cursors of its recent pages.
pub struct DraftBucket {
    bucket: Bucket,
    cursors: VecDeque<(u64, String)>,
}

impl DraftBucket {
    /// The service cursor a guest's number stands for.
    fn resume(&self, cursor: Option<u64>) -> Result<Option<String>, Refusal> {
        match cursor {
            None | Some(0) => Ok(None),
            Some(n) => match self.cursors.iter().find(|(id, _)| *id == n) {
                Some((_, cursor)) => Ok(Some(cursor.clone())),
                None => Err(invalid(format!(
                    "cursor {n} is not one of the last {CURSORS_PER_HANDLE} this bucket handle returned"
                ))),
            },
        }
    }

    /// Keeps `cursor` and returns its number; the oldest is forgotten
    /// past [`CURSORS_PER_HANDLE`].
    fn remember(&mut self, cursor: String) -> u64 {
        let id = NEXT_CURSOR.fetch_add(1, Ordering::Relaxed);
        if self.cursors.len() == CURSORS_PER_HANDLE {
            self.cursors.pop_front();
        }
        self.cursors.push_back((id, cursor));
        id
    }
}

type Answer<T> = wasmtime::Result<Result<T, store::Error>>;

impl From<Refusal> for store::Error {
    fn from(refusal: Refusal) -> store::Error {
        match refusal {
            Refusal::AccessDenied => store::Error::AccessDenied,
            Refusal::Other(text) => store::Error::Other(text),
        }
    }
}

fn refuse(error: GuestError) -> store::Error {
    Refusal::from(error).into()
}

impl WasiKvView<'_> {
    fn draft_bucket(&self, handle: &Resource<DraftBucket>) -> wasmtime::Result<Bucket> {
        Ok(self.table.get(handle)?.bucket.clone())
    }
}

impl store::Host for WasiKvView<'_> {
    async fn open(&mut self, identifier: String) -> Answer<Resource<DraftBucket>> {
        let bucket = async {
            self.host.admit(KvOp::Open).await.map_err(refuse)?;
            self.host.bucket(KvOp::Open, &identifier).cloned().map_err(refuse)
        }
        .await;
        match bucket {
            Ok(bucket) => Ok(Ok(self.table.push(DraftBucket { bucket, cursors: VecDeque::new() })?)),
            Err(error) => Ok(Err(error)),
        }
    }
}

impl store::HostBucket for WasiKvView<'_> {
    async fn get(&mut self, handle: Resource<DraftBucket>, key: String) -> Answer<Option<Vec<u8>>> {
        let bucket = self.draft_bucket(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::Get).await.map_err(refuse)?;
            backend.get(&bucket, &key).await.map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn set(&mut self, handle: Resource<DraftBucket>, key: String, value: Vec<u8>) -> Answer<()> {
        let bucket = self.draft_bucket(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::Set).await.map_err(refuse)?;
            backend.set(&bucket, key, value).await.map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn delete(&mut self, handle: Resource<DraftBucket>, key: String) -> Answer<()> {
        let bucket = self.draft_bucket(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::Delete).await.map_err(refuse)?;
            backend.delete(&bucket, key).await.map(drop).map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn exists(&mut self, handle: Resource<DraftBucket>, key: String) -> Answer<bool> {
        let bucket = self.draft_bucket(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::Exists).await.map_err(refuse)?;
            backend.exists(&bucket, &key).await.map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn list_keys(&mut self, handle: Resource<DraftBucket>, cursor: Option<u64>) -> Answer<store::KeyResponse> {
        let (bucket, resume) = {
            let entry = self.table.get(&handle)?;
            (entry.bucket.clone(), entry.resume(cursor))
        };
        let page = async {
            let resume = resume.map_err(store::Error::from)?;
            let backend = self.host.admit(KvOp::ListKeys).await.map_err(refuse)?;
            backend.list_keys(&bucket, "", resume.as_deref(), PAGE_KEYS).await.map_err(|e| refuse(to_guest(e)))
        }
        .await;
        Ok(match page {
            Ok(page) => {
                let cursor = match page.cursor {
                    Some(next) => Some(self.table.get_mut(&handle)?.remember(next)),
                    None => None,
                };
                Ok(store::KeyResponse { keys: page.keys, cursor })
            }
            Err(error) => Err(error),
        })
    }

    async fn drop(&mut self, handle: Resource<DraftBucket>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl atomics::Host for WasiKvView<'_> {
    async fn increment(&mut self, handle: Resource<DraftBucket>, key: String, delta: u64) -> Answer<u64> {
        let bucket = self.draft_bucket(&handle)?;
        Ok(async {
            let Ok(delta) = i64::try_from(delta) else {
                return Err(invalid(format!("the delta {delta} is above {}, the largest counter", i64::MAX)).into());
            };
            let backend = self.host.admit(KvOp::Increment).await.map_err(refuse)?;
            let failed = |e| refuse(to_guest(e));
            // A negative counter (only another door can store one) is not
            // this draft's: refused before anything is written.
            if let Some(now) = backend.get(&bucket, &key).await.map_err(failed)?
                && parse_counter(&now).is_some_and(|n| n < 0)
            {
                return Err(invalid(format!("the counter `{}` is negative", escaped(&key, SHORT))).into());
            }
            let next = backend.increment(&bucket, key.clone(), delta).await.map_err(failed)?;
            // Only if another door stored a negative counter between the
            // read and the increment (which is then applied).
            u64::try_from(next).map_err(|_| {
                invalid(format!("the counter `{}` is {next} after the increment, below 0", escaped(&key, SHORT))).into()
            })
        }
        .await)
    }
}

impl batch::Host for WasiKvView<'_> {
    async fn get_many(
        &mut self,
        handle: Resource<DraftBucket>,
        keys: Vec<String>,
    ) -> Answer<Vec<Option<(String, Vec<u8>)>>> {
        let bucket = self.draft_bucket(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::GetMany).await.map_err(refuse)?;
            let values = backend.get_many(&bucket, &keys).await.map_err(|e| refuse(to_guest(e)))?;
            Ok(keys.into_iter().zip(values).map(|(key, value)| value.map(|v| (key, v))).collect())
        }
        .await)
    }

    async fn set_many(&mut self, handle: Resource<DraftBucket>, key_values: Vec<(String, Vec<u8>)>) -> Answer<()> {
        let bucket = self.draft_bucket(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::SetMany).await.map_err(refuse)?;
            backend.set_many(&bucket, key_values).await.map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn delete_many(&mut self, handle: Resource<DraftBucket>, keys: Vec<String>) -> Answer<()> {
        let bucket = self.draft_bucket(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::DeleteMany).await.map_err(refuse)?;
            backend.delete_many(&bucket, keys).await.map(drop).map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::kv::KvPolicy;

    fn handle() -> DraftBucket {
        DraftBucket { bucket: Bucket::open("p", &KvPolicy::default(), "").unwrap(), cursors: VecDeque::new() }
    }

    #[test]
    fn a_handle_keeps_its_last_cursors_and_refuses_others() {
        let mut a = handle();
        let b = handle();
        assert_eq!(a.resume(None), Ok(None));
        assert_eq!(a.resume(Some(0)), Ok(None));
        let ids: Vec<u64> = (0..CURSORS_PER_HANDLE + 2).map(|i| a.remember(format!("c{i}"))).collect();
        assert_eq!(a.cursors.len(), CURSORS_PER_HANDLE, "bounded");
        // The two oldest are forgotten, the others resolve to their cursor.
        for (i, id) in ids.iter().enumerate() {
            let resumed = a.resume(Some(*id));
            if i < 2 {
                assert!(matches!(resumed, Err(Refusal::Other(ref t)) if t.starts_with("invalid-input: cursor")));
            } else {
                assert_eq!(resumed, Ok(Some(format!("c{i}"))));
            }
        }
        // Another handle's cursor, and one never handed out.
        assert!(b.resume(Some(ids[5])).is_err());
        assert!(a.resume(Some(u64::MAX)).is_err());
    }
}
