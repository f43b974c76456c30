//! Key-value storage: per-plugin namespaces with exact quotas.
//!
//! # Layout
//! - [`policy`]: the `[kv]` grant (quotas, rate, buckets, durability).
//!   Pure, table-tested.
//! - [`backend`]: the [`KvBackend`] trait every backend implements, the
//!   namespace and cursor types, and the input checks backends share.
//! - [`redb`]: the embedded backend (one file, a group-commit writer
//!   taking each plugin's writes in turn: [`fair_batches`]).
//! - [`queue`]: the write queue's budget, common and per plugin (both
//!   backends), on [`shares`]: a semaphore per plugin.
//! - [`postgres`]: the shared backend (a `[databases.<alias>]` database;
//!   quotas hold across sidecar processes).
//! - [`error`]: [`KvError`], one variant per guest-visible kind.
//! - [`host`]: [`KvHost`], the one path every door's call takes (the
//!   `[kv]` grant, its rate, the bucket, the store), and the custom door
//!   `gatehouse:services/kv`.
//! - [`wasi`], [`wasi_draft`], [`wasi_draft2`]: the `wasi:keyvalue` doors,
//!   `0.2.0-draft` (wasmtime, wasmCloud) and `0.2.0-draft2` (Spin), each
//!   generated from its vendored WIT and translating onto [`KvHost`].
//! - [`metrics`]: operation counters by plugin, operation and outcome.
//! - [`operator`]: the read-only view for the admin API and the CLI.
//!

pub mod backend;
pub mod error;
pub mod fair_batches;
pub mod host;
pub mod metrics;
pub mod offload;
pub mod operator;
pub mod policy;
pub mod postgres;
pub mod queue;
pub mod redb;
pub mod shares;
mod snapshot;
pub mod wasi;
pub mod wasi_draft;
pub mod wasi_draft2;

pub use backend::{Bucket, KvBackend, Namespace, Page, Usage, UsageReport};
pub use error::{KvError, QuotaKind};
pub use host::{KvHost, KvService, KvStore, PluginKv};
pub use metrics::{KvMetrics, KvOp};
pub use operator::{KvReader, PluginUsage};
pub use policy::KvPolicy;
pub use postgres::PostgresBackend;
pub use redb::{RedbBackend, RedbReader};
