//! The log's signing key on disk: one file holding the signed-note
//! `PRIVATE+KEY+…` form, created with mode 0600 on first use.
//!
//! Whoever reads the key can sign checkpoints for a rewritten history,
//! and whoever can write it can swap it; so, like OpenSSH with a private
//! key, the file is used only when it is a regular file (not a link),
//! owned by the sidecar's user and readable by no one else; its directory
//! passes [`crate::data_dir::secure`].

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::note::{NoteError, NoteSigner};
use crate::data_dir::{self, DataDirError};

/// Longest key file read (a key is about 100 bytes).
const MAX_KEY_FILE: u64 = 4096;

/// A key file the sidecar refuses, and why.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Its directory is not private.
    #[error(transparent)]
    Directory(#[from] DataDirError),
    /// Reading or creating it failed.
    #[error("cannot use the key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Others may read or write it.
    #[error("the key file {path} is readable or writable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Another user owns it.
    #[error("the key file {path} is owned by uid {owner}, not by the sidecar's uid {uid}")]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The sidecar's effective user id.
        uid: u32,
    },
    /// A link, a directory or something else that is not a regular file.
    #[error("the key file {0} is not a regular file")]
    NotAFile(PathBuf),
    /// It holds no key, or a key for another name.
    #[error("the key file {path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong with the key.
        source: NoteError,
    },
    /// The key's name is not the one configured.
    #[error("the key file {path} holds a key named {found:?}, not {expected:?}")]
    WrongName {
        /// The file.
        path: PathBuf,
        /// The name in the file.
        found: String,
        /// The configured name.
        expected: String,
    },
}

/// Loads the key at `path`, or creates one named `name` there if no file
/// exists. An existing key must carry `name`.
pub fn load_or_generate(path: &Path, name: &str) -> Result<NoteSigner, KeyError> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        data_dir::secure(dir)?;
    }
    let io = |source| KeyError::Io { path: path.to_path_buf(), source };
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer =
                NoteSigner::generate(name).map_err(|source| KeyError::Key { path: path.to_path_buf(), source })?;
            // create_new: never follow or overwrite something another
            // process put there in between.
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
            file.write_all(format!("{}\n", signer.to_skey()).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            return Ok(signer);
        }
        Err(e) => return Err(io(e)),
    }
    let signer = load(path)?;
    if signer.name() != name {
        return Err(KeyError::WrongName {
            path: path.to_path_buf(),
            found: signer.name().to_string(),
            expected: name.to_string(),
        });
    }
    Ok(signer)
}

/// Loads the key at `path`, checking the file first.
pub fn load(path: &Path) -> Result<NoteSigner, KeyError> {
    let io = |source| KeyError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(KeyError::NotAFile(path.to_path_buf()));
    }
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(KeyError::WrongOwner { path: path.to_path_buf(), owner: meta.uid(), uid });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed { path: path.to_path_buf(), mode });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyError::Key {
            path: path.to_path_buf(),
            source: NoteError::Key("the file is too long to be a key"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    NoteSigner::from_skey(&text).map_err(|source| KeyError::Key { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/key");
        let first = load_or_generate(&path, "log.example/audit").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        let again = load_or_generate(&path, "log.example/audit").unwrap();
        assert_eq!(again.verifier(), first.verifier());
        assert!(matches!(load_or_generate(&path, "other"), Err(KeyError::WrongName { .. })));
    }

    /// Attacks: a key file others can read (they could sign a rewritten
    /// history) or write (swap the key), a link to a key elsewhere, a
    /// key file that is not a key.
    #[test]
    fn exposed_linked_or_garbled_key_files_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("audit");
        let path = dir.join("key");
        load_or_generate(&path, "log").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false), (0o620, false), (0o644, false)]
        {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let result = load(&path);
            assert_eq!(result.is_ok(), ok, "{mode:o}: {result:?}");
            if !ok {
                assert!(matches!(result, Err(KeyError::Exposed { mode: m, .. }) if m == mode));
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(load(&link), Err(KeyError::NotAFile(_))));
        assert!(matches!(load_or_generate(&link, "log"), Err(KeyError::NotAFile(_))));
        let garbled = dir.join("garbled");
        std::fs::write(&garbled, "PRIVATE+KEY+log+00000000+AQ==\n").unwrap();
        std::fs::set_permissions(&garbled, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&garbled), Err(KeyError::Key { .. })));
    }
}
