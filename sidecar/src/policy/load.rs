//! Reading a policy directory: parse each `*.toml`, validate it, resolve and
//! pin its component, and refuse duplicates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use toml::Spanned;

use super::error::{PolicyError, line_of};
use super::file::{HttpSection, InjectSection, KvSection, ManifestFile, PolicyFile};
use super::manifest::Requested;
use super::units::HumanDuration;
use super::{ComponentSource, Limits, PluginPolicy, PolicySet};
use crate::bounded_read::{BoundedReadError, read_regular_file};
use crate::services::http::policy::{
    AllowRule, BODYLESS_METHODS, HttpPolicy, Injection, Rate, is_granted_only, is_sidecar_managed,
};
use crate::services::kv::KvPolicy;
use crate::services::kv::policy::{Entry, bucket_table, check_quota_field};

/// Smallest memory limit that can run a real guest (its shadow stack alone
/// is usually 1 MiB).
const MIN_MEMORY: u64 = 2 << 20;
/// The most a 32-bit linear memory can address.
const MAX_MEMORY: u64 = 4 << 30;
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_CONCURRENCY: i64 = 10_000;
const MIN_OUTPUT: u64 = 1 << 10;
const MAX_OUTPUT: u64 = 1 << 30;
/// Largest component file read (bigger than any real plugin: a Python
/// component with its interpreter is about 40 MiB).
pub const MAX_COMPONENT_SIZE: u64 = 128 << 20;
/// Largest policy file read (a policy is a few hundred bytes; a sparse
/// file of gigabytes must not be read whole).
pub const MAX_POLICY_FILE: u64 = 1 << 20;
const MAX_NAME_LEN: usize = 64;
const MAX_REDIRECTS: u32 = 20;

/// The outcome of reading a policy directory: the files that passed, and a
/// problem list for those that did not. A refused file grants nothing.
#[derive(Debug, Default)]
pub struct PolicyLoad {
    /// Policies from the files that passed validation.
    pub set: PolicySet,
    /// Every problem found, in file order.
    pub errors: Vec<PolicyError>,
}

/// Reads every `*.toml` file in `dir` (other files, such as the README, are
/// ignored). Component paths are resolved against `plugin_dir`.
///
/// Fails only when the directory itself cannot be read; problems with
/// individual files are collected in [`PolicyLoad::errors`].
pub fn load_dir(dir: &Path, plugin_dir: &Path) -> Result<PolicyLoad, PolicyError> {
    load_dir_in(dir, ComponentDir { path: plugin_dir, origin: "the plugin directory" })
}

/// Where relative `component` paths are resolved, and which setting chose
/// that directory: a component that cannot be read is reported with both,
/// so that a path resolved against an unexpected directory explains itself.
#[derive(Debug, Clone, Copy)]
pub struct ComponentDir<'a> {
    /// The directory.
    pub path: &'a Path,
    /// What chose it, for messages (`plugin_dir in ./gatehouse.toml`).
    pub origin: &'a str,
}

