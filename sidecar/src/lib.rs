//! Gatehouse runs WebAssembly components (plugins) with wasmtime and puts
//! host-mediated, policy-checked services in front of them. A plugin never
//! holds a socket, a file path or a database connection: it imports narrow
//! WIT interfaces (see `wit/` in the repository) and the sidecar decides, per
//! plugin, what each call may do.
//!
//! # Layout
//!
//! - [`config`]: sidecar settings (policy and plugin directories, data
//!   directory, engine sizing), read from `gatehouse.toml`.
//! - [`policy`]: `policies/*.toml` -> validated, typed grants. Pure parsing
//!   and validation; the only I/O is reading the files and the components
//!   they pin.
//! - [`runtime`]: the wasmtime engine (pooling allocator, epoch deadlines,
//!   compiled-code cache, compile workers), each plugin's concurrency slots
//!   and the pool's admission rule, the import check that refuses ungranted
//!   interfaces at load time, and [`Runtime::invoke`], the one entry point
//!   the CLI and the HTTP server call.
//! - [`services`]: one module per host interface. Each owns its policy check
//!   and backend; the runtime only wires them into the linker.
//! - [`audit`]: the audit log of grant changes: a hash chain inside an
//!   RFC 6962 tree with C2SP signed checkpoints, proofs and verification.
//! - [`api`]: the HTTP server of `gatehouse run`: invoke API, admin API,
//!   health, metrics.
//! - [`databases`]: PostgreSQL databases named by alias in the settings,
//!   and whether they answer (`/readyz`).
//! - [`secrets`]: credentials the platform adds on a plugin's behalf.
//! - [`bounded_read`]: reads files settings and policies name (components,
//!   secrets) only when regular and small enough.
//! - [`data_dir`]: the sidecar's own directories, used only when no one
//!   else may write to them.
//! - [`error`]: the error kinds shared with guests (the WIT `error` record).
//! - [`guest_text`]: escapes and bounds every guest-controlled string before
//!   it reaches a log, an error message or a terminal.
//! - [`wit`]: the WIT package plugins target, embedded (`gatehouse wit`).
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use gatehouse::{Document, Runtime, RuntimeSettings, policy};
//!
//! let policies = policy::load_dir("policies".as_ref(), "plugins".as_ref())?;
//! let services = std::sync::Arc::new(gatehouse::services::Services::from_config(&Default::default())?);
//! let runtime = Runtime::new(RuntimeSettings::default(), services)?;
//! let report = runtime.load(&policies.set).await;
//! assert!(report.refused.is_empty());
//! let output = runtime
//!     .invoke("doc-enricher", Document { content_type: "text/plain".into(), body: b"Hello.".to_vec() })
//!     .await?;
//! println!("{}", String::from_utf8_lossy(&output.body));
//! # Ok(()) }
//! ```

pub mod api;
pub mod audit;
pub mod bindings;
pub mod bounded_read;
pub mod config;
pub mod data_dir;
pub mod databases;
pub mod error;
pub mod give_back;
pub mod guest_text;
pub mod policy;
pub mod quiet_panic;
pub mod runtime;
pub mod secrets;
pub mod services;
pub mod stop;
pub mod wit;

pub use error::{ErrorKind, GuestError};
pub use runtime::{
    Holds, InvokeError, LoadError, LoadReport, PluginSummary, Refusal, Runtime, RuntimeError, RuntimeSettings,
};

/// The unit of work a plugin receives and returns (WIT `document`).
pub use bindings::gatehouse::services::types::Document;
/// What a plugin says about itself (WIT `plugin-info`).
pub use bindings::gatehouse::services::types::PluginInfo;
