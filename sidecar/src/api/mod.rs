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
//! - [`kv`]: the key-value store's read-only admin routes (usage, keys,
//!   values).
//! - [`audit`]: the audit log's admin routes (entries, paged; the latest
//!   signed checkpoint).
//! - [`errors`]: the one mapping from error kinds to HTTP statuses.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`serve`]: accepts connections until shutdown, then drains.
//! - [`min_rate`]: the minimum rate at which a client must read its answer.
//! - [`hangup`]: noticing a client gone while hyper does not read its connection.

pub mod admin;
mod approvals;
pub mod audit;
pub mod edge;
pub mod errors;
pub mod hangup;
pub mod invoke;
pub mod kv;
pub mod metrics;
pub mod min_rate;
pub mod proxy;
pub mod serve;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Runtime;
use crate::databases::Databases;
use crate::policy;
use crate::services::Services;
use crate::services::log::window::{Admit, LogWindow};

pub use serve::{ServeLimits, serve};

/// What both listeners share.
pub struct Api {
    /// The plugins.
    pub runtime: Arc<Runtime>,
    /// The services' operator views (counters, usage).
    pub services: Arc<Services>,
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
    /// What chose `plugin_dir`, for messages.
    pub plugin_dir_origin: String,
    /// The database aliases; `/readyz` waits for each to answer.
    pub databases: Arc<Databases>,
    /// Whether `/readyz` also waits for every policy to be served.
    pub ready_when: ReadyWhen,
    /// `[audit] require_approval`: grants that grow wait for a person.
    pub require_approval: bool,
    /// With approvals, the version of each plugin in force, kept for a
    /// restart.
    kept: Option<policy::kept::KeptVersions>,
    loaded: AtomicBool,
    /// The budget of the server's own per-request lines.
    request_lines: LogWindow,
    /// What the last (re)load could not read or serve.
    unserved: std::sync::RwLock<Unserved>,
}

pub use crate::config::ReadyWhen;

/// What the last (re)load left unserved, beside the runtime's refusals.
#[derive(Debug, Default)]
struct Unserved {
    /// The policy directory could not be read (nothing in it was).
    directory: Option<String>,
    /// Policy files refused before they named a plugin (the others are
    /// the runtime's refusals of that plugin).
    files: Vec<policy::PolicyError>,
    /// The last (re)load's changes could not be recorded in the audit
    /// log, so they did not take effect.
    audit: Option<String>,
}

/// Why the sidecar is not ready to serve: one line each, for `/readyz`.
/// Lines name plugins and files, never reasons (those are in the log and
/// on `/admin/plugins`): the invoke listener may face more callers than
/// the operators.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Empty when ready.
    pub problems: Vec<String>,
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
    /// that had a version keeps it), the audit log failing.
    pub errors: Vec<String>,
    /// Whether the new grants took effect: `false` when the audit log
    /// could not record them (the grants in force did not change).
    pub applied: bool,
    /// Audit entries the (re)load wrote (`None`: no audit log).
    pub audit_entries: Option<u64>,
    /// Why the audit log could not record the changes (they then did not
    /// take effect).
    pub audit_error: Option<String>,
    /// Plugins whose new grants wait for approval (`[audit]
    /// require_approval`): each keeps the version it had, if any.
    pub pending: Vec<String>,
}

pub use crate::audit::Trigger;

/// What [`Api::hold_for_approval`] took out of a reload.
#[derive(Debug, Default)]
struct HeldOut {
    /// Plugins whose grants wait for a decision.
    pending: Vec<String>,
    /// Those of them whose loaded version goes, and those that serve a
    /// version kept from before a restart.
    holds: crate::Holds,
    /// Audit entries written (`requested`, `withdrawn`).
    entries: u64,
}

