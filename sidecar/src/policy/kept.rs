//! The version of each plugin in force, kept on disk for `[audit]
//! require_approval`: after a restart, a plugin whose policy now waits for
//! approval serves the version it had, as it would have had the sidecar
//! kept running, instead of staying out until someone decides.
//!
//! `<data_dir>/kept/<plugin>/<version>/` holds what that version was read
//! from when it took effect: the policy file's bytes (`policy.toml`), the
//! component (`component.wasm`) and its permission manifest
//! (`component.permissions.toml`, if it shipped one). `<plugin>/current`
//! names the version and is replaced by a rename, so a crash leaves the
//! old version or the new one, never a mix of the two.
//!
//! A kept version is read back through the policy loader; the sidecar
//! serves it only if its grants are exactly those the audit log records in
//! force for the plugin, and (for a held plugin) as the approvals judge a
//! loaded version (`audit::trail`'s screening). This copy is a convenience
//! for restarts; the log and the approvals decide.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::load::{ComponentDir, load_file_with};
use super::{PluginPolicy, manifest};
use crate::bounded_read::read_regular_file;
use crate::data_dir::{DataDirError, replace_private, write_private};

/// The directory under the data directory.
pub const DIR: &str = "kept";
const POLICY: &str = "policy.toml";
const COMPONENT: &str = "component.wasm";
const CURRENT: &str = "current";

/// Why a version could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum KeptError {
    /// A directory the sidecar may not trust or create.
    #[error(transparent)]
    Directory(#[from] DataDirError),
    /// Writing the copy failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The policy no longer holds its component's bytes (a loaded
    /// version's: the runtime drops them).
    #[error("plugin `{0}`: its component's bytes are not at hand")]
    NoBytes(String),
}

/// The kept versions under one data directory.
#[derive(Debug, Clone)]
pub struct KeptVersions {
    dir: PathBuf,
}

impl KeptVersions {
    /// The kept versions of `data_dir` (nothing is created until a version
    /// is kept).
    pub fn new(data_dir: &Path) -> KeptVersions {
        KeptVersions { dir: data_dir.join(DIR) }
    }

