//! The `wasi:keyvalue@0.2.0-draft2` door (Spin 3.x/4.x), generated from
//! `wit/deps/keyvalue-0.2.0-draft2`, onto the same service as the custom
//! door (see [`super::wasi`] for the error mapping).
//!
//! - `bucket` handles hold only their [`Bucket`] (namespace, quotas,
//!   durability); `open` names a granted bucket (`""`/`"default"`: the
//!   plugin's default one), anything else is `access-denied`.
//! - `list-keys` passes the service's cursor through: a string bound to
//!   the plugin and bucket, valid across invocations and concurrent
//!   writes; one of another plugin or bucket is `invalid-input`.
//! - `cas` handles hold the bucket, the key and a [`Fingerprint`] of the
//!   value seen at `new` (and again at each `current`); `swap` stores its
//!   value only if the key still holds that value, through the backend's
//!   compare-and-swap, and otherwise fails with `cas-failed` and a handle
//!   holding the value now stored.
//! - batch calls are all-or-nothing (stronger than the draft promises).

use wasmtime::component::Resource;

use super::backend::Bucket;
use super::host::to_guest;
use super::metrics::KvOp;
use super::wasi::{Fingerprint, PAGE_KEYS, Refusal, WasiKvView, fingerprinted};
use crate::error::GuestError;

/// Generated from the vendored WIT by `bindgen!`.
#[allow(missing_docs)]
pub mod bindings {
    pub use super::CasHandle;
    pub use crate::services::kv::Bucket;

    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports@0.2.0-draft2",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": Bucket,
            "wasi:keyvalue/atomics.cas": CasHandle,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// A `cas` handle: what it compares against at `swap`.
pub struct CasHandle {
    bucket: Bucket,
    key: String,
    seen: Fingerprint,
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
    fn bucket_of(&self, handle: &Resource<Bucket>) -> wasmtime::Result<Bucket> {
        Ok(self.table.get(handle)?.clone())
    }
}

impl store::Host for WasiKvView<'_> {
    async fn open(&mut self, identifier: String) -> Answer<Resource<Bucket>> {
        let bucket = async {
            self.host.admit(KvOp::Open).await.map_err(refuse)?;
            self.host.bucket(KvOp::Open, &identifier).cloned().map_err(refuse)
        }
        .await;
        match bucket {
            Ok(bucket) => Ok(Ok(self.table.push(bucket)?)),
            Err(error) => Ok(Err(error)),
        }
    }
}