impl Api {
    /// An API over `runtime` with the settings' listeners, directories and
    /// databases; plugins are served once [`Api::reload`] has run.
    pub fn new(
        runtime: Arc<Runtime>,
        services: Arc<Services>,
        config: &crate::config::Config,
        databases: Arc<Databases>,
    ) -> Self {
        let server = &config.server;
        Api {
            runtime,
            services,
            metrics: metrics::Metrics::default(),
            max_body: usize::try_from(server.max_body).unwrap_or(usize::MAX),
            body_timeout: server.request_timeout,
            policy_dir: config.policy_dir.clone(),
            plugin_dir: config.plugin_dir.clone(),
            plugin_dir_origin: config.plugin_dir_origin.clone(),
            databases,
            ready_when: server.ready_when,
            require_approval: config.audit.require_approval,
            kept: config.audit.require_approval.then(|| policy::kept::KeptVersions::new(&config.data_dir)),
            loaded: AtomicBool::new(false),
            unserved: Default::default(),
            request_lines: LogWindow::new(MAX_REQUEST_LINES_PER_SECOND, MAX_REQUEST_LINE_BYTES_PER_SECOND),
        }
    }

    /// Reads a request body of at most `limit` bytes within
    /// `[server] request_timeout`; otherwise the answer to send instead
    /// (408, or 413 for a body too large or cut off), so that a client
    /// trickling a body cannot hold a connection slot.
    pub(crate) async fn read_body(
        &self,
        body: axum::body::Body,
        limit: usize,
    ) -> Result<axum::body::Bytes, axum::response::Response> {
        use axum::http::StatusCode;
        use invoke::WithStatus as _;
        match tokio::time::timeout(self.body_timeout, axum::body::to_bytes(body, limit)).await {
            Ok(Ok(body)) => Ok(body),
            Err(_slow) => {
                let message = format!("request body not received within {:?}", self.body_timeout);
                Err(errors::respond(crate::ErrorKind::InvalidInput, &message, None)
                    .with_status(StatusCode::REQUEST_TIMEOUT))
            }
            Ok(Err(_)) => {
                let message = format!("request body over the limit of {limit} bytes, or not fully received");
                Err(errors::respond(crate::ErrorKind::InvalidInput, &message, None)
                    .with_status(StatusCode::PAYLOAD_TOO_LARGE))
            }
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

    /// What keeps the sidecar from being ready, databases aside: the first
    /// load not done yet, and (with `ready_when = "all-loaded"`, the
    /// default) a policy directory that could not be read, a policy file
    /// refused or a plugin refused with no earlier version to serve.
    pub fn readiness(&self) -> Readiness {
        let mut problems = Vec::new();
        if !self.is_loaded() {
            problems.push("loading plugins".to_string());
            return Readiness { problems };
        }
        if self.ready_when == ReadyWhen::Started {
            return Readiness { problems };
        }
        let unserved = self.unserved.read().unwrap_or_else(|p| p.into_inner());
        if unserved.directory.is_some() {
            problems.push("the policy directory cannot be read".to_string());
        }
        if unserved.audit.is_some() {
            problems.push("the audit log cannot record the grants".to_string());
        }
        for error in &unserved.files {
            let name = error.file.file_name().unwrap_or_default().to_string_lossy();
            problems.push(format!("policy file `{}` refused", crate::guest_text::escape(&name, 128)));
        }
        for refusal in self.runtime.refusals().into_iter().filter(|r| r.serving.is_none()) {
            problems.push(format!("plugin `{}` refused", refusal.plugin));
        }
        Readiness { problems }
    }

    /// Policy files the last (re)load refused with nothing of theirs in
    /// force, and whether the directory itself could not be read; for the
    /// admin API.
    pub fn unserved_policy_files(&self) -> (Option<String>, Vec<serde_json::Value>) {
        let unserved = self.unserved.read().unwrap_or_else(|p| p.into_inner());
        let files = unserved
            .files
            .iter()
            .map(|e| {
                let reason = crate::guest_text::escape(&e.reason, crate::guest_text::MESSAGE);
                serde_json::json!({ "policy_file": policy::shown(&e.file), "line": e.line, "reason": reason })
            })
            .collect();
        (unserved.directory.clone(), files)
    }

    /// Whether the first load has completed.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Reads the policy directory again and swaps in the new plugins. A
    /// plugin whose file or component is refused keeps the version it has;
    /// in-flight invocations finish on the version they started with.
    /// `trigger` says what asked for it (`start`, `SIGHUP`, `admin API`)
    /// in the one summary line each (re)load logs.
    pub async fn reload(&self, trigger: &str) -> ReloadSummary {
        self.reload_as(trigger, Trigger::Disk).await
    }

    /// [`Api::reload`] asked for through the admin API with the token
    /// `name`: the audit entries name it as their actor.
    pub async fn reload_by(&self, name: String) -> ReloadSummary {
        self.reload_as("admin API", Trigger::Admin(name)).await
    }

    /// With an audit log, the changes are recorded before they take
    /// effect; if they cannot be, nothing changes and the summary says
    /// why (`applied: false`).
    async fn reload_as(&self, trigger: &str, actor: Trigger) -> ReloadSummary {
        let first = !self.is_loaded();
        let components = policy::ComponentDir { path: &self.plugin_dir, origin: &self.plugin_dir_origin };
        let load = match policy::load_dir_in(&self.policy_dir, components) {
            Ok(load) => load,
            Err(e) => {
                let keeping = if first { "nothing is loaded" } else { "keeping every plugin" };
                tracing::error!(error = %e, trigger, "the policy directory cannot be read; {keeping}");
                *self.unserved.write().unwrap_or_else(|p| p.into_inner()) =
                    Unserved { directory: Some(e.to_string()), files: Vec::new(), audit: None };
                self.loaded.store(true, Ordering::Release);
                return ReloadSummary {
                    loaded: self.names(),
                    errors: vec![e.to_string()],
                    applied: false,
                    audit_entries: None,
                    audit_error: None,
                    pending: Vec::new(),
                };
            }
        };
        let mut load = load;
        let held = match self.hold_for_approval(&mut load, &actor).await {
            Ok(held) => held,
            Err(reason) => return self.unrecorded(trigger, first, Vec::new(), reason),
        };
        let mut errors: Vec<String> = load.errors.iter().map(|e| e.to_string()).collect();
        for error in &load.errors {
            tracing::error!(%error, "policy refused");
        }
        let recorded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Approvals end with a plugin's policy: every plugin a policy still
        // names keeps them, loaded or not (held ones are among the refused
        // files: `hold_for_approval`; a duplicate name; a secret it cannot
        // read yet).
        let named: Vec<String> =
            load.set.plugins.keys().cloned().chain(load.errors.iter().filter_map(|e| e.plugin.clone())).collect();
        let outcome = match self.services.audit.clone() {
            None => Ok(self.runtime.reload(&load.set, &load.errors).await),
            Some(trail) => {
                let counted = recorded.clone();
                let named = named.clone();
                let (kept, read) = (self.kept.clone(), load.set.plugins.clone());
                let gate = move |in_force: Vec<policy::PluginPolicy>| async move {
                    let written = tokio::task::spawn_blocking(move || {
                        let written = trail.record(&actor, &in_force, &named)?;
                        // Recorded first: a copy never runs ahead of the log.
                        if let Some(kept) = kept {
                            keep_versions(&kept, &in_force, &read, named);
                        }
                        Ok::<_, crate::audit::trail::RecordError>(written)
                    })
                    .await
                    .map_err(|e| format!("the audit log's append did not finish: {e}"))?
                    .map_err(|e| e.to_string())?;
                    counted.store(written.entries, Ordering::Relaxed);
                    Ok(())
                };
                self.runtime.reload_gated(&load.set, &load.errors, &held.holds, gate).await
            }
        };
        let audit_entries = self.services.audit.as_ref().map(|_| held.entries + recorded.load(Ordering::Relaxed));
        let report = match outcome {
            Ok(report) => report,
            Err((report, reason)) => {
                errors.extend(report.refused.iter().map(|e| e.to_string()));
                return self.unrecorded(trigger, first, errors, reason);
            }
        };
        errors.extend(report.refused.iter().map(|e| e.to_string()));
        // A file that names its plugin, or whose plugin keeps serving, is
        // listed with that plugin (`refused`); these are the others.
        let files = load
            .errors
            .into_iter()
            .filter(|e| e.plugin.is_none() && !self.runtime.serves_policy_file(&e.file))
            .collect();
        *self.unserved.write().unwrap_or_else(|p| p.into_inner()) = Unserved { directory: None, files, audit: None };
        self.loaded.store(true, Ordering::Release);
        self.warn_of_unused_guarantees();
        let summary = ReloadSummary {
            loaded: self.names(),
            errors,
            applied: true,
            audit_entries,
            audit_error: None,
            pending: held.pending,
        };
        tracing::info!(
            trigger,
            loaded = ?summary.loaded,
            problems = summary.errors.len(),
            audit_entries = summary.audit_entries,
            "policies loaded"
        );
        summary
    }

    /// Names each `guaranteed_connections` entry whose plugin no loaded
    /// policy grants the alias: its places are kept from every plugin.
    fn warn_of_unused_guarantees(&self) {
        // Read only if some alias guarantees places (a reload need not copy the policies otherwise).
        let loaded = std::cell::OnceCell::new();
        let grants = |plugin: &str, alias: &str| {
            let loaded = loaded.get_or_init(|| self.runtime.loaded_policies());
            loaded.iter().any(|p| p.name == plugin && p.sql.contains_key(alias))
        };
        for (database, plugin, places) in self.services.sql.unused_guarantees(grants) {
            tracing::warn!(
                database,
                plugin,
                places,
                "guaranteed_connections names a plugin that no loaded policy grants this database: its places are \
                 kept from every other plugin"
            );
        }
    }

    /// With `[audit] require_approval`: takes out of `load` the plugins
    /// whose grants would grow beyond the approved ones, each turned into
    /// a refusal of its policy file (so a loaded version stays, a new
    /// plugin stays out, and a loaded version beyond the approved grants
    /// goes), with the number of entries the audit log wrote about what
    /// newly waits (or was withdrawn). `Err`: the log could not be read or
    /// written.
    async fn hold_for_approval(&self, load: &mut policy::PolicyLoad, actor: &Trigger) -> Result<HeldOut, String> {
        let Some(trail) = self.services.audit.clone().filter(|_| self.require_approval) else {
            return Ok(HeldOut::default());
        };
        let next: Vec<policy::PluginPolicy> = load.set.plugins.values().cloned().collect();
        let mut loaded = self.runtime.loaded_policies();
        let mut restored = self.restorable(&trail, load, &loaded).await?;
        // A held plugin's restored version is judged as a loaded one; one
        // whose file is refused (a name claimed twice) is served as kept.
        let held_restored: BTreeMap<String, policy::PluginPolicy> = next
            .iter()
            .filter_map(|p| restored.remove_entry(&p.name))
            .inspect(|(_, version)| loaded.push(version.clone()))
            .collect();
        let actor = actor.clone();
        let screened =
            tokio::task::spawn_blocking(move || trail.screen(&actor, &next.iter().collect::<Vec<_>>(), &loaded))
                .await
                .map_err(|e| format!("the audit log's append did not finish: {e}"))?
                .map_err(|e| e.to_string())?;
        let mut out = HeldOut { entries: screened.entries, ..HeldOut::default() };
        out.holds.restored = restored;
        let mut held_restored = held_restored;
        for held in screened.held {
            if let Some(policy) = load.set.plugins.remove(&held.plugin) {
                tracing::warn!(plugin = %held.plugin, reason = %held.reason, "grants held for approval");
                load.errors.push(policy::PolicyError {
                    file: policy.file,
                    line: None,
                    reason: held.reason,
                    plugin: Some(held.plugin.clone()),
                });
                if held.unload {
                    out.holds.unkept.push(held.plugin.clone());
                } else if let Some(version) = held_restored.remove(&held.plugin) {
                    out.holds.restored.insert(held.plugin.clone(), version);
                }
                out.pending.push(held.plugin);
            }
        }
        Ok(out)
    }

    /// After a restart (with approvals): the versions kept on disk
    /// ([`policy::kept`]) of the plugins `load` names that have nothing
    /// loaded, each only if it is exactly what the audit log records in
    /// force for its plugin (a plugin that was out stays out; a copy that
    /// is not what was in force is not used).
    async fn restorable(
        &self,
        trail: &Arc<crate::audit::AuditTrail>,
        load: &policy::PolicyLoad,
        loaded: &[policy::PluginPolicy],
    ) -> Result<BTreeMap<String, policy::PluginPolicy>, String> {
        let Some(kept) = self.kept.clone() else { return Ok(BTreeMap::new()) };
        let candidates: Vec<(String, PathBuf)> = load
            .set
            .plugins
            .values()
            .map(|p| (p.name.clone(), p.file.clone()))
            .chain(load.errors.iter().filter_map(|e| e.plugin.clone().map(|name| (name, e.file.clone()))))
            .filter(|(name, _)| !loaded.iter().any(|l| &l.name == name))
            .collect();
        if candidates.is_empty() {
            return Ok(BTreeMap::new());
        }
        let trail = Arc::clone(trail);
        tokio::task::spawn_blocking(move || {
            let in_force = trail.in_force()?;
            let mut restored = BTreeMap::new();
            for (name, file) in candidates {
                let Some(version) = kept.restore(&name, &file) else { continue };
                if in_force.get(&name) == Some(&policy::grant_diff::grants(&version)) {
                    restored.insert(name, version);
                } else {
                    tracing::warn!(plugin = %name, "the kept version is not what the audit log records in force; not used");
                }
            }
            Ok::<_, crate::audit::trail::RecordError>(restored)
        })
        .await
        .map_err(|e| format!("reading the kept versions did not finish: {e}"))?
        .map_err(|e| e.to_string())
    }

    /// The summary of a (re)load whose grant changes the audit log could
    /// not record, so nothing changed.
    fn unrecorded(&self, trigger: &str, first: bool, mut errors: Vec<String>, reason: String) -> ReloadSummary {
        let reason = crate::guest_text::escape(&reason, crate::guest_text::MESSAGE);
        let keeping = if first { "nothing is loaded" } else { "the grants in force are unchanged" };
        tracing::error!(trigger, error = %reason, "the audit log cannot record the grant changes; {keeping}");
        errors.push(format!("audit log: {reason}; {keeping}"));
        self.unserved.write().unwrap_or_else(|p| p.into_inner()).audit = Some(reason.clone());
        self.loaded.store(true, Ordering::Release);
        ReloadSummary {
            loaded: self.names(),
            errors,
            applied: false,
            audit_entries: Some(0),
            audit_error: Some(reason),
            pending: Vec::new(),
        }
    }

    fn names(&self) -> Vec<String> {
        self.runtime.summaries().into_iter().map(|plugin| plugin.name).collect()
    }
}

/// With approvals: keeps on disk the version of each plugin going into
/// force, for a restart that finds its policy held ([`policy::kept`]), as
/// the loader read it (`read`: this reload's policies, which still hold
/// their bytes; a version that stays in force from before was kept when it
/// took effect), and forgets the plugins no policy names. A failure is
/// logged: that plugin then stays out after a restart that holds it, as
/// it would without the copy.
fn keep_versions(
    kept: &policy::kept::KeptVersions,
    in_force: &[policy::PluginPolicy],
    read: &BTreeMap<String, policy::PluginPolicy>,
    mut named: Vec<String>,
) {
    let going: Vec<policy::PluginPolicy> = in_force
        .iter()
        .filter_map(|p| {
            read.get(&p.name)
                .filter(|r| r.file_sha256 == p.file_sha256 && r.component.sha256 == p.component.sha256)
                .cloned()
        })
        .collect();
    named.extend(in_force.iter().map(|p| p.name.clone()));
    for (plugin, error) in kept.sync(&going, &named) {
        tracing::warn!(%plugin, %error, "the version in force is not kept for a restart");
    }
}
