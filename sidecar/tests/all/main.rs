//! Integration tests: real components compiled from `guests/`, real files,
//! the real `gatehouse` binary. One test binary for the whole crate.

mod audit;
mod cli;
mod common;
mod compose;
mod databases;
mod grant_diff;
mod hostile;
mod http_doors;
mod http_gateway;
mod http_logs;
mod http_props;
mod http_state;
mod invoke;
mod kv;
mod logs;
mod operator;
mod policy;
mod postgres;
mod raw_upstream;
mod sandbox;
mod server;
mod sidecar;
mod sql;
mod sql_guard;
mod sql_policy;
mod ssrf;
mod tls;
mod upstream;