    /// Keeps each plugin of `in_force` as its plugin's version, and
    /// forgets the plugins no policy names any more (`named`): their
    /// approvals ended with them. Returns what failed, by plugin; a failure
    /// leaves that plugin's previous copy.
    pub fn sync(&self, in_force: &[PluginPolicy], named: &[String]) -> Vec<(String, KeptError)> {
        let mut failed: Vec<(String, KeptError)> =
            in_force.iter().filter_map(|p| self.keep(p).err().map(|e| (p.name.clone(), e))).collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return failed };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if named.contains(&name) || in_force.iter().any(|p| p.name == name) {
                continue;
            }
            if let Err(source) = std::fs::remove_dir_all(entry.path()) {
                failed.push((name, KeptError::Io { path: entry.path(), source }));
            }
        }
        failed
    }

    /// Keeps `policy` as its plugin's version. `Ok(false)`: it already was.
    /// The copy is of the bytes the loader read (the files may have
    /// changed since), so `policy` must still hold its component's bytes
    /// (the runtime drops them once it has compiled them).
    pub fn keep(&self, policy: &PluginPolicy) -> Result<bool, KeptError> {
        if policy.component.path.starts_with(&self.dir) {
            // Restored from here: kept already.
            return Ok(false);
        }
        if policy.component.bytes.is_empty() {
            return Err(KeptError::NoBytes(policy.name.clone()));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeptError::Io { path, source }
        };
        let (text, manifest, component) =
            (&policy.source.policy, policy.source.manifest.as_deref(), &policy.component.bytes);
        let version = version_of(text, &policy.component.sha256, manifest);
        let plugin_dir = self.plugin_dir(&policy.name);
        crate::data_dir::secure(&self.dir)?;
        crate::data_dir::secure(&plugin_dir)?;
        if current(&plugin_dir).as_deref() == Some(version.as_str()) && plugin_dir.join(&version).is_dir() {
            return Ok(false);
        }
        // Written whole under a temporary name, then renamed into place and
        // named by `current`: a reader never sees a version half written.
        let staging = plugin_dir.join(format!(".{version}.tmp"));
        let _ = std::fs::remove_dir_all(&staging);
        crate::data_dir::secure(&staging)?;
        write_private(&staging.join(POLICY), text).map_err(io(&staging.join(POLICY)))?;
        write_private(&staging.join(COMPONENT), component).map_err(io(&staging.join(COMPONENT)))?;
        if let Some(manifest) = manifest {
            let file = manifest::path_for(&staging.join(COMPONENT));
            write_private(&file, manifest).map_err(io(&file))?;
        }
        sync_dir(&staging).map_err(io(&staging))?;
        let final_dir = plugin_dir.join(&version);
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&staging, &final_dir).map_err(io(&final_dir))?;
        let pointer = plugin_dir.join(CURRENT);
        replace_private(&pointer, &plugin_dir.join(format!(".{CURRENT}.tmp")), version.as_bytes())
            .map_err(io(&pointer))?;
        sync_dir(&plugin_dir).map_err(io(&plugin_dir))?;
        // Older versions: nothing names them any more.
        for entry in std::fs::read_dir(&plugin_dir).map_err(io(&plugin_dir))?.flatten() {
            let name = entry.file_name();
            if name != CURRENT && name.to_string_lossy() != version {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(true)
    }

    /// The kept version of `plugin`, as the policy file `file` (the one
    /// that names the plugin now). `None` when none is kept or it cannot
    /// be read back (logged).
    pub fn restore(&self, plugin: &str, file: &Path) -> Option<PluginPolicy> {
        let plugin_dir = self.plugin_dir(plugin);
        let version = current(&plugin_dir)?;
        let version_dir = plugin_dir.join(&version);
        let origin = format!("the kept copy `{}`", version_dir.display());
        let at = ComponentDir { path: &version_dir, origin: &origin };
        let component = version_dir.join(COMPONENT);
        match load_file_with(&version_dir.join(POLICY), at, Some(&component)) {
            Ok(mut policy) if policy.name == plugin => {
                policy.file = file.to_path_buf();
                Some(policy)
            }
            Ok(policy) => {
                tracing::error!(plugin, kept = %policy.name, "the kept version is another plugin's; not used");
                None
            }
            Err(errors) => {
                for error in errors {
                    tracing::error!(plugin, %error, "the kept version cannot be read back; not used");
                }
                None
            }
        }
    }

    fn plugin_dir(&self, plugin: &str) -> PathBuf {
        self.dir.join(plugin)
    }
}

/// The version a policy text, component and manifest make: a digest of
/// the three, so that any change of one is a new version.
fn version_of(policy: &[u8], component: &[u8; 32], manifest: Option<&[u8]>) -> String {
    let mut hash = Sha256::new();
    hash.update(Sha256::digest(policy));
    hash.update(component);
    hash.update(manifest.map(|m| <[u8; 32]>::from(Sha256::digest(m))).unwrap_or_default());
    hex::encode(&hash.finalize()[..16])
}

