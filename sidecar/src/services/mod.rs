//! Host services, one module per WIT interface. Each module owns its policy
//! check and backend and is testable without wasm; the runtime only links
//! them (see `runtime::linker`).

pub mod http;
pub mod kv;
pub mod log;
