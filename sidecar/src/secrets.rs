//! Secrets the platform holds for plugins (API tokens, passwords), named in
//! `gatehouse.toml` under `[secrets.<name>]` and referenced by name from
//! policies. Plugins never see them: the sidecar adds them to requests
//! itself. Values are read when plugins are loaded, so reloading picks up a
//! rotated secret.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::bounded_read::read_regular_file;

/// The largest secret file read.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the sidecar process.
    Env(String),
    /// A file (for example a mounted Kubernetes or Docker secret). One
    /// trailing newline is ignored.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the current value. The error names the source, never the value.
    ///
    /// A file every user may write is refused: whoever can write it could
    /// choose the admin token or point a database alias elsewhere.
    /// Symbolic links are followed (Kubernetes mounts secrets that way), so
    /// the mode checked is the target's.
    pub fn read(&self) -> Result<String, String> {
        match self {
            SecretSource::Env(var) => std::env::var(var).map_err(|e| format!("environment variable `{var}`: {e}")),
            SecretSource::File(path) => {
                let fail = |e: &dyn std::fmt::Display| format!("file `{}`: {e}", path.display());
                let bytes = read_regular_file(path, MAX_SECRET_FILE).map_err(|e| fail(&e))?;
                let mode = std::fs::metadata(path).map_err(|e| fail(&e))?.permissions().mode();
                if mode & 0o002 != 0 {
                    return Err(fail(&format_args!("every user may write it (chmod o-w `{}`)", path.display())));
                }
                let text = String::from_utf8(bytes).map_err(|_| fail(&"not UTF-8 text"))?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_without_its_newline_unless_anyone_may_write_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\r\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(SecretSource::File(path.clone()).read().unwrap(), "s3cret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let error = SecretSource::File(path.clone()).read().unwrap_err();
        assert!(error.ends_with(&format!("every user may write it (chmod o-w `{}`)", path.display())), "{error}");
        assert!(!error.contains("s3cret"));
        // Through a symbolic link, the target's mode counts.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(SecretSource::File(link.clone()).read().unwrap_err().contains("every user may write it"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(SecretSource::File(link).read().unwrap(), "s3cret");
    }

    #[test]
    fn a_secret_file_must_be_a_small_regular_file() {
        // A FIFO would block the read forever (no writer), /dev/zero never
        // end it, a directory is no secret.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        for path in [fifo, "/dev/zero".into(), dir.path().to_path_buf()] {
            let error = SecretSource::File(path.clone()).read().unwrap_err();
            assert!(error.ends_with("not a regular file"), "{path:?}: {error}");
        }
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_FILE as usize + 1]).unwrap();
        assert!(SecretSource::File(big).read().unwrap_err().ends_with("larger than 65536 bytes"));
    }
}
