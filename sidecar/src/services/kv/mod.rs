//! Key-value storage: per-plugin namespaces with exact quotas.
//!
//! # Layout
//! - [`policy`]: the `[kv]` grant (quotas, rate, buckets, durability).
//!   Pure, table-tested.
//! - [`backend`]: the [`KvBackend`] trait every backend implements, the
//!   namespace and cursor types, and the input checks backends share.
//! - [`redb`]: the embedded backend (one file, a group-commit writer).
//! - [`postgres`]: the shared backend (a `[databases.<alias>]` database;
//!   quotas hold across sidecar processes).
//! - [`error`]: [`KvError`], one variant per guest-visible kind.
//!
//! Not here yet: the doors (the custom `kv` interface, wasi:keyvalue), the
//! rate limiter that enforces `[kv] rate`.

pub mod backend;
pub mod error;
pub mod host;
pub mod policy;
pub mod postgres;
pub mod redb;

pub use backend::{Bucket, KvBackend, Namespace, Page, Usage, UsageReport};
pub use error::{KvError, QuotaKind};
pub use host::{KvHost, KvService, KvStore, PluginKv};
pub use policy::KvPolicy;
pub use postgres::PostgresBackend;
pub use redb::RedbBackend;