/// [`load_dir`], naming in its messages what chose the plugin directory.
pub fn load_dir_in(dir: &Path, plugin_dir: ComponentDir<'_>) -> Result<PolicyLoad, PolicyError> {
    let unreadable = |e: std::io::Error| PolicyError {
        file: dir.to_path_buf(),
        line: None,
        reason: format!("cannot read the policy directory: {e}"),
        plugin: None,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .filter(|path| !super::manifest::is_manifest(path))
        .collect();
    files.sort();

    let mut load = PolicyLoad::default();
    let mut claims: BTreeMap<String, Vec<PluginPolicy>> = BTreeMap::new();
    // One copy of each distinct component, however many policies name it.
    let mut components: BTreeMap<[u8; 32], Arc<[u8]>> = BTreeMap::new();
    for file in files {
        match load_file(&file, plugin_dir) {
            Ok(mut policy) => {
                let shared =
                    components.entry(policy.component.sha256).or_insert_with(|| policy.component.bytes.clone());
                policy.component.bytes = shared.clone();
                claims.entry(policy.name.clone()).or_default().push(policy)
            }
            Err(errors) => load.errors.extend(errors),
        }
    }
    // A name claimed by two files is refused in both: a new file that
    // sorts first must not take over a plugin another file defines. A
    // version already serving the name keeps serving.
    for (name, mut policies) in claims {
        if policies.len() == 1 {
            load.set.plugins.insert(name, policies.pop().expect("one"));
            continue;
        }
        let files: Vec<String> = policies.iter().map(|p| super::shown(&p.file)).collect();
        for policy in policies {
            load.errors.push(PolicyError {
                file: policy.file,
                line: None,
                reason: format!(
                    "plugin name `{name}` is claimed by {}: each is refused until one remains",
                    files.join(", ")
                ),
                plugin: Some(name.clone()),
            });
        }
    }
    load.errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok(load)
}

/// Parses and validates one policy file, reporting every problem found.
pub(super) fn load_file(file: &Path, plugin_dir: ComponentDir<'_>) -> Result<PluginPolicy, Vec<PolicyError>> {
    load_file_with(file, plugin_dir, None)
}

/// [`load_file`], the component read from `component` whatever path the
/// file names (a kept copy of both: [`super::kept`]).
pub(super) fn load_file_with(
    file: &Path,
    plugin_dir: ComponentDir<'_>,
    component: Option<&Path>,
) -> Result<PluginPolicy, Vec<PolicyError>> {
    let unreadable = |reason: String| vec![PolicyError { file: file.to_path_buf(), line: None, reason, plugin: None }];
    let bytes = read_regular_file(file, MAX_POLICY_FILE).map_err(|e| match e {
        BoundedReadError::TooLarge(cap) => {
            unreadable(format!("cannot read: larger than the {cap} bytes a policy may be"))
        }
        other => unreadable(format!("cannot read: {other}")),
    })?;
    let file_sha256: [u8; 32] = Sha256::digest(&bytes).into();
    let read: Arc<[u8]> = Arc::from(bytes.as_slice());
    let text = String::from_utf8(bytes).map_err(|_| unreadable("cannot read: not UTF-8 text".into()))?;
    let raw: PolicyFile = toml::from_str(&text).map_err(|e| {
        vec![PolicyError {
            file: file.to_path_buf(),
            line: e.span().map(|span| line_of(&text, span.start)),
            reason: e.message().trim_end().to_string(),
            plugin: None,
        }]
    })?;

    let mut v = Validator { file, text: &text, errors: Vec::new() };
    let named = v.check_name(&raw.plugin.name);
    let limits = v.limits(&raw.limits);
    let http = raw.http.as_ref().map(|section| v.http(section));
    let kv = raw.kv.as_ref().map(|section| v.kv(section));
    let sql = v.sql(&raw.sql);
    let component = v.component(&raw.plugin.component, raw.plugin.sha256.as_ref(), plugin_dir, component);
    let (requested, manifest) = match &component {
        Some(component) => match load_manifest(file, &component.path) {
            Ok(Some((requested, bytes))) => (Some(requested), Some(bytes)),
            Ok(None) => (None, None),
            Err(errors) => {
                v.errors.extend(errors);
                (None, None)
            }
        },
        None => (None, None),
    };
    match (component, v.errors.is_empty()) {
        (Some(component), true) => Ok(PluginPolicy {
            name: raw.plugin.name.into_inner(),
            file: file.to_path_buf(),
            file_sha256,
            component,
            stdio: raw.plugin.stdio,
            limits,
            http,
            kv,
            sql,
            requested,
            source: super::PolicySource { policy: read, manifest },
        }),
        _ => {
            // In the order of the file, as a reader goes through it.
            v.errors.sort_by_key(|e| e.line);
            if named {
                v.errors.iter_mut().for_each(|e| e.plugin = Some(raw.plugin.name.get_ref().clone()));
            }
            Err(v.errors)
        }
    }
}

/// A manifest's grants and the bytes they were read from.
type ReadManifest = (Requested, Arc<[u8]>);

/// Reads and validates the permission manifest beside a component, if it
/// ships one. Its problems refuse the policy: they are reported against
/// the policy file (whose plugin keeps a loaded version), naming the
/// manifest and its line.
fn load_manifest(policy_file: &Path, component: &Path) -> Result<Option<ReadManifest>, Vec<PolicyError>> {
    let file = super::manifest::path_for(component);
    let shown = super::shown(&file);
    let refused = |problems: Vec<(Option<usize>, String)>| {
        problems
            .into_iter()
            .map(|(line, reason)| PolicyError {
                file: policy_file.to_path_buf(),
                line: None,
                reason: match line {
                    Some(line) => format!("permission manifest {shown}:{line}: {reason}"),
                    None => format!("permission manifest {shown}: {reason}"),
                },
                plugin: None,
            })
            .collect::<Vec<_>>()
    };
    let bytes = match read_regular_file(&file, MAX_POLICY_FILE) {
        Ok(bytes) => bytes,
        Err(BoundedReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refused(vec![(None, format!("cannot read: {e}"))])),
    };
    let read: Arc<[u8]> = Arc::from(bytes.as_slice());
    let text = String::from_utf8(bytes).map_err(|_| refused(vec![(None, "cannot read: not UTF-8 text".into())]))?;
    let raw: ManifestFile = toml::from_str(&text).map_err(|e| {
        refused(vec![(e.span().map(|span| line_of(&text, span.start)), e.message().trim_end().to_string())])
    })?;
    let mut v = Validator { file: &file, text: &text, errors: Vec::new() };
    let requested = Requested {
        http: raw.http.as_ref().map(|section| v.http(section)),
        kv: raw.kv.as_ref().map(|section| v.kv(section)),
        sql: v.sql(&raw.sql),
    };
    if v.errors.is_empty() {
        Ok(Some((requested, read)))
    } else {
        Err(refused(v.errors.into_iter().map(|e| (e.line, e.reason)).collect()))
    }
}

/// Collects problems with spans resolved to lines.
struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<PolicyError>,
}

