//! `gatehouse grants diff | pending | approve | reject`: what a reload
//! would change, and the approvals of `[audit] require_approval`.
//!
//! Like `gatehouse audit …`, these read (and, for a decision, append to)
//! the log's file themselves, whether or not a sidecar runs: a decision is
//! an entry like any other, signed with the same key, and the running
//! sidecar applies it at its next reload. Their actor is the OS user who
//! ran them, `os-user:<name>`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use gatehouse::audit::AuditTrail;
use gatehouse::audit::approval::{Decision, Row, approved, growth, is_plugin_row, states};
use gatehouse::audit::store::ReadOpenError;
use gatehouse::audit::trail::Location;
use gatehouse::audit::trail::RecordError;
use gatehouse::config::Config;
use gatehouse::guest_text::{LINE, escape};
use gatehouse::policy::grant_diff::{GrantChange, diff_grants, grants};
use gatehouse::policy::{self, PluginPolicy};
use serde_json::Value;

/// What to do with the grants.
#[derive(Debug, clap::Subcommand)]
pub enum GrantsCommand {
    /// Show what a reload would change, without applying it: each change
    /// from the grants in force (as the audit log recorded them) to the
    /// policy directory's, one a line; with `[audit] require_approval`,
    /// which would wait for approval; and, for components that ship a
    /// permission manifest, what is granted but not requested and
    /// requested but not granted.
    Diff,
    /// List the grants waiting for approval or rejected, with what each
    /// would add to the approved grants.
    Pending,
    /// Approve the grants pending for PLUGIN; the sidecar applies them at
    /// its next reload (SIGHUP or `POST /admin/reload`).
    Approve {
        /// The plugin's name.
        plugin: String,
        /// The sha256 `grants pending` printed: refuse if the pending
        /// grants changed since they were reviewed.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
    },
    /// Reject the grants pending for PLUGIN: it keeps the version it has
    /// until its policy or manifest asks for something else.
    Reject {
        /// The plugin's name.
        plugin: String,
        /// As for approve.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
    },
}

pub fn run(config: &Config, command: GrantsCommand) -> anyhow::Result<ExitCode> {
    match command {
        GrantsCommand::Diff => diff(config),
        GrantsCommand::Pending => pending(config),
        GrantsCommand::Approve { plugin, sha256 } => decide(config, &plugin, Decision::Approve, sha256),
        GrantsCommand::Reject { plugin, sha256 } => decide(config, &plugin, Decision::Reject, sha256),
    }
}

fn diff(config: &Config) -> anyhow::Result<ExitCode> {
    let components = policy::ComponentDir { path: &config.plugin_dir, origin: &config.plugin_dir_origin };
    let load = policy::load_dir_in(&config.policy_dir, components)?;
    for error in &load.errors {
        println!("refused  {error}");
    }
    let rows = stored_rows(config)?;
    let in_force: BTreeMap<&str, Value> = rows
        .iter()
        .filter(|(key, _)| is_plugin_row(key))
        .filter_map(|(plugin, bytes)| {
            let row: Value = serde_json::from_slice(bytes).ok()?;
            Some((plugin.as_str(), row["grants"].clone()))
        })
        .collect();
    let mut names: Vec<&str> = in_force.keys().copied().chain(load.set.plugins.keys().map(String::as_str)).collect();
    names.sort_unstable();
    names.dedup();
    let mut changes = 0;
    for name in names {
        let next = load.set.plugins.get(name);
        // A file refused now keeps its plugin in force: no change to show.
        if next.is_none() && load.errors.iter().any(|e| e.plugin.as_deref() == Some(name)) {
            continue;
        }
        let next_grants = next.map(grants);
        let approved = approved(&rows, name)?;
        let waits: Vec<GrantChange> = match (&next_grants, config.audit.require_approval) {
            (Some(value), true) => growth(name, approved.as_ref(), value),
            _ => Vec::new(),
        };
        for change in diff_grants(name, in_force.get(name), next_grants.as_ref()) {
            // Diffed against the grants in force but judged against the
            // approved ones, the two may name the same growth at different
            // depths (a plugin re-added whole, grown in one field).
            let nested = |a: &str, b: &str| a.is_empty() || b.strip_prefix(a).is_some_and(|rest| rest.starts_with('.'));
            let waits_too = waits
                .iter()
                .any(|w| w.item == change.item || nested(&change.item, &w.item) || nested(&w.item, &change.item));
            let mark = if waits_too { "  (needs approval)" } else { "" };
            println!("{}{mark}", line(change.kind(), &change));
            changes += 1;
        }
        if let Some(policy) = next {
            print_unrequested(policy);
        }
    }
    if changes == 0 {
        println!("no change: a reload would write nothing");
    }
    Ok(ExitCode::SUCCESS)
}

