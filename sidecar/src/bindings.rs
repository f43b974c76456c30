//! Host bindings generated from the `gatehouse:services` WIT package.
//!
//! Every import is async (host services do I/O) and trappable (a host bug
//! becomes a trap in the calling plugin only, never a sidecar crash).
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "gatehouse:services/plugin",
    imports: { default: async | trappable },
    exports: { default: async },
    with: { "gatehouse:services/sql.transaction": crate::services::sql::host::Transaction },
});
