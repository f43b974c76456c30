//! Runtime errors: starting the engine, loading a plugin, invoking one.

use std::time::Duration;

use crate::error::{ErrorKind, GuestError};

/// The engine could not be created (a configuration the host cannot run).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the wasm engine: {0}")]
pub struct RuntimeError(pub String);

/// A plugin that was refused at load time. It is not invocable; every other
/// plugin is unaffected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin `{plugin}` ({file}) refused: {reason}")]
pub struct LoadError {
    /// Plugin name from its policy.
    pub plugin: String,
    /// The policy file, for the operator.
    pub file: String,
    /// Why, naming the offending import or limit.
    pub reason: String,
}

/// Why an invocation failed. [`InvokeError::kind`] maps each case onto the
/// shared error kinds (and so onto HTTP statuses in the API).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// No plugin of that name is loaded.
    /// (The name comes from the caller, so it is escaped and bounded.)
    #[error("no plugin named `{}` is loaded", crate::guest_text::escaped(.0, crate::guest_text::SHORT))]
    UnknownPlugin(String),
    /// The plugin was refused at load time.
    #[error("{0}")]
    Refused(LoadError),
    /// All of the plugin's concurrency slots stayed busy for its timeout.
    #[error("plugin `{plugin}` is at its concurrency limit of {limit}")]
    Busy {
        /// Plugin name.
        plugin: String,
        /// The policy's `concurrency`.
        limit: u32,
    },
    /// The invocation ran past its deadline and was stopped.
    #[error(
        "plugin `{plugin}` did not finish within its {timeout:?} timeout{}",
        if *in_host_call { " (stopped while waiting in a host call)" } else { "" }
    )]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The policy's `timeout`.
        timeout: Duration,
        /// Whether the guest was parked in a host call (stopped by the
        /// fallback timer at deadline + grace) rather than running wasm
        /// (stopped by the epoch deadline).
        in_host_call: bool,
    },
    /// The guest tried to grow its memory beyond the policy's limit.
    #[error("plugin `{plugin}` exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// The policy's `memory`, in bytes.
        limit: u64,
    },
    /// The guest held more host resources (handles: `wasi:http` fields,
    /// bodies, requests, streams, pollables) at once than its memory allows
    /// (see `runtime::host_budget`).
    #[error("plugin `{plugin}` held more than {limit} host resources at once (its [limits] memory sets how many)")]
    TooManyHandles {
        /// Plugin name.
        plugin: String,
        /// Handles the invocation may hold.
        limit: usize,
    },
    /// The output document is larger than the policy's `max_output`.
    #[error("plugin `{plugin}` returned a {size}-byte output, over its max_output of {limit} bytes")]
    OutputTooLarge {
        /// Plugin name.
        plugin: String,
        /// Size of the output (body and content type).
        size: u64,
        /// The policy's `max_output`.
        limit: u64,
    },
    /// One host call, or the output, carried more data than the plugin's
    /// limits allow to cross from guest to host at once.
    #[error(
        "plugin `{plugin}` passed more than {limit} bytes to the host in one call (or as its output); \
         see max_output in its policy"
    )]
    TooMuchData {
        /// Plugin name.
        plugin: String,
        /// Bytes one host call may pass.
        limit: u64,
    },
    /// The plugin exports the other interface (`invoke` on a
    /// `wasi:http/proxy` component, or HTTP on a plugin-world one).
    #[error("plugin `{plugin}` exports {exports}: {}", if exports.starts_with("wasi:http") {
        format!("`gatehouse run` serves it at /p/{plugin}/")
    } else {
        format!("call it with POST /v1/plugins/{plugin}/invoke (or `gatehouse invoke {plugin}`)")
    })]
    WrongInterface {
        /// Plugin name.
        plugin: String,
        /// What it exports.
        exports: &'static str,
    },
    /// A `wasi:http/proxy` component returned without setting a response.
    #[error("plugin `{plugin}` finished without sending a response")]
    NoResponse {
        /// Plugin name.
        plugin: String,
    },
    /// The guest called `wasi:cli/exit` instead of returning a result.
    #[error("plugin `{plugin}` exited (status {status}) without returning a result")]
    Exited {
        /// Plugin name.
        plugin: String,
        /// The exit status it gave.
        status: i32,
    },
    /// The guest trapped (a panic, an out-of-bounds access, `unreachable`).
    #[error("plugin `{plugin}` crashed: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap and the guest backtrace, when available (escaped and
        /// bounded: function names come from the guest).
        message: String,
    },
    /// The guest returned its own typed error. The record is kept as the
    /// guest sent it (the API returns it as data); displaying it escapes
    /// and bounds the guest's message.
    #[error(
        "plugin `{plugin}` returned {}: {}",
        error.kind,
        crate::guest_text::escaped(&error.message, crate::guest_text::MESSAGE)
    )]
    Plugin {
        /// Plugin name.
        plugin: String,
        /// The guest's error record, unchanged.
        error: GuestError,
    },
    /// The sidecar could not start an instance (for example, every
    /// instance slot of the engine is in use).
    #[error("plugin `{plugin}` could not be started: {message}")]
    Unavailable {
        /// Plugin name.
        plugin: String,
        /// What went wrong.
        message: String,
    },
}

impl InvokeError {
    /// The shared error kind for this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InvokeError::UnknownPlugin(_) | InvokeError::WrongInterface { .. } => ErrorKind::NotFound,
            InvokeError::NoResponse { .. } => ErrorKind::Internal,
            InvokeError::Refused(_) => ErrorKind::Unavailable,
            InvokeError::Busy { .. } => ErrorKind::RateLimited,
            InvokeError::Timeout { .. } => ErrorKind::Timeout,
            InvokeError::MemoryLimit { .. }
            | InvokeError::OutputTooLarge { .. }
            | InvokeError::TooMuchData { .. }
            | InvokeError::TooManyHandles { .. } => ErrorKind::QuotaExceeded,
            InvokeError::Trap { .. } | InvokeError::Exited { .. } => ErrorKind::Internal,
            InvokeError::Plugin { error, .. } => error.kind,
            InvokeError::Unavailable { .. } => ErrorKind::Unavailable,
        }
    }

    /// How long to wait before retrying, when the failure says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InvokeError::Plugin { error, .. } => error.retry_after_ms.map(Duration::from_millis),
            _ => None,
        }
    }
}