/// The version `current` names, if it names a well-formed one.
fn current(plugin_dir: &Path) -> Option<String> {
    let text = read_regular_file(&plugin_dir.join(CURRENT), 64).ok()?;
    let version = String::from_utf8(text).ok()?;
    (version.len() == 32 && version.bytes().all(|b| b.is_ascii_hexdigit())).then_some(version)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{grant_diff, load_dir};

    /// A policy directory with plugin `p` (a quota of `max_keys`, a
    /// component of `component` bytes, a manifest if given), loaded.
    fn load(root: &Path, max_keys: u64, component: &[u8], manifest: Option<&str>) -> PluginPolicy {
        let policies = root.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(root.join("p.wasm"), component).unwrap();
        match manifest {
            Some(text) => std::fs::write(root.join("p.permissions.toml"), text).unwrap(),
            None => drop(std::fs::remove_file(root.join("p.permissions.toml"))),
        }
        std::fs::write(
            policies.join("p.toml"),
            format!("[plugin]\nname = \"p\"\ncomponent = \"p.wasm\"\n[kv]\nmax_keys = {max_keys}\n"),
        )
        .unwrap();
        let mut load = load_dir(&policies, root).unwrap();
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        load.set.plugins.remove("p").unwrap()
    }

    fn versions(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join("data").join(DIR).join("p"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// What a restart reads back is the version that was in force, with
    /// the same grants (component digest and manifest included) and the
    /// same bytes, under the policy file that names the plugin now; a
    /// version kept again writes nothing; a new one replaces it whole.
    #[test]
    fn a_kept_version_reads_back_as_it_was_in_force() {
        let root = tempfile::tempdir().unwrap();
        let kept = KeptVersions::new(&root.path().join("data"));
        let first = load(root.path(), 10, b"component one", Some("[kv]\nmax_keys = 10\n"));
        assert!(kept.keep(&first).unwrap());
        assert!(!kept.keep(&first).unwrap(), "the same version is not written twice");
        assert_eq!(versions(root.path()).len(), 2, "{:?}", versions(root.path()));

        // The files change on disk (an edit waiting for approval).
        let next = load(root.path(), 99, b"component two", None);
        let now_at = root.path().join("policies").join("p.toml");
        let restored = kept.restore("p", &now_at).expect("restored");
        assert_eq!(grant_diff::grants(&restored), grant_diff::grants(&first));
        assert_eq!(&*restored.component.bytes, b"component one");
        assert_eq!(restored.file, now_at);
        assert!(restored.requested.is_some());
        // A restored version is kept already: nothing is written for it.
        assert!(!kept.keep(&restored).unwrap());

        let pointer = root.path().join("data").join(DIR).join("p").join(CURRENT);
        let first_version = std::fs::read_to_string(&pointer).unwrap();
        assert!(kept.keep(&next).unwrap());
        assert_eq!(versions(root.path()).len(), 2, "the old version is gone: {:?}", versions(root.path()));
        assert_eq!(grant_diff::grants(&kept.restore("p", &now_at).unwrap()), grant_diff::grants(&next));

        // A crash between the copy's rename and the pointer's: the copy is
        // there, the pointer names the old version (gone). Kept again, the
        // pointer follows.
        std::fs::write(&pointer, &first_version).unwrap();
        assert!(kept.restore("p", &now_at).is_none());
        assert!(kept.keep(&next).unwrap());
        assert_eq!(grant_diff::grants(&kept.restore("p", &now_at).unwrap()), grant_diff::grants(&next));
    }

    /// The copy is of the bytes the loader read: the files edited on disk
    /// after the load (a deploy racing the reload) change nothing in it. A
    /// version without its component's bytes (as the runtime holds a
    /// loaded one) is not kept.
    #[test]
    fn the_copy_is_of_what_was_loaded_not_of_the_files_now() {
        let root = tempfile::tempdir().unwrap();
        let kept = KeptVersions::new(&root.path().join("data"));
        let policy = load(root.path(), 10, b"c", Some("[kv]\nmax_keys = 10\n"));
        std::fs::write(root.path().join("p.wasm"), b"another").unwrap();
        std::fs::write(root.path().join("p.permissions.toml"), "[kv]\nmax_keys = 99\n").unwrap();
        std::fs::write(&policy.file, "[plugin]\nname = \"p\"\ncomponent = \"p.wasm\"\n").unwrap();
        kept.keep(&policy).unwrap();
        let restored = kept.restore("p", &policy.file).unwrap();
        assert_eq!(grant_diff::grants(&restored), grant_diff::grants(&policy));
        assert_eq!((&*restored.component.bytes, &restored.source), (&b"c"[..], &policy.source));

        let mut compiled = policy.clone();
        compiled.component.bytes = std::sync::Arc::from(Vec::new());
        assert!(matches!(KeptVersions::new(&root.path().join("other")).keep(&compiled), Err(KeptError::NoBytes(_))));
    }

    /// What cannot be read back is not used: no copy, a `current` naming
    /// a version that is not there or is malformed, a copy whose policy
    /// names another plugin, a copy whose component was altered against
    /// the policy's pin.
    #[test]
    fn an_unusable_copy_restores_nothing() {
        let root = tempfile::tempdir().unwrap();
        let kept = KeptVersions::new(&root.path().join("data"));
        let policy = load(root.path(), 10, b"c", None);
        assert!(kept.restore("p", &policy.file).is_none(), "nothing kept yet");
        kept.keep(&policy).unwrap();
        let plugin_dir = root.path().join("data").join(DIR).join("p");
        let version = std::fs::read_to_string(plugin_dir.join(CURRENT)).unwrap();
        assert!(kept.restore("p", &policy.file).is_some());
        assert!(kept.restore("q", &policy.file).is_none(), "another plugin's name");

        std::fs::write(plugin_dir.join(CURRENT), "../../elsewhere").unwrap();
        assert!(kept.restore("p", &policy.file).is_none(), "a malformed pointer");
        std::fs::write(plugin_dir.join(CURRENT), "0".repeat(32)).unwrap();
        assert!(kept.restore("p", &policy.file).is_none(), "a pointer to nothing");
        // A pointer of the right length out of the plugin's directory, and
        // a short hexadecimal one, each to a real copy: not followed.
        let copy = |to: &Path| {
            std::fs::create_dir_all(to).unwrap();
            for file in [POLICY, COMPONENT] {
                std::fs::copy(plugin_dir.join(&version).join(file), to.join(file)).unwrap();
            }
        };
        copy(&root.path().join("data").join(DIR).join("evil"));
        let outside = format!("../{}evil/", "./".repeat(12));
        assert_eq!(outside.len(), 32);
        std::fs::write(plugin_dir.join(CURRENT), &outside).unwrap();
        assert!(kept.restore("p", &policy.file).is_none(), "a pointer out of the plugin's directory");
        copy(&plugin_dir.join("abc"));
        std::fs::write(plugin_dir.join(CURRENT), "abc").unwrap();
        assert!(kept.restore("p", &policy.file).is_none(), "a pointer that is no version");
        std::fs::write(plugin_dir.join(CURRENT), &version).unwrap();

        let pinned = format!(
            "[plugin]\nname = \"p\"\ncomponent = \"p.wasm\"\nsha256 = \"{}\"\n",
            hex::encode(policy.component.sha256)
        );
        std::fs::write(plugin_dir.join(&version).join(POLICY), pinned).unwrap();
        assert!(kept.restore("p", &policy.file).is_some(), "pinned to the kept component");
        std::fs::write(plugin_dir.join(&version).join(COMPONENT), b"swapped").unwrap();
        assert!(kept.restore("p", &policy.file).is_none(), "a component that is not its pin's");

        std::fs::write(plugin_dir.join(&version).join(POLICY), "[plugin]\nname = \"q\"\ncomponent = \"x\"\n").unwrap();
        assert!(kept.restore("p", &policy.file).is_none(), "another plugin's policy");
    }

    /// `sync` keeps what is in force and forgets plugins no policy names;
    /// a plugin still named (held, refused) keeps its copy.
    #[test]
    fn sync_forgets_only_plugins_no_policy_names() {
        let root = tempfile::tempdir().unwrap();
        let kept = KeptVersions::new(&root.path().join("data"));
        let policy = load(root.path(), 10, b"c", None);
        assert!(kept.sync(std::slice::from_ref(&policy), &[]).is_empty());
        assert!(kept.restore("p", &policy.file).is_some());
        assert!(kept.sync(&[], &["p".to_string()]).is_empty());
        assert!(kept.restore("p", &policy.file).is_some(), "still named: kept");
        assert!(kept.sync(&[], &["other".to_string()]).is_empty());
        assert!(kept.restore("p", &policy.file).is_none(), "named by no policy: forgotten");
        assert!(!root.path().join("data").join(DIR).join("p").exists());
    }
}