impl Validator<'_> {
    fn fail<T>(&mut self, at: &Spanned<T>, reason: String) {
        self.errors.push(PolicyError {
            file: self.file.to_path_buf(),
            line: Some(line_of(self.text, at.span().start)),
            reason,
            plugin: None,
        });
    }

    /// Whether the name is valid (problems are then the named plugin's).
    fn check_name(&mut self, name: &Spanned<String>) -> bool {
        let text = name.get_ref();
        let valid = is_plugin_name(text);
        if !valid {
            self.fail(
                name,
                format!(
                    "invalid plugin name `{text}`: use 1 to {MAX_NAME_LEN} lowercase letters, digits, `-` or `_`, starting with a letter or digit"
                ),
            );
        }
        valid
    }

    /// A timeout within [`MIN_TIMEOUT`, `MAX_TIMEOUT`].
    fn timeout(&mut self, timeout: &Spanned<HumanDuration>) -> Duration {
        let duration = timeout.get_ref().0;
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&duration) {
            self.fail(
                timeout,
                format!("timeout {} is out of range: it must be between 1ms and 10m", timeout.get_ref()),
            );
        }
        duration
    }

    fn limits(&mut self, raw: &super::file::LimitsSection) -> Limits {
        let mut limits = Limits::default();
        if let Some(memory) = &raw.memory {
            let bytes = memory.get_ref().0;
            if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
                self.fail(
                    memory,
                    format!("memory limit {} is out of range: it must be between 2 MiB and 4 GiB", memory.get_ref()),
                );
            }
            limits.memory = bytes;
        }
        if let Some(timeout) = &raw.timeout {
            limits.timeout = self.timeout(timeout);
        }
        if let Some(concurrency) = &raw.concurrency {
            let n = *concurrency.get_ref();
            if !(1..=MAX_CONCURRENCY).contains(&n) {
                self.fail(
                    concurrency,
                    format!("concurrency {n} is out of range: it must be between 1 and {MAX_CONCURRENCY}"),
                );
            }
            limits.concurrency = n.clamp(1, MAX_CONCURRENCY) as u32;
        }
        if let Some(max_output) = &raw.max_output {
            let bytes = max_output.get_ref().0;
            if !(MIN_OUTPUT..=MAX_OUTPUT).contains(&bytes) {
                self.fail(
                    max_output,
                    format!("max_output {} is out of range: it must be between 1 KiB and 1 GiB", max_output.get_ref()),
                );
            }
            limits.max_output = bytes;
        }
        limits
    }

    fn http(&mut self, raw: &HttpSection) -> HttpPolicy {
        let mut allow = Vec::new();
        for entry in raw.allow.get_ref() {
            match AllowRule::parse(entry.get_ref()) {
                Ok(rule) => allow.push(rule),
                Err(reason) => self.fail(entry, reason),
            }
        }
        if raw.allow.get_ref().is_empty() {
            self.fail(
                &raw.allow,
                "[http] allow is empty: list the origins the plugin may reach, or remove [http]".into(),
            );
        }
        let mut policy = HttpPolicy::new(allow);
        if let Some(methods) = &raw.methods {
            policy.methods.clear();
            for method in methods {
                let name = method.get_ref().to_ascii_uppercase();
                if name == "CONNECT" {
                    self.fail(method, "method CONNECT is never allowed: a tunnel would bypass every check".into());
                } else if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
                    self.fail(method, format!("invalid method `{}`", method.get_ref()));
                } else {
                    policy.methods.insert(name);
                }
            }
        }
        if let Some(rate) = &raw.rate {
            match Rate::parse(rate.get_ref()) {
                Ok(parsed) => policy.rate = parsed,
                Err(reason) => self.fail(rate, reason),
            }
        }
        if let Some(size) = &raw.max_request {
            policy.max_request = size.get_ref().0;
        }
        if let Some(size) = &raw.max_response {
            policy.max_response = size.get_ref().0;
        }
        if let Some(timeout) = &raw.timeout {
            policy.timeout = self.timeout(timeout);
        }
        if let Some(redirects) = &raw.max_redirects {
            match u32::try_from(*redirects.get_ref()) {
                Ok(n) if n <= MAX_REDIRECTS => policy.max_redirects = n,
                _ => self.fail(redirects, format!("max_redirects must be between 0 and {MAX_REDIRECTS}")),
            }
        }
        for header in &raw.deny_headers {
            match valid_header_name(header.get_ref()) {
                Some(name) => {
                    policy.deny_headers.insert(name);
                }
                None => self.fail(header, format!("invalid header name `{}`", header.get_ref())),
            }
        }
        for header in &raw.allow_headers {
            match valid_header_name(header.get_ref()) {
                Some(name) if is_granted_only(&name) => {
                    policy.allow_headers.insert(name);
                }
                Some(name) => self.fail(
                    header,
                    format!("`{name}` is not a method-override or forwarding header: other headers need no grant"),
                ),
                None => self.fail(header, format!("invalid header name `{}`", header.get_ref())),
            }
        }
        for method in &raw.body_methods {
            let name = method.get_ref().to_ascii_uppercase();
            if BODYLESS_METHODS.contains(&name.as_str()) {
                policy.body_methods.insert(name);
            } else {
                self.fail(
                    method,
                    format!("body_methods lists `{}`: only {} need it", method.get_ref(), BODYLESS_METHODS.join(", ")),
                );
            }
        }
        for inject in &raw.inject {
            if let Some(injection) = self.injection(inject, &policy.allow) {
                policy.inject.push(injection);
            }
        }
        // TRACE asks the upstream to send the request back, injected
        // credential included (see README, "Injected credentials").
        let trace = raw.methods.iter().flatten().find(|m| m.get_ref().eq_ignore_ascii_case("TRACE"));
        if let Some(trace) = trace.filter(|_| !raw.inject.is_empty()) {
            self.fail(trace, "method TRACE cannot be granted with [[http.inject]]: it reflects the credential".into());
        }
        policy
    }

    fn kv(&mut self, raw: &KvSection) -> KvPolicy {
        let mut policy = KvPolicy::default();
        let quota = &mut policy.quota;
        if let Some(n) = &raw.max_keys {
            let checked = u64::try_from(*n.get_ref())
                .map_err(|_| format!("[kv] max_keys {} is negative", n.get_ref()))
                .and_then(|keys| check_quota_field("max_keys", keys));
            match checked {
                Ok(keys) => quota.max_keys = keys,
                Err(reason) => self.fail(n, reason),
            }
        }
        for (field, value, slot) in [
            ("max_bytes", &raw.max_bytes, &mut quota.max_bytes),
            ("max_key", &raw.max_key, &mut quota.max_key),
            ("max_value", &raw.max_value, &mut quota.max_value),
        ] {
            if let Some(size) = value {
                match check_quota_field(field, size.get_ref().0) {
                    Ok(bytes) => *slot = bytes,
                    Err(reason) => self.fail(size, reason),
                }
            }
        }
        if let Some(rate) = &raw.rate {
            match Rate::parse(rate.get_ref()) {
                Ok(parsed) => policy.rate = parsed,
                Err(reason) => self.fail(rate, reason),
            }
        }
        let buckets: Vec<&str> = raw.buckets.iter().map(|b| b.get_ref().as_str()).collect();
        let relaxed: Vec<&str> = raw.relaxed.iter().map(|b| b.get_ref().as_str()).collect();
        match bucket_table(&buckets, &relaxed) {
            Ok(table) => policy.buckets = table,
            Err(problems) => {
                for (entry, reason) in problems {
                    let at = match entry {
                        Entry::Granted(i) => &raw.buckets[i],
                        Entry::Relaxed(i) => &raw.relaxed[i],
                    };
                    self.fail(at, reason);
                }
            }
        }
        policy
    }

    /// Each `[sql.<alias>]`, its problems placed on their lines. The alias
    /// itself is checked against the settings when the plugin loads.
    fn sql(
        &mut self,
        raw: &BTreeMap<Spanned<String>, crate::services::sql::SqlSection>,
    ) -> BTreeMap<String, crate::services::sql::SqlPolicy> {
        let mut grants = BTreeMap::new();
        for (alias, section) in raw {
            let name = alias.get_ref();
            if !crate::config::is_alias(name) {
                self.fail(
                    alias,
                    format!(
                        "[sql.{}]: an alias is 1 to 64 lowercase letters, digits, `_` or `-`, starting with a letter",
                        crate::guest_text::escape(name, crate::guest_text::SHORT)
                    ),
                );
                continue;
            }
            match section.validate() {
                Ok(policy) => {
                    grants.insert(name.clone(), policy);
                }
                Err(problems) => {
                    for (span, reason) in problems {
                        self.errors.push(PolicyError {
                            file: self.file.to_path_buf(),
                            line: Some(line_of(self.text, span.start)),
                            reason: format!("[sql.{name}] {reason}"),
                            plugin: None,
                        });
                    }
                }
            }
        }
        grants
    }

    fn injection(&mut self, raw: &InjectSection, allow: &[AllowRule]) -> Option<Injection> {
        let to = match AllowRule::parse(raw.origin.get_ref()) {
            Ok(rule) => rule,
            Err(reason) => {
                self.fail(&raw.origin, reason);
                return None;
            }
        };
        if !allow.iter().any(|rule| rule.covers(&to)) {
            self.fail(&raw.origin, format!("injection origin `{}` is not covered by any allow entry", to.text));
        }
        let Some(header) = valid_header_name(raw.header.get_ref()) else {
            self.fail(&raw.header, format!("invalid header name `{}`", raw.header.get_ref()));
            return None;
        };
        if is_sidecar_managed(&header) {
            self.fail(&raw.header, format!("header `{header}` is managed by the sidecar and cannot be injected"));
        }
        if raw.secret.get_ref().is_empty() {
            self.fail(&raw.secret, "secret name is empty".into());
        }
        Some(Injection { to, header, secret: raw.secret.get_ref().clone(), prefix: raw.prefix.clone() })
    }

    fn component(
        &mut self,
        path: &Spanned<String>,
        pin: Option<&Spanned<String>>,
        plugin_dir: ComponentDir<'_>,
        instead: Option<&Path>,
    ) -> Option<ComponentSource> {
        let pin = match pin {
            None => None,
            Some(pin) => match parse_sha256(pin.get_ref()) {
                Some(digest) => Some(digest),
                None => {
                    self.fail(pin, format!("invalid sha256 pin `{}`: expected 64 hexadecimal digits", pin.get_ref()));
                    return None;
                }
            },
        };
        let resolved = instead.map_or_else(|| plugin_dir.path.join(path.get_ref()), Path::to_path_buf);
        let bytes = match read_regular_file(&resolved, MAX_COMPONENT_SIZE) {
            Ok(bytes) => bytes,
            Err(e) => {
                let why = match e {
                    BoundedReadError::TooLarge(cap) => format!("larger than the {} MiB a component may be", cap >> 20),
                    other => other.to_string(),
                };
                let relative = Path::new(path.get_ref()).is_relative();
                let hint = if relative {
                    format!(
                        " (`{}` is relative to {}, `{}`)",
                        path.get_ref(),
                        plugin_dir.origin,
                        plugin_dir.path.display()
                    )
                } else {
                    String::new()
                };
                self.fail(path, format!("component `{}` cannot be read: {why}{hint}", resolved.display()));
                return None;
            }
        };
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(expected) = pin.filter(|expected| *expected != sha256) {
            let reason = format!(
                "component `{}` does not match its sha256 pin: expected {}, found {}",
                resolved.display(),
                hex::encode(expected),
                hex::encode(sha256)
            );
            self.fail(path, reason);
            return None;
        }
        Some(ComponentSource { path: resolved, sha256, bytes: Arc::from(bytes) })
    }
}

/// Lowercase `name` if it is a valid HTTP header name.
fn valid_header_name(name: &str) -> Option<String> {
    http::HeaderName::from_bytes(name.as_bytes()).ok().map(|n| n.as_str().to_string())
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut digest).ok()?;
    Some(digest)
}

/// Whether `text` is a valid plugin name: 1 to 64 lowercase letters,
/// digits, `-` or `_`, starting with a letter or digit.
pub fn is_plugin_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}
