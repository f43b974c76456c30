//! Integration tests: real components compiled from `guests/`, real files,
//! the real `gatehouse` binary. One test binary for the whole crate.

mod cli;
mod common;
mod hostile;
mod invoke;
mod policy;