/// What the grants and the manifest disagree on, for a plugin that ships
/// one: granted but not requested (least privilege says remove it), and
/// requested but not granted (the component may fail without it).
fn print_unrequested(policy: &PluginPolicy) {
    let granted = grants(policy);
    let Some(requested) = granted.get("requested").filter(|r| !r.is_null()) else { return };
    let services: serde_json::Map<String, Value> =
        ["http", "kv", "sql"].iter().map(|s| (s.to_string(), granted[*s].clone())).collect();
    for change in diff_grants(&policy.name, Some(requested), Some(&Value::Object(services))) {
        let what = match (&change.before, &change.after) {
            (None, _) => "granted-not-requested",
            (_, None) => "requested-not-granted",
            _ => "granted-differs",
        };
        println!("{}", line(what, &change));
    }
}

fn pending(config: &Config) -> anyhow::Result<ExitCode> {
    let states = states(&stored_rows(config)?)?;
    for state in &states {
        let which = if state.row == Row::Pending { "pending" } else { "rejected" };
        println!("{which}  {}  sha256:{}", escape(&state.plugin, LINE), state.sha256);
        for change in &state.growth {
            println!("{}", line("grows", change));
        }
    }
    if states.is_empty() {
        println!("nothing waits for approval");
    }
    Ok(ExitCode::SUCCESS)
}

fn decide(config: &Config, plugin: &str, decision: Decision, reviewed: Option<String>) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(config.audit.enabled, "the audit log is off ([audit] enabled = false): it keeps the approvals");
    let trail = AuditTrail::open_at(Location::of(config, false)?, &config.audit)?
        .remembering(config.data_dir.join(gatehouse::audit::trail::WITNESS_FILE))?;
    let actor = os_user();
    match trail.decide(plugin, decision, &actor, reviewed.as_deref()) {
        Ok(recorded) => {
            println!(
                "{}: plugin `{}` by {actor} (entry {}); the sidecar applies it at its next reload (SIGHUP or \
                 POST /admin/reload)",
                decision.kind(),
                escape(plugin, LINE),
                recorded.size - 1
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (RecordError::NotPending(_) | RecordError::NotReviewed(..))) => {
            eprintln!("error: {}", escape(&e.to_string(), LINE));
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// The grants table's rows (empty when no log was ever written).
fn stored_rows(config: &Config) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    match Location::of(config, false)?.reader() {
        Ok(reader) => Ok(reader.grants()?),
        Err(ReadOpenError::Missing(_)) => Ok(BTreeMap::new()),
        Err(e) => Err(e.into()),
    }
}

/// `<what>  <plugin>  <item>  <before> -> <after>`, each part escaped and
/// bounded (values come from policy files and manifests).
fn line(what: &str, change: &GrantChange) -> String {
    let value = |v: &Option<Value>| v.as_ref().map_or("-".to_string(), |v| escape(&v.to_string(), LINE));
    let item = if change.item.is_empty() { "(plugin)" } else { change.item.as_str() };
    format!(
        "{what:<22} {}  {}  {} -> {}",
        escape(&change.plugin, LINE),
        escape(item, LINE),
        value(&change.before),
        value(&change.after)
    )
}

/// `os-user:<name>` of the user running the command (from the real uid and
/// `/etc/passwd`; `os-user:uid-<n>` when the uid has no name there).
fn os_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|entry| {
            let fields: Vec<&str> = entry.split(':').collect();
            (fields.get(2) == Some(&uid.to_string().as_str())).then(|| fields[0].to_string())
        })
    });
    let name = name.filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()));
    format!("os-user:{}", name.unwrap_or_else(|| format!("uid-{uid}")))
}
