//! Key-value storage: per-plugin namespaces with exact quotas.
//!
//! # Layout
//! - [`policy`]: the `[kv]` grant (quotas, rate, buckets, durability).
//!   Pure, table-tested.
//! - [`backend`]: the [`KvBackend`] trait every backend implements, the
//!   namespace and cursor types, and the input checks backends share.
//! - [`redb`]: the embedded backend (one file, a group-commit writer).
//! - [`error`]: [`KvError`], one variant per guest-visible kind.
//! - [`host`]: the door, the one enforcement point every door passes
//!   ([`KvHost::run`]), and [`KvStore`], the store the sidecar shares.
//! - [`metrics`]: operation counters by plugin, operation and outcome.
//! - [`operator`]: the read-only view for the admin API and the CLI.
//!
//! Not here yet: the doors (the custom `kv` interface, wasi:keyvalue), the
//! rate limiter that enforces `[kv] rate`, the PostgreSQL backend.

pub mod backend;
pub mod error;
pub mod host;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod redb;

pub use backend::{Bucket, KvBackend, Namespace, Page, Usage, UsageReport};
pub use error::{KvError, QuotaKind};
pub use host::{KvHost, KvService, KvStore, PluginKv};
pub use metrics::{KvMetrics, KvOp};
pub use operator::{KvReader, PluginUsage};
pub use policy::KvPolicy;
pub use redb::{RedbBackend, RedbReader};
