//! The key-value service's storage core: the `[kv]` policy section, and
//! the behavioural suite every backend must pass (on redb files in
//! temporary directories and on a throwaway PostgreSQL), crash safety
//! included.

mod crash;
mod door;
mod operator;
mod policy;
mod postgres;
mod props;
mod redb;
pub mod suite;
mod wasi;