impl store::HostBucket for WasiKvView<'_> {
    async fn get(&mut self, handle: Resource<Bucket>, key: String) -> Answer<Option<Vec<u8>>> {
        let bucket = self.bucket_of(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::Get).await.map_err(refuse)?;
            backend.get(&bucket, &key).await.map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn set(&mut self, handle: Resource<Bucket>, key: String, value: Vec<u8>) -> Answer<()> {
        let bucket = self.bucket_of(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::Set).await.map_err(refuse)?;
            backend.set(&bucket, key, value).await.map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn delete(&mut self, handle: Resource<Bucket>, key: String) -> Answer<()> {
        let bucket = self.bucket_of(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::Delete).await.map_err(refuse)?;
            backend.delete(&bucket, key).await.map(drop).map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn exists(&mut self, handle: Resource<Bucket>, key: String) -> Answer<bool> {
        let bucket = self.bucket_of(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::Exists).await.map_err(refuse)?;
            backend.exists(&bucket, &key).await.map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn list_keys(&mut self, handle: Resource<Bucket>, cursor: Option<String>) -> Answer<store::KeyResponse> {
        let bucket = self.bucket_of(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::ListKeys).await.map_err(refuse)?;
            let page =
                backend.list_keys(&bucket, "", cursor.as_deref(), PAGE_KEYS).await.map_err(|e| refuse(to_guest(e)))?;
            Ok(store::KeyResponse { keys: page.keys, cursor: page.cursor })
        }
        .await)
    }

    async fn drop(&mut self, handle: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl atomics::Host for WasiKvView<'_> {
    async fn increment(&mut self, handle: Resource<Bucket>, key: String, delta: i64) -> Answer<i64> {
        let bucket = self.bucket_of(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::Increment).await.map_err(refuse)?;
            backend.increment(&bucket, key, delta).await.map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn swap(
        &mut self,
        handle: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let cas = self.table.delete(handle)?;
        let outcome = async {
            let backend = self.host.admit(KvOp::CompareAndSwap).await.map_err(refuse)?;
            let failed = |e| refuse(to_guest(e));
            let (now, mut seen) = fingerprinted(backend.get(&cas.bucket, &cas.key).await.map_err(failed)?).await;
            if seen == cas.seen {
                if backend.compare_and_swap(&cas.bucket, cas.key.clone(), now, value).await.map_err(failed)? {
                    return Ok(None);
                }
                // Changed between the read and the swap.
                seen = fingerprinted(backend.get(&cas.bucket, &cas.key).await.map_err(failed)?).await.1;
            }
            // A handle on what is stored now, for the retry.
            Ok(Some(CasHandle { seen, ..cas }))
        }
        .await;
        match outcome {
            Ok(None) => Ok(Ok(())),
            Ok(Some(fresh)) => Ok(Err(atomics::CasError::CasFailed(self.table.push(fresh)?))),
            Err(error) => Ok(Err(atomics::CasError::StoreError(error))),
        }
    }
}

impl atomics::HostCas for WasiKvView<'_> {
    async fn new(&mut self, handle: Resource<Bucket>, key: String) -> Answer<Resource<CasHandle>> {
        let bucket = self.bucket_of(&handle)?;
        let seen = async {
            let backend = self.host.admit(KvOp::Get).await.map_err(refuse)?;
            let now = backend.get(&bucket, &key).await.map_err(|e| refuse(to_guest(e)))?;
            Ok(fingerprinted(now).await.1)
        }
        .await;
        match seen {
            Ok(seen) => Ok(Ok(self.table.push(CasHandle { bucket, key, seen })?)),
            Err(error) => Ok(Err(error)),
        }
    }

    async fn current(&mut self, handle: Resource<CasHandle>) -> Answer<Option<Vec<u8>>> {
        let (bucket, key) = {
            let cas = self.table.get(&handle)?;
            (cas.bucket.clone(), cas.key.clone())
        };
        let now = async {
            let backend = self.host.admit(KvOp::Get).await.map_err(refuse)?;
            backend.get(&bucket, &key).await.map_err(|e| refuse(to_guest(e)))
        }
        .await;
        // What the guest is shown is what `swap` will expect (as Spin's
        // handles do), so a swap of a value computed from it cannot
        // overwrite a value the guest never saw.
        let now = match now {
            Ok(now) => now,
            Err(refused) => return Ok(Err(refused)),
        };
        let (now, seen) = fingerprinted(now).await;
        self.table.get_mut(&handle)?.seen = seen;
        Ok(Ok(now))
    }

    async fn drop(&mut self, handle: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}

impl batch::Host for WasiKvView<'_> {
    async fn get_many(
        &mut self,
        handle: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Answer<Vec<(String, Option<Vec<u8>>)>> {
        let bucket = self.bucket_of(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::GetMany).await.map_err(refuse)?;
            let values = backend.get_many(&bucket, &keys).await.map_err(|e| refuse(to_guest(e)))?;
            Ok(keys.into_iter().zip(values).collect())
        }
        .await)
    }

    async fn set_many(&mut self, handle: Resource<Bucket>, key_values: Vec<(String, Vec<u8>)>) -> Answer<()> {
        let bucket = self.bucket_of(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::SetMany).await.map_err(refuse)?;
            backend.set_many(&bucket, key_values).await.map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }

    async fn delete_many(&mut self, handle: Resource<Bucket>, keys: Vec<String>) -> Answer<()> {
        let bucket = self.bucket_of(&handle)?;
        Ok(async {
            let backend = self.host.admit(KvOp::DeleteMany).await.map_err(refuse)?;
            backend.delete_many(&bucket, keys).await.map(drop).map_err(|e| refuse(to_guest(e)))
        }
        .await)
    }
}
