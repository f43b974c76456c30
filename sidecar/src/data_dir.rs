//! The sidecar's own directories (the data directory and the compiled-code
//! cache in it) hold native code that is loaded and run, and later keys:
//! whoever can write there can run code as the sidecar or swap a pinned
//! component's compiled form. So, like OpenSSH's StrictModes, a directory
//! is used only if it belongs to the user the sidecar runs as and neither
//! its group nor others may write to it; one that does not exist yet is
//! created with mode 0700.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A directory the sidecar refuses to use, and why.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// It could not be created or inspected.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// It exists but is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// It is a symbolic link.
    #[error("{0} is a symbolic link; point the setting at the real directory")]
    Symlink(PathBuf),
    /// A file to trust is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// Another user owns it.
    #[error("{path} is owned by uid {owner}, not by the sidecar's uid {uid}; chown it to the sidecar's user")]
    WrongOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The sidecar's effective user id.
        uid: u32,
    },
    /// Its group or others may write to it.
    #[error("{path} is writable by its group or by others (mode {mode:o}); run `chmod go-w {path}`")]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Creates `dir` (and missing parents) with mode 0700, or checks the one
/// that is there. The parent of `dir` is checked too, since whoever can
/// write to it can replace `dir` itself; `dir` may not be a symbolic link
/// (its target's parent would escape the check).
pub fn secure(dir: &Path) -> Result<(), DataDirError> {
    let io = |source| DataDirError::Io { path: dir.to_path_buf(), source };
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    }
    if std::fs::symlink_metadata(dir).map_err(io)?.file_type().is_symlink() {
        return Err(DataDirError::Symlink(dir.to_path_buf()));
    }
    check(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if std::fs::symlink_metadata(parent).map_err(io)?.file_type().is_symlink() {
            return Err(DataDirError::Symlink(parent.to_path_buf()));
        }
        check(parent)?;
    }
    Ok(())
}

/// Checks one file the sidecar is about to trust (a compiled artifact):
/// a regular file, not a link, owned by the sidecar's user and writable by
/// no one else. The directory checks keep others from replacing it; this
/// keeps a file someone else left there, or loosened, from being run.
pub fn trusted_file(path: &Path) -> Result<(), DataDirError> {
    let meta =
        std::fs::symlink_metadata(path).map_err(|source| DataDirError::Io { path: path.to_path_buf(), source })?;
    if !meta.file_type().is_file() {
        return Err(DataDirError::NotAFile(path.to_path_buf()));
    }
    owned_and_private(path, &meta)
}

fn check(dir: &Path) -> Result<(), DataDirError> {
    let meta = std::fs::metadata(dir).map_err(|source| DataDirError::Io { path: dir.to_path_buf(), source })?;
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory(dir.to_path_buf()));
    }
    owned_and_private(dir, &meta)
}

/// Checks what `meta` says of `path` (read from a handle by a caller that
/// must not look the path up again): owned by the sidecar's user and
/// writable by no one else.
pub fn owned_and_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), DataDirError> {
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(DataDirError::WrongOwner { path: path.to_path_buf(), owner: meta.uid(), uid });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DataDirError::Writable { path: path.to_path_buf(), mode });
    }
    Ok(())
}

/// Makes a file the sidecar keeps (a store, a log) readable by its owner
/// only, whatever the umask made it: its contents are other plugins' data
/// or the audit trail.
pub fn make_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Writes `bytes` to `path`, owner-only (0600), replacing what is there,
/// and flushes them to disk before returning.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces `path` by `bytes` at once: written whole to `temporary`
/// ([`write_private`]), then renamed over `path`, so a reader (or a crash)
/// finds the old content or the new, never part of it.
pub fn replace_private(path: &Path, temporary: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_private(temporary, bytes)?;
    std::fs::rename(temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The new content replaces the old whole, owner-only, and the
    /// temporary file is gone.
    #[test]
    fn a_file_is_replaced_whole_and_private() {
        let root = tempfile::tempdir().unwrap();
        let (path, temporary) = (root.path().join("current"), root.path().join(".current.tmp"));
        std::fs::write(&path, b"old content").unwrap();
        replace_private(&path, &temporary, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!temporary.exists());
    }

    /// Whatever the umask left (group or world bits), a kept file ends
    /// owner-only; one already owner-only is left as it is.
    #[test]
    fn a_kept_file_is_made_owner_only() {
        let root = tempfile::tempdir().unwrap();
        for (mode, after) in [(0o644, 0o600), (0o640, 0o600), (0o604, 0o600), (0o600, 0o600), (0o400, 0o400)] {
            let file = root.path().join(format!("kept-{mode:o}"));
            std::fs::write(&file, b"x").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            make_private(&file).unwrap();
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, after, "{mode:o}");
        }
    }

    #[test]
    fn creates_missing_directories_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data/cache");
        secure(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn refuses_a_directory_others_may_write() {
        let root = tempfile::tempdir().unwrap();
        for (mode, refused) in [(0o777, true), (0o1777, true), (0o770, true), (0o755, false), (0o700, false)] {
            let dir = root.path().join(format!("d{mode:o}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let result = secure(&dir);
            assert_eq!(result.is_err(), refused, "{mode:o}: {result:?}");
        }
        // A writable parent is refused too: it could replace the directory.
        let parent = root.path().join("open");
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = secure(&parent.join("cache")).unwrap_err();
        assert!(matches!(error, DataDirError::Writable { ref path, .. } if *path == parent), "{error}");
        // A link to a private directory inside the open one is refused too.
        let link = root.path().join("d700/link");
        std::os::unix::fs::symlink(parent.join("cache"), &link).unwrap();
        assert!(matches!(secure(&link), Err(DataDirError::Symlink(_))));
        // So is a cache inside a linked data directory.
        let linked_data = root.path().join("d700/data-link");
        std::os::unix::fs::symlink(root.path().join("d755"), &linked_data).unwrap();
        assert!(matches!(secure(&linked_data.join("cache")), Err(DataDirError::Symlink(_))));
    }

    #[test]
    fn a_file_is_trusted_only_when_private_and_ours() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("artifact");
        std::fs::write(&file, b"x").unwrap();
        for (mode, trusted) in [(0o600, true), (0o644, true), (0o664, false), (0o666, false)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(trusted_file(&file).is_ok(), trusted, "{mode:o}");
        }
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(matches!(trusted_file(&link), Err(DataDirError::NotAFile(_))));
    }
}
