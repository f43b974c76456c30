//! The sidecar's HTTP server (`gatehouse run`): two listeners, each a
//! plain axum router served by hyper with connection limits and timeouts.
//!
//! - [`invoke`]: the invoke listener: `POST /v1/plugins/{name}/invoke`,
//!   `GET /v1/plugins`, `/healthz`, `/readyz`, `/metrics`. No admin route.
//! - [`proxy`]: `/p/{name}/…` on the invoke listener, for `wasi:http/proxy`
//!   components.
//! - [`edge`]: request ids and the head-size bound, for both listeners.
//! - [`admin`]: the admin listener, behind a bearer token: plugins with
//!   versions and grants, reload, database health.
//! - [`errors`]: the one mapping from error kinds to HTTP statuses.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`serve`]: accepts connections until shutdown, then drains.
//! - [`min_rate`]: the minimum rate at which a client must read its answer.

pub mod admin;
pub mod edge;
pub mod errors;
pub mod invoke;
pub mod metrics;
pub mod min_rate;
pub mod proxy;
pub mod serve;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Runtime;
use crate::databases::Databases;
use crate::policy;
use crate::services::log::window::{Admit, LogWindow};

pub use serve::{ServeLimits, serve};

/// What both listeners share.
pub struct Api {
    /// The plugins.
    pub runtime: Arc<Runtime>,
    /// Counters and histograms for `/metrics`.
    pub metrics: metrics::Metrics,
    /// Largest request body accepted.
    pub max_body: usize,
    /// Time a client has to send the request body.
    pub body_timeout: std::time::Duration,
    /// Where policies are (re)loaded from.
    pub policy_dir: PathBuf,
    /// Directory that policy `component` paths are relative to.
    pub plugin_dir: PathBuf,
    /// The database aliases; `/readyz` waits for each to answer.
    pub databases: Arc<Databases>,
    loaded: AtomicBool,
    /// The budget of the server's own per-request lines.
    request_lines: LogWindow,
}

/// The server's own lines about single requests (a failed invocation, a
/// refused route) written per second, across both listeners; past it they
/// are dropped and counted, and the count is logged once a second.
pub const MAX_REQUEST_LINES_PER_SECOND: u64 = 100;
/// Bytes of those lines per second.
pub const MAX_REQUEST_LINE_BYTES_PER_SECOND: u64 = 64 * 1024;

/// What a reload did, for the admin API and the SIGHUP log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadSummary {
    /// Plugins now loaded (new or kept), by name.
    pub loaded: Vec<String>,
    /// Every problem: policy files refused, plugins refused (a plugin
    /// that had a version keeps it).
    pub errors: Vec<String>,
}

impl Api {
    /// An API over `runtime` with the settings' listeners, directories and
    /// databases; plugins are served once [`Api::reload`] has run.
    pub fn new(runtime: Arc<Runtime>, config: &crate::config::Config, databases: Arc<Databases>) -> Self {
        let server = &config.server;
        Api {
            runtime,
            metrics: metrics::Metrics::default(),
            max_body: usize::try_from(server.max_body).unwrap_or(usize::MAX),
            body_timeout: server.request_timeout,
            policy_dir: config.policy_dir.clone(),
            plugin_dir: config.plugin_dir.clone(),
            databases,
            loaded: AtomicBool::new(false),
            request_lines: LogWindow::new(MAX_REQUEST_LINES_PER_SECOND, MAX_REQUEST_LINE_BYTES_PER_SECOND),
        }
    }

    /// Whether a per-request line of about `bytes` may be written now
    /// (callers: `if api.request_line(n) { tracing::info!(…) }`). Reports
    /// what the previous second dropped first, if anything.
    pub(crate) fn request_line(&self, bytes: usize) -> bool {
        match self.request_lines.admit(bytes as u64) {
            Admit::Write(dropped) => {
                if let Some(dropped) = dropped {
                    tracing::warn!(
                        dropped_lines = dropped.events,
                        dropped_bytes = dropped.bytes,
                        max_lines_per_second = MAX_REQUEST_LINES_PER_SECOND,
                        "request log budget exceeded; lines dropped"
                    );
                }
                true
            }
            Admit::Drop => false,
        }
    }

    /// Whether the first load has completed.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Reads the policy directory again and swaps in the new plugins. A
    /// plugin whose file or component is refused keeps the version it has;
    /// in-flight invocations finish on the version they started with.
    pub async fn reload(&self) -> ReloadSummary {
        let load = match policy::load_dir(&self.policy_dir, &self.plugin_dir) {
            Ok(load) => load,
            Err(e) => {
                tracing::error!(error = %e, "reload failed: the policy directory cannot be read; keeping every plugin");
                self.loaded.store(true, Ordering::Release);
                return ReloadSummary { loaded: self.names(), errors: vec![e.to_string()] };
            }
        };
        let broken: Vec<PathBuf> = load.errors.iter().map(|e| e.file.clone()).collect();
        let mut errors: Vec<String> = load.errors.iter().map(|e| e.to_string()).collect();
        for error in &load.errors {
            tracing::error!(%error, "policy refused");
        }
        let report = self.runtime.reload(&load.set, &broken).await;
        errors.extend(report.refused.iter().map(|e| e.to_string()));
        self.loaded.store(true, Ordering::Release);
        ReloadSummary { loaded: self.names(), errors }
    }

    fn names(&self) -> Vec<String> {
        self.runtime.summaries().into_iter().map(|plugin| plugin.name).collect()
    }
}
