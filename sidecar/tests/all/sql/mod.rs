//! The SQL gateway's execution layer and its custom door, on real SQLite
//! files and the harness's throwaway PostgreSQL.

mod door;
mod exec;
mod pg_pool;
mod relay;
mod spin;
mod support;
