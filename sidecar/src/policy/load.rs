//! Reading a policy directory: parse each `*.toml`, validate it, resolve and
//! pin its component, and refuse duplicates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use toml::Spanned;

use super::error::{PolicyError, line_of};
use super::file::{HttpSection, InjectSection, KvSection, PolicyFile};
use super::units::HumanDuration;
use super::{ComponentSource, Limits, PluginPolicy, PolicySet};
use crate::bounded_read::{BoundedReadError, read_regular_file};
use crate::services::http::policy::{AllowRule, HttpPolicy, Injection, Rate, is_sidecar_managed};
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
    let unreadable = |e: std::io::Error| PolicyError {
        file: dir.to_path_buf(),
        line: None,
        reason: format!("cannot read the policy directory: {e}"),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    files.sort();

    let mut load = PolicyLoad::default();
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        match load_file(&file, plugin_dir) {
            Ok(policy) => {
                if let Some(first) = origin.get(&policy.name) {
                    load.errors.push(PolicyError {
                        file,
                        line: None,
                        reason: format!(
                            "duplicate plugin name `{}`: already defined in {}",
                            policy.name,
                            first.display()
                        ),
                    });
                    continue;
                }
                origin.insert(policy.name.clone(), file);
                load.set.plugins.insert(policy.name.clone(), policy);
            }
            Err(errors) => load.errors.extend(errors),
        }
    }
    Ok(load)
}

/// Parses and validates one policy file, reporting every problem found.
pub(super) fn load_file(file: &Path, plugin_dir: &Path) -> Result<PluginPolicy, Vec<PolicyError>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| vec![PolicyError { file: file.to_path_buf(), line: None, reason: format!("cannot read: {e}") }])?;
    let raw: PolicyFile = toml::from_str(&text).map_err(|e| {
        vec![PolicyError {
            file: file.to_path_buf(),
            line: e.span().map(|span| line_of(&text, span.start)),
            reason: e.message().trim_end().to_string(),
        }]
    })?;

    let mut v = Validator { file, text: &text, errors: Vec::new() };
    v.check_name(&raw.plugin.name);
    let limits = v.limits(&raw.limits);
    let http = raw.http.as_ref().map(|section| v.http(section));
    let kv = raw.kv.as_ref().map(|section| v.kv(section));
    let component = v.component(&raw.plugin.component, raw.plugin.sha256.as_ref(), plugin_dir);
    match (component, v.errors.is_empty()) {
        (Some(component), true) => Ok(PluginPolicy {
            name: raw.plugin.name.into_inner(),
            file: file.to_path_buf(),
            component,
            stdio: raw.plugin.stdio,
            limits,
            http,
            kv,
        }),
        _ => Err(v.errors),
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
        });
    }

    fn check_name(&mut self, name: &Spanned<String>) {
        let text = name.get_ref();
        let valid = !text.is_empty()
            && text.len() <= MAX_NAME_LEN
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            self.fail(
                name,
                format!(
                    "invalid plugin name `{text}`: use 1 to {MAX_NAME_LEN} lowercase letters, digits, `-` or `_`, starting with a letter or digit"
                ),
            );
        }
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
        for inject in &raw.inject {
            if let Some(injection) = self.injection(inject, &policy.allow) {
                policy.inject.push(injection);
            }
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
                        Entry::Granted(i) => &raw.buckets[i.min(raw.buckets.len() - 1)],
                        Entry::Relaxed(i) => &raw.relaxed[i],
                    };
                    self.fail(at, reason);
                }
            }
        }
        policy
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
        plugin_dir: &Path,
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
        let resolved = plugin_dir.join(path.get_ref());
        let bytes = match read_regular_file(&resolved, MAX_COMPONENT_SIZE) {
            Ok(bytes) => bytes,
            Err(e) => {
                let why = match e {
                    BoundedReadError::TooLarge(cap) => format!("larger than the {} MiB a component may be", cap >> 20),
                    other => other.to_string(),
                };
                self.fail(path, format!("component `{}` cannot be read: {why}", resolved.display()));
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
