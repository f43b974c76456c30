//! The key-value service's storage core: the `[kv]` policy section, and
//! the behavioural suite every backend must pass (run here on redb files
//! in temporary directories), crash safety included.

mod crash;
mod door;
mod operator;
mod policy;
mod props;
mod redb;
pub mod suite;
mod wasi;
